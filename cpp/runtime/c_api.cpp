// The C API (flexavatar/flexavatar.h) over Runtime: handle registry, thread-local last error, and a
// catch-all around every call so that no C++ exception crosses the C boundary.
#include "flexavatar/flexavatar.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>

#include "flexavatar/build_info.h"
#include "input_files.h"
#include "head_pose.h"
#include "runtime.h"
#include "runtime_internal.h"

using flexavatar::Status;
using flexavatar::StatusCode;
using flexavatar::runtime::Runtime;

namespace {

thread_local std::string t_last_error;
// Stands in for t_last_error when the message itself could not be allocated (a static string: never fails).
thread_local const char* t_static_error = nullptr;
constexpr const char* kNoMemoryForMessage = "out of memory (the error message could not be allocated)";

// The runtime behind one handle, shared between the registry and the calls in flight: destroy drops the
// registry's reference, and the last holder frees the entry, so its mutex outlives every thread waiting on it.
struct Entry {
  std::mutex mutex;               // serialises calls on one runtime
  std::unique_ptr<Runtime> impl;  // null once destroyed (a call that waited on the mutex then reports so)
};

// Live handles. A handle is an opaque id, never an address: it is never dereferenced, and ids are not reused
// (a 64-bit counter), so a destroyed handle stays invalid when a new runtime is created.
std::mutex g_registry_mutex;
uintptr_t g_last_id = 0;  // under g_registry_mutex
std::unordered_map<uintptr_t, std::shared_ptr<Entry>>& registry() {
  static auto* live = new std::unordered_map<uintptr_t, std::shared_ptr<Entry>>();  // never destroyed: usable at exit
  return *live;
}

uintptr_t handle_id(const flexavatar_runtime* handle) { return reinterpret_cast<uintptr_t>(handle); }

// Registers a new runtime and returns its handle. Throws (bad_alloc) with `entry` still owning it.
flexavatar_runtime* register_entry(const std::shared_ptr<Entry>& entry) {
  std::lock_guard<std::mutex> lock(g_registry_mutex);
  uintptr_t id;
  do id = ++g_last_id;
  while (id == 0 || registry().count(id));  // a 32-bit counter can wrap: skip NULL and live ids
  registry().emplace(id, entry);
  return reinterpret_cast<flexavatar_runtime*>(id);
}

// The live entry of a handle (a reference of its own), or null.
std::shared_ptr<Entry> find_entry(const flexavatar_runtime* handle) {
  std::lock_guard<std::mutex> lock(g_registry_mutex);
  auto it = registry().find(handle_id(handle));
  return it == registry().end() ? nullptr : it->second;
}

// Records the message and returns the code; never throws (if the copy cannot be allocated, a static message
// stands in).
flexavatar_status fail(StatusCode code, const std::string& message) noexcept {
  try {
    t_last_error.assign(message);
    t_static_error = nullptr;
  } catch (...) {
    t_static_error = kNoMemoryForMessage;
  }
  return static_cast<flexavatar_status>(code);
}

// fail() with the message built from pieces; the building may fail too.
flexavatar_status fail(StatusCode code, const char* function, const char* what, const char* detail = "") noexcept {
  try {
    return fail(code, std::string(function) + what + detail);
  } catch (...) {
    t_static_error = kNoMemoryForMessage;
    return static_cast<flexavatar_status>(code);
  }
}

flexavatar_status report(const Status& s) noexcept {
  if (s.ok()) {
    t_last_error.clear();
    t_static_error = nullptr;
    return FLEXAVATAR_OK;
  }
  return fail(s.code(), s.message());
}

// Runs body() (→ Status) and reports it; exceptions become status codes, named after `function`. Every
// extern "C" function that can fail goes through here.
template <class Body>
flexavatar_status guarded(const char* function, Body body) noexcept {
  try {
    return report(body());
  } catch (const std::bad_alloc&) {
    return fail(StatusCode::kOutOfMemory, function, ": out of memory");
  } catch (const std::exception& e) {
    return fail(StatusCode::kInternal, function, ": unexpected error: ", e.what());
  } catch (...) {
    return fail(StatusCode::kInternal, function, ": unexpected error");
  }
}

// guarded(), with body(runtime) run under the handle's lock if the handle is live.
template <class Body>
flexavatar_status with_runtime(const flexavatar_runtime* handle, const char* function, Body body) noexcept {
  return guarded(function, [&]() -> Status {
    if (!handle) return Status(StatusCode::kInvalidHandle, std::string(function) + ": runtime handle is NULL");
    auto not_live = [&] {
      return Status(StatusCode::kInvalidHandle, std::string(function) + ": not a live runtime handle (already "
                                                                        "destroyed, or not from flexavatar_runtime_create)");
    };
    // Declared before the lock, so released after it: the entry (and its mutex) outlives the lock.
    const std::shared_ptr<Entry> entry = find_entry(handle);
    if (!entry) return not_live();
    std::lock_guard<std::mutex> lock(entry->mutex);
    if (!entry->impl) return not_live();  // destroyed while this call waited for the lock
    return body(*entry->impl);
  });
}

bool sized_ok(uint32_t struct_size, size_t minimum) { return struct_size >= minimum; }

// A string into a fixed char field: truncated to fit, NUL-terminated, the rest zeroed.
template <size_t N>
void copy_text(char (&field)[N], const std::string& text) {
  std::memset(field, 0, N);
  std::memcpy(field, text.data(), std::min(text.size(), N - 1));
}

// Whether a field appended to a struct_size-versioned struct lies inside the caller's struct.
#define FLEXAVATAR_HAS_FIELD(type, object, field) \
  (size_t((object).struct_size) >= offsetof(type, field) + sizeof((object).field))

// Sizes of the structs' first published versions: older callers pass these.
constexpr size_t kOptionsV1Size = offsetof(flexavatar_runtime_options, cuda_device) + sizeof(int32_t);
constexpr size_t kInfoV1Size = offsetof(flexavatar_runtime_info, decoder_provider) + 64;
constexpr size_t kEncoderInputV1Size = offsetof(flexavatar_encoder_input, feature_width) + sizeof(int64_t);
constexpr size_t kDeviceFrameV1Size = offsetof(flexavatar_device_frame, depth) + sizeof(const float*);

// The *_init functions: the defaults into the caller's struct, never past its struct_size bytes (a caller
// built against an older header has a shorter struct; a newer one's unknown tail is zeroed).
template <typename T>
Status init_sized(T* out, uint32_t struct_size, T defaults, size_t v1_size, const char* function) {
  if (!out) return Status(StatusCode::kNullPointer, std::string(function) + ": the struct pointer is NULL");
  if (struct_size < v1_size)
    return Status(StatusCode::kInvalidSize, std::string(function) + ": struct_size is " + std::to_string(struct_size) +
                                                ", expected sizeof the struct (" + std::to_string(sizeof(T)) +
                                                " in this library, at least " + std::to_string(v1_size) + ")");
  const size_t known = std::min<size_t>(struct_size, sizeof(T));
  defaults.struct_size = static_cast<uint32_t>(struct_size);
  std::memcpy(out, &defaults, known);
  if (struct_size > known) std::memset(reinterpret_cast<unsigned char*>(out) + known, 0, struct_size - known);
  return Status::ok_status();
}

static_assert(FLEXAVATAR_FRAME_RGBA8 == flexavatar::runtime::kFrameRgba8 &&
                  FLEXAVATAR_FRAME_RGB == flexavatar::runtime::kFrameRgb &&
                  FLEXAVATAR_FRAME_ALPHA == flexavatar::runtime::kFrameAlpha &&
                  FLEXAVATAR_FRAME_DEPTH == flexavatar::runtime::kFrameDepth &&
                  FLEXAVATAR_FRAME_ALL == flexavatar::runtime::kFrameAll,
              "the C API's frame flags are the runtime's");

flexavatar_runtime_options default_options() {
  flexavatar_runtime_options defaults;
  std::memset(&defaults, 0, sizeof(defaults));
  defaults.struct_size = sizeof(defaults);
  defaults.device = FLEXAVATAR_DEVICE_AUTO;
  defaults.verify = FLEXAVATAR_VERIFY_FULL;
  defaults.cuda_graphs = 1;  // takes effect on the zero-copy CUDA path only (see flexavatar.h)
  defaults.fused_decoders = FLEXAVATAR_FUSED_DECODERS_AUTO;
  return defaults;
}

flexavatar::runtime::Camera to_camera(const flexavatar_camera& camera) {
  flexavatar::runtime::Camera cam;
  std::memcpy(cam.cam2world, camera.cam2world, sizeof(cam.cam2world));
  std::memcpy(cam.intrinsics, camera.intrinsics, sizeof(cam.intrinsics));
  cam.width = camera.width;
  cam.height = camera.height;
  std::memcpy(cam.background, camera.background, sizeof(cam.background));
  return cam;
}

using flexavatar::runtime::DeviceFrameView;

// The checks of a device-frame call's camera and out (struct_size), then `render`'s frame copied into *out.
template <class Render>
Status device_frame_out(const char* name, const flexavatar_camera* camera, flexavatar_device_frame* out,
                        Render render) {
  if (!camera) return Status(StatusCode::kNullPointer, std::string(name) + ": camera is NULL");
  if (!out) return Status(StatusCode::kNullPointer, std::string(name) + ": out is NULL");
  if (!sized_ok(out->struct_size, kDeviceFrameV1Size))
    return Status(StatusCode::kInvalidArgument, std::string(name) + ": out->struct_size is " +
                                                    std::to_string(out->struct_size) +
                                                    ", expected sizeof(flexavatar_device_frame) = " +
                                                    std::to_string(sizeof(flexavatar_device_frame)));
  DeviceFrameView f;
  Status s = render(&f);
  if (!s.ok()) return s;
  out->width = f.width;
  out->height = f.height;
  out->cuda_device = f.device;
  out->stream = f.stream;
  out->rgba = f.rgba;
  out->rgb = f.rgb;
  out->alpha = f.alpha;
  out->depth = f.depth;
  return s;
}

}  // namespace

extern "C" {

uint32_t flexavatar_api_version(void) { return FLEXAVATAR_API_VERSION; }

const char* flexavatar_version(void) { return flexavatar::build_info().version; }

const char* flexavatar_status_name(flexavatar_status status) {
  return flexavatar::status_code_name(static_cast<StatusCode>(status));
}

const char* flexavatar_last_error(void) { return t_static_error ? t_static_error : t_last_error.c_str(); }

flexavatar_status flexavatar_runtime_options_init(flexavatar_runtime_options* options, uint32_t struct_size) {
  return guarded("flexavatar_runtime_options_init", [&] {
    return init_sized(options, struct_size, default_options(), kOptionsV1Size, "flexavatar_runtime_options_init");
  });
}

flexavatar_status flexavatar_runtime_create(const char* bundle_dir, const flexavatar_runtime_options* options,
                                            flexavatar_runtime** out) {
  if (out) *out = nullptr;
  return guarded("flexavatar_runtime_create", [&]() -> Status {
    if (!out) return Status(StatusCode::kNullPointer, "flexavatar_runtime_create: out is NULL");
    if (!bundle_dir) return Status(StatusCode::kNullPointer, "flexavatar_runtime_create: bundle_dir is NULL");
    flexavatar_runtime_options defaults = default_options();
    if (options) {
      if (!sized_ok(options->struct_size, kOptionsV1Size))
        return Status(StatusCode::kInvalidArgument,
                      "flexavatar_runtime_create: options->struct_size is " + std::to_string(options->struct_size) +
                          ", expected sizeof(flexavatar_runtime_options) = " + std::to_string(sizeof(defaults)) +
                          " (call flexavatar_runtime_options_init(&options, sizeof options))");
      // An older caller's struct is shorter: its missing (appended) fields keep their defaults.
      std::memcpy(&defaults, options, std::min<size_t>(options->struct_size, sizeof(defaults)));
      defaults.struct_size = sizeof(defaults);
    }
    // the runtime's devices, indexed by flexavatar_device
    static constexpr flexavatar::runtime::Device kDevices[] = {
        flexavatar::runtime::Device::kAuto, flexavatar::runtime::Device::kCpu, flexavatar::runtime::Device::kCuda,
        flexavatar::runtime::Device::kGpu, flexavatar::runtime::Device::kNpu};
    static_assert(std::size(kDevices) == FLEXAVATAR_DEVICE_NPU + 1, "a device for every flexavatar_device");
    if (defaults.device < FLEXAVATAR_DEVICE_AUTO || defaults.device > FLEXAVATAR_DEVICE_NPU)
      return Status(StatusCode::kInvalidArgument,
                    "options.device is " + std::to_string(defaults.device) +
                        ", expected FLEXAVATAR_DEVICE_AUTO (0), CPU (1), CUDA (2), GPU (3) or NPU (4)");
    if (defaults.verify < FLEXAVATAR_VERIFY_FULL || defaults.verify > FLEXAVATAR_VERIFY_NONE)
      return Status(StatusCode::kInvalidArgument, "options.verify is " + std::to_string(defaults.verify) +
                                                      ", expected FLEXAVATAR_VERIFY_FULL (0), SIZE (1) or NONE (2)");
    if (defaults.num_threads < 0 || defaults.num_threads > 4096)
      return Status(StatusCode::kInvalidArgument,
                    "options.num_threads is " + std::to_string(defaults.num_threads) + ", expected 0 (all) .. 4096");
    if (defaults.cuda_device < 0)
      return Status(StatusCode::kInvalidArgument, "options.cuda_device is " + std::to_string(defaults.cuda_device) +
                                                      ", expected a device ordinal >= 0 (the CUDA device's, or the "
                                                      "GPU's / NPU's)");
    if (defaults.rasterizer < FLEXAVATAR_RASTERIZER_AUTO || defaults.rasterizer > FLEXAVATAR_RASTERIZER_CUDA)
      return Status(StatusCode::kInvalidArgument, "options.rasterizer is " + std::to_string(defaults.rasterizer) +
                                                      ", expected FLEXAVATAR_RASTERIZER_AUTO (0), CPU (1) or CUDA (2)");
    if (defaults.precision < FLEXAVATAR_PRECISION_FP32 || defaults.precision > FLEXAVATAR_PRECISION_INT8)
      return Status(StatusCode::kInvalidArgument, "options.precision is " + std::to_string(defaults.precision) +
                                                      ", expected FLEXAVATAR_PRECISION_FP32 (0), FP16 (1) or INT8 (2)");
    if (defaults.cuda_graphs != 0 && defaults.cuda_graphs != 1)
      return Status(StatusCode::kInvalidArgument, "options.cuda_graphs is " + std::to_string(defaults.cuda_graphs) +
                                                      ", expected 0 (off) or 1 (replay the decoder as a CUDA graph)");
    if (defaults.fused_decoders < FLEXAVATAR_FUSED_DECODERS_AUTO ||
        defaults.fused_decoders > FLEXAVATAR_FUSED_DECODERS_OFF)
      return Status(StatusCode::kInvalidArgument,
                    "options.fused_decoders is " + std::to_string(defaults.fused_decoders) +
                        ", expected FLEXAVATAR_FUSED_DECODERS_AUTO (0), ON (1) or OFF (2)");
    if (defaults.frame_outputs & ~FLEXAVATAR_FRAME_ALL)
      return Status(StatusCode::kInvalidArgument,
                    "options.frame_outputs is " + std::to_string(defaults.frame_outputs) +
                        ", expected FLEXAVATAR_FRAME_* flags (RGBA8 1, RGB 2, ALPHA 4, DEPTH 8) or 0 for all");
    flexavatar::runtime::RuntimeOptions opts;
    opts.device = kDevices[defaults.device];
    opts.verify = static_cast<flexavatar::runtime::Verify>(defaults.verify);
    opts.num_threads = defaults.num_threads;
    opts.cuda_device = defaults.cuda_device;
    opts.rasterizer = static_cast<flexavatar::runtime::RasterizerChoice>(defaults.rasterizer);
    // the manifest's precision names, indexed by flexavatar_precision (range-checked above)
    static constexpr const char* kPrecisionNames[] = {"fp32", "fp16", "int8"};
    static_assert(std::size(kPrecisionNames) == FLEXAVATAR_PRECISION_INT8 + 1, "a name for every precision");
    opts.precision = kPrecisionNames[defaults.precision];
    opts.cuda_graphs = defaults.cuda_graphs == 1;
    opts.fused_decoders = static_cast<flexavatar::runtime::FusedDecoders>(defaults.fused_decoders);
    opts.frame_outputs = defaults.frame_outputs ? defaults.frame_outputs : FLEXAVATAR_FRAME_ALL;
    // Owned by a smart pointer until registered: an allocation failure on the way frees the runtime.
    auto entry = std::make_shared<Entry>();
    Status s = Runtime::create(bundle_dir, opts, &entry->impl);
    if (!s.ok()) return s;
    *out = register_entry(entry);
    return Status::ok_status();
  });
}

void flexavatar_runtime_destroy(flexavatar_runtime* runtime) {
  if (!runtime) return;
  try {
    std::shared_ptr<Entry> entry;
    {
      std::lock_guard<std::mutex> lock(g_registry_mutex);
      auto it = registry().find(handle_id(runtime));
      if (it == registry().end()) return;  // double destroy or foreign pointer: ignored
      entry = std::move(it->second);
      registry().erase(it);
    }
    std::unique_ptr<Runtime> impl;
    {
      std::lock_guard<std::mutex> lock(entry->mutex);  // lets a call in flight finish
      impl = std::move(entry->impl);                    // calls still waiting for the lock find it gone
    }
    impl.reset();  // the runtime goes now, in this thread; the entry goes with its last reference
  } catch (...) {  // destructors and mutexes do not throw; belt and braces at a C boundary
  }
}

flexavatar_status flexavatar_runtime_get_info(const flexavatar_runtime* runtime, flexavatar_runtime_info* info) {
  return with_runtime(runtime, "flexavatar_runtime_get_info", [&](Runtime& rt) {
    if (!info) return Status(StatusCode::kNullPointer, "flexavatar_runtime_get_info: info is NULL");
    if (!sized_ok(info->struct_size, kInfoV1Size))
      return Status(StatusCode::kInvalidArgument, "flexavatar_runtime_get_info: info->struct_size is " +
                                                      std::to_string(info->struct_size) + ", expected " +
                                                      std::to_string(sizeof(flexavatar_runtime_info)) +
                                                      " (sizeof(flexavatar_runtime_info))");
    info->num_gaussians = rt.num_gaussians();
    info->num_head_tokens = rt.num_head_tokens();
    info->code_dim = rt.code_dim();
    info->expression_dim = rt.expression_dim();
    info->image_size = rt.image_size();
    info->has_bundle_avatar_code = rt.has_bundle_avatar_code() ? 1 : 0;
    copy_text(info->decoder_provider, rt.decoder_provider());
    if (FLEXAVATAR_HAS_FIELD(flexavatar_runtime_info, *info, rasterizer))
      copy_text(info->rasterizer, rt.rasterizer_name());
    if (FLEXAVATAR_HAS_FIELD(flexavatar_runtime_info, *info, rasterizer_device))
      info->rasterizer_device = rt.rasterizer_device();
    if (FLEXAVATAR_HAS_FIELD(flexavatar_runtime_info, *info, encoders)) info->encoders = rt.encoders();
    if (FLEXAVATAR_HAS_FIELD(flexavatar_runtime_info, *info, feature_channels))
      info->feature_channels = rt.feature_channels();
    if (FLEXAVATAR_HAS_FIELD(flexavatar_runtime_info, *info, decoder_precision))
      copy_text(info->decoder_precision, rt.precision());
    if (FLEXAVATAR_HAS_FIELD(flexavatar_runtime_info, *info, cuda_graphs)) info->cuda_graphs = rt.cuda_graphs() ? 1 : 0;
    if (FLEXAVATAR_HAS_FIELD(flexavatar_runtime_info, *info, decoder_file))
      copy_text(info->decoder_file, rt.decoder_file());
    if (FLEXAVATAR_HAS_FIELD(flexavatar_runtime_info, *info, encoder_provider))
      copy_text(info->encoder_provider, rt.encoder_provider());
    if (FLEXAVATAR_HAS_FIELD(flexavatar_runtime_info, *info, encoder_fallback))
      copy_text(info->encoder_fallback, rt.encoder_fallback());
    if (FLEXAVATAR_HAS_FIELD(flexavatar_runtime_info, *info, ignored_artifacts))
      info->ignored_artifacts = int32_t(rt.ignored_artifacts().size());
    if (FLEXAVATAR_HAS_FIELD(flexavatar_runtime_info, *info, ignored_names)) {
      std::string names;
      for (const auto& name : rt.ignored_artifacts()) names += (names.empty() ? "" : ", ") + name;
      copy_text(info->ignored_names, names);
    }
    return Status::ok_status();
  });
}

flexavatar_status flexavatar_runtime_set_avatar_code(flexavatar_runtime* runtime, const float* code, int64_t count) {
  return with_runtime(runtime, "flexavatar_runtime_set_avatar_code",
                      [&](Runtime& rt) { return rt.set_avatar_code(code, count); });
}

flexavatar_status flexavatar_runtime_load_avatar_code(flexavatar_runtime* runtime, const char* npy_path) {
  return with_runtime(runtime, "flexavatar_runtime_load_avatar_code",
                      [&](Runtime& rt) { return rt.load_avatar_code(npy_path ? npy_path : ""); });
}

flexavatar_status flexavatar_runtime_get_avatar_code(const flexavatar_runtime* runtime, float* code, int64_t count) {
  return with_runtime(runtime, "flexavatar_runtime_get_avatar_code",
                      [&](Runtime& rt) { return rt.get_avatar_code(code, count); });
}

flexavatar_status flexavatar_encoder_input_init(flexavatar_encoder_input* input, uint32_t struct_size) {
  flexavatar_encoder_input defaults;
  std::memset(&defaults, 0, sizeof(defaults));
  std::memcpy(defaults.cam2world, flexavatar::runtime::kDemoCam2World, sizeof(defaults.cam2world));
  std::memcpy(defaults.intrinsics, flexavatar::runtime::kDemoIntrinsics, sizeof(defaults.intrinsics));
  return guarded("flexavatar_encoder_input_init", [&] {
    return init_sized(input, struct_size, defaults, kEncoderInputV1Size, "flexavatar_encoder_input_init");
  });
}

flexavatar_status flexavatar_runtime_create_avatar_code(flexavatar_runtime* runtime,
                                                        const flexavatar_encoder_input* input) {
  return with_runtime(runtime, "flexavatar_runtime_create_avatar_code", [&](Runtime& rt) {
    if (!input) return Status(StatusCode::kNullPointer, "flexavatar_runtime_create_avatar_code: input is NULL");
    if (!sized_ok(input->struct_size, kEncoderInputV1Size))
      return Status(StatusCode::kInvalidArgument,
                    "flexavatar_runtime_create_avatar_code: input->struct_size is " +
                        std::to_string(input->struct_size) + ", expected sizeof(flexavatar_encoder_input) = " +
                        std::to_string(sizeof(flexavatar_encoder_input)) + " (call flexavatar_encoder_input_init(&input, sizeof input))");
    flexavatar::runtime::EncoderInput in;
    in.image = input->image;
    in.image_count = input->image_count;
    std::memcpy(in.cam2world, input->cam2world, sizeof(in.cam2world));
    std::memcpy(in.intrinsics, input->intrinsics, sizeof(in.intrinsics));
    in.features = input->features;
    in.feature_channels = input->feature_channels;
    in.feature_height = input->feature_height;
    in.feature_width = input->feature_width;
    return rt.create_avatar_code(in);
  });
}

flexavatar_status flexavatar_runtime_decode(flexavatar_runtime* runtime, const float* expression,
                                            int64_t expression_count, flexavatar_gaussians* out) {
  return with_runtime(runtime, "flexavatar_runtime_decode", [&](Runtime& rt) {
    if (!out) return Status(StatusCode::kNullPointer, "flexavatar_runtime_decode: out is NULL");
    flexavatar::runtime::GaussiansView g;
    Status s = rt.decode(expression, expression_count, &g);
    if (!s.ok()) return s;
    *out = flexavatar_gaussians{g.num_gaussians, g.means, g.quats, g.scales, g.opacities, g.sh0};
    return s;
  });
}

flexavatar_status flexavatar_runtime_render(flexavatar_runtime* runtime, const float* expression,
                                            int64_t expression_count, const flexavatar_camera* camera,
                                            flexavatar_frame* out) {
  return with_runtime(runtime, "flexavatar_runtime_render", [&](Runtime& rt) {
    if (!camera) return Status(StatusCode::kNullPointer, "flexavatar_runtime_render: camera is NULL");
    if (!out) return Status(StatusCode::kNullPointer, "flexavatar_runtime_render: out is NULL");
    flexavatar::runtime::FrameView f;
    Status s = rt.render(expression, expression_count, to_camera(*camera), &f);
    if (!s.ok()) return s;
    *out = flexavatar_frame{f.width, f.height, f.rgba, f.rgb, f.alpha, f.depth};
    return s;
  });
}

flexavatar_status flexavatar_runtime_check_numerics(flexavatar_runtime* runtime, flexavatar_numerics* out) {
  return with_runtime(runtime, "flexavatar_runtime_check_numerics", [&](Runtime& rt) {
    if (!out) return Status(StatusCode::kNullPointer, "flexavatar_runtime_check_numerics: out is NULL");
    if (out->struct_size != sizeof(flexavatar_numerics))
      return Status(StatusCode::kInvalidArgument, "flexavatar_runtime_check_numerics: out->struct_size is " +
                                                      std::to_string(out->struct_size) + ", expected " +
                                                      std::to_string(sizeof(flexavatar_numerics)) +
                                                      " (sizeof(flexavatar_numerics))");
    flexavatar::runtime::NumericsCheck check;
    Status s = rt.check_numerics(&check);
    if (!s.ok()) return s;
    out->passed = check.passed ? 1 : 0;
    out->num_expressions = int32_t(check.expressions);
    out->psnr_db = check.psnr_db;
    out->target_db = check.target_db;
    for (int i = 0; i < 5; ++i) out->max_abs_error[i] = check.max_abs_error[i];
    out->encoder_checked = check.encoder_checked ? 1 : 0;
    out->code_max_abs_error = check.code_max_abs_error;
    out->encoder_psnr_db = check.encoder_psnr_db;
    return s;
  });
}

flexavatar_status flexavatar_runtime_render_device(flexavatar_runtime* runtime, const float* expression,
                                                   int64_t expression_count, const flexavatar_camera* camera,
                                                   flexavatar_device_frame* out) {
  return with_runtime(runtime, "flexavatar_runtime_render_device", [&](Runtime& rt) {
    return device_frame_out("flexavatar_runtime_render_device", camera, out, [&](DeviceFrameView* f) {
      return rt.render_device(expression, expression_count, to_camera(*camera), f);
    });
  });
}

flexavatar_status flexavatar_runtime_render_view(flexavatar_runtime* runtime, const flexavatar_camera* camera,
                                                 flexavatar_frame* out) {
  return with_runtime(runtime, "flexavatar_runtime_render_view", [&](Runtime& rt) {
    if (!camera) return Status(StatusCode::kNullPointer, "flexavatar_runtime_render_view: camera is NULL");
    if (!out) return Status(StatusCode::kNullPointer, "flexavatar_runtime_render_view: out is NULL");
    flexavatar::runtime::FrameView f;
    Status s = rt.render_view(to_camera(*camera), &f);
    if (!s.ok()) return s;
    *out = flexavatar_frame{f.width, f.height, f.rgba, f.rgb, f.alpha, f.depth};
    return s;
  });
}

flexavatar_status flexavatar_runtime_render_view_device(flexavatar_runtime* runtime, const flexavatar_camera* camera,
                                                        flexavatar_device_frame* out) {
  return with_runtime(runtime, "flexavatar_runtime_render_view_device", [&](Runtime& rt) {
    return device_frame_out("flexavatar_runtime_render_view_device", camera, out,
                            [&](DeviceFrameView* f) { return rt.render_view_device(to_camera(*camera), f); });
  });
}

flexavatar_status flexavatar_runtime_default_camera(const flexavatar_runtime* runtime, flexavatar_camera* camera) {
  return with_runtime(runtime, "flexavatar_runtime_default_camera", [&](Runtime& rt) {
    if (!camera) return Status(StatusCode::kNullPointer, "flexavatar_runtime_default_camera: camera is NULL");
    const flexavatar::runtime::Camera cam = rt.default_camera();
    std::memcpy(camera->cam2world, cam.cam2world, sizeof(cam.cam2world));
    std::memcpy(camera->intrinsics, cam.intrinsics, sizeof(cam.intrinsics));
    camera->width = cam.width;
    camera->height = cam.height;
    std::memcpy(camera->background, cam.background, sizeof(cam.background));
    return Status::ok_status();
  });
}

flexavatar_status flexavatar_expression_head_pose(const float* expression, int64_t expression_count,
                                                  float head_to_world[16]) {
  return guarded("flexavatar_expression_head_pose", [&] {
    if (!head_to_world)
      return Status(StatusCode::kNullPointer, "flexavatar_expression_head_pose: head_to_world is NULL");
    double m[16];
    Status s = flexavatar::runtime::head_pose(expression, expression_count, m);
    if (s.ok())
      for (int i = 0; i < 16; ++i) head_to_world[i] = static_cast<float>(m[i]);
    return s;
  });
}

flexavatar_status flexavatar_camera_apply_head_pose(flexavatar_camera* camera, const float* expression,
                                                    int64_t expression_count) {
  return guarded("flexavatar_camera_apply_head_pose", [&] {
    if (!camera) return Status(StatusCode::kNullPointer, "flexavatar_camera_apply_head_pose: camera is NULL");
    return flexavatar::runtime::apply_head_pose(expression, expression_count, camera->cam2world);
  });
}

flexavatar_status flexavatar_read_npy(const char* path, float* values, int64_t count,
                                      int64_t shape[FLEXAVATAR_NPY_MAX_DIMS], int32_t* ndim) {
  return guarded("flexavatar_read_npy", [&] {
    if (!path) return Status(StatusCode::kNullPointer, "flexavatar_read_npy: path is NULL");
    if (!shape || !ndim) return Status(StatusCode::kNullPointer, "flexavatar_read_npy: shape or ndim is NULL");
    flexavatar::runtime::NpyArray array;
    Status s = flexavatar::runtime::read_npy_float32(path, &array);
    if (!s.ok()) return s;
    if (array.shape.size() > FLEXAVATAR_NPY_MAX_DIMS)
      return Status(StatusCode::kInvalidArgument, std::string(path) + ": " + std::to_string(array.shape.size()) +
                                                      " dimensions (at most " +
                                                      std::to_string(FLEXAVATAR_NPY_MAX_DIMS) + ")");
    *ndim = static_cast<int32_t>(array.shape.size());
    std::copy(array.shape.begin(), array.shape.end(), shape);
    if (!values) return s;
    if (count != static_cast<int64_t>(array.values.size()))
      return Status(StatusCode::kInvalidSize, "flexavatar_read_npy: count is " + std::to_string(count) + ", " +
                                                  std::string(path) + " holds " +
                                                  std::to_string(array.values.size()) + " values");
    std::copy(array.values.begin(), array.values.end(), values);
    return s;
  });
}

flexavatar_status flexavatar_read_photo(const char* path, float* image, int64_t count, int32_t* width,
                                        int32_t* height) {
  return guarded("flexavatar_read_photo", [&] {
    if (!path) return Status(StatusCode::kNullPointer, "flexavatar_read_photo: path is NULL");
    if (!width || !height) return Status(StatusCode::kNullPointer, "flexavatar_read_photo: width or height is NULL");
    std::vector<float> chw;
    int w = 0, h = 0;
    Status s = flexavatar::runtime::read_photo(path, &chw, &w, &h);
    if (!s.ok()) return s;
    *width = w;
    *height = h;
    if (!image) return s;
    if (count != static_cast<int64_t>(chw.size()))
      return Status(StatusCode::kInvalidSize, "flexavatar_read_photo: count is " + std::to_string(count) + ", the " +
                                                  std::to_string(w) + "x" + std::to_string(h) + " photo needs 3 x " +
                                                  std::to_string(w) + " x " + std::to_string(h) + " = " +
                                                  std::to_string(chw.size()) + " floats");
    std::copy(chw.begin(), chw.end(), image);
    return s;
  });
}

flexavatar_status flexavatar_read_photo_camera(const char* path, float cam2world[16], float intrinsics[9]) {
  return guarded("flexavatar_read_photo_camera", [&] {
    if (!path) return Status(StatusCode::kNullPointer, "flexavatar_read_photo_camera: path is NULL");
    if (!cam2world || !intrinsics)
      return Status(StatusCode::kNullPointer, "flexavatar_read_photo_camera: cam2world or intrinsics is NULL");
    return flexavatar::runtime::read_photo_camera(path, cam2world, intrinsics);
  });
}

flexavatar_status flexavatar_read_expressions(const char* path, float* codes, int64_t count, int64_t* frames) {
  return guarded("flexavatar_read_expressions", [&] {
    if (!path) return Status(StatusCode::kNullPointer, "flexavatar_read_expressions: path is NULL");
    if (!frames) return Status(StatusCode::kNullPointer, "flexavatar_read_expressions: frames is NULL");
    std::vector<float> values;
    Status s = flexavatar::runtime::read_expression_file(path, &values);
    if (!s.ok()) return s;
    const int64_t size = static_cast<int64_t>(values.size());
    *frames = size / flexavatar::runtime::kExpressionDim;
    if (!codes) return s;
    if (count != size)
      return Status(StatusCode::kInvalidSize, "flexavatar_read_expressions: count is " + std::to_string(count) +
                                                  ", the file holds " + std::to_string(*frames) + " x " +
                                                  std::to_string(flexavatar::runtime::kExpressionDim) + " = " +
                                                  std::to_string(size) + " floats");
    std::copy(values.begin(), values.end(), codes);
    return s;
  });
}

flexavatar_status flexavatar_read_sequence_cameras(const char* path, flexavatar_camera* cameras, int64_t count,
                                                   int64_t* frames) {
  return guarded("flexavatar_read_sequence_cameras", [&] {
    if (!path) return Status(StatusCode::kNullPointer, "flexavatar_read_sequence_cameras: path is NULL");
    if (!frames) return Status(StatusCode::kNullPointer, "flexavatar_read_sequence_cameras: frames is NULL");
    std::vector<float> cam2world, intrinsics;
    Status s = flexavatar::runtime::read_sequence_cameras(path, &cam2world, &intrinsics);
    if (!s.ok()) return s;
    const int64_t n = static_cast<int64_t>(intrinsics.size() / 9);
    *frames = n;
    if (!cameras) return s;
    if (count != n)
      return Status(StatusCode::kInvalidSize, "flexavatar_read_sequence_cameras: count is " + std::to_string(count) +
                                                  ", the file holds " + std::to_string(n) + " cameras");
    for (int64_t f = 0; f < n; ++f) {
      std::copy(cam2world.begin() + 16 * f, cam2world.begin() + 16 * (f + 1), cameras[f].cam2world);
      std::copy(intrinsics.begin() + 9 * f, intrinsics.begin() + 9 * (f + 1), cameras[f].intrinsics);
    }
    return s;
  });
}

}  // extern "C"
