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
  for (auto* v : {&tile_x0, &tile_y0, &tile_x1, &tile_y1, &pix_x0, &pix_y0, &pix_x1, &pix_y1})
    v->resize(static_cast<size_t>(n));
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
  }
}

void collect_visible(int64_t n, ProjectedView* view) {
  view->visible.clear();
  for (int64_t i = 0; i < n; ++i)
    if (view->tile_x1[i] > view->tile_x0[i] && view->tile_y1[i] > view->tile_y0[i])
      view->visible.push_back(static_cast<int32_t>(i));
}

void bin_gaussians_cpu(const ProjectedView& v, int64_t width, int64_t height, TileBins* bins) {
  bins->tiles_x = static_cast<int>((width + m::kTileSize - 1) / m::kTileSize);
  bins->tiles_y = static_cast<int>((height + m::kTileSize - 1) / m::kTileSize);
  const int num_tiles = bins->tiles_x * bins->tiles_y;

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

  // Two passes over the exact tile tests: count, then fill in depth order.
  auto for_each_tile = [&](int32_t i, auto&& visit) {
    for (int ty = v.tile_y0[i]; ty < v.tile_y1[i]; ++ty)
      for (int tx = v.tile_x0[i]; tx < v.tile_x1[i]; ++tx)
        if (m::tile_touches_gaussian(v.mean_x[i], v.mean_y[i], v.conic_a[i], v.conic_b[i], v.conic_c[i],
                                     v.sigma_cut[i], tx, ty, static_cast<int>(width), static_cast<int>(height)))
          visit(ty * bins->tiles_x + tx);
  };
  bins->offsets.assign(static_cast<size_t>(num_tiles) + 1, 0);
  for (const int32_t i : bins->sorted) for_each_tile(i, [&](int t) { ++bins->offsets[t + 1]; });
  for (int t = 0; t < num_tiles; ++t) bins->offsets[t + 1] += bins->offsets[t];
  bins->ids.resize(static_cast<size_t>(bins->offsets[num_tiles]));
  std::vector<int32_t> cursor(bins->offsets.begin(), bins->offsets.end() - 1);
  for (const int32_t i : bins->sorted) for_each_tile(i, [&](int t) { bins->ids[cursor[t]++] = i; });
}

void blend_tile_cpu(const ProjectedView& v, const TileBins& bins, int tile, const float bg[3], int64_t width,
                    int64_t height, float* image, float* alpha, float* depth) {
  constexpr int S = m::kTileSize;
  const int tx = tile % bins.tiles_x, ty = tile / bins.tiles_x;
  const int x0 = tx * S, y0 = ty * S;
  const int x1 = static_cast<int>(std::min<int64_t>(x0 + S, width));
  const int y1 = static_cast<int>(std::min<int64_t>(y0 + S, height));

  float T[S * S], acc_r[S * S], acc_g[S * S], acc_b[S * S], acc_d[S * S];
  bool done[S * S];
  for (int p = 0; p < S * S; ++p) {
    T[p] = 1.0f;
    acc_r[p] = acc_g[p] = acc_b[p] = acc_d[p] = 0.0f;
    done[p] = false;
  }
  int remaining = (x1 - x0) * (y1 - y0);

  for (int k = bins.offsets[tile]; k < bins.offsets[tile + 1] && remaining > 0; ++k) {
    const int32_t i = bins.ids[k];
    const int gx0 = std::max(x0, v.pix_x0[i]), gx1 = std::min(x1, v.pix_x1[i]);
    const int gy0 = std::max(y0, v.pix_y0[i]), gy1 = std::min(y1, v.pix_y1[i]);
    if (gx0 >= gx1 || gy0 >= gy1) continue;
    const float mx = v.mean_x[i], my = v.mean_y[i];
    const float ca = v.conic_a[i], cb = v.conic_b[i], cc = v.conic_c[i];
    const float op = v.opacity[i], cut = v.sigma_cut[i];
    const float r = v.red[i], gr = v.green[i], b = v.blue[i], z = v.depth[i];
    for (int y = gy0; y < gy1; ++y) {
      const float dy = my - (float(y) + 0.5f);
      int p = (y - y0) * S + (gx0 - x0);
      for (int x = gx0; x < gx1; ++x, ++p) {
        if (done[p]) continue;
        const float dx = mx - (float(x) + 0.5f);
        const float sigma = 0.5f * (ca * dx * dx + cc * dy * dy) + cb * dx * dy;
        if (sigma > cut || sigma < 0.0f) continue;  // cheap reject before the exp (cut has margin)
        const float a = std::min(m::kMaxAlpha, op * std::exp(-sigma));
        if (a < m::kAlphaThreshold) continue;
        const float next_T = T[p] * (1.0f - a);
        if (next_T <= m::kMinTransmittance) {  // this Gaussian is not composited; pixel is done
          done[p] = true;
          --remaining;
          continue;
        }
        const float w = a * T[p];
        acc_r[p] += w * r;
        acc_g[p] += w * gr;
        acc_b[p] += w * b;
        acc_d[p] += w * z;
        T[p] = next_T;
      }
    }
  }

  for (int y = y0; y < y1; ++y) {
    for (int x = x0; x < x1; ++x) {
      const int p = (y - y0) * S + (x - x0);
      const int64_t o = y * width + x;
      const float a = 1.0f - T[p];
      image[3 * o + 0] = acc_r[p] + T[p] * bg[0];
      image[3 * o + 1] = acc_g[p] + T[p] * bg[1];
      image[3 * o + 2] = acc_b[p] + T[p] * bg[2];
      alpha[o] = a;
      depth[o] = acc_d[p] / std::max(a, m::kDepthAlphaFloor);
    }
  }
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

  // 2. Depth sort and binning: one view per worker.
  detail::parallel_for(num_views, 1, threads, [&](int64_t begin, int64_t end) {
    for (int64_t view = begin; view < end; ++view) {
      collect_visible(G, &views_[view]);
      bin_gaussians_cpu(views_[view], s.width, s.height, &bins_[view]);
    }
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
  return Status::ok_status();
}

Status rasterize_cpu(const GaussianBuffers& g, const CameraBuffers& c, const RasterSettings& s,
                     const RasterOutputs& out) {
  CpuRasterizer rasterizer;
  return rasterizer.render(g, c, s, out);
}

}  // namespace flexavatar
