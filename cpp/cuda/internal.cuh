// Internals shared by the CUDA rasterizer's translation units.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "flexavatar/cuda_api.h"
#include "flexavatar/gaussian_math.h"
#include "flexavatar/status.h"

namespace flexavatar {
namespace cuda {

constexpr int kBlockPixels = math::kTileSize * math::kTileSize;  // one thread per pixel of a tile

// Thrown inside the library only; the C ABI turns it into a status code and message.
struct CudaFailure {
  StatusCode code;
  std::string message;
};

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so the next call starts clean
    throw CudaFailure{err == cudaErrorMemoryAllocation ? StatusCode::kOutOfMemory : StatusCode::kDeviceError,
                      std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")"};
  }
}

// Stream-ordered allocations owned by a forward state or a single call.
class DeviceArena {
 public:
  explicit DeviceArena(cudaStream_t stream) : stream_(stream) {}
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;
  ~DeviceArena() { release(); }

  template <typename T>
  T* alloc(int64_t count) {
    if (count <= 0) count = 1;  // keep pointers valid for empty scenes
    void* p = nullptr;
    check(cudaMallocAsync(&p, sizeof(T) * static_cast<size_t>(count), stream_), "cudaMallocAsync");
    ptrs_.push_back(p);
    return static_cast<T*>(p);
  }
  void release() {
    for (void* p : ptrs_) cudaFreeAsync(p, stream_);
    ptrs_.clear();
  }

 private:
  cudaStream_t stream_;
  std::vector<void*> ptrs_;
};

// Everything the backward pass needs from the forward pass.
struct ForwardState {
  explicit ForwardState(cudaStream_t s) : stream(s), arena(s) {}
  cudaStream_t stream;
  int device = 0;
  int64_t num_batches = 0, num_gaussians = 0, num_cameras = 0, num_views = 0, width = 0, height = 0;
  int tiles_x = 0, tiles_y = 0;
  float eps2d = 0.3f, near_plane = 0.01f, far_plane = 1e10f;
  int64_t num_intersections = 0;    // -1: sync-free forward (count left on the device); no backward then
  // Per view × Gaussian, front-end of the blend: (x, y, opacity, _), (a, b, c, _), (r, g, b, z).
  float4* xy_opacity = nullptr;
  float4* conic = nullptr;
  float4* color_depth = nullptr;
  uint32_t* sorted_ids = nullptr;   // [slots] flat view·G + g, sorted by (tile, depth); tile_ranges index it
  int2* tile_ranges = nullptr;      // [V · tiles]: [begin, end) into sorted_ids
  // Per pixel.
  float* final_transmittance = nullptr;
  float* accum_depth = nullptr;     // Σ w z before the division by alpha
  int32_t* last_index = nullptr;    // index into sorted_ids of the last composited Gaussian
  DeviceArena arena;
};

// sort.cu: the only translation unit that includes CUB. inclusive_scan_int64 returns the total, read back to
// the host (a synchronisation); the _async form leaves it on the device. The sorts are stable and sort bits
// [0, end_bit) of the keys.
void inclusive_scan_int64_async(const int64_t* in, int64_t* out, int64_t n, DeviceArena& arena, cudaStream_t stream);
int64_t inclusive_scan_int64(const int64_t* in, int64_t* out, int64_t n, DeviceArena& arena, cudaStream_t stream);
void sort_pairs(uint64_t* keys_in, uint64_t* keys_out, uint32_t* values_in, uint32_t* values_out, int64_t n,
                int end_bit, DeviceArena& arena, cudaStream_t stream);
void sort_pairs(uint32_t* keys_in, uint32_t* keys_out, uint32_t* values_in, uint32_t* values_out, int64_t n,
                int end_bit, DeviceArena& arena, cudaStream_t stream);

// forward.cu / backward.cu
void run_forward(const FlexavatarCudaForwardArgs& args, ForwardState& state);
void run_backward(const ForwardState& state, const FlexavatarCudaBackwardArgs& args);

// runtime_support.cu (the embedding runtime's helpers); rgba must be 4-byte aligned.
void launch_frame_to_rgba8(const float* image, const float* alpha, uint8_t* rgba, int64_t pixels,
                           cudaStream_t stream);
void launch_count_nonfinite(const float* data, int64_t n, uint32_t* count, cudaStream_t stream);

// α of one Gaussian at one pixel, exactly as both blend kernels evaluate it.
__device__ __forceinline__ float gaussian_sigma(const float4& xy_op, const float4& conic, float px, float py,
                                                float& dx, float& dy) {
  dx = xy_op.x - px;
  dy = xy_op.y - py;
  return 0.5f * (conic.x * dx * dx + conic.z * dy * dy) + conic.y * dx * dy;
}

}  // namespace cuda
}  // namespace flexavatar
