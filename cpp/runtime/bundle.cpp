#include "bundle.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include "platform.h"
#include "sha256.h"

namespace flexavatar {
namespace runtime {
namespace {

bool regular_file_size(const std::string& path, int64_t* size) {
  std::error_code ec;
  const std::filesystem::path file = platform::fs_path(path);
  if (!std::filesystem::is_regular_file(file, ec)) return false;
  const auto bytes = std::filesystem::file_size(file, ec);
  if (ec) return false;
  *size = int64_t(bytes);
  return true;
}

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t");
  const size_t b = s.find_last_not_of(" \t");
  return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
}

// The value text after 'key': in a numpy header dict ("{'descr': '<f4', 'fortran_order': False, ...}").
bool header_value(const std::string& header, const std::string& key, std::string* value) {
  const size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) return false;
  size_t colon = header.find(':', at);
  if (colon == std::string::npos) return false;
  size_t start = colon + 1, end;
  while (start < header.size() && header[start] == ' ') ++start;
  if (start < header.size() && header[start] == '(') {
    end = header.find(')', start);
    if (end == std::string::npos) return false;
    *value = header.substr(start, end - start + 1);
  } else {
    end = header.find_first_of(",}", start);
    if (end == std::string::npos) return false;
    *value = trim(header.substr(start, end - start));
  }
  return true;
}

}  // namespace

Status verify_file(const std::string& root, const FileRecord& record, bool hashes) {
  const std::string path = root + "/" + record.path;
  int64_t size = 0;
  if (!regular_file_size(path, &size))
    return Status(StatusCode::kBundleFileMissing,
                  "bundle file missing: " + record.path + " (listed in " + kManifestName + " of " + root + ")");
  if (size != record.size)
    return Status(StatusCode::kBundleHashMismatch, "bundle file " + record.path + " has " + std::to_string(size) +
                                                       " bytes, the manifest says " + std::to_string(record.size) +
                                                       " (truncated or replaced?)");
  if (hashes) {
    std::string digest;
    Status s = sha256_file(path, &digest);
    if (!s.ok()) return s;
    if (digest != record.sha256)
      return Status(StatusCode::kBundleHashMismatch, "bundle file " + record.path + ": sha256 " +
                                                         digest.substr(0, 16) + "... differs from the manifest's " +
                                                         record.sha256.substr(0, 16) + "... (corrupted or replaced)");
  }
  return Status::ok_status();
}

Status open_bundle(const std::string& root, Verify verify, Bundle* out) {
  if (!out) return Status(StatusCode::kNullPointer, "open_bundle: out is null");
  std::error_code ec;
  if (!std::filesystem::is_directory(platform::fs_path(root), ec))
    return Status(StatusCode::kBundleFileMissing, "bundle folder not found: " + root);
  Bundle bundle;
  bundle.root = root;
  Status s = read_manifest(root, &bundle.manifest);
  if (!s.ok()) return s;
  if (verify != Verify::kNone) {
    for (const auto& record : bundle.manifest.files()) {
      s = verify_file(root, record, verify == Verify::kFull);
      if (!s.ok()) return s;
    }
  }
  *out = std::move(bundle);
  return Status::ok_status();
}

Status parse_npy_float32(const unsigned char* bytes, size_t size, const std::string& where, NpyArray* out) {
  // Format: "\x93NUMPY", major, minor, header length (2 bytes v1, 4 bytes v2/v3), ASCII dict, data.
  if (size < 10 || std::memcmp(bytes, "\x93NUMPY", 6) != 0)
    return Status(StatusCode::kInvalidArgument, where + ": not a .npy file (bad magic)");
  const int major = bytes[6];
  size_t header_len, offset;
  if (major == 1) {
    header_len = size_t(bytes[8]) | (size_t(bytes[9]) << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) return Status(StatusCode::kInvalidArgument, where + ": truncated .npy header");
    header_len = size_t(bytes[8]) | (size_t(bytes[9]) << 8) | (size_t(bytes[10]) << 16) | (size_t(bytes[11]) << 24);
    offset = 12;
  } else {
    return Status(StatusCode::kInvalidArgument, where + ": unsupported .npy version " + std::to_string(major));
  }
  if (header_len > size - offset) return Status(StatusCode::kInvalidArgument, where + ": truncated .npy header");
  const std::string header(reinterpret_cast<const char*>(bytes) + offset, header_len);
  std::string descr, fortran, shape;
  if (!header_value(header, "descr", &descr) || !header_value(header, "fortran_order", &fortran) ||
      !header_value(header, "shape", &shape))
    return Status(StatusCode::kInvalidArgument, where + ": malformed .npy header " + printable(header));
  if (descr != "'<f4'")
    return Status(StatusCode::kInvalidArgument, where + ": dtype " + descr + ", expected float32 ('<f4')");
  if (fortran != "False")
    return Status(StatusCode::kInvalidArgument, where + ": Fortran-ordered array, expected C order");
  std::vector<int64_t> dims;
  int64_t count = 1;
  size_t i = 1;  // after '('
  while (i < shape.size()) {
    while (i < shape.size() && (shape[i] == ' ' || shape[i] == ',')) ++i;
    if (i >= shape.size() || shape[i] == ')') break;
    if (shape[i] < '0' || shape[i] > '9')
      return Status(StatusCode::kInvalidArgument, where + ": malformed .npy shape " + shape);
    int64_t d = 0;
    while (i < shape.size() && shape[i] >= '0' && shape[i] <= '9') {
      d = d * 10 + (shape[i++] - '0');
      if (d > (int64_t(1) << 40)) return Status(StatusCode::kInvalidSize, where + ": .npy dimension too large");
    }
    dims.push_back(d);
    // checked before multiplying: count and d are each <= 2^40, their product can overflow int64
    if (d != 0 && count > (int64_t(1) << 40) / d)
      return Status(StatusCode::kInvalidSize, where + ": .npy array too large");
    count *= d;
  }
  const size_t data_offset = offset + header_len;
  if (size - data_offset != size_t(count) * sizeof(float))
    return Status(StatusCode::kInvalidSize, where + ": " + std::to_string(size - data_offset) +
                                                " data bytes, the header's shape " + shape + " needs " +
                                                std::to_string(count * 4));
  out->shape = dims;
  out->values.resize(size_t(count));
  if (count > 0) std::memcpy(out->values.data(), bytes + data_offset, size_t(count) * sizeof(float));
  return Status::ok_status();
}

std::string printable(const std::string& bytes, size_t max_chars) {
  std::string out;
  for (const char c : bytes) {
    if (out.size() >= max_chars) return out + "...";
    const unsigned char u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7F) {
      out += c;
    } else {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 15];
    }
  }
  return out;
}

Status read_file_bytes(const std::string& path, size_t max_bytes, std::vector<unsigned char>* out) {
  switch (platform::read_file(path, max_bytes, out)) {
    case platform::ReadResult::kOk: return Status::ok_status();
    case platform::ReadResult::kCannotOpen: return Status(StatusCode::kIoError, "cannot open " + path);
    case platform::ReadResult::kReadError: return Status(StatusCode::kIoError, "read error on " + path);
    case platform::ReadResult::kTooLarge: break;
  }
  return Status(StatusCode::kInvalidSize, path + " is larger than " + std::to_string(max_bytes >> 20) + " MiB");
}

Status read_npy_float32(const std::string& path, NpyArray* out) {
  if (!out) return Status(StatusCode::kNullPointer, "read_npy_float32: out is null");
  std::vector<unsigned char> bytes;
  Status s = read_file_bytes(path, size_t(1) << 32, &bytes);
  return s.ok() ? parse_npy_float32(bytes.data(), bytes.size(), path, out) : s;
}

}  // namespace runtime
}  // namespace flexavatar
