// Raw little-endian float32 files exchanged between the runtime test tools and tests/test_cpp_runtime.py.
#pragma once

#include <algorithm>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "flexavatar/flexavatar.hpp"

namespace raw_files {

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

}  // namespace raw_files
