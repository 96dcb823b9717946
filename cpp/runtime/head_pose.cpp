#include "head_pose.h"

#include <cmath>
#include <string>

namespace flexavatar {
namespace runtime {

Status head_pose(const float* expression, int64_t count, double m[16]) {
  if (!expression) return Status(StatusCode::kNullPointer, "expression is NULL");
  if (count != kExpressionDim)
    return Status(StatusCode::kInvalidSize, "expression has " + std::to_string(count) + " values, expected " +
                                                std::to_string(kExpressionDim) + " (one FLEX expression code)");
  for (int i = kHeadRotationOffset; i < kHeadTranslationOffset + 3; ++i) {
    if (!std::isfinite(expression[i]))
      return Status(StatusCode::kInvalidArgument,
                    "expression[" + std::to_string(i) + "] is not finite, expected a finite head pose");
  }
  const float* r6 = expression + kHeadRotationOffset;
  const double a1[3] = {r6[0], r6[1], r6[2]}, a2[3] = {r6[3], r6[4], r6[5]};
  const double n1 = std::sqrt(a1[0] * a1[0] + a1[1] * a1[1] + a1[2] * a1[2]);
  double b1[3], b2[3], b3[3];
  double d = 0, n2 = 0;
  if (n1 >= kMinRot6dNorm) {
    for (int i = 0; i < 3; ++i) b1[i] = a1[i] / n1;
    d = b1[0] * a2[0] + b1[1] * a2[1] + b1[2] * a2[2];
    for (int i = 0; i < 3; ++i) b2[i] = a2[i] - d * b1[i];
    n2 = std::sqrt(b2[0] * b2[0] + b2[1] * b2[1] + b2[2] * b2[2]);
  }
  if (n1 < kMinRot6dNorm || n2 < kMinRot6dNorm) {
    std::string values;
    for (int i = 0; i < 6; ++i) values += (i ? " " : "") + std::to_string(r6[i]);
    return Status(StatusCode::kInvalidArgument,
                  "expression[126:132] (the head rotation) is [" + values +
                      "], expected a 6D rotation (two non-parallel 3-vectors, e.g. 1 0 0 0 1 0 for none)");
  }
  for (int i = 0; i < 3; ++i) b2[i] /= n2;
  b3[0] = b1[1] * b2[2] - b1[2] * b2[1];
  b3[1] = b1[2] * b2[0] - b1[0] * b2[2];
  b3[2] = b1[0] * b2[1] - b1[1] * b2[0];
  const double* rows[3] = {b1, b2, b3};
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) m[i * 4 + j] = rows[i][j];
    m[i * 4 + 3] = expression[kHeadTranslationOffset + i];
    m[12 + i] = 0.0;
  }
  m[15] = 1.0;
  return Status();
}

Status apply_head_pose(const float* expression, int64_t count, float cam2world[16]) {
  if (!cam2world) return Status(StatusCode::kNullPointer, "cam2world is NULL");
  double m[16];
  Status s = head_pose(expression, count, m);
  if (!s.ok()) return s;
  // head_to_world⁻¹ = [Rᵀ | −Rᵀ t]
  double inv[16] = {0};
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) inv[i * 4 + j] = m[j * 4 + i];
    inv[i * 4 + 3] = -(m[0 * 4 + i] * m[3] + m[1 * 4 + i] * m[7] + m[2 * 4 + i] * m[11]);
  }
  inv[15] = 1.0;
  double out[16];
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 4; ++j) {
      double v = 0;
      for (int k = 0; k < 4; ++k) v += inv[i * 4 + k] * double(cam2world[k * 4 + j]);
      out[i * 4 + j] = v;
    }
  }
  for (int i = 0; i < 16; ++i) cam2world[i] = static_cast<float>(out[i]);
  return Status();
}

}  // namespace runtime
}  // namespace flexavatar
