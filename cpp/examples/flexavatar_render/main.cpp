// flexavatar_render BUNDLE AVATAR EXPRESSIONS OUT_DIR [--size N] [--threads N] [--device auto|cpu|cuda|cuda:N]
//                   [--rasterizer auto|cpu|cuda] [--features FEATURES.npy] [--head-pose]
//
// Renders one PNG frame per expression (frame_00000.png, ...) from the bundle's default camera and prints
// the per-frame latency (decoder + rasterizer + RGBA) as p50 / p95. --head-pose shows each code's rigid head
// pose (the tracked head motion), as the official GUI does.
//   AVATAR       an avatar code .npy float32 (R², 1, D); "-" for the bundle's own avatar_code.npy; or a photo
//                .npy float32 [S, S, 3] (or [3, S, S]) in [0, 1] on white, encoded by the bundle's encoder
//                (with --features: its DINOv2 features [C, h, w], for bundles exported without DINOv2)
//   EXPRESSIONS  .npy float32 [E, 135] (or [135] for one frame)
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "flexavatar/flexavatar.hpp"
#include "png_writer.h"

namespace {

int usage() {
  std::fprintf(stderr,
               "usage: flexavatar_render BUNDLE AVATAR EXPRESSIONS OUT_DIR [--size N] [--threads N] "
               "[--device auto|cpu|cuda|cuda:N] [--rasterizer auto|cpu|cuda] [--features FEATURES.npy] [--head-pose]\n"
               "  AVATAR: avatar code .npy float32 (R^2, 1, D); - for the bundle's avatar_code.npy; or a photo\n"
               "          .npy float32 [S, S, 3] in [0, 1] to encode (--features: DINOv2 features [C, h, w])\n"
               "  EXPRESSIONS: .npy float32 [E, 135]\n");
  return 2;
}

// A float32 little-endian C-order .npy: values and shape (a small reader for the example's inputs).
bool read_npy(const std::string& path, std::vector<float>* values, std::vector<long>* shape, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return *error = "cannot open " + path, false;
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) return *error = path + ": not a .npy file", false;
  const bool v1 = bytes[6] == 1;
  const size_t offset = v1 ? 10 : 12;
  if (bytes.size() < offset) return *error = path + ": truncated", false;
  size_t header_len = uint8_t(bytes[8]) | (size_t(uint8_t(bytes[9])) << 8);
  if (!v1) header_len |= (size_t(uint8_t(bytes[10])) << 16) | (size_t(uint8_t(bytes[11])) << 24);
  if (offset + header_len > bytes.size()) return *error = path + ": truncated header", false;
  const std::string header = bytes.substr(offset, header_len);
  if (header.find("'<f4'") == std::string::npos || header.find("False") == std::string::npos)
    return *error = path + ": expected a C-order float32 array, header " + header, false;
  const size_t open = header.find('(', header.find("'shape'"));
  const size_t close = header.find(')', open);
  if (open == std::string::npos || close == std::string::npos) return *error = path + ": no shape", false;
  shape->clear();
  long count = 1;
  for (size_t i = open + 1; i < close;) {
    if (header[i] >= '0' && header[i] <= '9') {
      const long d = std::strtol(header.c_str() + i, nullptr, 10);
      shape->push_back(d);
      count *= d;
      while (i < close && header[i] >= '0' && header[i] <= '9') ++i;
    } else {
      ++i;
    }
  }
  const size_t data = offset + header_len;
  if (bytes.size() - data != size_t(count) * 4) return *error = path + ": data size does not match the shape", false;
  values->resize(size_t(count));
  std::memcpy(values->data(), bytes.data() + data, size_t(count) * 4);
  return true;
}

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * double(v.size() - 1);
  const size_t lo = size_t(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (pos - double(lo)) * (v[hi] - v[lo]);
}

int choice(const std::string& value, int fallback_error) {
  if (value == "auto") return 0;  // FLEXAVATAR_DEVICE_AUTO / FLEXAVATAR_RASTERIZER_AUTO
  if (value == "cpu") return 1;
  if (value == "cuda") return 2;
  return fallback_error;
}

// The avatar: a code file, the bundle's code, or a photo (+ features) run through the bundle's encoder.
void set_avatar(flexavatar::Runtime& rt, const flexavatar_runtime_info& info, const std::string& avatar,
                const std::string& features_path) {
  if (avatar == "-") return rt.load_avatar_code();
  std::vector<float> values;
  std::vector<long> shape;
  std::string error;
  if (!read_npy(avatar, &values, &shape, &error)) throw flexavatar::Error(FLEXAVATAR_ERROR_IO, error);
  const long s = long(info.image_size);
  const bool hwc = shape.size() == 3 && shape[0] == s && shape[1] == s && shape[2] == 3;
  const bool chw = shape.size() == 3 && shape[0] == 3 && shape[1] == s && shape[2] == s;
  if (!hwc && !chw) {
    if (!features_path.empty())
      throw flexavatar::Error(FLEXAVATAR_ERROR_INVALID_SIZE, avatar + ": --features needs a photo [" +
                                                                 std::to_string(s) + ", " + std::to_string(s) +
                                                                 ", 3] as AVATAR");
    return rt.load_avatar_code(avatar);  // an avatar code: the runtime checks its shape
  }
  std::vector<float> image(values.size());
  if (hwc) {  // [S, S, 3] -> the encoder's channel-major [3, S, S]
    for (long y = 0; y < s; ++y)
      for (long x = 0; x < s; ++x)
        for (long c = 0; c < 3; ++c) image[size_t((c * s + y) * s + x)] = values[size_t((y * s + x) * 3 + c)];
  } else {
    image = values;
  }
  std::vector<float> features;
  std::vector<long> feature_shape;
  if (!features_path.empty()) {
    if (!read_npy(features_path, &features, &feature_shape, &error))
      throw flexavatar::Error(FLEXAVATAR_ERROR_IO, error);
    if (feature_shape.size() == 4 && feature_shape[0] == 1) feature_shape.erase(feature_shape.begin());
    if (feature_shape.size() != 3)
      throw flexavatar::Error(FLEXAVATAR_ERROR_INVALID_SIZE, features_path + ": expected DINOv2 features [C, h, w]");
    rt.create_avatar_code(flexavatar::encoder_input(image, features, feature_shape[0], feature_shape[1],
                                                    feature_shape[2]));
  } else {
    rt.create_avatar_code(flexavatar::encoder_input(image));
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> positional;
  int size = 0, threads = 0;
  int device = FLEXAVATAR_DEVICE_AUTO, rasterizer = FLEXAVATAR_RASTERIZER_AUTO, cuda_device = 0;
  std::string features_path;
  bool head_pose = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if ((arg == "--size" || arg == "--threads" || arg == "--device" || arg == "--rasterizer" ||
         arg == "--features") && i + 1 < argc) {
      const std::string value = argv[++i];
      if (arg == "--size") size = std::atoi(value.c_str());
      if (arg == "--threads") threads = std::atoi(value.c_str());
      if (arg == "--features") features_path = value;
      if (arg == "--device" && value.rfind("cuda:", 0) == 0) {   // cuda:N, the N-th CUDA device
        const std::string ordinal = value.substr(5);
        if (ordinal.empty() || ordinal.find_first_not_of("0123456789") != std::string::npos) return usage();
        device = FLEXAVATAR_DEVICE_CUDA;
        cuda_device = std::atoi(ordinal.c_str());
      } else if (arg == "--device" && (device = choice(value, -1)) < 0) {
        return usage();
      }
      if (arg == "--rasterizer" && (rasterizer = choice(value, -1)) < 0) return usage();
    } else if (arg == "--head-pose") {
      head_pose = true;
    } else if (arg.rfind("--", 0) == 0) {
      return usage();
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() != 4) return usage();
  const std::string bundle = positional[0], avatar = positional[1], expr_path = positional[2],
                    out_dir = positional[3];
  try {
    flexavatar_runtime_options options = flexavatar::default_options();
    options.device = device;
    options.cuda_device = cuda_device;
    options.rasterizer = rasterizer;
    options.num_threads = threads;
    flexavatar::Runtime rt(bundle, &options);
    const flexavatar_runtime_info info = rt.info();
    set_avatar(rt, info, avatar, features_path);

    std::vector<float> expressions;
    std::vector<long> shape;
    std::string error;
    if (!read_npy(expr_path, &expressions, &shape, &error)) {
      std::fprintf(stderr, "error: %s\n", error.c_str());
      return 1;
    }
    const long dim = info.expression_dim;
    if (shape.empty() || shape.back() != dim) {
      std::fprintf(stderr, "error: %s: expected shape [E, %ld]\n", expr_path.c_str(), dim);
      return 1;
    }
    const long frames = long(expressions.size()) / dim;
    ::mkdir(out_dir.c_str(), 0777);  // may exist already; writing the first frame reports real errors

    flexavatar_camera camera = rt.default_camera();
    if (size > 0) camera.width = camera.height = size;
    std::vector<double> ms;
    std::vector<float> expression(static_cast<size_t>(dim));
    for (long f = 0; f < frames; ++f) {
      std::copy(expressions.begin() + f * dim, expressions.begin() + (f + 1) * dim, expression.begin());
      const auto start = std::chrono::steady_clock::now();
      const flexavatar_frame frame =
          rt.render(expression, head_pose ? flexavatar::posed_camera(camera, expression) : camera);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
      char name[32];
      std::snprintf(name, sizeof(name), "frame_%05ld.png", f);
      if (!write_png_rgba(out_dir + "/" + name, frame.rgba, frame.width, frame.height, &error)) {
        std::fprintf(stderr, "error: %s\n", error.c_str());
        return 1;
      }
    }
    std::printf("flexavatar %s, %ld Gaussians, decoder on %s, %s rasterizer\n", flexavatar_version(),
                long(info.num_gaussians), info.decoder_provider, info.rasterizer);
    if (!ms.empty()) {
      std::printf("%ld frames %dx%d -> %s\n", frames, camera.width, camera.height, out_dir.c_str());
      std::printf("latency per frame: p50 %.3f ms, p95 %.3f ms (first frame %.3f ms)\n", percentile(ms, 0.5),
                  percentile(ms, 0.95), ms.front());
    }
    return 0;
  } catch (const flexavatar::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
