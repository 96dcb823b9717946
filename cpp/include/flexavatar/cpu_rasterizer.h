// Tile-based Gaussian rasterizer on the CPU: projection → depth sort → tile binning → per-tile
// front-to-back blending with early stop. Multi-threaded over Gaussians (projection), views
// (sort/binning) and tiles (blending). Structure-of-arrays per view.
#pragma once

#include <cstdint>
#include <vector>

#include "flexavatar/raster_types.h"
#include "flexavatar/status.h"

namespace flexavatar {

// What the blend reads of one Gaussian, packed into one cache line: the blend visits Gaussians in
// depth order (random ids), so one line per Gaussian beats a gather from a dozen arrays.
struct alignas(64) BlendRecord {
  float mean_x, mean_y, conic_a, conic_b, conic_c, opacity, sigma_cut, inv_conic_a;
  float red, green, blue, depth;
  int32_t pix_y0, pix_y1;  // rows of the α ≥ 1/255 box, [y0, y1)
  int32_t unused[2];
};
static_assert(sizeof(BlendRecord) == 64, "one cache line per Gaussian");

// Projected Gaussians of one view, structure of arrays indexed by Gaussian id (projection and
// binning work on these), plus the packed blend records.
struct ProjectedView {
  std::vector<float> mean_x, mean_y;            // pixel coordinates
  std::vector<float> conic_a, conic_b, conic_c; // Σ2⁻¹ = [[a, b], [b, c]]
  std::vector<float> opacity, sigma_cut;        // σ above sigma_cut cannot reach α = 1/255
  std::vector<float> red, green, blue, depth;
  std::vector<int32_t> tile_x0, tile_y0, tile_x1, tile_y1;  // radius box in tiles, [x0, x1)
  std::vector<int32_t> pix_x0, pix_y0, pix_x1, pix_y1;      // α ≥ 1/255 box in pixels, [x0, x1)
  std::vector<int32_t> tiles_touched;           // tiles passing the exact ellipse test (0 = culled)
  std::vector<int32_t> visible;                 // ids of the Gaussians that survived culling
  std::vector<BlendRecord> records;             // packed copy for the blend
  void resize(int64_t num_gaussians);
};

// Per-tile lists of Gaussian ids, front to back (depth, then id).
struct TileBins {
  int tiles_x = 0, tiles_y = 0;
  std::vector<int32_t> offsets;  // [tiles + 1]: tile t owns ids[offsets[t] : offsets[t+1]]
  std::vector<int32_t> ids;      // Gaussian ids
  std::vector<int32_t> ranks;    // the same entries as positions in `records` (depth order)
  std::vector<BlendRecord> records;  // blend records in depth order: tile lists walk them forwards
  // Scratch: visible ids sorted by depth, their first intersection, the (tile, id) intersections.
  std::vector<uint32_t> sort_keys, sort_scratch_keys;
  std::vector<int32_t> sorted, sort_scratch_ids;
  std::vector<int64_t> first_isect;
  std::vector<int32_t> isect_tiles, isect_ids, isect_ranks;
};

// Stage 1: project Gaussians [begin, end) of batch `batch` through camera (batch, camera).
void project_gaussians_cpu(const GaussianBuffers& gaussians, const CameraBuffers& cameras,
                           const RasterSettings& settings, int64_t batch, int64_t camera, int64_t begin,
                           int64_t end, ProjectedView* out);
// Collects out->visible from the projection (call after all ranges are projected).
void collect_visible(int64_t num_gaussians, ProjectedView* view);

// Stage 2: sort the visible Gaussians by depth and bin them into tiles (exact ellipse/tile test).
// bin_gaussians_cpu = sort_by_depth_cpu + emit_intersections_cpu over all + group_by_tile_cpu;
// the middle step is the costly one and may run in parallel over ranges of the sorted list.
void bin_gaussians_cpu(const ProjectedView& view, int64_t width, int64_t height, TileBins* bins);
void sort_by_depth_cpu(const ProjectedView& view, int64_t width, int64_t height, TileBins* bins);
void emit_intersections_cpu(const ProjectedView& view, int64_t width, int64_t height, int64_t begin, int64_t end,
                            TileBins* bins);
void group_by_tile_cpu(TileBins* bins);

// Stage 3: blend one tile into image [H, W, 3], alpha [H, W], depth [H, W] of this view.
void blend_tile_cpu(const ProjectedView& view, const TileBins& bins, int tile_index, const float background[3],
                    int64_t width, int64_t height, float* image, float* alpha, float* depth);

// The whole pipeline for all B·C views. Keeps its scratch buffers between calls.
class CpuRasterizer {
 public:
  Status render(const GaussianBuffers& gaussians, const CameraBuffers& cameras, const RasterSettings& settings,
                const RasterOutputs& outputs);

 private:
  void run_stages(const GaussianBuffers& gaussians, const CameraBuffers& cameras, const RasterSettings& settings,
                  const RasterOutputs& outputs, int threads);
  std::vector<ProjectedView> views_;
  std::vector<TileBins> bins_;
};

// Convenience: one-shot render with a fresh rasterizer.
Status rasterize_cpu(const GaussianBuffers& gaussians, const CameraBuffers& cameras, const RasterSettings& settings,
                     const RasterOutputs& outputs);

}  // namespace flexavatar
