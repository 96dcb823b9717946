#include "runtime.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>

#include "runtime_internal.h"

namespace flexavatar {
namespace runtime {
namespace {

// Decoder outputs: name and trailing per-Gaussian shape (bundle.py's GAUSSIAN_OUTPUTS).
struct OutputSpec {
  const char* name;
  int64_t width;  // 0 = scalar per Gaussian
};
constexpr OutputSpec kGaussianOutputs[] = {{"means", 3}, {"quats", 4}, {"scales", 3}, {"opacities", 0}, {"sh0", 3}};

// int8 decoders (DynamicQuantizeLinear + MatMulInteger: export/onnx_tools.py to_int8) are made for ONNX Runtime's CPU
// provider. In a CUDA session ONNX Runtime quietly places the nodes the CUDA provider has no kernel for on the CPU,
// with copies to and from the device around them; as in the Python runtime (runtime/engines.py FLOAT_PRECISIONS),
// they run on the CPU provider only.
bool cpu_provider_only(const std::string& precision) { return precision == "int8"; }

// Indexed by Device: its name in messages.
constexpr const char* kDeviceNames[] = {"AUTO", "CPU", "CUDA", "GPU", "NPU"};
static_assert(std::size(kDeviceNames) == size_t(Device::kNpu) + 1, "a name for every device");

// A GPU or NPU reached through ONNX Runtime's provider for it, with host arrays (not CUDA's device buffers).
bool host_array_device(Device device) { return device == Device::kGpu || device == Device::kNpu; }

// The provider that runs device GPU / NPU here (ort_session.h choose_host_provider on the loaded library's list).
Status host_provider_for(Device device, int device_index, HostProvider* out) {
  std::vector<std::string> available;
  std::string version;
  Status s = ort_available_providers(&available, &version);
  if (!s.ok()) return s;
  return choose_host_provider(device == Device::kGpu ? HostDevice::kGpu : HostDevice::kNpu, device_index, available,
                              version, out);
}

}  // namespace

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + (shape[i] < 0 ? "?" : std::to_string(shape[i]));
  return s + "]";
}

bool shape_compatible(const std::vector<int64_t>& model, const std::vector<int64_t>& expected) {
  if (model.size() != expected.size()) return false;
  for (size_t i = 0; i < model.size(); ++i) {
    if (model[i] >= 0 && expected[i] >= 0 && model[i] != expected[i]) return false;
  }
  return true;
}

constexpr double kRigidTolerance = 1e-3;      // runtime/cameras.py RIGID_TOLERANCE
constexpr float kMaxNormalisedFocal = 50.f;   // runtime/cameras.py: above this K is almost surely in pixels

Status check_camera(const float c2w[16], const float k[9]) {
  for (int i = 0; i < 16; ++i) {
    if (!std::isfinite(c2w[i]))
      return Status(StatusCode::kInvalidArgument, "cam2world: element " + std::to_string(i) + " is not finite");
  }
  double ortho = 0;  // max |R Rᵀ − I|
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) {
      double dot = 0;
      for (int c = 0; c < 3; ++c) dot += double(c2w[i * 4 + c]) * double(c2w[j * 4 + c]);
      ortho = std::max(ortho, std::fabs(dot - (i == j ? 1.0 : 0.0)));
    }
  }
  double last = 0;
  for (int c = 0; c < 4; ++c) last = std::max(last, std::fabs(double(c2w[12 + c]) - (c == 3 ? 1.0 : 0.0)));
  if (ortho > kRigidTolerance || last > 1e-6)
    return Status(StatusCode::kInvalidArgument,
                  "cam2world is not rigid (max |R Rt - I| = " + std::to_string(ortho) + ", last row off by " +
                      std::to_string(last) + "), expected a rigid 4x4 cam2world (orthonormal rotation, last row "
                      "[0, 0, 0, 1])");
  for (int i = 0; i < 9; ++i) {
    if (!std::isfinite(k[i]))
      return Status(StatusCode::kInvalidArgument, "intrinsics: element " + std::to_string(i) + " is not finite");
  }
  if (!(k[0] > 0) || !(k[4] > 0))
    return Status(StatusCode::kInvalidArgument, "intrinsics: fx = " + std::to_string(k[0]) + ", fy = " +
                                                    std::to_string(k[4]) + ", expected positive focal lengths");
  if (k[0] > kMaxNormalisedFocal || std::fabs(k[2]) > 10 || std::fabs(k[5]) > 10)
    return Status(StatusCode::kInvalidArgument,
                  "intrinsics look like pixel units (fx = " + std::to_string(k[0]) +
                      "), expected normalised intrinsics: divide K's first row by the width and the second by the "
                      "height");
  return Status::ok_status();
}

std::vector<std::pair<std::string, int64_t>> static_dims_of(const ModelArtifact& artifact) {
  std::vector<std::pair<std::string, int64_t>> dims;
  for (const TensorSpec& t : artifact.inputs) {
    if (t.dim_names.empty() || t.dim_names[0].empty()) continue;
    const std::pair<std::string, int64_t> pinned{t.dim_names[0], 1};
    if (std::find(dims.begin(), dims.end(), pinned) == dims.end()) dims.push_back(pinned);
  }
  return dims;
}

Status check_model_signature(const ModelArtifact& artifact, const OrtModel& model,
                             const std::vector<ExpectedTensor>& expected, size_t want_inputs,
                             const std::string& input_names) {
  const auto& model_inputs = model.inputs();
  const auto& model_outputs = model.outputs();
  if (model_inputs.size() != want_inputs)
    return Status(StatusCode::kBundleInvalid, artifact.files[0].path + ": the model has " +
                                                  std::to_string(model_inputs.size()) + " inputs, expected " +
                                                  std::to_string(want_inputs) + " (" + input_names + ")");
  for (const auto& e : expected) {
    const auto& tensors = e.input ? model_inputs : model_outputs;
    const TensorInfo* t = nullptr;
    for (const auto& candidate : tensors) {
      if (candidate.name == e.name) t = &candidate;
    }
    if (!t)
      return Status(StatusCode::kBundleInvalid, artifact.files[0].path + ": the model has no " +
                                                    (e.input ? "input '" : "output '") + e.name + "'");
    if (t->type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      return Status(StatusCode::kBundleInvalid, artifact.files[0].path + ": tensor '" + e.name +
                                                    "' is not float32 (ONNX element type " +
                                                    std::to_string(int(t->type)) + ")");
    if (!shape_compatible(t->shape, e.shape))
      return Status(StatusCode::kBundleInvalid, artifact.files[0].path + ": tensor '" + e.name + "' has shape " +
                                                    shape_text(t->shape) + ", the manifest's conventions need " +
                                                    shape_text(e.shape) + " (batch = 1)");
    // The manifest's own record of the tensor must agree too.
    const TensorSpec* spec = e.input ? artifact.input(e.name) : artifact.output(e.name);
    if (!spec || !shape_compatible(spec->shape, e.shape))
      return Status(StatusCode::kBundleInvalid, "manifest artifact " + artifact.name + ": tensor '" + e.name +
                                                    "' is " + (spec ? "listed with shape " + shape_text(spec->shape)
                                                                    : std::string("not listed")) +
                                                    ", expected " + shape_text(e.shape));
  }
  return Status::ok_status();
}

Status Runtime::create(const std::string& bundle_dir, const RuntimeOptions& options, std::unique_ptr<Runtime>* out) {
  if (!out) return Status(StatusCode::kNullPointer, "Runtime::create: out is null");
  // Before the bundle is read and any CUDA work: an int8 decoder never runs on the CUDA provider, nor on a GPU / NPU
  // one (AUTO runs it on the CPU provider; the rasterizer may still be CUDA's).
  const bool host_device = host_array_device(options.device);
  const std::string device_name = kDeviceNames[size_t(options.device)];
  if ((options.device == Device::kCuda || host_device) && cpu_provider_only(options.precision))
    return Status(StatusCode::kInvalidArgument,
                  "precision " + options.precision + " runs on ONNX Runtime's CPU provider only (its decoders are "
                      "made for CPUs), not on device " + device_name + ": pass device CPU, or AUTO (the decoder on "
                      "the CPU, frames on the CUDA rasterizer where it is available), or precision fp32 or fp16 for " +
                      device_name);
  std::unique_ptr<Runtime> rt(new Runtime());
  rt->options_ = options;
  // Which provider runs a GPU / NPU is known before the bundle is read: a library without one fails fast.
  if (host_device) {
    Status chosen = host_provider_for(options.device, options.cuda_device, &rt->host_provider_);
    if (!chosen.ok()) return chosen;
  }
  Status s = open_bundle(bundle_dir, options.verify, &rt->bundle_);
  if (!s.ok()) return s;
  const Manifest& m = rt->bundle_.manifest;
  const std::string& precision = options.precision;
  // The decoder's role first (choose_rasterizer depends on it): "decoder" when the bundle has one of this
  // precision in a format that may run, else "decoder_avatar". Its file is chosen once the rasterizer is known.
  const bool fused_allowed = options.fused_decoders != FusedDecoders::kOff;
  auto decoder_files = [&](const char* role, const ModelArtifact** portable, const ModelArtifact** fused) {
    *portable = m.find(role, "onnx", precision);
    *fused = fused_allowed ? m.find(role, "onnx-ort", precision) : nullptr;
    return *portable || *fused;
  };
  const ModelArtifact *portable = nullptr, *fused = nullptr;
  if (!decoder_files("decoder", &portable, &fused))
    rt->code_folded_in_ = decoder_files("decoder_avatar", &portable, &fused);
  if (!portable && !fused) {
    std::string excluded;
    for (const auto& a : m.artifacts) {
      if (!fused_allowed && a.format == "onnx-ort" && a.precision == precision &&
          (a.role == "decoder" || a.role == "decoder_avatar"))
        excluded += (excluded.empty() ? "" : ", ") + a.files[0].path;
    }
    return Status(StatusCode::kBundleInvalid,
                  "bundle " + bundle_dir + " has no " + precision +
                      " ONNX decoder (role 'decoder' or 'decoder_avatar'); it has: " + m.inventory() +
                      (excluded.empty() ? std::string()
                                        : "; options.fused_decoders OFF excludes its decoders with ONNX Runtime's "
                                          "fused kernels (format onnx-ort: " + excluded +
                                              "): pass fused_decoders AUTO or ON to run them"));
  }
  rt->num_gaussians_ = m.conventions.n_gaussians;
  rt->num_head_tokens_ = m.conventions.n_head_tokens;
  rt->code_dim_ = m.conventions.d_code;
  rt->expression_dim_ = m.conventions.expression_dim;
  if (rt->num_gaussians_ < 0 || rt->num_gaussians_ > (int64_t(1) << 26) || rt->num_head_tokens_ <= 0 ||
      rt->num_head_tokens_ > (1 << 20) || rt->code_dim_ <= 0 || rt->code_dim_ > (1 << 16) ||
      rt->expression_dim_ <= 0 || rt->expression_dim_ > (1 << 16))
    return Status(StatusCode::kBundleInvalid,
                  "manifest.conventions: n_gaussians " + std::to_string(rt->num_gaussians_) + ", n_head_tokens " +
                      std::to_string(rt->num_head_tokens_) + ", d_code " + std::to_string(rt->code_dim_) +
                      ", expression_dim " + std::to_string(rt->expression_dim_) + " out of range");
  // Checked here, before any use: the encoder sizes its photo buffer as 3·S·S (which 2^32 would overflow).
  if (m.conventions.image_size < 1 || m.conventions.image_size > 16384)
    return Status(StatusCode::kBundleInvalid, "manifest.conventions.image_size is " +
                                                  std::to_string(m.conventions.image_size) + ", expected 1 .. 16384");
  // the encoder runs once per avatar: its fp32 file does when the bundle has none of the asked precision
  auto encoder = [&](const char* role) {
    const ModelArtifact* a = m.find(role, "onnx", precision);
    return a ? a : m.find(role, "onnx", "fp32");
  };
  rt->encoder_artifact_ = encoder("encoder");
  rt->encoder_features_artifact_ = encoder("encoder_features");
  if (rt->encoder_features_artifact_) {
    const TensorSpec* features = rt->encoder_features_artifact_->input("features");
    if (features && features->shape.size() == 4) rt->feature_channels_ = features->shape[1];
  }

  // The rasterizer first: with the CUDA one, the decoder session runs on its stream.
  s = rt->choose_rasterizer();
  if (!s.ok()) return s;
  // The fused file first where a frame is bound by kernel launches (the decoder on CUDA: device CUDA, or AUTO with
  // the CUDA rasterizer, the zero-copy path), the portable one first on the CPU (compute-bound: the fused file
  // measured 0.96-0.98x there); either when it is the only one.
  const bool cuda_provider = !cpu_provider_only(precision);
  const bool cuda_path =
      cuda_provider && (options.device == Device::kCuda || (rt->cuda_ && options.device == Device::kAuto));
  const bool fused_first = options.fused_decoders == FusedDecoders::kOn ||
                           (options.fused_decoders == FusedDecoders::kAuto && cuda_path);
  const ModelArtifact* decoder = fused_first ? (fused ? fused : portable) : (portable ? portable : fused);
  rt->decoder_file_ = decoder->files[0].path;
  rt->decoder_precision_ = decoder->precision;
  SessionConfig config;
  config.num_threads = options.num_threads;
  config.try_cuda = options.device == Device::kAuto && cuda_provider;
  config.require_cuda = options.device == Device::kCuda;
  config.cuda_device = options.cuda_device;
  config.cuda_stream = rt->cuda_ ? rt->cuda_->stream() : nullptr;
  config.cuda_graphs = options.cuda_graphs && rt->cuda_;   // zero copy only: device buffers at fixed addresses
  config.precision = decoder->precision;
  config.host_provider = rt->host_provider_;
  if (!rt->host_provider_.name.empty()) config.static_dims = static_dims_of(*decoder);  // one frame a call anyway
  s = OrtModel::open(rt->bundle_.path(decoder->files[0].path), config, &rt->decoder_);
  if (!s.ok()) return s;
  s = rt->check_decoder_signature(*decoder);
  if (!s.ok()) return s;
  s = rt->bind_buffers();
  if (!s.ok()) return s;
  rt->has_code_ = rt->code_folded_in_;
  *out = std::move(rt);
  return Status::ok_status();
}

Runtime::~Runtime() {
  // Sessions before the CUDA path: they reference its stream and device buffers.
  encoder_.reset();
  encoder_features_.reset();
  encoder_device_.reset();  // its buffers are freed through the CUDA library that cuda_ holds
  decoder_.reset();
  cuda_.reset();
}

Status Runtime::choose_rasterizer() {
  const RasterizerChoice choice = options_.rasterizer;
  // Device GPU / NPU with rasterizer AUTO: the CPU rasterizer (the Gaussians come back to the host from any
  // provider but CUDA's; as the Python runtime). Rasterizer CUDA there uploads them, as from the CPU provider.
  const bool cuda_devices = options_.device == Device::kAuto || options_.device == Device::kCuda;
  const bool wanted = choice == RasterizerChoice::kCuda || (choice == RasterizerChoice::kAuto && cuda_devices);
  if (!wanted) return Status::ok_status();
  const bool required = choice == RasterizerChoice::kCuda || options_.device == Device::kCuda;
  // The device copy of the avatar code is only needed when the decoder runs on CUDA; the provider is
  // known after the session opens, so it is allocated whenever ONNX Runtime may pick CUDA.
  const bool decoder_may_use_cuda = cuda_devices && !cpu_provider_only(options_.precision);
  const int64_t code_floats = (decoder_may_use_cuda && !code_folded_in_) ? num_head_tokens_ * code_dim_ : 0;
  Status s = CudaFrames::open(options_.cuda_device, num_gaussians_, expression_dim_, code_floats, &cuda_);
  if (s.ok()) return s;
  cuda_.reset();
  if (!required) return Status::ok_status();              // AUTO: the CPU rasterizer
  if (s.code() != StatusCode::kUnavailable) return s;     // a failing device, not a missing one
  const std::string who = choice == RasterizerChoice::kCuda ? "rasterizer CUDA was requested"
                                                            : "device CUDA was requested (rasterizer AUTO)";
  return Status(StatusCode::kUnavailable, who + " but the CUDA rasterizer cannot run: " + s.message() +
                                              (choice == RasterizerChoice::kCuda
                                                   ? std::string()
                                                   : std::string("; pass rasterizer CPU to rasterize on the CPU")));
}

uint32_t Runtime::encoders() const {
  return (encoder_artifact_ ? kEncoderImage : 0u) | (encoder_features_artifact_ ? kEncoderFeatures : 0u);
}

Status Runtime::check_decoder_signature(const ModelArtifact& artifact) {
  const int64_t g = num_gaussians_;
  std::vector<ExpectedTensor> expected;
  if (!code_folded_in_) expected.push_back({"code", {1, num_head_tokens_, code_dim_}, true});
  expected.push_back({"expressions", {1, expression_dim_}, true});
  for (const auto& o : kGaussianOutputs) {
    expected.push_back({o.name, o.width ? std::vector<int64_t>{1, g, o.width} : std::vector<int64_t>{1, g}, false});
  }
  return check_model_signature(artifact, *decoder_, expected, code_folded_in_ ? 1 : 2,
                               code_folded_in_ ? "expressions" : "code, expressions");
}

Status Runtime::bind_buffers() {
  const size_t g = size_t(num_gaussians_);
  try {
    code_.assign(size_t(num_head_tokens_ * code_dim_), 0.f);
    expression_.assign(size_t(expression_dim_), 0.f);
    if (cuda_) {
      host_gaussians_ = cuda_->host_gaussians();
    } else {
      gaussians_.assign(size_t(GaussianLayout::total_floats(num_gaussians_)), 0.f);
      host_gaussians_ = gaussians_.data();
    }
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory, "out of memory for the decoder buffers of " + std::to_string(g) +
                                                " Gaussians");
  }
  const int64_t gi = num_gaussians_;
  // Zero copy (decoder on CUDA, CUDA rasterizer): the graph reads and writes the rasterizer's device buffers.
  const bool device = zero_copy();
  const Memory memory = device ? Memory::kCuda : Memory::kHost;
  Status s;
  if (!code_folded_in_) {
    s = decoder_->bind_input("code", device ? cuda_->device_code() : code_.data(), {1, num_head_tokens_, code_dim_},
                             memory);
    if (!s.ok()) return s;
  }
  s = decoder_->bind_input("expressions", device ? cuda_->device_expression() : expression_.data(),
                           {1, expression_dim_}, memory);
  if (!s.ok()) return s;
  float* outputs = device ? cuda_->device_gaussians() : host_gaussians_;
  for (int i = 0; i < 5; ++i) {
    const auto& o = kGaussianOutputs[i];
    s = decoder_->bind_output(o.name, outputs + GaussianLayout::offset(i, gi),
                              o.width ? std::vector<int64_t>{1, gi, o.width} : std::vector<int64_t>{1, gi}, memory);
    if (!s.ok()) return s;
  }
  return Status::ok_status();
}

Camera Runtime::default_camera() const {
  Camera cam;
  const Manifest& m = bundle_.manifest;
  if (m.has_avatar) {
    std::memcpy(cam.cam2world, m.avatar.cam2world, sizeof(cam.cam2world));
    std::memcpy(cam.intrinsics, m.avatar.intrinsics, sizeof(cam.intrinsics));
  } else {
    std::memcpy(cam.cam2world, kDemoCam2World, sizeof(cam.cam2world));
    std::memcpy(cam.intrinsics, kDemoIntrinsics, sizeof(cam.intrinsics));
  }
  cam.width = cam.height = int32_t(std::max<int64_t>(1, std::min<int64_t>(m.conventions.image_size, 16384)));
  return cam;
}

Status Runtime::set_avatar_code(const float* code, int64_t count) {
  if (code_folded_in_)
    return Status(StatusCode::kInvalidArgument,
                  "this bundle's decoder has its avatar code folded in (role decoder_avatar); it takes no code");
  if (!code) return Status(StatusCode::kNullPointer, "code: got a null pointer, expected [R², D] float32");
  const int64_t want = num_head_tokens_ * code_dim_;
  if (count != want)
    return Status(StatusCode::kInvalidSize, "code: got " + std::to_string(count) + " floats, expected R²·D = " +
                                                std::to_string(num_head_tokens_) + "·" + std::to_string(code_dim_) +
                                                " = " + std::to_string(want));
  for (int64_t i = 0; i < count; ++i) {
    if (!std::isfinite(code[i]))
      return Status(StatusCode::kInvalidArgument, "code: element " + std::to_string(i) + " is not finite");
  }
  frame_decoded_ = false;  // the decoded frame is the old code's
  if (zero_copy()) {
    Status s = cuda_->upload_code(code);
    if (!s.ok()) {
      has_code_ = false;  // the device copy may be half written
      return s;
    }
  }
  if (code != code_.data()) std::copy(code, code + count, code_.begin());
  has_code_ = true;
  return Status::ok_status();
}

Status Runtime::get_avatar_code(float* out, int64_t count) const {
  if (code_folded_in_)
    return Status(StatusCode::kNoAvatarCode, "this bundle's decoder has its avatar code folded in (role "
                                             "decoder_avatar); read the bundle's avatar_code.npy instead");
  if (!has_code_)
    return Status(StatusCode::kNoAvatarCode,
                  "no avatar code: call set_avatar_code / load_avatar_code / create_avatar_code first");
  if (!out) return Status(StatusCode::kNullPointer, "code: got a null pointer, expected room for [R², D] float32");
  const int64_t want = num_head_tokens_ * code_dim_;
  if (count != want)
    return Status(StatusCode::kInvalidSize, "code: room for " + std::to_string(count) + " floats, expected R²·D = " +
                                                std::to_string(want));
  std::copy(code_.begin(), code_.end(), out);
  return Status::ok_status();
}

Status Runtime::load_avatar_code(const std::string& npy_path) {
  std::string path = npy_path;
  if (path.empty()) {
    if (!bundle_.manifest.has_avatar)
      return Status(StatusCode::kNoAvatarCode, "bundle has no avatar code (export with --avatar PHOTO)");
    Status s = verify_file(bundle_.root, bundle_.manifest.avatar.code, options_.verify == Verify::kFull);
    if (!s.ok()) return s;
    path = bundle_.path(bundle_.manifest.avatar.code.path);
  }
  NpyArray array;
  Status s = read_npy_float32(path, &array);
  if (!s.ok()) return s;
  // Accepted layouts: (R², 1, D) as written by the exporter, (1, R², D), (R², D): the same bytes.
  const auto& sh = array.shape;
  const int64_t r2 = num_head_tokens_, d = code_dim_;
  const bool ok = (sh.size() == 3 && sh[0] == r2 && sh[1] == 1 && sh[2] == d) ||
                  (sh.size() == 3 && sh[0] == 1 && sh[1] == r2 && sh[2] == d) ||
                  (sh.size() == 2 && sh[0] == r2 && sh[1] == d);
  if (!ok) {
    return Status(StatusCode::kInvalidSize, path + ": avatar code of shape " + shape_text(sh) + ", expected (" +
                                                std::to_string(r2) + ", 1, " + std::to_string(d) + ")");
  }
  return set_avatar_code(array.values.data(), int64_t(array.values.size()));
}

Status Runtime::check_expression(const float* expression, int64_t count) const {
  if (!expression) return Status(StatusCode::kNullPointer, "expression: got a null pointer, expected float32 [135]");
  if (count != expression_dim_)
    return Status(StatusCode::kInvalidSize, "expression: got " + std::to_string(count) + " floats, expected " +
                                                std::to_string(expression_dim_));
  if (!has_code_)
    return Status(StatusCode::kNoAvatarCode,
                  "no avatar code: call set_avatar_code / load_avatar_code / create_avatar_code before decode or "
                  "render");
  for (int64_t i = 0; i < count; ++i) {
    if (!std::isfinite(expression[i]))
      return Status(StatusCode::kInvalidArgument, "expression: element " + std::to_string(i) + " is not finite");
  }
  return Status::ok_status();
}

// The error of a frame whose decoder produced `count` non-finite values (counted on the GPU).
static Status nonfinite_gaussians(uint32_t count) {
  return Status(StatusCode::kModelError, "the decoder produced " + std::to_string(count) +
                                             " non-finite Gaussian attributes (corrupted model file or out-of-range "
                                             "inputs)");
}

Status Runtime::check_host_gaussians() const {
  // A corrupted model can load and still produce garbage: never hand non-finite Gaussians on.
  const size_t n = size_t(GaussianLayout::total_floats(num_gaussians_));
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(host_gaussians_[i]))
      return Status(StatusCode::kModelError, "the decoder produced non-finite Gaussian attributes "
                                             "(corrupted model file or out-of-range inputs)");
  }
  return Status::ok_status();
}

Status Runtime::decode(const float* expression, int64_t count, GaussiansView* out) {
  frame_decoded_ = false;  // any decode, failed ones included, ends the last frame's views
  Status s = check_expression(expression, count);
  if (!s.ok()) return s;
  if (!out) return Status(StatusCode::kNullPointer, "out: got a null pointer");
  if (zero_copy()) {
    s = cuda_->wait();  // the staging block may still be read by a queued copy
    if (!s.ok()) return s;
    std::copy(expression, expression + count, cuda_->host_stage() + CudaFrames::kCameraFloats);
    s = cuda_->upload_stage();
    if (s.ok()) s = cuda_->wait();  // see render_cuda: the inputs are on the device before ONNX Runtime starts
    if (s.ok()) s = decoder_->run();
    if (s.ok()) s = cuda_->download_gaussians();
  } else {
    if (cuda_) s = cuda_->wait();  // a queued upload may still read the page-locked Gaussians
    if (!s.ok()) return s;
    std::copy(expression, expression + count, expression_.begin());
    s = decoder_->run();
  }
  if (!s.ok()) return s;
  s = check_host_gaussians();
  if (!s.ok()) return s;
  const int64_t g = num_gaussians_;
  out->num_gaussians = g;
  out->means = host_gaussians_ + GaussianLayout::offset(0, g);
  out->quats = host_gaussians_ + GaussianLayout::offset(1, g);
  out->scales = host_gaussians_ + GaussianLayout::offset(2, g);
  out->opacities = host_gaussians_ + GaussianLayout::offset(3, g);
  out->sh0 = host_gaussians_ + GaussianLayout::offset(4, g);
  frame_decoded_ = true;
  return Status::ok_status();
}

Status Runtime::prepare_camera(const Camera& camera, float viewmat[16], float k[9]) const {
  if (camera.width < 1 || camera.height < 1 || camera.width > 16384 || camera.height > 16384)
    return Status(StatusCode::kInvalidSize, "camera: width x height is " + std::to_string(camera.width) + " x " +
                                                std::to_string(camera.height) + ", expected 1 .. 16384 each");
  Status checked = check_camera(camera.cam2world, camera.intrinsics);
  if (!checked.ok()) return Status(checked.code(), "camera." + checked.message());
  for (float v : camera.background) {
    if (!(v >= 0.f && v <= 1.f))   // NaN fails too
      return Status(StatusCode::kInvalidArgument, "camera.background: " + std::to_string(v) +
                                                      ", expected RGB in [0, 1] (divide 0-255 values by 255)");
  }
  // world2cam = [Rᵀ | -Rᵀ t] of the rigid cam2world; pixel K = normalised K rows scaled by W, H.
  std::fill(viewmat, viewmat + 16, 0.f);
  const float* c2w = camera.cam2world;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) viewmat[i * 4 + j] = c2w[j * 4 + i];
    viewmat[i * 4 + 3] = -(c2w[0 * 4 + i] * c2w[3] + c2w[1 * 4 + i] * c2w[7] + c2w[2 * 4 + i] * c2w[11]);
  }
  viewmat[15] = 1.f;
  for (int j = 0; j < 3; ++j) {
    k[j] = camera.intrinsics[j] * float(camera.width);
    k[3 + j] = camera.intrinsics[3 + j] * float(camera.height);
    k[6 + j] = camera.intrinsics[6 + j];
  }
  CameraBuffers cameras;
  cameras.num_cameras = 1;
  cameras.viewmats = viewmat;
  cameras.intrinsics = k;
  Status s = validate_intrinsics_on_host(cameras, 1);
  if (!s.ok()) return Status(s.code(), "camera.intrinsics: " + s.message());
  return Status::ok_status();
}

Status Runtime::render(const float* expression, int64_t count, const Camera& camera, FrameView* out) {
  return render_fields(expression, count, camera, options_.frame_outputs, out);
}

Status Runtime::render_fields(const float* expression, int64_t count, const Camera& camera, uint32_t fields,
                              FrameView* out) {
  frame_decoded_ = false;  // any render, failed ones included, ends the last frame's views
  if (!out) return Status(StatusCode::kNullPointer, "out: got a null pointer");
  if (cuda_) return render_cuda(expression, count, camera, fields, out, nullptr);
  float viewmat[16], k[9];
  Status s = prepare_camera(camera, viewmat, k);
  if (!s.ok()) return s;
  GaussiansView g;
  s = decode(expression, count, &g);
  if (s.ok()) s = cpu_frame(camera, viewmat, k, fields, out);
  frame_decoded_ = s.ok();
  return s;
}

Status Runtime::cpu_frame(const Camera& camera, const float viewmat[16], const float k[9], uint32_t fields,
                          FrameView* out) {
  const int64_t n = num_gaussians_;
  GaussiansView g;
  g.num_gaussians = n;
  g.means = host_gaussians_ + GaussianLayout::offset(0, n);
  g.quats = host_gaussians_ + GaussianLayout::offset(1, n);
  g.scales = host_gaussians_ + GaussianLayout::offset(2, n);
  g.opacities = host_gaussians_ + GaussianLayout::offset(3, n);
  g.sh0 = host_gaussians_ + GaussianLayout::offset(4, n);
  const size_t pixels = size_t(camera.width) * size_t(camera.height);
  try {
    if (image_.size() != pixels * 3) {  // only when the frame size changes
      image_.resize(pixels * 3);
      alpha_.resize(pixels);
      depth_.resize(pixels);
      rgba_.resize(pixels * 4);
    }
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory, "out of memory for a " + std::to_string(camera.width) + "x" +
                                                std::to_string(camera.height) + " frame");
  }
  Status s = rasterize_on_cpu(g, viewmat, k, camera, image_.data(), alpha_.data(), depth_.data());
  if (!s.ok()) return s;

  auto to_byte = [](float v) { return uint8_t(std::lround(std::min(std::max(v, 0.f), 1.f) * 255.f)); };
  for (size_t p = 0; p < pixels; ++p) {
    rgba_[4 * p + 0] = to_byte(image_[3 * p + 0]);
    rgba_[4 * p + 1] = to_byte(image_[3 * p + 1]);
    rgba_[4 * p + 2] = to_byte(image_[3 * p + 2]);
    rgba_[4 * p + 3] = to_byte(alpha_[p]);
  }
  out->width = camera.width;
  out->height = camera.height;
  out->rgba = fields & kFrameRgba8 ? rgba_.data() : nullptr;
  out->rgb = fields & kFrameRgb ? image_.data() : nullptr;
  out->alpha = fields & kFrameAlpha ? alpha_.data() : nullptr;
  out->depth = fields & kFrameDepth ? depth_.data() : nullptr;
  return Status::ok_status();
}

Status Runtime::rasterize_on_cpu(const GaussiansView& g, const float viewmat[16], const float k[9],
                                 const Camera& camera, float* rgb, float* alpha, float* depth) {
  GaussianBuffers gaussians;
  gaussians.num_batches = 1;
  gaussians.num_gaussians = g.num_gaussians;
  gaussians.means = g.means;
  gaussians.quats = g.quats;
  gaussians.scales = g.scales;
  gaussians.opacities = g.opacities;
  gaussians.sh0 = g.sh0;
  CameraBuffers cameras;
  cameras.num_cameras = 1;
  cameras.viewmats = viewmat;
  cameras.intrinsics = k;
  cameras.backgrounds = camera.background;
  RasterSettings settings;
  settings.width = camera.width;
  settings.height = camera.height;
  settings.num_threads = options_.num_threads;
  return rasterizer_.render(gaussians, cameras, settings, RasterOutputs{rgb, alpha, depth});
}

Status Runtime::render_device(const float* expression, int64_t count, const Camera& camera, DeviceFrameView* out) {
  frame_decoded_ = false;  // any render, failed ones included, ends the last frame's views
  if (!out) return Status(StatusCode::kNullPointer, "out: got a null pointer");
  if (!cuda_)
    return Status(StatusCode::kUnavailable,
                  "render_device needs the CUDA rasterizer; this runtime rasterizes on the CPU (create it with "
                  "rasterizer CUDA, or device AUTO / CUDA on a machine with a CUDA device and libflexavatar_cuda)");
  return render_cuda(expression, count, camera, 0, nullptr, out);
}

Status Runtime::render_cuda(const float* expression, int64_t count, const Camera& camera, uint32_t fields,
                            FrameView* host, DeviceFrameView* device) {
  const bool to_host = host != nullptr;  // else the frame stays on the device (fields unused)
  frame_decoded_ = false;  // any render, failed ones included, ends the last frame's views
  float viewmat[16], k[9];
  Status s = prepare_camera(camera, viewmat, k);
  if (!s.ok()) return s;
  s = check_expression(expression, count);
  if (!s.ok()) return s;
  // Nothing queued may still read the staging blocks before they are rewritten (normally already idle:
  // the previous forward pass waited for its intersection count).
  s = cuda_->wait();
  if (!s.ok()) return s;
  s = cuda_->ensure_frame(camera.width, camera.height);
  if (!s.ok()) return s;
  stage_camera(camera, viewmat, k);
  if (zero_copy()) {
    // Expression up with the camera; the decoder runs on the stream into the device Gaussians.
    std::copy(expression, expression + count, cuda_->host_stage() + CudaFrames::kCameraFloats);
    s = cuda_->upload_stage();
    // Waited for (a few hundred bytes): a graph input that ONNX Runtime copies to the host for a CPU-placed
    // node is copied when run() binds it again (OrtModel::run), through a synchronous cudaMemcpy on the
    // legacy default stream, which is not ordered after this non-blocking stream. The graph itself is still
    // only queued (it runs on this stream).
    if (s.ok()) s = cuda_->wait();
    if (s.ok()) s = decoder_->run();
    // A host frame's count of non-finite values comes back with its pixels (no wait here); a device frame has
    // no such read-back, so it waits for the count before it is handed out.
    uint32_t bad = 0;
    if (s.ok()) s = to_host ? cuda_->queue_nonfinite_count() : cuda_->count_nonfinite_gaussians(&bad);
    if (!s.ok()) return s;
    if (bad) return nonfinite_gaussians(bad);
  } else {
    std::copy(expression, expression + count, expression_.begin());
    s = decoder_->run();  // on the CPU, into the page-locked host block
    if (s.ok()) s = check_host_gaussians();
    if (s.ok()) s = cuda_->upload_stage();
    if (s.ok()) s = cuda_->upload_gaussians();
    if (!s.ok()) return s;
  }
  s = cuda_frame(camera, fields, /*check_nonfinite=*/true, host, device);
  frame_decoded_ = s.ok();
  return s;
}

void Runtime::stage_camera(const Camera& camera, const float viewmat[16], const float k[9]) {
  float* stage = cuda_->host_stage();
  std::copy(viewmat, viewmat + 16, stage);
  std::copy(k, k + 9, stage + 16);
  std::copy(camera.background, camera.background + 3, stage + 25);
}

Status Runtime::cuda_frame(const Camera& camera, uint32_t fields, bool check_nonfinite, FrameView* host,
                           DeviceFrameView* device) {
  const bool to_host = host != nullptr;
  // A host frame's sort is sync-free (after the first frame): its intersection count comes back with its pixels,
  // and a frame that outgrew the capacity is rendered again. A device frame has no read-back: sized exactly.
  Status s = cuda_->rasterize(camera.width, camera.height, /*exact=*/!to_host);
  if (!s.ok()) return s;
  if (!to_host) {
    *device = cuda_->device_frame();
    return Status::ok_status();
  }
  HostFrame frame;
  s = cuda_->download_frame(&frame, fields);
  if (!s.ok()) return s;
  if (check_nonfinite && zero_copy() && cuda_->counters().nonfinite)
    return nonfinite_gaussians(cuda_->counters().nonfinite);
  if (cuda_->frame_incomplete()) {
    s = cuda_->rasterize(camera.width, camera.height, /*exact=*/true);
    if (s.ok()) s = cuda_->download_frame(&frame, fields);
    if (!s.ok()) return s;
  }
  host->width = camera.width;
  host->height = camera.height;
  host->rgba = frame.rgba;
  host->rgb = frame.rgb;
  host->alpha = frame.alpha;
  host->depth = frame.depth;
  return Status::ok_status();
}

Status Runtime::check_frame_decoded() const {
  if (frame_decoded_) return Status::ok_status();
  return Status(StatusCode::kNoFrame,
                "no decoded frame to view: render_view shows the Gaussians of the last successful decode or render "
                "of the current avatar code (set / load / create_avatar_code and check_numerics replace them)");
}

Status Runtime::render_view(const Camera& camera, FrameView* out) {
  if (!out) return Status(StatusCode::kNullPointer, "out: got a null pointer");
  Status s = check_frame_decoded();
  if (!s.ok()) return s;
  float viewmat[16], k[9];
  s = prepare_camera(camera, viewmat, k);
  if (!s.ok()) return s;
  if (!cuda_) return cpu_frame(camera, viewmat, k, options_.frame_outputs, out);
  return render_view_cuda(camera, viewmat, k, out, nullptr);
}

Status Runtime::render_view_device(const Camera& camera, DeviceFrameView* out) {
  if (!out) return Status(StatusCode::kNullPointer, "out: got a null pointer");
  if (!cuda_)
    return Status(StatusCode::kUnavailable, "render_view_device needs the CUDA rasterizer; this runtime rasterizes "
                                            "on the CPU (use render_view)");
  Status s = check_frame_decoded();
  if (!s.ok()) return s;
  float viewmat[16], k[9];
  s = prepare_camera(camera, viewmat, k);
  if (!s.ok()) return s;
  return render_view_cuda(camera, viewmat, k, nullptr, out);
}

Status Runtime::render_view_cuda(const Camera& camera, const float viewmat[16], const float k[9], FrameView* host,
                                 DeviceFrameView* device) {
  Status s = cuda_->wait();  // a queued copy may still read the staging block
  if (s.ok()) s = cuda_->ensure_frame(camera.width, camera.height);
  if (!s.ok()) return s;
  stage_camera(camera, viewmat, k);
  s = cuda_->upload_camera();  // not the expression: in zero copy that is the decoder's (graph's) input
  // The CPU decoder's Gaussians reach the device with a render, not with a decode: uploaded again here.
  if (s.ok() && !zero_copy()) s = cuda_->upload_gaussians();
  if (!s.ok()) return s;
  return cuda_frame(camera, options_.frame_outputs, /*check_nonfinite=*/false, host, device);
}

}  // namespace runtime
}  // namespace flexavatar
