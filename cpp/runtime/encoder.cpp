// Runtime::create_avatar_code: photo (+ camera, + DINOv2 features for bundles exported without DINOv2) →
// the bundle's encoder graph → the avatar code. The same checks and encoder choice as
// flexavatar.runtime.Runtime.create_avatar (runtime/runtime.py, runtime/images.py, runtime/cameras.py).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "runtime.h"
#include "runtime_internal.h"

namespace flexavatar {
namespace runtime {
namespace {

constexpr float kRangeSlack = 1e-3f;          // runtime/images.py RANGE_SLACK: clipped, not rejected
constexpr int64_t kMaxFeatureSide = 4096;

}  // namespace

Status Runtime::open_encoder(bool with_features, OrtModel** out) {
  std::unique_ptr<OrtModel>& slot = with_features ? encoder_features_ : encoder_;
  if (slot) {
    *out = slot.get();
    return Status::ok_status();
  }
  const ModelArtifact* chosen = with_features ? encoder_features_artifact_ : encoder_artifact_;
  const int64_t s = image_size();  // 1 .. 16384, checked by Runtime::create
  // The decoder's execution provider: CUDA only if the decoder really got it; a GPU / NPU one as the decoder's.
  SessionConfig config;
  config.num_threads = options_.num_threads;
  config.require_cuda = decoder_->on_cuda();
  config.cuda_device = options_.cuda_device;
  config.precision = chosen->precision;
  config.host_provider = host_provider_;  // device GPU / NPU: the decoder's provider too
  if (!host_provider_.name.empty()) config.static_dims = static_dims_of(*chosen);  // one photo a call
  // With the decoder's CUDA graphs, a graph too (EncoderDevice in runtime.h), on the rasterizer's stream; as for the
  // decoder (and in Python), a graph ONNX Runtime refuses to capture (e.g. a node placed on the CPU) is an error.
  const bool graphs = cuda_graphs();
  config.cuda_stream = graphs ? cuda_->stream() : nullptr;
  config.cuda_graphs = graphs;
  std::unique_ptr<OrtModel> model;
  Status st = OrtModel::open(bundle_.path(chosen->files[0].path), config, &model);
  if (!st.ok() && graphs)
    return Status(st.code(), st.message() + " (the encoder as a CUDA graph, options.cuda_graphs = 1; with "
                                            "cuda_graphs = 0 it runs node by node)");
  if (!st.ok() && st.code() == StatusCode::kUnavailable && !host_provider_.name.empty()) {
    // As the Python runtime (engines.py _open_role): the encoder runs once per avatar, and an NPU's compiler may not
    // take it (DINOv2, dynamic shapes): the CPU provider runs its fp32 file (the fp16 one was chosen for the device),
    // the frames stay on the device. info.encoder_provider and info.encoder_fallback say so.
    const ModelArtifact* fp32 = bundle_.manifest.find(chosen->role, "onnx", "fp32");
    if (fp32) chosen = fp32;
    encoder_fallback_ = st.message();
    config.host_provider = HostProvider{};
    config.static_dims.clear();
    config.precision = chosen->precision;
    st = OrtModel::open(bundle_.path(chosen->files[0].path), config, &model);
    if (!st.ok()) encoder_fallback_.clear();
  }
  if (!st.ok()) return st;
  const ModelArtifact& artifact = *chosen;
  std::vector<ExpectedTensor> expected = {{"image", {1, 3, s, s}, true},
                                          {"cam2world", {1, 4, 4}, true},
                                          {"intrinsics", {1, 3, 3}, true},
                                          {"code", {1, num_head_tokens_, code_dim_}, false}};
  if (with_features) expected.push_back({"features", {1, feature_channels_, -1, -1}, true});
  st = check_model_signature(artifact, *model, expected, with_features ? 4 : 3,
                             with_features ? "image, cam2world, intrinsics, features" : "image, cam2world, intrinsics");
  if (!st.ok()) return st;
  if (with_features && feature_channels_ < 0) {  // dynamic in the manifest: the graph may still fix it
    for (const auto& t : model->inputs()) {
      if (t.name == "features" && t.shape.size() == 4) feature_channels_ = t.shape[1];
    }
  }
  if (encoder_image_.empty()) {  // shared by both encoder graphs; allocated on first use
    encoder_image_.assign(size_t(3 * s * s), 0.f);
    encoder_cam2world_.assign(16, 0.f);
    encoder_intrinsics_.assign(9, 0.f);
    encoder_code_.assign(size_t(num_head_tokens_ * code_dim_), 0.f);
  }
  if (model->cuda_graphs()) {
    st = encoder_device_buffers();
    if (!st.ok()) return st;
    const EncoderDevice& d = *encoder_device_;
    st = model->bind_input("image", d.image.floats(), {1, 3, s, s}, Memory::kCuda);
    if (st.ok()) st = model->bind_input("cam2world", d.cam2world.floats(), {1, 4, 4}, Memory::kCuda);
    if (st.ok()) st = model->bind_input("intrinsics", d.intrinsics.floats(), {1, 3, 3}, Memory::kCuda);
    if (st.ok()) st = model->bind_output("code", d.code.floats(), {1, num_head_tokens_, code_dim_}, Memory::kCuda);
  } else {
    st = model->bind_input("image", encoder_image_.data(), {1, 3, s, s});
    if (st.ok()) st = model->bind_input("cam2world", encoder_cam2world_.data(), {1, 4, 4});
    if (st.ok()) st = model->bind_input("intrinsics", encoder_intrinsics_.data(), {1, 3, 3});
    if (st.ok()) st = model->bind_output("code", encoder_code_.data(), {1, num_head_tokens_, code_dim_});
  }
  if (!st.ok()) return st;
  (with_features ? encoder_features_artifact_ : encoder_artifact_) = chosen;  // the file numerics checks
  encoder_provider_ = model->provider();
  slot = std::move(model);
  *out = slot.get();
  return Status::ok_status();
}

Status Runtime::create_avatar_code(const EncoderInput& in) {
  if (code_folded_in_)
    return Status(StatusCode::kInvalidArgument,
                  "this bundle's decoder has its avatar code folded in (role decoder_avatar); it takes no code");
  const bool with_features = in.features != nullptr;
  const std::string no_encoder = "this bundle has no fp32 ONNX encoder (it has: " + bundle_.manifest.inventory() +
                                 "); load a saved avatar code instead (load_avatar_code) or re-export";
  if (with_features && !encoder_features_artifact_) {
    if (encoder_artifact_)
      return Status(StatusCode::kInvalidArgument,
                    "features: given, but this bundle's encoder computes the DINOv2 features itself (role "
                    "'encoder'); pass features = NULL");
    return Status(StatusCode::kUnavailable, no_encoder);
  }
  if (!with_features && !encoder_artifact_) {
    if (encoder_features_artifact_)
      return Status(StatusCode::kUnavailable,
                    "this bundle was exported without DINOv2 weights: its encoder (role 'encoder_features') takes "
                    "DINOv2 features as an input. Pass features [C, h, w] (DINOv2 ViT-B/14-reg patch features of the "
                    "photo" +
                        (feature_channels_ > 0 ? ", C = " + std::to_string(feature_channels_) : std::string()) +
                        "), or re-export with flexavatar-export --dinov2 dinov2_vitb14_reg4_pretrain.pth to encode "
                        "photos directly");
    return Status(StatusCode::kUnavailable, no_encoder);
  }

  // The photo: [3, S, S], finite, in [0, 1] up to the slack (which is clipped, as runtime/images.py does).
  const int64_t s = image_size();  // 1 .. 16384, checked by Runtime::create
  const int64_t want = 3 * s * s;
  if (!in.image)
    return Status(StatusCode::kNullPointer, "image: got a null pointer, expected [3, " + std::to_string(s) + ", " +
                                                std::to_string(s) + "] float32 in [0, 1]");
  if (in.image_count != want)
    return Status(StatusCode::kInvalidSize, "image: got " + std::to_string(in.image_count) +
                                                " floats, expected 3·S·S = 3·" + std::to_string(s) + "·" +
                                                std::to_string(s) + " = " + std::to_string(want) +
                                                " (channel-major RGB of this bundle's encoder size)");
  for (int64_t i = 0; i < want; ++i) {
    const float v = in.image[i];
    if (!std::isfinite(v))
      return Status(StatusCode::kInvalidArgument, "image: element " + std::to_string(i) +
                                                      " is not finite, expected values in [0, 1]");
    if (v < -kRangeSlack || v > 1.f + kRangeSlack)
      return Status(StatusCode::kInvalidArgument, "image: element " + std::to_string(i) + " is " + std::to_string(v) +
                                                      ", expected values in [0, 1] (divide 0-255 data by 255)");
  }
  Status st = check_camera(in.cam2world, in.intrinsics);
  if (!st.ok()) return st;
  std::vector<int64_t> feature_shape;
  if (with_features) {
    const std::string expected = "expected DINOv2 features [" +
                                 (feature_channels_ > 0 ? std::to_string(feature_channels_) : std::string("C")) +
                                 ", h, w] with h, w in 1 .. " + std::to_string(kMaxFeatureSide);
    if (in.feature_channels < 1 || in.feature_channels > (1 << 16) ||
        (feature_channels_ > 0 && in.feature_channels != feature_channels_) || in.feature_height < 1 ||
        in.feature_height > kMaxFeatureSide || in.feature_width < 1 || in.feature_width > kMaxFeatureSide)
      return Status(StatusCode::kInvalidSize, "features: shape [" + std::to_string(in.feature_channels) + ", " +
                                                  std::to_string(in.feature_height) + ", " +
                                                  std::to_string(in.feature_width) + "], " + expected);
    feature_shape = {1, in.feature_channels, in.feature_height, in.feature_width};
    const int64_t n = in.feature_channels * in.feature_height * in.feature_width;
    for (int64_t i = 0; i < n; ++i) {
      if (!std::isfinite(in.features[i]))
        return Status(StatusCode::kInvalidArgument, "features: element " + std::to_string(i) + " is not finite");
    }
  }

  OrtModel* model = nullptr;
  st = open_encoder(with_features, &model);
  if (!st.ok()) return st;
  for (int64_t i = 0; i < want; ++i) encoder_image_[size_t(i)] = std::min(std::max(in.image[i], 0.f), 1.f);
  std::copy(in.cam2world, in.cam2world + 16, encoder_cam2world_.begin());
  std::copy(in.intrinsics, in.intrinsics + 9, encoder_intrinsics_.begin());
  if (model->cuda_graphs()) {
    st = run_encoder_graph(model, feature_shape, in.features);
  } else {
    if (with_features) {
      const size_t n = size_t(in.feature_channels * in.feature_height * in.feature_width);
      if (feature_shape != bound_feature_shape_) {  // reallocated and rebound only when the shape changes
        encoder_features_buffer_.resize(n);
        st = model->bind_input("features", encoder_features_buffer_.data(), feature_shape);
        if (!st.ok()) {
          bound_feature_shape_.clear();
          return st;
        }
        bound_feature_shape_ = feature_shape;
      }
      std::copy(in.features, in.features + n, encoder_features_buffer_.begin());
    }
    st = model->run();
  }
  if (!st.ok()) return st;
  for (size_t i = 0; i < encoder_code_.size(); ++i) {
    if (!std::isfinite(encoder_code_[i]))
      return Status(StatusCode::kModelError, "the encoder produced a non-finite avatar code (element " +
                                                 std::to_string(i) + "; corrupted model file or out-of-range inputs)");
  }
  return set_avatar_code(encoder_code_.data(), int64_t(encoder_code_.size()));
}

Status Runtime::encoder_device_buffers() {
  if (encoder_device_) return Status::ok_status();
  auto d = std::make_unique<EncoderDevice>();
  const size_t f = sizeof(float);
  Status st = cuda_->allocate_device(encoder_image_.size() * f, &d->image);
  if (st.ok()) st = cuda_->allocate_device(16 * f, &d->cam2world);
  if (st.ok()) st = cuda_->allocate_device(9 * f, &d->intrinsics);
  if (st.ok()) st = cuda_->allocate_device(encoder_code_.size() * f, &d->code);
  if (!st.ok()) return st;
  encoder_device_ = std::move(d);
  return Status::ok_status();
}

Status Runtime::run_encoder_graph(OrtModel* model, const std::vector<int64_t>& feature_shape, const float* features) {
  EncoderDevice& d = *encoder_device_;
  const size_t f = sizeof(float);
  // The host staging (clipped photo, camera) is pageable: each copy returns once the data is on its way.
  Status st = cuda_->copy(d.image.data(), encoder_image_.data(), encoder_image_.size() * f, "uploading the photo");
  if (st.ok()) st = cuda_->copy(d.cam2world.data(), encoder_cam2world_.data(), 16 * f, "uploading cam2world");
  if (st.ok()) st = cuda_->copy(d.intrinsics.data(), encoder_intrinsics_.data(), 9 * f, "uploading the intrinsics");
  if (!st.ok()) return st;
  int graph_id = 0;
  if (!feature_shape.empty()) {
    size_t n = 1;
    for (int64_t dim : feature_shape) n *= size_t(dim);
    std::unique_ptr<FeatureGraph>& slot = d.features[feature_shape];
    if (!slot) {  // a new feature shape: a buffer and a graph of its own
      auto graph = std::make_unique<FeatureGraph>();
      graph->graph_id = int(d.features.size()) - 1;
      st = cuda_->allocate_device(n * f, &graph->features);
      if (!st.ok()) {
        d.features.erase(feature_shape);
        return st;
      }
      slot = std::move(graph);
    }
    if (feature_shape != bound_feature_shape_) {
      st = model->bind_input("features", slot->features.floats(), feature_shape, Memory::kCuda);
      if (!st.ok()) {
        bound_feature_shape_.clear();
        return st;
      }
      bound_feature_shape_ = feature_shape;
    }
    st = cuda_->copy(slot->features.data(), features, n * f, "uploading the DINOv2 features");
    if (!st.ok()) return st;
    graph_id = slot->graph_id;
  }
  st = model->run(graph_id);
  if (st.ok()) st = cuda_->copy(encoder_code_.data(), d.code.data(), encoder_code_.size() * f, "reading the code");
  if (st.ok()) st = cuda_->wait();
  return st;
}

}  // namespace runtime
}  // namespace flexavatar
