#include "npz.h"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include "platform.h"

namespace flexavatar {
namespace runtime {
namespace {

constexpr uint32_t kLocalHeader = 0x04034b50, kCentralHeader = 0x02014b50, kEndOfCentral = 0x06054b50,
                   kZip64End = 0x06064b50, kZip64Locator = 0x07064b50;
constexpr uint16_t kZip64Extra = 0x0001;

uint64_t le(const unsigned char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

Status invalid(const std::string& where, const std::string& what) {
  return Status(StatusCode::kBundleInvalid, where + ": " + what + " (expected an np.savez archive of float32 arrays)");
}

// The ZIP64 extended-information field replaces, in this order, each of the 32-bit fields that hold 0xFFFFFFFF.
bool apply_zip64(const unsigned char* extra, size_t extra_len, uint64_t* uncompressed, uint64_t* compressed,
                 uint64_t* offset) {
  size_t at = 0;
  while (at + 4 <= extra_len) {
    const uint16_t id = uint16_t(le(extra + at, 2));
    const size_t len = size_t(le(extra + at + 2, 2));
    if (at + 4 + len > extra_len) return false;
    if (id == kZip64Extra) {
      size_t field = at + 4;
      for (uint64_t* value : {uncompressed, compressed, offset}) {
        if (!value || *value != 0xFFFFFFFFu) continue;
        if (field + 8 > at + 4 + len) return false;
        *value = le(extra + field, 8);
        field += 8;
      }
    }
    at += 4 + len;
  }
  return true;
}

}  // namespace

Status parse_npz_float32(const unsigned char* bytes, size_t size, const std::string& where,
                         std::map<std::string, NpyArray>* out) {
  if (!out) return Status(StatusCode::kNullPointer, "out: got a null pointer");
  out->clear();
  // The end-of-central-directory record: the last 22 bytes, or earlier by an archive comment (< 64 KiB).
  if (size < 22) return invalid(where, "too short for a ZIP archive (" + std::to_string(size) + " bytes)");
  size_t eocd = size - 22;
  const size_t lowest = size > 22 + 0xFFFF ? size - 22 - 0xFFFF : 0;
  while (le(bytes + eocd, 4) != kEndOfCentral) {
    if (eocd == lowest) return invalid(where, "no ZIP end-of-central-directory record (truncated?)");
    --eocd;
  }
  uint64_t entries = le(bytes + eocd + 10, 2), dir_size = le(bytes + eocd + 12, 4),
           dir_offset = le(bytes + eocd + 16, 4);
  if ((entries == 0xFFFF || dir_size == 0xFFFFFFFFu || dir_offset == 0xFFFFFFFFu) && eocd >= 20 &&
      le(bytes + eocd - 20, 4) == kZip64Locator) {
    const uint64_t zip64_end = le(bytes + eocd - 20 + 8, 8);
    if (zip64_end > size || size - zip64_end < 56 || le(bytes + zip64_end, 4) != kZip64End)
      return invalid(where, "bad ZIP64 end-of-central-directory record");
    entries = le(bytes + zip64_end + 32, 8);
    dir_size = le(bytes + zip64_end + 40, 8);
    dir_offset = le(bytes + zip64_end + 48, 8);
  }
  if (dir_offset > size || dir_size > size - dir_offset) return invalid(where, "central directory out of range");
  size_t at = size_t(dir_offset);
  const size_t dir_end = size_t(dir_offset + dir_size);
  for (uint64_t n = 0; n < entries; ++n) {
    if (at + 46 > dir_end || le(bytes + at, 4) != kCentralHeader)
      return invalid(where, "malformed central directory entry " + std::to_string(n));
    const uint16_t method = uint16_t(le(bytes + at + 10, 2));
    uint64_t compressed = le(bytes + at + 20, 4), uncompressed = le(bytes + at + 24, 4);
    const size_t name_len = size_t(le(bytes + at + 28, 2)), extra_len = size_t(le(bytes + at + 30, 2)),
                 comment_len = size_t(le(bytes + at + 32, 2));
    uint64_t local = le(bytes + at + 42, 4);
    if (at + 46 + name_len + extra_len + comment_len > dir_end)
      return invalid(where, "central directory entry " + std::to_string(n) + " runs past the directory");
    std::string name(reinterpret_cast<const char*>(bytes) + at + 46, name_len);
    if (!apply_zip64(bytes + at + 46 + name_len, extra_len, &uncompressed, &compressed, &local))
      return invalid(where, name + ": malformed ZIP64 field");
    at += 46 + name_len + extra_len + comment_len;
    if (method != 0)
      return invalid(where, name + " is compressed (method " + std::to_string(method) + "), expected stored");
    if (compressed != uncompressed) return invalid(where, name + ": stored sizes differ");
    if (local > size || size - local < 30 || le(bytes + local, 4) != kLocalHeader)
      return invalid(where, name + ": bad local header");
    const uint64_t data = local + 30 + le(bytes + local + 26, 2) + le(bytes + local + 28, 2);
    if (data > size || uncompressed > size - data) return invalid(where, name + ": data runs past the end (truncated?)");
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0) name.resize(name.size() - 4);
    NpyArray array;
    Status s = parse_npy_float32(bytes + data, size_t(uncompressed), where + ": " + name, &array);
    if (!s.ok()) return Status(StatusCode::kBundleInvalid, s.message());
    (*out)[name] = std::move(array);
  }
  return Status::ok_status();
}

Status read_npz_float32(const std::string& path, std::map<std::string, NpyArray>* out) {
  std::ifstream file(platform::fs_path(path), std::ios::binary);
  if (!file) return Status(StatusCode::kBundleFileMissing, path + ": cannot open");
  const std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  return parse_npz_float32(bytes.data(), bytes.size(), path, out);
}

}  // namespace runtime
}  // namespace flexavatar
