// libFuzzer target: the readers of NumPy files on arbitrary bytes: expression sequence files (.npy, or .npz with
// its ZIP directory and DEFLATE members: runtime/input_files.cpp, npz.cpp, inflate.cpp) and a tracked
// sequence's cameras, the check-set reader
// (all-float32 .npz), and the inflater alone. Every input must give OK or a typed status with a message, and what
// is accepted must hold what the readers promise; crashes, sanitizer reports and leaks are bugs.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "input_files.h"
#include "inflate.h"
#include "npz.h"

using flexavatar::Status;
using flexavatar::StatusCode;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<float> codes;
  Status s = flexavatar::runtime::parse_expression_file(data, size, "fuzz", &codes);
  if (s.ok()) {
    if (codes.empty() || codes.size() % 135 != 0) std::abort();
    for (const float v : codes)
      if (!std::isfinite(v)) std::abort();
  } else if ((s.code() != StatusCode::kInvalidArgument && s.code() != StatusCode::kOutOfMemory) ||
             s.message().empty()) {
    std::abort();
  }

  std::vector<float> cam2world, intrinsics;
  s = flexavatar::runtime::parse_sequence_cameras(data, size, "fuzz", &cam2world, &intrinsics);
  if (s.ok() ? (intrinsics.empty() || cam2world.size() / 16 != intrinsics.size() / 9 || cam2world.size() % 16 != 0 ||
                intrinsics.size() % 9 != 0)
             : ((s.code() != StatusCode::kInvalidArgument && s.code() != StatusCode::kOutOfMemory) ||
                s.message().empty()))
    std::abort();

  float photo_c2w[16], photo_k[9];
  s = flexavatar::runtime::parse_photo_camera(data, size, "fuzz", photo_c2w, photo_k);
  if (!s.ok() && ((s.code() != StatusCode::kInvalidArgument && s.code() != StatusCode::kOutOfMemory) ||
                  s.message().empty()))
    std::abort();

  std::map<std::string, flexavatar::runtime::NpyArray> arrays;
  s = flexavatar::runtime::parse_npz_float32(data, size, "fuzz", &arrays);
  if (!s.ok() && ((s.code() != StatusCode::kBundleInvalid && s.code() != StatusCode::kOutOfMemory) ||
                  s.message().empty()))
    std::abort();

  // the inflater on the bytes after two that give the expected size
  if (size >= 2) {
    std::vector<unsigned char> out(size_t(data[0]) | (size_t(data[1]) << 8));
    const std::string error = flexavatar::runtime::inflate_raw(data + 2, size - 2, out.data(), out.size());
    (void)error;
  }
  return 0;
}
