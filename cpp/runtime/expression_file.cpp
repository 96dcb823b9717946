#include "expression_file.h"

#include <cmath>
#include <cstring>

#include "bundle.h"
#include "head_pose.h"
#include "npz.h"

namespace flexavatar {
namespace runtime {
namespace {

Status bad_file(const std::string& message) { return Status(StatusCode::kInvalidArgument, message); }

// The .npz readers' kBundleInvalid (they serve the bundle's check set) is a bad argument here.
Status as_argument_error(const Status& s) {
  return s.code() == StatusCode::kBundleInvalid ? bad_file(s.message()) : s;
}

Status checked_codes(const NpyArray& array, const std::string& where, std::vector<float>* codes) {
  const std::vector<int64_t>& shape = array.shape;
  std::string shape_text = "[";
  for (size_t k = 0; k < shape.size(); ++k) shape_text += (k ? ", " : "") + std::to_string(shape[k]);
  shape_text += "]";
  if (shape.empty() || shape.size() > 2 || shape.back() != kExpressionDim || array.values.empty())
    return bad_file(where + ": shape " + shape_text + ", expected [E, " + std::to_string(kExpressionDim) +
                    "] with E >= 1 (or [" + std::to_string(kExpressionDim) + "] for one frame)");
  const size_t frames = array.values.size() / size_t(kExpressionDim);
  size_t bad = 0, first_bad = 0;
  for (size_t f = 0; f < frames; ++f) {
    const float* row = array.values.data() + f * size_t(kExpressionDim);
    for (int64_t k = 0; k < kExpressionDim; ++k)
      if (!std::isfinite(row[k])) {
        if (bad++ == 0) first_bad = f;
        break;
      }
  }
  if (bad > 0)
    return bad_file(where + ": NaN/inf in " + std::to_string(bad) + " of " + std::to_string(frames) +
                    " frames, the first is frame " + std::to_string(first_bad) + " (expected finite values)");
  *codes = array.values;
  return Status::ok_status();
}

}  // namespace

Status parse_expression_file(const unsigned char* bytes, size_t size, const std::string& where,
                             std::vector<float>* codes) {
  if (!codes) return Status(StatusCode::kNullPointer, "codes: got a null pointer");
  codes->clear();
  NpyArray array;
  if (size >= 4 && std::memcmp(bytes, "PK", 2) == 0) {
    std::vector<NpzMember> members;
    Status s = list_npz_members(bytes, size, where, &members);
    if (!s.ok()) return as_argument_error(s);
    const NpzMember* found = nullptr;
    std::string names;
    for (const NpzMember& member : members) {
      if (member.name == kExpressionSequenceKey) found = &member;
      names += (names.empty() ? "" : ", ") + member.name;
    }
    if (!found)
      return bad_file(where + ": no '" + kExpressionSequenceKey + "' array (members: " +
                      (names.empty() ? "none" : names) + "; expected an .npz with " + kExpressionSequenceKey +
                      " [E, " + std::to_string(kExpressionDim) + "], as the tracked sequences)");
    std::vector<unsigned char> npy;
    if (!(s = read_npz_member(bytes, size, where, *found, &npy)).ok()) return as_argument_error(s);
    const std::string member_where = where + ": " + kExpressionSequenceKey;
    if (!(s = parse_npy_float32(npy.data(), npy.size(), member_where, &array)).ok()) return as_argument_error(s);
    return checked_codes(array, member_where, codes);
  }
  if (size >= 6 && std::memcmp(bytes, "\x93NUMPY", 6) == 0) {
    Status s = parse_npy_float32(bytes, size, where, &array);
    if (!s.ok()) return bad_file(s.message());
    return checked_codes(array, where, codes);
  }
  return bad_file(where + ": neither a .npy file nor an .npz archive (expected float32 expression codes [E, " +
                  std::to_string(kExpressionDim) + "], or an .npz with " + kExpressionSequenceKey + ")");
}

Status read_expression_file(const std::string& path, std::vector<float>* codes) {
  if (!codes) return Status(StatusCode::kNullPointer, "codes: got a null pointer");
  std::vector<unsigned char> bytes;
  Status s = read_file_bytes(path, size_t(1) << 32, &bytes);
  if (s.code() == StatusCode::kIoError)
    return Status(s.code(), path + ": cannot open or read (expected an expression sequence .npy or .npz)");
  if (!s.ok()) return s;
  return parse_expression_file(bytes.data(), bytes.size(), path, codes);
}

}  // namespace runtime
}  // namespace flexavatar
