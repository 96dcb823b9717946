/* C ABI of the CUDA rasterizer library (libflexavatar_cuda), loaded at run time with dlopen so
 * that a CPU-only install never needs the CUDA runtime. Plain C structs: the core and the CUDA
 * library may be built by different compilers. Every function returns 0 on success or a
 * flexavatar::StatusCode value, with a message in `error` (NUL-terminated, at most error_len). */
#ifndef FLEXAVATAR_CUDA_API_H_
#define FLEXAVATAR_CUDA_API_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 2: memory, stream, copy and frame-conversion entry points for the embedding runtime (cpp/runtime),
 * which has no link-time CUDA dependency either. 3: host_alloc / host_free take the device (page-locked
 * memory is allocated and freed with that device current: no CUDA context on device 0 when the runtime
 * uses another one). 4: sync-free sorting (FlexavatarCudaForwardArgs.intersection_capacity and
 * num_intersections_out). The loader accepts exactly this version. */
#define FLEXAVATAR_CUDA_ABI_VERSION 4
#define FLEXAVATAR_CUDA_ENTRY_SYMBOL "flexavatar_cuda_api"
/* How the CUDA library exports its entry point (the one symbol the loader looks up). */
#if defined(_WIN32)
#define FLEXAVATAR_CUDA_EXPORT __declspec(dllexport)
#else
#define FLEXAVATAR_CUDA_EXPORT __attribute__((visibility("default")))
#endif

/* Forward pass. All pointers are device memory on `device`, dense float32, C-contiguous, with the
 * shapes of flexavatar/raster_types.h (B batches × C cameras = V views, G Gaussians each); V × 16-pixel tiles
 * at most 2^31 - 1. The environment variable FLEXAVATAR_CUDA_SORT=tile-depth-keys selects the sort's previous
 * form (one 64-bit tile|depth key sort instead of depth first), for side-by-side timing only: same frames. */
typedef struct FlexavatarCudaForwardArgs {
  int64_t num_batches, num_gaussians, num_cameras, width, height;
  float eps2d, near_plane, far_plane;
  const float* means;       /* [B, G, 3] */
  const float* quats;       /* [B, G, 4] */
  const float* scales;      /* [B, G, 3] */
  const float* opacities;   /* [B, G] */
  const float* sh0;         /* [B, G, 3] */
  const float* viewmats;    /* [B, C, 4, 4] */
  const float* intrinsics;  /* [B, C, 3, 3] */
  const float* backgrounds; /* [B, C, 3] or NULL (black) */
  float* image;             /* out [B, C, H, W, 3] */
  float* alpha;             /* out [B, C, H, W] */
  float* depth;             /* out [B, C, H, W] */
  int device;
  void* stream;             /* cudaStream_t; NULL = legacy default stream */
  /* ABI 4: how the (tile, Gaussian) intersections are sized for the sort.
   * 0: exactly; their number is read back to the host, the one host synchronisation inside the call.
   * > 0 (at most 2^31 - 1): no host synchronisation. The intersections go into this many slots and the sort
   * covers all of them (unused slots sort last and are never read). A frame with more intersections than
   * slots is INCOMPLETE (those past the capacity, the farthest, are dropped): the caller reads
   * *num_intersections_out after its own synchronisation and, when it exceeds the capacity, renders again with
   * a larger one (or 0).
   * The backward pass needs a forward with 0. */
  int64_t intersection_capacity;
  int64_t* num_intersections_out; /* device memory or NULL (required when intersection_capacity > 0): the
                                   * exact number of intersections, written in stream order */
} FlexavatarCudaForwardArgs;

/* Backward pass: upstream gradients of the three outputs (any may be NULL = zero) and the same
 * inputs as the forward; writes (overwrites) the gradients of the Gaussian attributes. */
typedef struct FlexavatarCudaBackwardArgs {
  const float* means;
  const float* quats;
  const float* scales;
  const float* opacities;
  const float* sh0;
  const float* viewmats;
  const float* intrinsics;
  const float* backgrounds;
  const float* v_image;  /* [B, C, H, W, 3] */
  const float* v_alpha;  /* [B, C, H, W] */
  const float* v_depth;  /* [B, C, H, W] */
  float* v_means;        /* out [B, G, 3] */
  float* v_quats;        /* out [B, G, 4] */
  float* v_scales;       /* out [B, G, 3] */
  float* v_opacities;    /* out [B, G] */
  float* v_sh0;          /* out [B, G, 3] */
} FlexavatarCudaBackwardArgs;  /* runs on the forward's stream, which owns the state's buffers */

typedef struct FlexavatarCudaApi {
  int abi_version;
  /* Number of usable devices (0 without a driver or GPU: not an error; then `error` says why, e.g. a driver
   * older than the CUDA runtime this library was built with). */
  int (*device_count)(int* count, char* error, size_t error_len);
  /* Device ordinal owning `ptr`; fails for host or unknown pointers. */
  int (*pointer_device)(const void* ptr, int* device, char* error, size_t error_len);
  /* Runs the forward pass; on success *state holds what the backward needs (release it). */
  int (*forward)(const FlexavatarCudaForwardArgs* args, void** state, char* error, size_t error_len);
  int (*backward)(void* state, const FlexavatarCudaBackwardArgs* args, char* error, size_t error_len);
  void (*release_state)(void* state);
  /* Number of (tile, Gaussian) intersections of a forward state (diagnostics, tests); -1 for a sync-free
   * forward (intersection_capacity > 0), whose count is in its num_intersections_out. */
  int64_t (*state_num_intersections)(const void* state);

  /* ---- ABI 2 (host_alloc / host_free: ABI 3) ---- */
  /* Device memory on `device` (cudaMalloc) and page-locked host memory (cudaMallocHost with `device`
   * current: asynchronous copies from / to it do not stage through a driver buffer). bytes = 0 gives a
   * valid 1-byte block. */
  int (*device_alloc)(void** ptr, size_t bytes, int device, char* error, size_t error_len);
  int (*device_free)(void* ptr, int device, char* error, size_t error_len);
  int (*host_alloc)(void** ptr, size_t bytes, int device, char* error, size_t error_len);
  int (*host_free)(void* ptr, int device, char* error, size_t error_len);
  /* A non-blocking stream on `device` (no implicit ordering with the legacy default stream). */
  int (*stream_create)(void** stream, int device, char* error, size_t error_len);
  int (*stream_destroy)(void* stream, int device, char* error, size_t error_len);
  int (*stream_synchronize)(void* stream, int device, char* error, size_t error_len);
  /* cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream): unified addressing gives the direction. */
  int (*memcpy_async)(void* dst, const void* src, size_t bytes, int device, void* stream, char* error,
                      size_t error_len);
  /* rgba[4p + c] = round(clamp(image[3p + c], 0, 1) * 255), rgba[4p + 3] from alpha[p]; p < pixels.
   * The same rounding as the CPU runtime (half away from zero). All device pointers; asynchronous. */
  int (*frame_to_rgba8)(const float* image, const float* alpha, uint8_t* rgba, int64_t pixels, int device,
                        void* stream, char* error, size_t error_len);
  /* *count (device memory) = number of NaN / inf values in data[0, n); asynchronous. */
  int (*count_nonfinite)(const float* data, int64_t n, uint32_t* count, int device, void* stream, char* error,
                         size_t error_len);
} FlexavatarCudaApi;

typedef const FlexavatarCudaApi* (*FlexavatarCudaEntryFn)(void);

#ifdef __cplusplus
}
#endif

#endif /* FLEXAVATAR_CUDA_API_H_ */
