#include <cmath>
#include <string>

#include "flexavatar/raster_types.h"

namespace flexavatar {
namespace {

// Sizes beyond these overflow the 32-bit ids and tile keys the rasterizers use.
constexpr int64_t kMaxImageSide = 1 << 15;
constexpr int64_t kMaxGaussiansPerView = int64_t(1) << 30;
// The CUDA blend kernels launch one grid z-slice per view, and gridDim.z is at most 65535.
constexpr int64_t kMaxViews = 65535;

Status null_error(const char* name, const char* shape) {
  return Status(StatusCode::kNullPointer, std::string(name) + ": got a null pointer, expected a float32 buffer of shape " + shape);
}

}  // namespace

Status validate_raster_inputs(const GaussianBuffers& g, const CameraBuffers& c, const RasterSettings& s) {
  if (s.width <= 0 || s.height <= 0 || s.width > kMaxImageSide || s.height > kMaxImageSide)
    return Status(StatusCode::kInvalidSize, "width/height: got " + std::to_string(s.width) + "x" + std::to_string(s.height) +
                                                ", expected positive sizes of at most " + std::to_string(kMaxImageSide));
  if (g.num_batches <= 0)
    return Status(StatusCode::kInvalidSize, "num_batches: got " + std::to_string(g.num_batches) + ", expected >= 1");
  if (g.num_gaussians < 0 || g.num_gaussians > kMaxGaussiansPerView)
    return Status(StatusCode::kInvalidSize, "num_gaussians: got " + std::to_string(g.num_gaussians) + ", expected 0.." +
                                                std::to_string(kMaxGaussiansPerView));
  if (c.num_cameras <= 0)
    return Status(StatusCode::kInvalidSize, "num_cameras: got " + std::to_string(c.num_cameras) + ", expected >= 1");
  // each factor bounded first: their product could overflow int64
  if (g.num_batches > kMaxViews || c.num_cameras > kMaxViews || g.num_batches * c.num_cameras > kMaxViews)
    return Status(StatusCode::kInvalidSize, "num_batches*num_cameras: got " + std::to_string(g.num_batches) + "*" +
                                                std::to_string(c.num_cameras) + " views, expected at most " +
                                                std::to_string(kMaxViews));
  if (!(s.eps2d >= 0.0f) || !(s.near_plane > 0.0f) || !(s.far_plane > s.near_plane))
    return Status(StatusCode::kInvalidArgument, "settings: expected eps2d >= 0 and 0 < near_plane < far_plane");
  if (!c.viewmats) return null_error("viewmats", "[B, C, 4, 4]");
  if (!c.intrinsics) return null_error("Ks", "[B, C, 3, 3]");
  if (g.num_gaussians > 0) {
    if (!g.means) return null_error("means", "[B, G, 3]");
    if (!g.quats) return null_error("quats", "[B, G, 4]");
    if (!g.scales) return null_error("scales", "[B, G, 3]");
    if (!g.opacities) return null_error("opacities", "[B, G]");
    if (!g.sh0) return null_error("sh0", "[B, G, 3]");
  }
  return Status::ok_status();
}

Status validate_intrinsics_on_host(const CameraBuffers& c, int64_t views) {
  for (int64_t v = 0; v < views; ++v) {
    const float* K = c.intrinsics + 9 * v;
    const bool finite = std::isfinite(K[0]) && std::isfinite(K[4]) && std::isfinite(K[2]) && std::isfinite(K[5]);
    if (!finite || !(K[0] > 0.0f) || !(K[4] > 0.0f))
      return Status(StatusCode::kInvalidArgument, "Ks[" + std::to_string(v) + "]: expected finite focal lengths fx, fy > 0, got fx=" +
                                                      std::to_string(K[0]) + " fy=" + std::to_string(K[4]));
  }
  return Status::ok_status();
}

Status validate_raster_outputs(const RasterOutputs& o) {
  if (!o.image) return null_error("image", "[B, C, H, W, 3]");
  if (!o.alpha) return null_error("alpha", "[B, C, H, W]");
  if (!o.depth) return null_error("depth", "[B, C, H, W]");
  return Status::ok_status();
}

}  // namespace flexavatar
