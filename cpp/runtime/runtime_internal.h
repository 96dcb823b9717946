// Helpers shared by the runtime's translation units (runtime.cpp, encoder.cpp, c_api.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "flexavatar/status.h"
#include "manifest.h"
#include "ort_session.h"

namespace flexavatar {
namespace runtime {

// flexavatar.cameras.default_camera: 1 m in front of the head looking at the origin, fx = fy = 1500/512.
constexpr float kDemoCam2World[16] = {1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 1, 0, 0, 0, 1};
constexpr float kDemoIntrinsics[9] = {1500.f / 512.f, 0, 0.5f, 0, 1500.f / 512.f, 0.5f, 0, 0, 1};

struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;  // the shape we bind (batch 1); -1 = any
  bool input;
};

std::string shape_text(const std::vector<int64_t>& shape);
// A camera as runtime/cameras.py accepts it: finite, rigid cam2world [4, 4]; normalised intrinsics [3, 3]
// with positive focal lengths. kInvalidArgument naming what is wrong ("cam2world ..." / "intrinsics ...").
Status check_camera(const float cam2world[16], const float intrinsics[9]);
// The model's own dims must agree with the expected ones wherever both are fixed (-1 = dynamic).
bool shape_compatible(const std::vector<int64_t>& model, const std::vector<int64_t>& expected);
// The session's tensors and the manifest's record of them against what the runtime binds:
// kBundleInvalid naming the file, the tensor and both shapes.
Status check_model_signature(const ModelArtifact& artifact, const OrtModel& model,
                             const std::vector<ExpectedTensor>& expected, size_t want_inputs,
                             const std::string& input_names);
// The leading dynamic dim of each of the artifact's inputs (a decoder's frames "E", an encoder's photos "B"), pinned
// to 1, for SessionConfig::static_dims on GPU / NPU providers (runtime/engines.py InferenceBackend.static_shapes).
// The runtime binds one frame and one photo a call anyway; other dynamic dims (DINOv2 features' h, w) stay dynamic.
std::vector<std::pair<std::string, int64_t>> static_dims_of(const ModelArtifact& artifact);

}  // namespace runtime
}  // namespace flexavatar
