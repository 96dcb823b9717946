// The official GUI's rigid head pose of a FLEX expression code, as runtime/expressions.py computes it
// (head_pose_matrix): rotation 6D at [126:132] → Gram–Schmidt, matrix rows (b1, b2, b1 × b2); translation at
// [132:135]. Rendering the posed Gaussians equals rendering the decoded ones from the camera
// head_to_world⁻¹ · cam2world, which is how the runtimes show the pose (no per-Gaussian work).
#pragma once

#include <cstdint>

#include "flexavatar/status.h"

namespace flexavatar {
namespace runtime {

constexpr int64_t kExpressionDim = 135;
constexpr int kHeadRotationOffset = 126, kHeadTranslationOffset = 132;
constexpr double kMinRot6dNorm = 1e-6;  // runtime/expressions.py MIN_ROT6D_NORM

// head_to_world (row-major 4x4): x' = R x + t. kInvalidSize unless count == 135; kInvalidArgument for NaN/inf
// or a degenerate 6D rotation (a zero first vector, or a second one parallel to it).
Status head_pose(const float* expression, int64_t count, double head_to_world[16]);

// cam2world := head_to_world⁻¹ · cam2world (computed in double). cam2world must be rigid (not checked here:
// rendering checks the result).
Status apply_head_pose(const float* expression, int64_t count, float cam2world[16]);

}  // namespace runtime
}  // namespace flexavatar
