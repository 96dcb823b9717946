// libFuzzer target: the photo reader (a PNG: runtime/png.cpp with inflate.cpp; or an in-the-wild .npz crop:
// input_files.cpp) on arbitrary bytes (PNG chunk CRCs mended). Every input must
// give OK with a [3, H, W] image in [0, 1], or kInvalidArgument / kOutOfMemory with a message; crashes, sanitizer
// reports and leaks are bugs.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "inflate.h"
#include "input_files.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Chunk CRCs mended first, as a fuzzer would otherwise rarely get past them: the mutations reach IHDR, the
  // palette, the zlib stream and the filters.
  std::vector<unsigned char> bytes(data, data + size);
  for (size_t at = 8; at + 12 <= bytes.size();) {
    const size_t length = (size_t(bytes[at]) << 24) | (size_t(bytes[at + 1]) << 16) | (size_t(bytes[at + 2]) << 8) |
                          size_t(bytes[at + 3]);
    if (length > bytes.size() - at - 12) break;
    const uint32_t crc = flexavatar::runtime::crc32(bytes.data() + at + 4, length + 4);
    for (int k = 0; k < 4; ++k) bytes[at + 8 + length + size_t(k)] = uint8_t(crc >> (24 - 8 * k));
    at += length + 12;
  }
  std::vector<float> chw;
  int width = 0, height = 0;
  const flexavatar::Status s =
      flexavatar::runtime::parse_photo(bytes.data(), bytes.size(), "fuzz", &chw, &width, &height);
  if (s.ok()) {
    if (width < 1 || height < 1 || chw.size() != size_t(3) * size_t(width) * size_t(height)) std::abort();
    for (const float v : chw)
      if (!(v >= 0.0f && v <= 1.0f)) std::abort();
  } else if ((s.code() != flexavatar::StatusCode::kInvalidArgument &&
              s.code() != flexavatar::StatusCode::kOutOfMemory) ||
             s.message().empty()) {
    std::abort();
  }
  return 0;
}
