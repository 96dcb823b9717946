#include "input_files.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "bundle.h"
#include "head_pose.h"
#include "npz.h"
#include "png.h"

namespace flexavatar {
namespace runtime {
namespace {

Status bad_file(const std::string& message) { return Status(StatusCode::kInvalidArgument, message); }

// The .npz readers' kBundleInvalid (they serve the bundle's check set) is a bad argument here.
Status as_argument_error(const Status& s) {
  return s.code() == StatusCode::kBundleInvalid ? bad_file(s.message()) : s;
}

bool is_zip(const unsigned char* bytes, size_t size) { return size >= 4 && std::memcmp(bytes, "PK", 2) == 0; }

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t k = 0; k < shape.size(); ++k) text += (k ? ", " : "") + std::to_string(shape[k]);
  return text + "]";
}

// The float32 members `names` of an .npz archive, into arrays (in that order). A missing member: kInvalidArgument
// listing those missing and the archive's members, with `expected` saying what the caller reads.
Status read_members(const unsigned char* bytes, size_t size, const std::string& where,
                    const std::vector<std::string>& names, const std::string& expected,
                    std::vector<NpyArray>* arrays, bool allow_uint8 = false) {
  std::vector<NpzMember> members;
  Status s = list_npz_members(bytes, size, where, &members);
  if (!s.ok()) return as_argument_error(s);
  std::string missing, listed;
  for (const NpzMember& member : members) listed += (listed.empty() ? "" : ", ") + member.name;
  arrays->assign(names.size(), NpyArray());
  std::vector<unsigned char> npy;
  for (size_t k = 0; k < names.size(); ++k) {
    const NpzMember* found = nullptr;
    for (const NpzMember& member : members)
      if (member.name == names[k]) found = &member;
    if (!found) {
      missing += (missing.empty() ? "'" : " / '") + names[k] + "'";
      continue;
    }
    if (!(s = read_npz_member(bytes, size, where, *found, &npy)).ok()) return as_argument_error(s);
    if (!(s = parse_npy_float32(npy.data(), npy.size(), where + ": " + names[k], &(*arrays)[k], allow_uint8)).ok())
      return as_argument_error(s);
  }
  if (!missing.empty())
    return bad_file(where + ": no " + missing + " array (members: " + (listed.empty() ? "none" : listed) +
                    "; expected " + expected + ")");
  return Status::ok_status();
}

// The first of `frames` rows of `row` values that holds NaN / inf, or `frames`; *bad counts such rows.
size_t first_non_finite_row(const std::vector<float>& values, size_t row, size_t* bad) {
  const size_t frames = values.size() / row;
  size_t first = frames;
  *bad = 0;
  for (size_t f = 0; f < frames; ++f)
    for (size_t k = 0; k < row; ++k)
      if (!std::isfinite(values[f * row + k])) {
        if ((*bad)++ == 0) first = f;
        break;
      }
  return first;
}

Status checked_codes(const NpyArray& array, const std::string& where, std::vector<float>* codes) {
  const std::vector<int64_t>& shape = array.shape;
  if (shape.empty() || shape.size() > 2 || shape.back() != kExpressionDim || array.values.empty())
    return bad_file(where + ": shape " + shape_text(shape) + ", expected [E, " + std::to_string(kExpressionDim) +
                    "] with E >= 1 (or [" + std::to_string(kExpressionDim) + "] for one frame)");
  size_t bad = 0;
  const size_t first = first_non_finite_row(array.values, size_t(kExpressionDim), &bad);
  if (bad > 0)
    return bad_file(where + ": NaN/inf (or values beyond float32) in " + std::to_string(bad) + " of " +
                    std::to_string(array.values.size() / size_t(kExpressionDim)) + " frames, the first is frame " +
                    std::to_string(first) + " (expected finite values)");
  *codes = array.values;
  return Status::ok_status();
}

}  // namespace

Status parse_expression_file(const unsigned char* bytes, size_t size, const std::string& where,
                             std::vector<float>* codes) {
  if (!codes) return Status(StatusCode::kNullPointer, "codes: got a null pointer");
  codes->clear();
  if (is_zip(bytes, size)) {
    std::vector<NpyArray> arrays;
    Status s = read_members(bytes, size, where, {kExpressionSequenceKey},
                            std::string("an .npz with ") + kExpressionSequenceKey + " [E, " +
                                std::to_string(kExpressionDim) + "], as the tracked sequences",
                            &arrays);
    return s.ok() ? checked_codes(arrays[0], where + ": " + kExpressionSequenceKey, codes) : s;
  }
  if (size >= 6 && std::memcmp(bytes, "\x93NUMPY", 6) == 0) {
    NpyArray array;
    Status s = parse_npy_float32(bytes, size, where, &array);
    if (!s.ok()) return bad_file(s.message());
    return checked_codes(array, where, codes);
  }
  return bad_file(where + ": neither a .npy file nor an .npz archive (expected float32 expression codes [E, " +
                  std::to_string(kExpressionDim) + "], or an .npz with " + kExpressionSequenceKey + ")");
}

Status parse_sequence_cameras(const unsigned char* bytes, size_t size, const std::string& where,
                              std::vector<float>* cam2world, std::vector<float>* intrinsics) {
  if (!cam2world || !intrinsics) return Status(StatusCode::kNullPointer, "cam2world / intrinsics: a null pointer");
  cam2world->clear();
  intrinsics->clear();
  const std::string expected = "a tracked sequence .npz with cam2world [E, 4, 4] and intrinsics [E, 3, 3]";
  if (!is_zip(bytes, size)) return bad_file(where + ": not an .npz archive (expected " + expected + ")");
  std::vector<NpyArray> arrays;
  Status s = read_members(bytes, size, where, {"cam2world", "intrinsics"}, expected, &arrays);
  if (!s.ok()) return s;
  const std::vector<int64_t>&c = arrays[0].shape, &k = arrays[1].shape;
  if (c.size() != 3 || c[1] != 4 || c[2] != 4 || k.size() != 3 || k[1] != 3 || k[2] != 3 || c[0] != k[0] ||
      c[0] < 1)
    return bad_file(where + ": cam2world " + shape_text(c) + " and intrinsics " + shape_text(k) + " (expected " +
                    expected + ", E >= 1)");
  size_t bad_c = 0, bad_k = 0;
  const size_t first_c = first_non_finite_row(arrays[0].values, 16, &bad_c),
               first_k = first_non_finite_row(arrays[1].values, 9, &bad_k);
  if (bad_c + bad_k > 0)
    return bad_file(where + ": NaN/inf (or values beyond float32) in the camera of frame " +
                    std::to_string(std::min(first_c, first_k)) +
                    " (expected finite cam2world and intrinsics)");
  *cam2world = std::move(arrays[0].values);
  *intrinsics = std::move(arrays[1].values);
  return Status::ok_status();
}

Status parse_photo(const unsigned char* bytes, size_t size, const std::string& where, std::vector<float>* chw,
                   int* width, int* height) {
  if (!chw || !width || !height) return Status(StatusCode::kNullPointer, "parse_photo: a null output pointer");
  if (!is_zip(bytes, size)) return parse_png(bytes, size, where, chw, width, height);
  chw->clear();
  std::vector<NpyArray> arrays;
  const std::string expected = "an in-the-wild example .npz with image [S, S, 3], uint8 or float in [0, 1]";
  Status s = read_members(bytes, size, where, {"image"}, expected, &arrays, /*allow_uint8=*/true);
  if (!s.ok()) return s;
  const NpyArray& image = arrays[0];
  const std::vector<int64_t>& shape = image.shape;
  if (shape.size() != 3 || (shape[2] != 3 && shape[2] != 4) || shape[0] < 1 || shape[1] < 1 ||
      shape[0] > 16384 || shape[1] > 16384)
    return bad_file(where + ": image " + shape_text(shape) + " (expected " + expected + ", or RGBA [S, S, 4])");
  const bool uint8 = image.descr == "'|u1'";
  const size_t h = size_t(shape[0]), w = size_t(shape[1]), c = size_t(shape[2]), plane = h * w;
  std::vector<float> unit(image.values.size());
  for (size_t i = 0; i < unit.size(); ++i) {
    const float v = image.values[i];
    if (uint8) {
      unit[i] = v / 255.0f;
      continue;
    }
    // floats as the Python runtime takes them: finite, in [0, 1] give or take 1e-3 (then clipped)
    if (!std::isfinite(v) || v < -1e-3f || v > 1.0f + 1e-3f)
      return bad_file(where + ": image value " + std::to_string(v) + " at index " + std::to_string(i) +
                      " (expected uint8 0-255, or float in [0, 1])");
    unit[i] = std::min(1.0f, std::max(0.0f, v));
  }
  chw->assign(3 * plane, 0.0f);
  for (size_t p = 0; p < plane; ++p) {
    const float alpha = c == 4 ? unit[p * 4 + 3] : 1.0f;
    for (size_t k = 0; k < 3; ++k)
      (*chw)[k * plane + p] = c == 4 ? unit[p * c + k] * alpha + (1.0f - alpha) : unit[p * c + k];  // onto white
  }
  *width = int(w);
  *height = int(h);
  return Status::ok_status();
}

Status parse_photo_camera(const unsigned char* bytes, size_t size, const std::string& where, float cam2world[16],
                          float intrinsics[9]) {
  const std::string expected = "an in-the-wild example .npz with cam2world [4, 4] and intrinsics [3, 3]";
  if (!is_zip(bytes, size))
    return bad_file(where + ": not an .npz archive, so no camera (expected " + expected + ")");
  std::vector<NpyArray> arrays;
  Status s = read_members(bytes, size, where, {"cam2world", "intrinsics"}, expected, &arrays);
  if (!s.ok()) return s;
  if (arrays[0].shape != std::vector<int64_t>{4, 4} || arrays[1].shape != std::vector<int64_t>{3, 3})
    return bad_file(where + ": cam2world " + shape_text(arrays[0].shape) + " and intrinsics " +
                    shape_text(arrays[1].shape) + " (expected " + expected + ")");
  size_t bad = 0;
  first_non_finite_row(arrays[0].values, 16, &bad);
  size_t bad_k = 0;
  first_non_finite_row(arrays[1].values, 9, &bad_k);
  if (bad + bad_k > 0) return bad_file(where + ": NaN/inf in the photo's camera (expected finite values)");
  std::copy(arrays[0].values.begin(), arrays[0].values.end(), cam2world);
  std::copy(arrays[1].values.begin(), arrays[1].values.end(), intrinsics);
  return Status::ok_status();
}

namespace {

// parse(bytes, size) on the file's bytes; kIoError naming the file and what was `expected` when it cannot be read.
template <class Parse>
Status with_file_bytes(const std::string& path, const char* expected, Parse parse) {
  std::vector<unsigned char> bytes;
  Status s = read_file_bytes(path, size_t(1) << 32, &bytes);
  if (s.code() == StatusCode::kIoError)
    return Status(s.code(), path + ": cannot open or read (expected " + expected + ")");
  return s.ok() ? parse(bytes.data(), bytes.size()) : s;
}

}  // namespace

Status read_expression_file(const std::string& path, std::vector<float>* codes) {
  if (!codes) return Status(StatusCode::kNullPointer, "codes: got a null pointer");
  return with_file_bytes(path, "an expression sequence .npy or .npz", [&](const unsigned char* bytes, size_t size) {
    return parse_expression_file(bytes, size, path, codes);
  });
}

Status read_photo(const std::string& path, std::vector<float>* chw, int* width, int* height) {
  return with_file_bytes(path, "a photo: .png or an in-the-wild example .npz",
                         [&](const unsigned char* bytes, size_t size) {
                           return parse_photo(bytes, size, path, chw, width, height);
                         });
}

Status read_photo_camera(const std::string& path, float cam2world[16], float intrinsics[9]) {
  return with_file_bytes(path, "an in-the-wild example .npz", [&](const unsigned char* bytes, size_t size) {
    return parse_photo_camera(bytes, size, path, cam2world, intrinsics);
  });
}

Status read_sequence_cameras(const std::string& path, std::vector<float>* cam2world, std::vector<float>* intrinsics) {
  return with_file_bytes(path, "a tracked sequence .npz", [&](const unsigned char* bytes, size_t size) {
    return parse_sequence_cameras(bytes, size, path, cam2world, intrinsics);
  });
}

}  // namespace runtime
}  // namespace flexavatar
