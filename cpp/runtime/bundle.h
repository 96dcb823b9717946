// An exported bundle folder: its validated manifest, checked files, and the avatar code .npy reader.
#pragma once

#include <string>
#include <vector>

#include "flexavatar/status.h"
#include "manifest.h"

namespace flexavatar {
namespace runtime {

enum class Verify { kFull = 0, kSize = 1, kNone = 2 };

struct Bundle {
  std::string root;
  Manifest manifest;
  std::string path(const std::string& relative) const { return root + "/" + relative; }
};

// Reads manifest.json and checks every listed file (exists; size; sha256 with Verify::kFull).
Status open_bundle(const std::string& root, Verify verify, Bundle* out);
// One file against its record: kBundleFileMissing / kBundleHashMismatch with the file named.
Status verify_file(const std::string& root, const FileRecord& record, bool hashes);

// A little-endian C-order .npy file of floats as float32: shape and values (float64 and float16 files converted).
// Other dtypes / orders are rejected.
struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> values;
  std::string descr;  // the file's dtype, e.g. '<f4', '|u1'
};
Status read_npy_float32(const std::string& path, NpyArray* out);
// Text from a file for an error message: bytes outside printable ASCII as \xNN (messages stay valid UTF-8
// whatever a damaged file holds), at most max_chars of it.
std::string printable(const std::string& bytes, size_t max_chars = 200);
// A file's bytes: kIoError when it cannot be opened or read, kInvalidSize when it is larger than max_bytes.
Status read_file_bytes(const std::string& path, size_t max_bytes, std::vector<unsigned char>* out);
// allow_uint8: '|u1' too (a photo's 0-255 samples, as float values 0-255).
Status parse_npy_float32(const unsigned char* bytes, size_t size, const std::string& where, NpyArray* out,
                         bool allow_uint8 = false);

}  // namespace runtime
}  // namespace flexavatar
