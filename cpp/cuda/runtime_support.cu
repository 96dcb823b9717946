// Small kernels for the embedding runtime (cpp/runtime): the RGBA8 frame and the non-finite check of
// decoded Gaussians, both on the caller's stream so that a frame never waits on the host.
#include <algorithm>

#include "internal.cuh"

namespace flexavatar {
namespace cuda {
namespace {

__device__ __forceinline__ uint8_t to_byte(float v) {
  // lroundf: half away from zero, as std::lround in the CPU runtime (fminf/fmaxf also map NaN to 0).
  return uint8_t(lroundf(fminf(fmaxf(v, 0.0f), 1.0f) * 255.0f));
}

__global__ void rgba8_kernel(const float* image, const float* alpha, uchar4* rgba, int64_t pixels) {
  const int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (p >= pixels) return;
  rgba[p] = make_uchar4(to_byte(image[3 * p + 0]), to_byte(image[3 * p + 1]), to_byte(image[3 * p + 2]),
                        to_byte(alpha[p]));
}

__global__ void count_nonfinite_kernel(const float* data, int64_t n, uint32_t* count) {
  uint32_t local = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    local += isfinite(data[i]) ? 0u : 1u;
  // One atomic per warp with a non-finite value (normally none at all).
  for (int offset = 16; offset > 0; offset >>= 1) local += __shfl_down_sync(0xffffffffu, local, offset);
  if ((threadIdx.x & 31) == 0 && local) atomicAdd(count, local);
}

}  // namespace

void launch_frame_to_rgba8(const float* image, const float* alpha, uint8_t* rgba, int64_t pixels,
                           cudaStream_t stream) {
  if (pixels <= 0) return;
  constexpr int kThreads = 256;
  const int blocks = int((pixels + kThreads - 1) / kThreads);
  rgba8_kernel<<<blocks, kThreads, 0, stream>>>(image, alpha, reinterpret_cast<uchar4*>(rgba), pixels);
  check(cudaGetLastError(), "rgba8_kernel launch");
}

void launch_count_nonfinite(const float* data, int64_t n, uint32_t* count, cudaStream_t stream) {
  check(cudaMemsetAsync(count, 0, sizeof(uint32_t), stream), "cudaMemsetAsync");
  if (n <= 0) return;
  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, 1024);  // grid-stride beyond that
  count_nonfinite_kernel<<<int(blocks), kThreads, 0, stream>>>(data, n, count);
  check(cudaGetLastError(), "count_nonfinite_kernel launch");
}

}  // namespace cuda
}  // namespace flexavatar
