// Raw-buffer inputs/outputs of the rasterizers (CPU and CUDA share them).
//
// Layout: B batches (frames) of G Gaussians, each rendered by C cameras: V = B·C views.
// All buffers are dense, C-contiguous float32. View v = b·C + c renders Gaussian set b.
#pragma once

#include <cstdint>

#include "flexavatar/status.h"

namespace flexavatar {

struct RasterSettings {
  int64_t width = 0;
  int64_t height = 0;
  float eps2d = 0.3f;
  float near_plane = 0.01f;
  float far_plane = 1e10f;
  int num_threads = 0;  // CPU only: 0 = all hardware threads
};

struct GaussianBuffers {
  int64_t num_batches = 0;       // B
  int64_t num_gaussians = 0;     // G (0 is valid: renders the background)
  const float* means = nullptr;      // [B, G, 3] world positions
  const float* quats = nullptr;      // [B, G, 4] rotations, wxyz (normalised inside)
  const float* scales = nullptr;     // [B, G, 3] standard deviations
  const float* opacities = nullptr;  // [B, G]
  const float* sh0 = nullptr;        // [B, G, 3] SH degree-0 coefficients
};

struct CameraBuffers {
  int64_t num_cameras = 0;            // C cameras per batch
  const float* viewmats = nullptr;    // [B, C, 4, 4] world-to-camera (OpenCV axes), row-major
  const float* intrinsics = nullptr;  // [B, C, 3, 3] pixel K
  const float* backgrounds = nullptr; // [B, C, 3], or null for black
};

struct RasterOutputs {
  float* image = nullptr;  // [B, C, H, W, 3] RGB over the background
  float* alpha = nullptr;  // [B, C, H, W]
  float* depth = nullptr;  // [B, C, H, W] expected depth Σ w z / max(alpha, 1e-10)
};

// Checks counts, sizes and pointers (reads no buffer, so it works on device pointers too); the message names the argument and what was
// expected. Gaussian attribute values (NaN, scales) are the caller's business: the Python layer
// validates them once for every backend.
Status validate_raster_inputs(const GaussianBuffers& gaussians, const CameraBuffers& cameras,
                              const RasterSettings& settings);
Status validate_raster_outputs(const RasterOutputs& outputs);
// Reads the intrinsics (host memory only): finite, fx > 0, fy > 0.
Status validate_intrinsics_on_host(const CameraBuffers& cameras, int64_t num_views);

}  // namespace flexavatar
