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

namespace {

// IEEE 754 binary16 → binary32, exactly (every half value is a float value).
float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu;
  uint32_t bits;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);  // inf, NaN
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);  // rebias 15 → 127
  } else if (mantissa == 0) {
    bits = sign;  // ±0
  } else {  // subnormal: normalise
    uint32_t m = mantissa, e = 113;
    while (!(m & 0x400u)) {
      m <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((m & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace

Status parse_npy_float32(const unsigned char* bytes, size_t size, const std::string& where, NpyArray* out,
                         bool allow_uint8) {
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
  // float32 as it is; float64 (numpy's default, np.save of a Python float array) and float16 converted, as the
  // Python runtime's .astype(np.float32) does (float64 beyond float32's range becomes inf: the callers' finiteness
  // checks name it)
  const bool bytes_ok = allow_uint8 && descr == "'|u1'";
  const size_t item = descr == "'<f4'" ? 4 : descr == "'<f8'" ? 8 : descr == "'<f2'" ? 2 : bytes_ok ? 1 : 0;
  if (item == 0)
    return Status(StatusCode::kInvalidArgument,
                  where + ": dtype " + printable(descr) +
                      ", expected float32 ('<f4'; float64 and float16 are converted)");
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
  if (size - data_offset != size_t(count) * item)
    return Status(StatusCode::kInvalidSize, where + ": " + std::to_string(size - data_offset) +
                                                " data bytes, the header's shape " + printable(shape) + " needs " +
                                                std::to_string(size_t(count) * item));
  out->shape = dims;
  out->descr = descr;
  out->values.resize(size_t(count));
  const unsigned char* data = bytes + data_offset;
  if (item == 4) {
    if (count > 0) std::memcpy(out->values.data(), data, size_t(count) * sizeof(float));
  } else if (item == 8) {
    for (size_t i = 0; i < size_t(count); ++i) {
      double v;
      std::memcpy(&v, data + 8 * i, 8);
      out->values[i] = static_cast<float>(v);  // round to nearest; beyond float32's range: inf
    }
  } else if (item == 2) {
    for (size_t i = 0; i < size_t(count); ++i)
      out->values[i] = half_to_float(uint16_t(data[2 * i] | (data[2 * i + 1] << 8)));
  } else {
    for (size_t i = 0; i < size_t(count); ++i) out->values[i] = float(data[i]);
  }
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
