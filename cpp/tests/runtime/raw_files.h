// Raw little-endian float32 files exchanged between the runtime test tools and tests/test_cpp_runtime.py.
#pragma once

#include <algorithm>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "flexavatar/flexavatar.hpp"

namespace raw_files {

// The test tools' precision argument ("fp32" / "fp16" / "int8") → options.precision, or -1 (indexed like the enum).
inline int precision_option(const std::string& value) {
  static const char* const kNames[] = {"fp32", "fp16", "int8"};
  static_assert(std::size(kNames) == FLEXAVATAR_PRECISION_INT8 + 1, "a name for every flexavatar_precision");
  const auto it = std::find(std::begin(kNames), std::end(kNames), value);
  return it == std::end(kNames) ? -1 : int(it - std::begin(kNames));
}

inline std::vector<float> read_floats(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw flexavatar::Error(FLEXAVATAR_ERROR_IO, "cannot open " + path);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<float> out(bytes.size() / sizeof(float));
  std::copy(bytes.begin(), bytes.begin() + long(out.size() * sizeof(float)), reinterpret_cast<char*>(out.data()));
  return out;
}

inline void write(const std::string& path, const void* data, size_t bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), long(bytes));
  if (!out) throw flexavatar::Error(FLEXAVATAR_ERROR_IO, "cannot write " + path);
}

// CAMERA.f32 of the test tools: cam2world[16], intrinsics[9], width, height, background[3] (30 floats).
inline flexavatar_camera read_camera(const std::string& path) {
  const std::vector<float> cam = read_floats(path);
  if (cam.size() != 30) throw flexavatar::Error(FLEXAVATAR_ERROR_INVALID_SIZE, "camera file needs 30 floats");
  flexavatar_camera camera{};
  std::copy(cam.begin(), cam.begin() + 16, camera.cam2world);
  std::copy(cam.begin() + 16, cam.begin() + 25, camera.intrinsics);
  camera.width = int32_t(cam[25]);
  camera.height = int32_t(cam[26]);
  std::copy(cam.begin() + 27, cam.end(), camera.background);
  return camera;
}

}  // namespace raw_files
