#include "flexavatar/cpu_rasterizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "flexavatar/gaussian_math.h"
#include "parallel.h"

namespace flexavatar {

namespace m = math;

void ProjectedView::resize(int64_t n) {
  for (auto* v : {&mean_x, &mean_y, &conic_a, &conic_b, &conic_c, &opacity, &sigma_cut, &red, &green, &blue, &depth})
    v->resize(static_cast<size_t>(n));
  for (auto* v : {&tile_x0, &tile_y0, &tile_x1, &tile_y1, &pix_x0, &pix_y0, &pix_x1, &pix_y1, &tiles_touched})
    v->resize(static_cast<size_t>(n));
  records.resize(static_cast<size_t>(n));
}

namespace {

// Pixel index range [lo, hi) whose centres j + 0.5 lie within `half` of `centre`, clipped to [0, size).
inline void pixel_span(float centre, float half, int64_t size, int32_t* lo, int32_t* hi) {
  const float a = std::floor(centre - half - 0.5f) - 1.0f;  // one pixel of slack each side
  const float b = std::ceil(centre + half - 0.5f) + 2.0f;
  *lo = static_cast<int32_t>(std::min(std::max(a, 0.0f), float(size)));
  *hi = static_cast<int32_t>(std::min(std::max(b, 0.0f), float(size)));
}

// Stable LSD radix sort of (key, id) pairs by 32-bit key: 3 passes of 11 bits.
void radix_sort_pairs(std::vector<uint32_t>& keys, std::vector<int32_t>& ids, std::vector<uint32_t>& keys_tmp,
                      std::vector<int32_t>& ids_tmp) {
  const size_t n = keys.size();
  keys_tmp.resize(n);
  ids_tmp.resize(n);
  constexpr int kBits = 11;
  constexpr uint32_t kBuckets = 1u << kBits;
  std::vector<uint32_t> count(kBuckets);
  for (int shift = 0; shift < 32; shift += kBits) {
    std::fill(count.begin(), count.end(), 0u);
    for (size_t i = 0; i < n; ++i) ++count[(keys[i] >> shift) & (kBuckets - 1)];
    uint32_t sum = 0;
    for (uint32_t b = 0; b < kBuckets; ++b) {
      const uint32_t c = count[b];
      count[b] = sum;
      sum += c;
    }
    for (size_t i = 0; i < n; ++i) {
      const uint32_t pos = count[(keys[i] >> shift) & (kBuckets - 1)]++;
      keys_tmp[pos] = keys[i];
      ids_tmp[pos] = ids[i];
    }
    keys.swap(keys_tmp);
    ids.swap(ids_tmp);
  }
}

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

}  // namespace

void project_gaussians_cpu(const GaussianBuffers& g, const CameraBuffers& c, const RasterSettings& s, int64_t batch,
                           int64_t camera, int64_t begin, int64_t end, ProjectedView* out) {
  const int64_t view = batch * c.num_cameras + camera;
  const m::Camera<float> cam = m::make_camera<float>(c.viewmats + 16 * view, c.intrinsics + 9 * view,
                                                     static_cast<int>(s.width), static_cast<int>(s.height));
  const int tiles_x = static_cast<int>((s.width + m::kTileSize - 1) / m::kTileSize);
  const int tiles_y = static_cast<int>((s.height + m::kTileSize - 1) / m::kTileSize);
  const int64_t base = batch * g.num_gaussians;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t gi = base + i;
    const float opacity = g.opacities[gi];
    const m::Projected<float> p = m::project_gaussian<float>(cam, g.means + 3 * gi, g.quats + 4 * gi, g.scales + 3 * gi,
                                                             opacity, s.eps2d, s.near_plane, s.far_plane);
    if (!p.visible) {
      out->tile_x0[i] = out->tile_x1[i] = 0;  // empty tile box marks a culled Gaussian
      out->tile_y0[i] = out->tile_y1[i] = 0;
      out->tiles_touched[i] = 0;
      continue;
    }
    const m::TileRect r = m::tile_rect(p.mean_x, p.mean_y, p.radius_x, p.radius_y, tiles_x, tiles_y);
    out->tile_x0[i] = r.x0;
    out->tile_x1[i] = r.x1;
    out->tile_y0[i] = r.y0;
    out->tile_y1[i] = r.y1;
    out->mean_x[i] = p.mean_x;
    out->mean_y[i] = p.mean_y;
    out->conic_a[i] = p.conic_a;
    out->conic_b[i] = p.conic_b;
    out->conic_c[i] = p.conic_c;
    out->opacity[i] = opacity;
    out->depth[i] = p.depth;
    const float* sh = g.sh0 + 3 * gi;
    out->red[i] = m::sh0_to_color(sh[0]);
    out->green[i] = m::sh0_to_color(sh[1]);
    out->blue[i] = m::sh0_to_color(sh[2]);
    // Bounding box of the α ≥ 1/255 ellipse {d : ½ dᵀΣ⁻¹d ≤ cut}: half-widths sqrt(2 cut Σ_ii).
    const float cut = m::culling_sigma_cut(opacity);
    out->sigma_cut[i] = cut;
    pixel_span(p.mean_x, std::sqrt(2.0f * cut * p.cov_xx), s.width, &out->pix_x0[i], &out->pix_x1[i]);
    pixel_span(p.mean_y, std::sqrt(2.0f * cut * p.cov_yy), s.height, &out->pix_y0[i], &out->pix_y1[i]);
    int32_t touched = 0;
    for (int ty = r.y0; ty < r.y1; ++ty)
      for (int tx = r.x0; tx < r.x1; ++tx)
        touched += m::tile_touches_gaussian(p.mean_x, p.mean_y, p.conic_a, p.conic_b, p.conic_c, cut, tx, ty,
                                            static_cast<int>(s.width), static_cast<int>(s.height));
    out->tiles_touched[i] = touched;
    BlendRecord& rec = out->records[i];
    rec.mean_x = p.mean_x;
    rec.mean_y = p.mean_y;
    rec.conic_a = p.conic_a;
    rec.conic_b = p.conic_b;
    rec.conic_c = p.conic_c;
    rec.opacity = opacity;
    rec.sigma_cut = cut;
    rec.inv_conic_a = 1.0f / p.conic_a;
    rec.red = out->red[i];
    rec.green = out->green[i];
    rec.blue = out->blue[i];
    rec.depth = p.depth;
    rec.pix_y0 = out->pix_y0[i];
    rec.pix_y1 = out->pix_y1[i];
  }
}

void collect_visible(int64_t n, ProjectedView* view) {
  view->visible.clear();
  for (int64_t i = 0; i < n; ++i)
    if (view->tiles_touched[i] > 0) view->visible.push_back(static_cast<int32_t>(i));
}

void sort_by_depth_cpu(const ProjectedView& v, int64_t width, int64_t height, TileBins* bins) {
  bins->tiles_x = static_cast<int>((width + m::kTileSize - 1) / m::kTileSize);
  bins->tiles_y = static_cast<int>((height + m::kTileSize - 1) / m::kTileSize);
  // Depth order: positive floats sort like their bit patterns; the stable sort breaks ties by id.
  const size_t nv = v.visible.size();
  bins->sort_keys.resize(nv);
  bins->sorted.resize(nv);
  for (size_t k = 0; k < nv; ++k) {
    const int32_t i = v.visible[k];
    bins->sort_keys[k] = float_bits(v.depth[i]);
    bins->sorted[k] = i;
  }
  radix_sort_pairs(bins->sort_keys, bins->sorted, bins->sort_scratch_keys, bins->sort_scratch_ids);
  // Where each Gaussian's intersections start in the depth-ordered intersection list.
  bins->first_isect.resize(nv + 1);
  int64_t total = 0;
  for (size_t k = 0; k < nv; ++k) {
    bins->first_isect[k] = total;
    total += v.tiles_touched[bins->sorted[k]];
  }
  bins->first_isect[nv] = total;
  bins->isect_tiles.resize(static_cast<size_t>(total));
  bins->isect_ids.resize(static_cast<size_t>(total));
  bins->isect_ranks.resize(static_cast<size_t>(total));
  bins->records.resize(nv);
}

void emit_intersections_cpu(const ProjectedView& v, int64_t width, int64_t height, int64_t begin, int64_t end,
                            TileBins* bins) {
  for (int64_t k = begin; k < end; ++k) {
    const int32_t i = bins->sorted[k];
    bins->records[k] = v.records[i];
    int64_t out = bins->first_isect[k];
    for (int ty = v.tile_y0[i]; ty < v.tile_y1[i]; ++ty)
      for (int tx = v.tile_x0[i]; tx < v.tile_x1[i]; ++tx)
        if (m::tile_touches_gaussian(v.mean_x[i], v.mean_y[i], v.conic_a[i], v.conic_b[i], v.conic_c[i],
                                     v.sigma_cut[i], tx, ty, static_cast<int>(width), static_cast<int>(height))) {
          bins->isect_tiles[out] = ty * bins->tiles_x + tx;
          bins->isect_ids[out] = i;
          bins->isect_ranks[out] = static_cast<int32_t>(k);
          ++out;
        }
  }
}

void group_by_tile_cpu(TileBins* bins) {
  // Stable counting sort of the depth-ordered intersections by tile.
  const int num_tiles = bins->tiles_x * bins->tiles_y;
  bins->offsets.assign(static_cast<size_t>(num_tiles) + 1, 0);
  for (const int32_t t : bins->isect_tiles) ++bins->offsets[t + 1];
  for (int t = 0; t < num_tiles; ++t) bins->offsets[t + 1] += bins->offsets[t];
  bins->ids.resize(bins->isect_ids.size());
  bins->ranks.resize(bins->isect_ids.size());
  std::vector<int32_t> cursor(bins->offsets.begin(), bins->offsets.end() - 1);
  for (size_t k = 0; k < bins->isect_tiles.size(); ++k) {
    const int32_t pos = cursor[bins->isect_tiles[k]]++;
    bins->ids[pos] = bins->isect_ids[k];
    bins->ranks[pos] = bins->isect_ranks[k];
  }
}

void bin_gaussians_cpu(const ProjectedView& v, int64_t width, int64_t height, TileBins* bins) {
  sort_by_depth_cpu(v, width, height, bins);
  emit_intersections_cpu(v, width, height, 0, static_cast<int64_t>(bins->sorted.size()), bins);
  group_by_tile_cpu(bins);
}

namespace {

// exp(x) for x <= 0 in plain arithmetic so that the blend loop vectorises: Cody-Waite reduction
// x = n ln2 + r, |r| <= ln2/2, then a degree-7 polynomial (Cephes expf coefficients). Relative
// error about 1e-7, like a libm expf; flush to 0 below -87 (α would be far below 1/255).
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float shifter = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

constexpr int kLanes = 8;  // pixels per vector step (half a tile row)
static_assert(2 * kLanes == math::kTileSize, "two lane groups per tile row");

struct TileState {
  alignas(64) float T[256];
  alignas(64) float r[256];
  alignas(64) float g[256];
  alignas(64) float b[256];
  alignas(64) float d[256];
  alignas(64) int32_t active[256];
  int32_t group_active[32];  // active pixels per group of kLanes (2 per tile row)
};

// One Gaussian over kLanes pixels of a row: branch-free so that it vectorises. Pixels outside the
// Gaussian's α box are evaluated too: they fail the α ≥ 1/255 test exactly as in the reference.
// Returns how many pixels finished (their transmittance would drop to ≤ 1e-4).
#if defined(__GNUC__) || defined(__clang__)
__attribute__((always_inline))
#endif
inline int blend_lanes(TileState& st, int p0, float px0, float dy, float mx, float ca, float cb, float cc, float op,
                float cr, float cg, float cbl, float z) {
  int stops = 0;
  for (int k = 0; k < kLanes; ++k) {
    const int p = p0 + k;
    const float dx = mx - (px0 + float(k));
    const float sigma = 0.5f * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
    const float a = std::min(op * exp_nonpositive(-sigma), m::kMaxAlpha);
    const float t = st.T[p];
    const float next_t = t * (1.0f - a);
    const int32_t valid = (sigma >= 0.0f ? 1 : 0) & (a >= m::kAlphaThreshold ? 1 : 0) & st.active[p];
    const int32_t stop = valid & (next_t <= m::kMinTransmittance ? 1 : 0);
    const int32_t take = valid & (stop ^ 1);
    const float w = take ? a * t : 0.0f;
    st.r[p] += w * cr;
    st.g[p] += w * cg;
    st.b[p] += w * cbl;
    st.d[p] += w * z;
    st.T[p] = take ? next_t : t;
    st.active[p] &= stop ^ 1;
    stops += stop;
  }
  return stops;
}

// The tile loop. Inlined into each of its compiled forms below.
#if defined(__GNUC__) || defined(__clang__)
__attribute__((always_inline))
#endif
inline void blend_tile_impl(const TileBins& bins, int tile, const float bg[3], int64_t width, int64_t height,
                            float* image, float* alpha, float* depth) {
  constexpr int S = m::kTileSize;
  const int tx = tile % bins.tiles_x, ty = tile / bins.tiles_x;
  const int x0 = tx * S, y0 = ty * S;
  const int x1 = static_cast<int>(std::min<int64_t>(x0 + S, width));
  const int y1 = static_cast<int>(std::min<int64_t>(y0 + S, height));

  TileState st;
  for (int p = 0; p < S * S; ++p) {
    const int px = x0 + p % S, py = y0 + p / S;
    st.T[p] = 1.0f;
    st.r[p] = st.g[p] = st.b[p] = st.d[p] = 0.0f;
    st.active[p] = (px < x1 && py < y1) ? 1 : 0;  // pixels past the image edge never blend
  }
  int remaining = (x1 - x0) * (y1 - y0);
  for (int grp = 0; grp < 2 * S; ++grp) {
    int count = 0;
    for (int q = 0; q < kLanes; ++q) count += st.active[grp * kLanes + q];
    st.group_active[grp] = count;
  }

  const BlendRecord* records = bins.records.data();
  const int32_t* ranks = bins.ranks.data();
  const int end = bins.offsets[tile + 1];
  for (int k = bins.offsets[tile]; k < end && remaining > 0; ++k) {
#if defined(__GNUC__) || defined(__clang__)
    if (k + 8 < end) __builtin_prefetch(records + ranks[k + 8]);
#endif
    const BlendRecord& g = records[ranks[k]];
    const int gy0 = std::max(y0, g.pix_y0), gy1 = std::min(y1, g.pix_y1);
    for (int y = gy0; y < gy1; ++y) {
      const float dy = g.mean_y - (float(y) + 0.5f);
      // Row span where σ(dx) = ½a dx² + b dy dx + ½c dy² ≤ cut (a > 0), plus half a pixel of slack.
      const float disc = g.conic_b * g.conic_b * dy * dy - g.conic_a * (g.conic_c * dy * dy - 2.0f * g.sigma_cut);
      if (disc < 0.0f) continue;
      const float root = std::sqrt(disc), centre = g.mean_x + g.conic_b * dy * g.inv_conic_a - 0.5f;
      const float half = root * g.inv_conic_a + 0.5f;
      // Clamped to the tile in float before the int cast: a huge Gaussian's span exceeds int range.
      const int lo = int(std::max(float(x0), std::floor(centre - half)));
      const int hi = int(std::min(float(x1 - 1), std::ceil(centre + half)));
      if (lo > hi) continue;
      const int row = (y - y0) * 2;
      for (int grp = row + (lo - x0) / kLanes; grp <= row + (hi - x0) / kLanes; ++grp) {
        if (st.group_active[grp] == 0) continue;
        const int stops = blend_lanes(st, grp * kLanes, float(x0 + (grp - row) * kLanes) + 0.5f, dy, g.mean_x, g.conic_a,
                                      g.conic_b, g.conic_c, g.opacity, g.red, g.green, g.blue, g.depth);
        st.group_active[grp] -= stops;
        remaining -= stops;
      }
    }
  }

  for (int y = y0; y < y1; ++y) {
    for (int x = x0; x < x1; ++x) {
      const int p = (y - y0) * S + (x - x0);
      const int64_t o = y * width + x;
      const float a = 1.0f - st.T[p];
      image[3 * o + 0] = st.r[p] + st.T[p] * bg[0];
      image[3 * o + 1] = st.g[p] + st.T[p] * bg[1];
      image[3 * o + 2] = st.b[p] + st.T[p] * bg[2];
      alpha[o] = a;
      depth[o] = st.d[p] / std::max(a, m::kDepthAlphaFloor);
    }
  }
}

// On x86-64 with GCC or Clang the tile loop is compiled twice, for AVX2 (8 pixels a vector step: 1.2× the
// baseline on a dense 512² frame) and for the baseline SSE2, and picked once by CPUID. A dispatch of its own rather
// than target_clones, which needs ELF ifuncs: this one works on Linux, Windows (MinGW) and macOS alike. No FMA in
// either form, so both round alike: the frames are the same bits. FLEXAVATAR_NO_X86_DISPATCH keeps the baseline.
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(FLEXAVATAR_NO_X86_DISPATCH)
#define FLEXAVATAR_X86_DISPATCH 1
#else
#define FLEXAVATAR_X86_DISPATCH 0
#endif

using BlendTileFn = void (*)(const TileBins&, int, const float*, int64_t, int64_t, float*, float*, float*);

void blend_tile_baseline(const TileBins& bins, int tile, const float* bg, int64_t width, int64_t height, float* image,
                         float* alpha, float* depth) {
  blend_tile_impl(bins, tile, bg, width, height, image, alpha, depth);
}

#if FLEXAVATAR_X86_DISPATCH
__attribute__((target("avx2"))) void blend_tile_avx2(const TileBins& bins, int tile, const float* bg, int64_t width,
                                                     int64_t height, float* image, float* alpha, float* depth) {
  blend_tile_impl(bins, tile, bg, width, height, image, alpha, depth);
}
#endif

BlendTileFn pick_blend_tile() {
#if FLEXAVATAR_X86_DISPATCH
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) return blend_tile_avx2;
#endif
  return blend_tile_baseline;
}

}  // namespace

void blend_tile_cpu(const ProjectedView& v, const TileBins& bins, int tile, const float bg[3], int64_t width,
                    int64_t height, float* image, float* alpha, float* depth) {
  (void)v;  // the blend reads the depth-ordered records the binning packed into `bins`
  static const BlendTileFn blend_tile = pick_blend_tile();
  blend_tile(bins, tile, bg, width, height, image, alpha, depth);
}

Status CpuRasterizer::render(const GaussianBuffers& g, const CameraBuffers& c, const RasterSettings& s,
                             const RasterOutputs& out) {
  Status st = validate_raster_inputs(g, c, s);
  if (!st.ok()) return st;
  st = validate_raster_outputs(out);
  if (!st.ok()) return st;
  const int64_t num_views = g.num_batches * c.num_cameras;
  st = validate_intrinsics_on_host(c, num_views);
  if (!st.ok()) return st;

  const int threads = detail::resolve_thread_count(s.num_threads);
  const int64_t G = g.num_gaussians;
  try {
    views_.resize(static_cast<size_t>(num_views));
    bins_.resize(static_cast<size_t>(num_views));
    for (auto& v : views_) v.resize(G);
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory, "CPU rasterizer: out of memory for " + std::to_string(num_views) + " views of " +
                                                std::to_string(G) + " Gaussians");
  }

  try {
    run_stages(g, c, s, out, threads);
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kOutOfMemory, "CPU rasterizer: out of memory while binning/blending " +
                                                std::to_string(num_views) + " views of " + std::to_string(G) + " Gaussians");
  }
  return Status::ok_status();
}

void CpuRasterizer::run_stages(const GaussianBuffers& g, const CameraBuffers& c, const RasterSettings& s,
                               const RasterOutputs& out, int threads) {
  const int64_t num_views = g.num_batches * c.num_cameras;
  const int64_t G = g.num_gaussians;
  // 1. Projection: chunks of Gaussians across all views.
  constexpr int64_t kChunk = 2048;
  const int64_t chunks_per_view = (G + kChunk - 1) / kChunk;
  detail::parallel_for(num_views * chunks_per_view, 1, threads, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const int64_t view = w / chunks_per_view, chunk = w % chunks_per_view;
      project_gaussians_cpu(g, c, s, view / c.num_cameras, view % c.num_cameras, chunk * kChunk,
                            std::min(G, (chunk + 1) * kChunk), &views_[view]);
    }
  });

  // 2. Depth sort (per view), intersections (chunks of the sorted lists), grouping by tile (per view).
  detail::parallel_for(num_views, 1, threads, [&](int64_t begin, int64_t end) {
    for (int64_t view = begin; view < end; ++view) {
      collect_visible(G, &views_[view]);
      sort_by_depth_cpu(views_[view], s.width, s.height, &bins_[view]);
    }
  });
  constexpr int64_t kEmitChunk = 4096;
  std::vector<int64_t> chunk_start(static_cast<size_t>(num_views) + 1, 0);
  for (int64_t view = 0; view < num_views; ++view)
    chunk_start[view + 1] = chunk_start[view] + (static_cast<int64_t>(bins_[view].sorted.size()) + kEmitChunk - 1) / kEmitChunk;
  detail::parallel_for(chunk_start[num_views], 1, threads, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const int64_t view = std::upper_bound(chunk_start.begin(), chunk_start.end(), w) - chunk_start.begin() - 1;
      const int64_t first = (w - chunk_start[view]) * kEmitChunk;
      const int64_t last = std::min<int64_t>(first + kEmitChunk, static_cast<int64_t>(bins_[view].sorted.size()));
      emit_intersections_cpu(views_[view], s.width, s.height, first, last, &bins_[view]);
    }
  });
  detail::parallel_for(num_views, 1, threads, [&](int64_t begin, int64_t end) {
    for (int64_t view = begin; view < end; ++view) group_by_tile_cpu(&bins_[view]);
  });

  // 3. Blending: tiles of all views, small chunks for load balance (tiles differ a lot in cost).
  const int64_t tiles_per_view = static_cast<int64_t>(bins_.empty() ? 0 : bins_[0].tiles_x) *
                                 (bins_.empty() ? 0 : bins_[0].tiles_y);
  const int64_t pixels = s.width * s.height;
  static const float kBlack[3] = {0.0f, 0.0f, 0.0f};
  detail::parallel_for(num_views * tiles_per_view, 4, threads, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      const int64_t view = w / tiles_per_view;
      const float* bg = c.backgrounds ? c.backgrounds + 3 * view : kBlack;
      blend_tile_cpu(views_[view], bins_[view], static_cast<int>(w % tiles_per_view), bg, s.width, s.height,
                     out.image + 3 * pixels * view, out.alpha + pixels * view, out.depth + pixels * view);
    }
  });
}

Status rasterize_cpu(const GaussianBuffers& g, const CameraBuffers& c, const RasterSettings& s,
                     const RasterOutputs& out) {
  CpuRasterizer rasterizer;
  return rasterizer.render(g, c, s, out);
}

}  // namespace flexavatar
