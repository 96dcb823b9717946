// Backward pass of the CUDA rasterizer:
//   1. per tile, walk each pixel's composited Gaussians back to front (transmittance recovered by
//      division, α ≤ 0.99 keeps it stable), accumulate per-(view, Gaussian) gradients of the 2D
//      mean, conic, opacity, colour and depth (warp-reduced, then atomics)
//   2. per Gaussian, sum its views and push the 2D gradients through the EWA projection.
#include "internal.cuh"

namespace flexavatar {
namespace cuda {
namespace {

namespace m = math;

// Per (view, Gaussian) gradient record, contiguous for atomics locality.
struct ViewGrad {
  float mean_x, mean_y, conic_a, conic_b, conic_c, opacity, red, green, blue, depth;
};
constexpr int kGradFields = 10;
static_assert(sizeof(ViewGrad) == kGradFields * sizeof(float), "ViewGrad must be packed floats");

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

__global__ void __launch_bounds__(kBlockPixels)
    blend_backward_kernel(int64_t width, int64_t height, int tiles_x, int tiles_y, const int2* tile_ranges,
                          const uint32_t* sorted_ids, const float4* xy_opacity, const float4* conic,
                          const float4* color_depth, const float* backgrounds, const float* final_transmittance,
                          const float* accum_depth, const int32_t* last_index, const float* v_image,
                          const float* v_alpha, const float* v_depth, ViewGrad* grads) {
  const int view = blockIdx.z;
  const int tile = blockIdx.y * tiles_x + blockIdx.x;
  const int tid = threadIdx.y * m::kTileSize + threadIdx.x;
  const int lane = tid & 31;
  const int px = blockIdx.x * m::kTileSize + threadIdx.x;
  const int py = blockIdx.y * m::kTileSize + threadIdx.y;
  const bool inside = px < width && py < height;
  const float fx = float(px) + 0.5f, fy = float(py) + 0.5f;
  const int2 range = tile_ranges[int64_t(view) * tiles_x * tiles_y + tile];

  __shared__ uint32_t s_id[kBlockPixels];
  __shared__ float4 s_xy_opacity[kBlockPixels];
  __shared__ float4 s_conic[kBlockPixels];
  __shared__ float4 s_color_depth[kBlockPixels];
  __shared__ int s_last_max;

  // Upstream gradients of this pixel, turned into gradients of the raw accumulations
  // C = Σ w c, D = Σ w z and A = 1 - T_final (image = C + T bg, depth = D / max(A, floor)).
  float T_final = 1.0f, vC_r = 0.0f, vC_g = 0.0f, vC_b = 0.0f, vD = 0.0f, vA = 0.0f;
  int last = range.x - 1;
  if (inside) {
    const int64_t pix = (int64_t(view) * height + py) * width + px;
    T_final = final_transmittance[pix];
    last = last_index[pix];
    const float A = 1.0f - T_final;
    if (v_image) {
      vC_r = v_image[3 * pix + 0];
      vC_g = v_image[3 * pix + 1];
      vC_b = v_image[3 * pix + 2];
    }
    if (backgrounds)
      vA -= vC_r * backgrounds[3 * view + 0] + vC_g * backgrounds[3 * view + 1] + vC_b * backgrounds[3 * view + 2];
    if (v_alpha) vA += v_alpha[pix];
    if (v_depth) {
      const float vd = v_depth[pix];
      vD = vd / fmaxf(A, m::kDepthAlphaFloor);
      if (A > m::kDepthAlphaFloor) vA -= vd * accum_depth[pix] / (A * A);
    }
  }
  if (tid == 0) s_last_max = range.x - 1;
  __syncthreads();
  if (inside) atomicMax(&s_last_max, last);
  __syncthreads();
  const int end = s_last_max + 1;

  float T = T_final;                        // transmittance after the current Gaussian
  float S_r = 0.0f, S_g = 0.0f, S_b = 0.0f, S_d = 0.0f;  // contributions behind it
  for (int batch_end = end; batch_end > range.x; batch_end -= kBlockPixels) {
    const int batch_start = max(range.x, batch_end - kBlockPixels);
    __syncthreads();  // previous batch fully consumed
    const int k = batch_end - 1 - tid;  // load back to front
    if (k >= batch_start) {
      const uint32_t id = sorted_ids[k];
      s_id[tid] = id;
      s_xy_opacity[tid] = xy_opacity[id];
      s_conic[tid] = conic[id];
      s_color_depth[tid] = color_depth[id];
    }
    __syncthreads();
    const int count = batch_end - batch_start;
    for (int j = 0; j < count; ++j) {
      const int kk = batch_end - 1 - j;
      bool valid = inside && kk <= last;
      const float4 xo = s_xy_opacity[j];
      const float4 co = s_conic[j];
      float dx = 0.0f, dy = 0.0f, sigma = 0.0f, vis = 0.0f, a = 0.0f;
      if (valid) {
        sigma = gaussian_sigma(xo, co, fx, fy, dx, dy);
        vis = expf(-sigma);
        a = fminf(m::kMaxAlpha, xo.z * vis);
        valid = sigma >= 0.0f && a >= m::kAlphaThreshold;
      }
      ViewGrad gl{};
      if (valid) {
        const float4 cd = s_color_depth[j];
        const float ra = 1.0f / (1.0f - a);
        T *= ra;  // transmittance in front of this Gaussian
        const float w = a * T;
        gl.red = w * vC_r;
        gl.green = w * vC_g;
        gl.blue = w * vC_b;
        gl.depth = w * vD;
        const float v_a = (cd.x * T - S_r * ra) * vC_r + (cd.y * T - S_g * ra) * vC_g + (cd.z * T - S_b * ra) * vC_b +
                          (cd.w * T - S_d * ra) * vD + T_final * ra * vA;
        S_r += cd.x * w;
        S_g += cd.y * w;
        S_b += cd.z * w;
        S_d += cd.w * w;
        if (xo.z * vis <= m::kMaxAlpha) {  // α not clamped: it depends on opacity and σ
          const float v_sigma = -xo.z * vis * v_a;
          gl.opacity = vis * v_a;
          gl.conic_a = 0.5f * dx * dx * v_sigma;
          gl.conic_b = dx * dy * v_sigma;
          gl.conic_c = 0.5f * dy * dy * v_sigma;
          gl.mean_x = v_sigma * (co.x * dx + co.y * dy);
          gl.mean_y = v_sigma * (co.y * dx + co.z * dy);
        }
      }
      // All lanes take part in the reduction; skip it when no lane of the warp contributes.
      if (__any_sync(0xffffffffu, valid)) {
        float* f = reinterpret_cast<float*>(&gl);
#pragma unroll
        for (int q = 0; q < kGradFields; ++q) f[q] = warp_sum(f[q]);
        if (lane == 0) {
          float* dst = reinterpret_cast<float*>(grads + s_id[j]);
#pragma unroll
          for (int q = 0; q < kGradFields; ++q) atomicAdd(dst + q, f[q]);
        }
      }
    }
  }
}

__global__ void project_backward_kernel(FlexavatarCudaBackwardArgs a, int64_t num_batches, int64_t num_gaussians,
                                        int64_t num_cameras, int64_t width, int64_t height, float eps2d,
                                        const ViewGrad* grads) {
  const int64_t gi = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;  // batch·G + g
  if (gi >= num_batches * num_gaussians) return;
  const int64_t b = gi / num_gaussians, g = gi % num_gaussians;
  float mean[3], quat[4], scale[3];
  for (int i = 0; i < 3; ++i) mean[i] = a.means[3 * gi + i];
  for (int i = 0; i < 4; ++i) quat[i] = a.quats[4 * gi + i];
  for (int i = 0; i < 3; ++i) scale[i] = a.scales[3 * gi + i];
  float v_mean[3] = {0, 0, 0}, v_quat[4] = {0, 0, 0, 0}, v_scale[3] = {0, 0, 0};
  float v_opacity = 0.0f, v_color[3] = {0, 0, 0};
  for (int64_t c = 0; c < num_cameras; ++c) {
    const int64_t view = b * num_cameras + c;
    const ViewGrad gr = grads[view * num_gaussians + g];
    v_opacity += gr.opacity;
    v_color[0] += gr.red;
    v_color[1] += gr.green;
    v_color[2] += gr.blue;
    if (gr.mean_x == 0.0f && gr.mean_y == 0.0f && gr.conic_a == 0.0f && gr.conic_b == 0.0f && gr.conic_c == 0.0f &&
        gr.depth == 0.0f)
      continue;  // not seen in this view (or no gradient): nothing to push through the projection
    const m::Camera<float> cam =
        m::make_camera<float>(a.viewmats + 16 * view, a.intrinsics + 9 * view, int(width), int(height));
    m::ProjectedGrad<float> pg{gr.mean_x, gr.mean_y, gr.conic_a, gr.conic_b, gr.conic_c, gr.depth};
    m::project_gaussian_backward<float>(cam, mean, quat, scale, eps2d, pg, v_mean, v_quat, v_scale);
  }
  for (int i = 0; i < 3; ++i) a.v_means[3 * gi + i] = v_mean[i];
  for (int i = 0; i < 4; ++i) a.v_quats[4 * gi + i] = v_quat[i];
  for (int i = 0; i < 3; ++i) a.v_scales[3 * gi + i] = v_scale[i];
  a.v_opacities[gi] = v_opacity;
  for (int i = 0; i < 3; ++i) {
    const float sh = a.sh0[3 * gi + i];
    a.v_sh0[3 * gi + i] = (m::kShC0 * sh + 0.5f > 0.0f) ? m::kShC0 * v_color[i] : 0.0f;
  }
}

}  // namespace

void run_backward(const ForwardState& s, const FlexavatarCudaBackwardArgs& a) {
  cudaStream_t stream = s.stream;
  const int64_t VG = s.num_views * s.num_gaussians;
  if (s.num_batches * s.num_gaussians == 0) return;
  DeviceArena scratch(stream);
  ViewGrad* grads = scratch.alloc<ViewGrad>(VG);
  check(cudaMemsetAsync(grads, 0, sizeof(ViewGrad) * VG, stream), "cudaMemsetAsync");
  if (s.num_intersections > 0) {
    const dim3 grid(s.tiles_x, s.tiles_y, unsigned(s.num_views));
    const dim3 block(m::kTileSize, m::kTileSize);
    blend_backward_kernel<<<grid, block, 0, stream>>>(s.width, s.height, s.tiles_x, s.tiles_y, s.tile_ranges,
                                                      s.sorted_ids, s.xy_opacity, s.conic, s.color_depth,
                                                      a.backgrounds, s.final_transmittance, s.accum_depth,
                                                      s.last_index, a.v_image, a.v_alpha, a.v_depth, grads);
    check(cudaGetLastError(), "blend_backward_kernel launch");
  }
  constexpr int kThreads = 128;
  const int64_t n = s.num_batches * s.num_gaussians;
  project_backward_kernel<<<int((n + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      a, s.num_batches, s.num_gaussians, s.num_cameras, s.width, s.height, s.eps2d, grads);
  check(cudaGetLastError(), "project_backward_kernel launch");
}

}  // namespace cuda
}  // namespace flexavatar
