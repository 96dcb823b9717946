// Header-only C++ wrapper over the C API (flexavatar.h): RAII ownership of the runtime handle and
// exceptions (flexavatar::Error, with the status code and message) on the C++ side of the boundary.
//
//   flexavatar::Runtime rt("bundle/");            // throws flexavatar::Error on failure
//   rt.load_avatar_code("avatar_code.npy");        // or rt.create_avatar_code(flexavatar::encoder_input(photo_chw))
//   flexavatar_frame frame = rt.render(expression, rt.default_camera());
#pragma once

#include <array>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "flexavatar/flexavatar.h"

namespace flexavatar {

class Error : public std::runtime_error {
 public:
  Error(flexavatar_status status, const std::string& message)
      : std::runtime_error(std::string(flexavatar_status_name(status)) + ": " + message),
        status_(status),
        message_(message) {}
  flexavatar_status status() const noexcept { return status_; }
  const std::string& message() const noexcept { return message_; }  // what() without the status name

 private:
  flexavatar_status status_;
  std::string message_;
};

inline void check(flexavatar_status status) {
  if (status != FLEXAVATAR_OK) throw Error(status, flexavatar_last_error());
}

class Runtime {
 public:
  explicit Runtime(const std::string& bundle_dir, const flexavatar_runtime_options* options = nullptr) {
    check(flexavatar_runtime_create(bundle_dir.c_str(), options, &handle_));
  }
  ~Runtime() { flexavatar_runtime_destroy(handle_); }
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;
  Runtime(Runtime&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  Runtime& operator=(Runtime&& other) noexcept {
    if (this != &other) {
      flexavatar_runtime_destroy(handle_);
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }

  flexavatar_runtime* get() const noexcept { return handle_; }

  flexavatar_runtime_info info() const {
    flexavatar_runtime_info out{};
    out.struct_size = sizeof(out);
    check(flexavatar_runtime_get_info(handle_, &out));
    return out;
  }
  void set_avatar_code(const std::vector<float>& code) {
    check(flexavatar_runtime_set_avatar_code(handle_, code.data(), static_cast<int64_t>(code.size())));
  }
  // Empty path: the bundle's own avatar_code.npy.
  void load_avatar_code(const std::string& npy_path = std::string()) {
    check(flexavatar_runtime_load_avatar_code(handle_, npy_path.empty() ? nullptr : npy_path.c_str()));
  }
  // Runs the bundle's encoder on a photo (see flexavatar::encoder_input) and sets its avatar code.
  void create_avatar_code(const flexavatar_encoder_input& input) {
    check(flexavatar_runtime_create_avatar_code(handle_, &input));
  }
  // The current avatar code, [R², D] row-major.
  std::vector<float> avatar_code() const {
    const flexavatar_runtime_info i = info();
    std::vector<float> code(static_cast<size_t>(i.num_head_tokens * i.code_dim));
    check(flexavatar_runtime_get_avatar_code(handle_, code.data(), static_cast<int64_t>(code.size())));
    return code;
  }
  flexavatar_camera default_camera() const {
    flexavatar_camera camera{};
    check(flexavatar_runtime_default_camera(handle_, &camera));
    return camera;
  }
  // The returned views point into the runtime's buffers: valid until the next decode/render.
  flexavatar_gaussians decode(const std::vector<float>& expression) {
    flexavatar_gaussians out{};
    check(flexavatar_runtime_decode(handle_, expression.data(), static_cast<int64_t>(expression.size()), &out));
    return out;
  }
  flexavatar_frame render(const std::vector<float>& expression, const flexavatar_camera& camera) {
    flexavatar_frame out{};
    check(flexavatar_runtime_render(handle_, expression.data(), static_cast<int64_t>(expression.size()), &camera,
                                    &out));
    return out;
  }
  // The frame in CUDA device memory, produced on out.stream (needs the CUDA rasterizer).
  flexavatar_device_frame render_device(const std::vector<float>& expression, const flexavatar_camera& camera) {
    flexavatar_device_frame out{};
    out.struct_size = sizeof(out);
    check(flexavatar_runtime_render_device(handle_, expression.data(), static_cast<int64_t>(expression.size()),
                                           &camera, &out));
    return out;
  }
  // The last decoded frame from another camera (no decoder run): e.g. the right eye after render() of the left.
  // The returned frame is valid until the next decode / render / render_view.
  flexavatar_frame render_view(const flexavatar_camera& camera) {
    flexavatar_frame out{};
    check(flexavatar_runtime_render_view(handle_, &camera, &out));
    return out;
  }
  flexavatar_device_frame render_view_device(const flexavatar_camera& camera) {
    flexavatar_device_frame out{};
    out.struct_size = sizeof(out);
    check(flexavatar_runtime_render_view_device(handle_, &camera, &out));
    return out;
  }
  // The bundle's numerics check on this runtime (check.npz against its decoder and rasterizer).
  flexavatar_numerics check_numerics() {
    flexavatar_numerics out{};
    out.struct_size = sizeof(out);
    check(flexavatar_runtime_check_numerics(handle_, &out));
    return out;
  }

 private:
  flexavatar_runtime* handle_ = nullptr;
};

inline flexavatar_runtime_options default_options() {
  flexavatar_runtime_options options;
  check(flexavatar_runtime_options_init(&options, sizeof(options)));
  return options;
}

// A photo for Runtime::create_avatar_code: image [3, S, S] channel-major RGB in [0, 1] and, for bundles
// exported without DINOv2, its DINOv2 features [C, h, w]. The camera is the demo's frontal one unless
// changed (input.cam2world / input.intrinsics). The vectors must outlive the call.
inline flexavatar_encoder_input encoder_input(const std::vector<float>& image_chw) {
  flexavatar_encoder_input input;
  check(flexavatar_encoder_input_init(&input, sizeof(input)));
  input.image = image_chw.data();
  input.image_count = static_cast<int64_t>(image_chw.size());
  return input;
}
inline flexavatar_encoder_input encoder_input(const std::vector<float>& image_chw, const std::vector<float>& features,
                                              int64_t channels, int64_t height, int64_t width) {
  flexavatar_encoder_input input = encoder_input(image_chw);
  input.features = features.data();
  input.feature_channels = channels;
  input.feature_height = height;
  input.feature_width = width;
  if (features.size() != static_cast<size_t>(channels * height * width))
    throw Error(FLEXAVATAR_ERROR_INVALID_SIZE, "features: " + std::to_string(features.size()) +
                                                   " floats for a [" + std::to_string(channels) + ", " +
                                                   std::to_string(height) + ", " + std::to_string(width) + "] shape");
  return input;
}

// The expression code's rigid head pose, head_to_world (row-major 4x4, x' = R x + t).
inline std::array<float, 16> head_pose(const std::vector<float>& expression) {
  std::array<float, 16> m;
  check(flexavatar_expression_head_pose(expression.data(), static_cast<int64_t>(expression.size()), m.data()));
  return m;
}

// `camera` moved so that it shows the expression's head pose (Runtime::render then gives the posed head).
inline flexavatar_camera posed_camera(flexavatar_camera camera, const std::vector<float>& expression) {
  check(flexavatar_camera_apply_head_pose(&camera, expression.data(), static_cast<int64_t>(expression.size())));
  return camera;
}

// A .npy array of floats (float64 / float16 converted) as float32.
struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> values;  // row-major
};
inline NpyArray read_npy(const std::string& path) {
  int64_t shape[FLEXAVATAR_NPY_MAX_DIMS];
  int32_t ndim = 0;
  check(flexavatar_read_npy(path.c_str(), nullptr, 0, shape, &ndim));
  NpyArray out;
  out.shape.assign(shape, shape + ndim);
  size_t count = 1;
  for (const int64_t d : out.shape) count *= static_cast<size_t>(d);
  out.values.resize(count);
  check(flexavatar_read_npy(path.c_str(), out.values.data(), static_cast<int64_t>(count), shape, &ndim));
  return out;
}

// A photo (.png, or an in-the-wild example .npz's crop) as the encoder's input: [3, H, W] floats in [0, 1] on white.
inline std::vector<float> read_photo(const std::string& path, int* width, int* height) {
  int32_t w = 0, h = 0;
  check(flexavatar_read_photo(path.c_str(), nullptr, 0, &w, &h));
  std::vector<float> image(size_t(3) * static_cast<size_t>(w) * static_cast<size_t>(h));
  check(flexavatar_read_photo(path.c_str(), image.data(), static_cast<int64_t>(image.size()), &w, &h));
  if (width) *width = w;
  if (height) *height = h;
  return image;
}

// `input` with the camera an in-the-wild example .npz's photo was taken with.
inline void read_photo_camera(const std::string& path, flexavatar_encoder_input* input) {
  check(flexavatar_read_photo_camera(path.c_str(), input->cam2world, input->intrinsics));
}

// An expression sequence file (.npy [E, 135], or an .npz with 'expression_codes', as the tracked sequences):
// row-major [E, 135] floats, E = size / 135.
inline std::vector<float> read_expressions(const std::string& path) {
  int64_t frames = 0;
  check(flexavatar_read_expressions(path.c_str(), nullptr, 0, &frames));
  std::vector<float> codes(static_cast<size_t>(frames) * 135);
  check(flexavatar_read_expressions(path.c_str(), codes.data(), static_cast<int64_t>(codes.size()), &frames));
  return codes;
}

// The tracked camera of every frame of a tracked sequence .npz (cam2world, intrinsics), each `base` otherwise
// (width, height, background).
inline std::vector<flexavatar_camera> read_sequence_cameras(const std::string& path, const flexavatar_camera& base) {
  int64_t frames = 0;
  check(flexavatar_read_sequence_cameras(path.c_str(), nullptr, 0, &frames));
  std::vector<flexavatar_camera> cameras(static_cast<size_t>(frames), base);
  check(flexavatar_read_sequence_cameras(path.c_str(), cameras.data(), frames, &frames));
  return cameras;
}

}  // namespace flexavatar
