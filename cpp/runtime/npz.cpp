#include "npz.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <vector>

#include "inflate.h"
#include "platform.h"

namespace flexavatar {
namespace runtime {
namespace {

constexpr uint32_t kLocalHeader = 0x04034b50, kCentralHeader = 0x02014b50, kEndOfCentral = 0x06054b50,
                   kZip64End = 0x06064b50, kZip64Locator = 0x07064b50;
constexpr uint16_t kZip64Extra = 0x0001;
constexpr uint16_t kStored = 0, kDeflated = 8;

uint64_t le(const unsigned char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

Status invalid(const std::string& where, const std::string& what) {
  return Status(StatusCode::kBundleInvalid, where + ": " + what + " (expected a NumPy .npz archive)");
}

std::string hex32(uint32_t v) {
  char text[11];
  std::snprintf(text, sizeof text, "0x%08x", unsigned(v));
  return text;
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

Status list_npz_members(const unsigned char* bytes, size_t size, const std::string& where,
                        std::vector<NpzMember>* out) {
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
    NpzMember member;
    member.method = uint16_t(le(bytes + at + 10, 2));
    member.crc32 = uint32_t(le(bytes + at + 16, 4));
    member.compressed_size = le(bytes + at + 20, 4);
    member.size = le(bytes + at + 24, 4);
    const size_t name_len = size_t(le(bytes + at + 28, 2)), extra_len = size_t(le(bytes + at + 30, 2)),
                 comment_len = size_t(le(bytes + at + 32, 2));
    uint64_t local = le(bytes + at + 42, 4);
    if (at + 46 + name_len + extra_len + comment_len > dir_end)
      return invalid(where, "central directory entry " + std::to_string(n) + " runs past the directory");
    // as printable text: the name goes into messages (a lookup by name compares printable ASCII names)
    member.name = printable(std::string(reinterpret_cast<const char*>(bytes) + at + 46, name_len), 0xFFFF);
    if (!apply_zip64(bytes + at + 46 + name_len, extra_len, &member.size, &member.compressed_size, &local))
      return invalid(where, member.name + ": malformed ZIP64 field");
    at += 46 + name_len + extra_len + comment_len;
    if (member.method != kStored && member.method != kDeflated)
      return invalid(where, member.name + ": compression method " + std::to_string(member.method) +
                                " (expected 0, stored, or 8, deflate: np.savez / np.savez_compressed)");
    if (member.method == kStored && member.compressed_size != member.size)
      return invalid(where, member.name + ": stored sizes differ");
    if (local > size || size - local < 30 || le(bytes + local, 4) != kLocalHeader)
      return invalid(where, member.name + ": bad local header");
    member.data_offset = local + 30 + le(bytes + local + 26, 2) + le(bytes + local + 28, 2);
    if (member.data_offset > size || member.compressed_size > size - member.data_offset)
      return invalid(where, member.name + ": data runs past the end (truncated?)");
    if (member.name.size() > 4 && member.name.compare(member.name.size() - 4, 4, ".npy") == 0)
      member.name.resize(member.name.size() - 4);
    out->push_back(std::move(member));
  }
  return Status::ok_status();
}

Status read_npz_member(const unsigned char* bytes, size_t size, const std::string& where, const NpzMember& member,
                       std::vector<unsigned char>* out) {
  if (member.data_offset > size || member.compressed_size > size - member.data_offset)
    return invalid(where, member.name + ": data runs past the end (truncated?)");
  const unsigned char* data = bytes + member.data_offset;
  if (member.method == kDeflated && member.size > inflate_bound(member.compressed_size))
    return invalid(where, member.name + ": " + std::to_string(member.compressed_size) +
                              " compressed bytes cannot hold the " + std::to_string(member.size) + " bytes claimed");
  try {
    out->resize(size_t(member.size));
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory, where + ": " + member.name + ": cannot allocate " +
                                                std::to_string(member.size) + " bytes");
  }
  if (member.method == kStored) {
    if (member.size > 0) std::memcpy(out->data(), data, size_t(member.size));
  } else {
    const std::string error = inflate_raw(data, size_t(member.compressed_size), out->data(), out->size());
    if (!error.empty()) return invalid(where, member.name + ": " + error);
  }
  const uint32_t crc = crc32(out->data(), out->size());
  if (crc != member.crc32)
    return invalid(where, member.name + ": CRC-32 " + hex32(crc) + " of the data, the archive says " +
                              hex32(member.crc32) + " (damaged file)");
  return Status::ok_status();
}

Status parse_npz_float32(const unsigned char* bytes, size_t size, const std::string& where,
                         std::map<std::string, NpyArray>* out) {
  if (!out) return Status(StatusCode::kNullPointer, "out: got a null pointer");
  out->clear();
  std::vector<NpzMember> members;
  Status s = list_npz_members(bytes, size, where, &members);
  if (!s.ok()) return s;
  std::vector<unsigned char> data;
  for (const NpzMember& member : members) {
    if (!(s = read_npz_member(bytes, size, where, member, &data)).ok()) return s;
    NpyArray array;
    s = parse_npy_float32(data.data(), data.size(), where + ": " + member.name, &array);
    if (!s.ok()) return Status(StatusCode::kBundleInvalid, s.message());
    (*out)[member.name] = std::move(array);
  }
  return Status::ok_status();
}

Status read_npz_float32(const std::string& path, std::map<std::string, NpyArray>* out) {
  std::vector<unsigned char> bytes;
  Status s = read_file_bytes(path, size_t(1) << 32, &bytes);
  if (!s.ok()) return s.code() == StatusCode::kIoError ? Status(StatusCode::kBundleFileMissing, s.message()) : s;
  return parse_npz_float32(bytes.data(), bytes.size(), path, out);
}

}  // namespace runtime
}  // namespace flexavatar
