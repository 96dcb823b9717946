// Forward pass of the CUDA rasterizer:
//   1. project every (view, Gaussian) and count the tiles its α ≥ 1/255 ellipse really touches
//   2. sort the (view, Gaussian)s by depth (31-bit keys, one per Gaussian: 58k at FLEX-1 size)
//   3. scan the counts in that order, emit one tile key per intersection, front to back
//   4. stable radix sort of the intersections by tile on only the tile bits (11 at 512², one view): each tile's
//      intersections keep the depth order of step 2
//   5. find each tile's range in the sorted list
// The order equals a sort of (tile << 31 | depth) keys over the intersections with ties in (view, Gaussian) order,
// the form before (42-bit keys of 64 bits: 6 radix passes over the intersections instead of 2 of half the width);
// FLEXAVATAR_CUDA_SORT=tile-depth-keys still runs that form, for side-by-side timing on a GPU.
// Steps 3–4 are sized either exactly (the count read back to the host: one synchronisation) or, sync-free, by
// the caller's capacity: unused slots hold sentinel keys (all ones) that sort after every real key.
// Past the capacity, the farthest intersections are the ones dropped (the emission runs front to back).
//   6. blend each tile front to back, batches of Gaussians staged in shared memory
#include <cstdlib>
#include <cstring>

#include "internal.cuh"

namespace flexavatar {
namespace cuda {
namespace {

namespace m = math;

// One compiled copy of the tile test for the counting kernel (project_kernel) and the emitting kernel: the
// emitter fills exactly the slots the count reserved, which separately inlined copies (free to contract
// differently into FMAs) would not guarantee for a Gaussian on the edge of a tile.
__device__ __noinline__ bool tile_touches(float mean_x, float mean_y, float conic_a, float conic_b, float conic_c,
                                         float sigma_cut, int tx, int ty, int width, int height) {
  return m::tile_touches_gaussian(mean_x, mean_y, conic_a, conic_b, conic_c, sigma_cut, tx, ty, width, height);
}

// Depths are ≥ near > 0, so their float bits are monotonic and the sign bit is always 0: 31 bits order them.
__device__ __forceinline__ uint32_t depth_bits(float depth) { return __float_as_uint(depth) & 0x7fffffffu; }

__global__ void project_kernel(FlexavatarCudaForwardArgs a, int64_t num_views, int tiles_x, int tiles_y,
                               float4* xy_opacity, float4* conic, float4* color_depth, int4* tile_box,
                               int64_t* tiles_touched, uint32_t* depth_keys, uint32_t* ids) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= num_views * a.num_gaussians) return;
  const int64_t view = idx / a.num_gaussians;
  const int64_t g = idx % a.num_gaussians;
  const int64_t gi = (view / a.num_cameras) * a.num_gaussians + g;
  const m::Camera<float> cam =
      m::make_camera<float>(a.viewmats + 16 * view, a.intrinsics + 9 * view, int(a.width), int(a.height));
  const float opacity = a.opacities[gi];
  const m::Projected<float> p = m::project_gaussian<float>(cam, a.means + 3 * gi, a.quats + 4 * gi, a.scales + 3 * gi,
                                                           opacity, a.eps2d, a.near_plane, a.far_plane);
  int64_t touched = 0;
  int4 box = make_int4(0, 0, 0, 0);
  uint32_t depth_key = 0x7fffffffu;  // a Gaussian that is not drawn touches no tile: its place in the order is moot
  if (p.visible) {
    depth_key = depth_bits(p.depth);
    const m::TileRect r = m::tile_rect(p.mean_x, p.mean_y, p.radius_x, p.radius_y, tiles_x, tiles_y);
    box = make_int4(r.x0, r.y0, r.x1, r.y1);
    const float cut = m::culling_sigma_cut(opacity);
    for (int ty = r.y0; ty < r.y1; ++ty)
      for (int tx = r.x0; tx < r.x1; ++tx)
        touched += tile_touches(p.mean_x, p.mean_y, p.conic_a, p.conic_b, p.conic_c, cut, tx, ty, int(a.width),
                                int(a.height));
    const float* sh = a.sh0 + 3 * gi;
    xy_opacity[idx] = make_float4(p.mean_x, p.mean_y, opacity, cut);
    conic[idx] = make_float4(p.conic_a, p.conic_b, p.conic_c, 0.0f);
    color_depth[idx] = make_float4(m::sh0_to_color(sh[0]), m::sh0_to_color(sh[1]), m::sh0_to_color(sh[2]), p.depth);
  }
  tile_box[idx] = box;
  tiles_touched[idx] = touched;
  if (depth_keys) {
    depth_keys[idx] = depth_key;
    ids[idx] = uint32_t(idx);
  }
}

// Intersection keys. TileKey (depth-first form): the global tile, 32 bits; the depth order comes from the order the
// Gaussians are emitted in. TileDepthKey (tile-depth-keys form): (view·tiles + tile) << 31 | depth bits.
struct TileKey {
  using Bits = uint32_t;
  static constexpr int kTileShift = 0;
  __device__ explicit TileKey(float) {}
  __device__ Bits operator()(int64_t tile) const { return Bits(tile); }
};
struct TileDepthKey {
  using Bits = uint64_t;
  static constexpr int kTileShift = 31;
  Bits depth;
  __device__ explicit TileDepthKey(float z) : depth(depth_bits(z)) {}
  __device__ Bits operator()(int64_t tile) const { return (Bits(tile) << 31) | depth; }
};

// Thread k emits the intersections of one (view, Gaussian), idx = order[k] (front to back; order null: idx = k),
// into the slots the scan (in the same order) gave it. Intersections from slot `slots` on are dropped (a sync-free
// frame over its capacity: the caller sees the count and renders again).
template <typename Key>
__global__ void emit_intersections_kernel(FlexavatarCudaForwardArgs a, int64_t num_views, int tiles_x,
                                          const float4* xy_opacity, const float4* conic, const float4* color_depth,
                                          const int4* tile_box, const uint32_t* order,
                                          const int64_t* offsets_inclusive, int64_t slots,
                                          typename Key::Bits* keys, uint32_t* values) {
  const int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (k >= num_views * a.num_gaussians) return;
  const int64_t idx = order ? int64_t(order[k]) : k;
  const int4 box = tile_box[idx];
  if (box.z <= box.x || box.w <= box.y) return;
  int64_t out = k == 0 ? 0 : offsets_inclusive[k - 1];
  const int64_t end = min(offsets_inclusive[k], slots);
  if (out >= end) return;
  const int64_t view = idx / a.num_gaussians;
  const int64_t tiles_per_view = int64_t(tiles_x) * ((a.height + m::kTileSize - 1) / m::kTileSize);
  const float4 xo = xy_opacity[idx], co = conic[idx];
  const Key key(color_depth[idx].w);
  for (int ty = box.y; ty < box.w; ++ty)
    for (int tx = box.x; tx < box.z; ++tx)
      if (tile_touches(xo.x, xo.y, co.x, co.y, co.z, xo.w, tx, ty, int(a.width), int(a.height))) {
        if (out == end) return;  // its last slot, or the capacity: no write past either
        keys[out] = key(view * tiles_per_view + int64_t(ty) * tiles_x + tx);
        values[out] = uint32_t(idx);
        ++out;
      }
}

// touched_in_order[k] = touched[order[k]]: the counts in depth order, for the scan that places each Gaussian's
// intersections.
__global__ void gather_touched_kernel(const uint32_t* order, const int64_t* touched, int64_t n,
                                      int64_t* touched_in_order) {
  const int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (k < n) touched_in_order[k] = touched[order[k]];
}

// ranges[tile] = [first, last + 1) of the tile's keys in the sorted list; sentinel slots (tile field ≥ num_tiles)
// are skipped. Tiles without keys keep the [0, 0) they were cleared to.
// Key bits: uint64_t (tile << 31 | depth: kShift 31) or uint32_t (the tile alone: kShift 0).
template <typename Key, int kShift>
__global__ void tile_ranges_kernel(const Key* keys, int64_t n, int64_t num_tiles, int2* ranges) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int64_t tile = int64_t(keys[i] >> kShift);
  if (tile >= num_tiles) return;
  if (i == 0 || int64_t(keys[i - 1] >> kShift) != tile) ranges[tile].x = int(i);
  if (i == n - 1 || int64_t(keys[i + 1] >> kShift) != tile) ranges[tile].y = int(i + 1);
}

__global__ void __launch_bounds__(kBlockPixels)
    blend_forward_kernel(int64_t width, int64_t height, int tiles_x, int tiles_y, const int2* tile_ranges,
                         const uint32_t* sorted_ids, const float4* xy_opacity, const float4* conic,
                         const float4* color_depth, const float* backgrounds, float* image, float* alpha, float* depth,
                         float* final_transmittance, float* accum_depth, int32_t* last_index) {
  const int view = blockIdx.z;
  const int tile = blockIdx.y * tiles_x + blockIdx.x;
  const int tid = threadIdx.y * m::kTileSize + threadIdx.x;
  const int px = blockIdx.x * m::kTileSize + threadIdx.x;
  const int py = blockIdx.y * m::kTileSize + threadIdx.y;
  const bool inside = px < width && py < height;
  const float fx = float(px) + 0.5f, fy = float(py) + 0.5f;
  const int2 range = tile_ranges[int64_t(view) * tiles_x * tiles_y + tile];

  __shared__ float4 s_xy_opacity[kBlockPixels];
  __shared__ float4 s_conic[kBlockPixels];
  __shared__ float4 s_color_depth[kBlockPixels];

  float T = 1.0f, r = 0.0f, g = 0.0f, b = 0.0f, d = 0.0f;
  int last = range.x - 1;
  bool done = !inside;
  for (int start = range.x; start < range.y; start += kBlockPixels) {
    if (__syncthreads_count(done) == kBlockPixels) break;  // also guards the shared memory reuse
    const int k = start + tid;
    if (k < range.y) {
      const uint32_t id = sorted_ids[k];
      s_xy_opacity[tid] = xy_opacity[id];
      s_conic[tid] = conic[id];
      s_color_depth[tid] = color_depth[id];
    }
    __syncthreads();
    const int count = min(kBlockPixels, range.y - start);
    for (int j = 0; j < count && !done; ++j) {
      const float4 xo = s_xy_opacity[j];
      float dx, dy;
      const float sigma = gaussian_sigma(xo, s_conic[j], fx, fy, dx, dy);
      if (sigma < 0.0f) continue;
      const float a = fminf(m::kMaxAlpha, xo.z * expf(-sigma));
      if (a < m::kAlphaThreshold) continue;
      const float next_T = T * (1.0f - a);
      if (next_T <= m::kMinTransmittance) {
        done = true;
        break;
      }
      const float w = a * T;
      const float4 cd = s_color_depth[j];
      r += w * cd.x;
      g += w * cd.y;
      b += w * cd.z;
      d += w * cd.w;
      T = next_T;
      last = start + j;
    }
  }
  if (!inside) return;
  const int64_t pix = (int64_t(view) * height + py) * width + px;
  const float bg_r = backgrounds ? backgrounds[3 * view + 0] : 0.0f;
  const float bg_g = backgrounds ? backgrounds[3 * view + 1] : 0.0f;
  const float bg_b = backgrounds ? backgrounds[3 * view + 2] : 0.0f;
  image[3 * pix + 0] = r + T * bg_r;
  image[3 * pix + 1] = g + T * bg_g;
  image[3 * pix + 2] = b + T * bg_b;
  const float acc_alpha = 1.0f - T;
  alpha[pix] = acc_alpha;
  depth[pix] = d / fmaxf(acc_alpha, m::kDepthAlphaFloor);
  final_transmittance[pix] = T;
  accum_depth[pix] = d;
  last_index[pix] = last;
}

constexpr int kThreads = 256;  // per block of the per-Gaussian and per-intersection kernels
inline int blocks_for(int64_t n, int threads) { return int((n + threads - 1) / threads); }

inline int bit_width(uint64_t v) {
  int bits = 0;
  while (v) {
    ++bits;
    v >>= 1;
  }
  return bits;
}

// Emits the intersections as Key bits into `slots` slots (sentinels: all ones in the unused ones), sorts them
// stably on bits [0, end_bit) with the Gaussian ids in `values`, and finds each tile's range.
template <typename Key>
void sort_by_tile(const FlexavatarCudaForwardArgs& a, ForwardState& s, int64_t num_views, const int4* tile_box,
                  const uint32_t* order, const int64_t* offsets, int64_t slots, bool sentinels, uint32_t* values,
                  int64_t num_tiles, int end_bit, DeviceArena& scratch) {
  using Bits = typename Key::Bits;
  const int64_t VG = num_views * a.num_gaussians;
  Bits* keys = scratch.alloc<Bits>(slots);
  Bits* keys_sorted = scratch.alloc<Bits>(slots);
  if (sentinels) check(cudaMemsetAsync(keys, 0xff, sizeof(Bits) * slots, s.stream), "cudaMemsetAsync");
  emit_intersections_kernel<Key><<<blocks_for(VG, kThreads), kThreads, 0, s.stream>>>(
      a, num_views, s.tiles_x, s.xy_opacity, s.conic, s.color_depth, tile_box, order, offsets, slots, keys, values);
  check(cudaGetLastError(), "emit_intersections_kernel launch");
  sort_pairs(keys, keys_sorted, values, s.sorted_ids, slots, end_bit, scratch, s.stream);
  tile_ranges_kernel<Bits, Key::kTileShift><<<blocks_for(slots, kThreads), kThreads, 0, s.stream>>>(keys_sorted, slots,
                                                                                             num_tiles, s.tile_ranges);
  check(cudaGetLastError(), "tile_ranges_kernel launch");
}

// FLEXAVATAR_CUDA_SORT: unset or "depth-first" (the default), or "tile-depth-keys" (the form before, kept for
// side-by-side timing on a GPU until one has measured both).
bool depth_first_sort() {
  const char* form = std::getenv("FLEXAVATAR_CUDA_SORT");
  if (form == nullptr || form[0] == '\0' || std::strcmp(form, "depth-first") == 0) return true;
  if (std::strcmp(form, "tile-depth-keys") == 0) return false;
  throw CudaFailure{StatusCode::kInvalidArgument, std::string("FLEXAVATAR_CUDA_SORT: expected depth-first or "
                                                              "tile-depth-keys, got '") + form + "'"};
}

}  // namespace

void run_forward(const FlexavatarCudaForwardArgs& a, ForwardState& s) {
  cudaStream_t stream = s.stream;
  s.num_batches = a.num_batches;
  s.num_gaussians = a.num_gaussians;
  s.num_cameras = a.num_cameras;
  s.num_views = a.num_batches * a.num_cameras;
  s.width = a.width;
  s.height = a.height;
  s.eps2d = a.eps2d;
  s.near_plane = a.near_plane;
  s.far_plane = a.far_plane;
  s.tiles_x = int((a.width + m::kTileSize - 1) / m::kTileSize);
  s.tiles_y = int((a.height + m::kTileSize - 1) / m::kTileSize);
  const int64_t V = s.num_views, G = a.num_gaussians;
  const int64_t VG = V * G;
  const int64_t num_tiles = V * s.tiles_x * s.tiles_y;
  const int64_t num_pixels = V * a.width * a.height;
  const bool depth_first = depth_first_sort();  // read before any work: a bad value fails every call alike

  s.xy_opacity = s.arena.alloc<float4>(VG);
  s.conic = s.arena.alloc<float4>(VG);
  s.color_depth = s.arena.alloc<float4>(VG);
  s.tile_ranges = s.arena.alloc<int2>(num_tiles);
  s.final_transmittance = s.arena.alloc<float>(num_pixels);
  s.accum_depth = s.arena.alloc<float>(num_pixels);
  s.last_index = s.arena.alloc<int32_t>(num_pixels);
  check(cudaMemsetAsync(s.tile_ranges, 0, sizeof(int2) * num_tiles, stream), "cudaMemsetAsync");

  DeviceArena scratch(stream);  // freed (stream-ordered) when the forward returns
  const int64_t capacity = a.intersection_capacity;  // 0: sized exactly, after a host synchronisation
  if (VG > 0) {
    int4* tile_box = scratch.alloc<int4>(VG);
    int64_t* touched = scratch.alloc<int64_t>(VG);
    int64_t* offsets = scratch.alloc<int64_t>(VG);
    uint32_t* depth_keys = depth_first ? scratch.alloc<uint32_t>(VG) : nullptr;
    uint32_t* ids = depth_first ? scratch.alloc<uint32_t>(VG) : nullptr;
    project_kernel<<<blocks_for(VG, kThreads), kThreads, 0, stream>>>(a, V, s.tiles_x, s.tiles_y, s.xy_opacity,
                                                                       s.conic, s.color_depth, tile_box, touched,
                                                                       depth_keys, ids);
    check(cudaGetLastError(), "project_kernel launch");
    uint32_t* order = nullptr;  // depth-first: the (view, Gaussian)s front to back; touched in that order
    if (depth_first) {
      uint32_t* depth_keys_sorted = scratch.alloc<uint32_t>(VG);
      order = scratch.alloc<uint32_t>(VG);
      sort_pairs(depth_keys, depth_keys_sorted, ids, order, VG, 31, scratch, stream);
      int64_t* touched_in_order = scratch.alloc<int64_t>(VG);
      gather_touched_kernel<<<blocks_for(VG, kThreads), kThreads, 0, stream>>>(order, touched, VG,
                                                                               touched_in_order);
      check(cudaGetLastError(), "gather_touched_kernel launch");
      touched = touched_in_order;
    }
    int64_t slots = capacity;
    if (capacity == 0) {
      s.num_intersections = slots = inclusive_scan_int64(touched, offsets, VG, scratch, stream);
      if (s.num_intersections > INT32_MAX)
        throw CudaFailure{StatusCode::kInvalidSize, "too many tile/Gaussian intersections (" +
                                                        std::to_string(s.num_intersections) +
                                                        "): expected at most 2^31 - 1; render fewer views per call"};
    } else {
      inclusive_scan_int64_async(touched, offsets, VG, scratch, stream);
      s.num_intersections = -1;
    }
    if (a.num_intersections_out)
      check(cudaMemcpyAsync(a.num_intersections_out, offsets + (VG - 1), sizeof(int64_t), cudaMemcpyDeviceToDevice,
                            stream),
            "copy the intersection count");
    if (slots > 0) {
      s.sorted_ids = s.arena.alloc<uint32_t>(slots);
      uint32_t* values = scratch.alloc<uint32_t>(slots);
      if (capacity > 0) check(cudaMemsetAsync(values, 0, sizeof(uint32_t) * slots, stream), "cudaMemsetAsync");
      // Sentinels (capacity > 0): all ones in the sorted bits, a tile field ≥ num_tiles since the sort covers
      // bit_width(num_tiles) tile bits, not bit_width(num_tiles - 1).
      const int tile_bits = bit_width(uint64_t(num_tiles));
      if (depth_first)
        sort_by_tile<TileKey>(a, s, V, tile_box, order, offsets, slots, capacity > 0, values, num_tiles, tile_bits,
                              scratch);
      else
        sort_by_tile<TileDepthKey>(a, s, V, tile_box, nullptr, offsets, slots, capacity > 0, values, num_tiles,
                                   31 + tile_bits, scratch);
    }
  } else {
    s.num_intersections = capacity == 0 ? 0 : -1;
    if (a.num_intersections_out)
      check(cudaMemsetAsync(a.num_intersections_out, 0, sizeof(int64_t), stream), "cudaMemsetAsync");
  }
  if (s.sorted_ids == nullptr) s.sorted_ids = s.arena.alloc<uint32_t>(1);

  const dim3 grid(s.tiles_x, s.tiles_y, unsigned(V));
  const dim3 block(m::kTileSize, m::kTileSize);
  blend_forward_kernel<<<grid, block, 0, stream>>>(a.width, a.height, s.tiles_x, s.tiles_y, s.tile_ranges,
                                                   s.sorted_ids, s.xy_opacity, s.conic, s.color_depth, a.backgrounds,
                                                   a.image, a.alpha, a.depth, s.final_transmittance, s.accum_depth,
                                                   s.last_index);
  check(cudaGetLastError(), "blend_forward_kernel launch");
}

}  // namespace cuda
}  // namespace flexavatar
