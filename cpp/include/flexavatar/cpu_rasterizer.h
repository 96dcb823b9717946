// Tile-based Gaussian rasterizer on the CPU: projection → depth sort → tile binning → per-tile
// front-to-back blending with early stop. Multi-threaded over Gaussians (projection), views
// (sort/binning) and tiles (blending). Structure-of-arrays per view.
#pragma once

#include <cstdint>
#include <vector>

#include "flexavatar/raster_types.h"
#include "flexavatar/status.h"

namespace flexavatar {

// Projected Gaussians of one view, structure of arrays indexed by Gaussian id.
struct ProjectedView {
  std::vector<float> mean_x, mean_y;            // pixel coordinates
  std::vector<float> conic_a, conic_b, conic_c; // Σ2⁻¹ = [[a, b], [b, c]]
  std::vector<float> opacity, sigma_cut;        // σ above sigma_cut cannot reach α = 1/255
  std::vector<float> red, green, blue, depth;
  std::vector<int32_t> tile_x0, tile_y0, tile_x1, tile_y1;  // radius box in tiles, [x0, x1)
  std::vector<int32_t> pix_x0, pix_y0, pix_x1, pix_y1;      // α ≥ 1/255 box in pixels, [x0, x1)
  std::vector<int32_t> visible;                 // ids of the Gaussians that survived culling
  void resize(int64_t num_gaussians);
};

// Per-tile lists of Gaussian ids, front to back (depth, then id).
struct TileBins {
  int tiles_x = 0, tiles_y = 0;
  std::vector<int32_t> offsets;  // [tiles + 1]: tile t owns ids[offsets[t] : offsets[t+1]]
  std::vector<int32_t> ids;
  std::vector<uint32_t> sort_keys, sort_scratch_keys;   // scratch of the depth sort
  std::vector<int32_t> sorted, sort_scratch_ids;
};

// Stage 1: project Gaussians [begin, end) of batch `batch` through camera (batch, camera).
void project_gaussians_cpu(const GaussianBuffers& gaussians, const CameraBuffers& cameras,
                           const RasterSettings& settings, int64_t batch, int64_t camera, int64_t begin,
                           int64_t end, ProjectedView* out);
// Collects out->visible from the projection (call after all ranges are projected).
void collect_visible(int64_t num_gaussians, ProjectedView* view);

// Stage 2: sort the visible Gaussians by depth and bin them into tiles (exact ellipse/tile test).
void bin_gaussians_cpu(const ProjectedView& view, int64_t width, int64_t height, TileBins* bins);

// Stage 3: blend one tile into image [H, W, 3], alpha [H, W], depth [H, W] of this view.
void blend_tile_cpu(const ProjectedView& view, const TileBins& bins, int tile_index, const float background[3],
                    int64_t width, int64_t height, float* image, float* alpha, float* depth);

// The whole pipeline for all B·C views. Keeps its scratch buffers between calls.
class CpuRasterizer {
 public:
  Status render(const GaussianBuffers& gaussians, const CameraBuffers& cameras, const RasterSettings& settings,
                const RasterOutputs& outputs);

 private:
  std::vector<ProjectedView> views_;
  std::vector<TileBins> bins_;
};

// Convenience: one-shot render with a fresh rasterizer.
Status rasterize_cpu(const GaussianBuffers& gaussians, const CameraBuffers& cameras, const RasterSettings& settings,
                     const RasterOutputs& outputs);

}  // namespace flexavatar
