// The C ABI entry point of libflexavatar_cuda: argument checks, device selection, and turning
// every failure into a status code plus message (nothing escapes as an exception or abort).
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <set>

#include "flexavatar/raster_types.h"
#include "internal.cuh"

namespace flexavatar {
namespace cuda {
namespace {

int fail(StatusCode code, const std::string& message, char* error, size_t error_len) {
  if (error && error_len > 0) {
    std::strncpy(error, message.c_str(), error_len - 1);
    error[error_len - 1] = '\0';
  }
  return static_cast<int>(code);
}

// Restores the caller's current device when the call returns.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device != previous_) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }

 private:
  int previous_ = 0;
};

// Keeps freed stream-ordered memory in the pool instead of returning it at every synchronisation. Once per device
// (the first call on it): a forward may later run inside a CUDA graph capture (PyTorch's compiled frames), where
// calls outside the stream's work have no business. Should the first call be inside a capture already, this
// thread is in relaxed capture mode for the pool call: setting a pool attribute is a "potentially unsafe" call,
// which in global or thread-local mode would fail and invalidate the capture.
void keep_pool_memory(int device) {
  static std::mutex mutex;
  static std::set<int> done;
  std::lock_guard<std::mutex> lock(mutex);
  if (!done.insert(device).second) return;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  const bool exchanged = cudaThreadExchangeStreamCaptureMode(&mode) == cudaSuccess;
  cudaMemPool_t pool;
  if (cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess) {
    uint64_t threshold = UINT64_MAX;
    cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold);
  }
  if (exchanged) cudaThreadExchangeStreamCaptureMode(&mode);      // this thread's mode as it was
  cudaGetLastError();
}

int api_device_count(int* count, char* error, size_t error_len) {
  if (!count) return fail(StatusCode::kNullPointer, "count: got a null pointer", error, error_len);
  *count = 0;
  const cudaError_t err = cudaGetDeviceCount(count);
  if (err != cudaSuccess) {  // no driver / no device: report zero devices, not an error, and why
    cudaGetLastError();
    *count = 0;
    if (error && error_len > 0)
      std::snprintf(error, error_len, "%s: %s", cudaGetErrorName(err), cudaGetErrorString(err));
  }
  return 0;
}

int api_pointer_device(const void* ptr, int* device, char* error, size_t error_len) {
  if (!ptr || !device) return fail(StatusCode::kNullPointer, "pointer_device: got a null pointer", error, error_len);
  cudaPointerAttributes attr;
  const cudaError_t err = cudaPointerGetAttributes(&attr, ptr);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return fail(StatusCode::kInvalidArgument,
                std::string("not a CUDA device pointer (cudaPointerGetAttributes: ") + cudaGetErrorName(err) + ")",
                error, error_len);
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)
    return fail(StatusCode::kInvalidArgument, "expected CUDA device memory, got host memory", error, error_len);
  *device = attr.device;
  return 0;
}

int api_forward(const FlexavatarCudaForwardArgs* args, void** state_out, char* error, size_t error_len) {
  if (!args || !state_out) return fail(StatusCode::kNullPointer, "forward: null args or state", error, error_len);
  *state_out = nullptr;
  const FlexavatarCudaForwardArgs& a = *args;
  GaussianBuffers g{a.num_batches, a.num_gaussians, a.means, a.quats, a.scales, a.opacities, a.sh0};
  CameraBuffers c{a.num_cameras, a.viewmats, a.intrinsics, a.backgrounds};
  RasterSettings s;
  s.width = a.width;
  s.height = a.height;
  s.eps2d = a.eps2d;
  s.near_plane = a.near_plane;
  s.far_plane = a.far_plane;
  Status st = validate_raster_inputs(g, c, s);
  if (st.ok()) st = validate_raster_outputs(RasterOutputs{a.image, a.alpha, a.depth});
  if (!st.ok()) return fail(st.code(), st.message(), error, error_len);
  if (a.num_batches * a.num_cameras * a.num_gaussians >= (int64_t(1) << 32))
    return fail(StatusCode::kInvalidSize, "views x Gaussians: expected fewer than 2^32 per call", error, error_len);
  const int64_t tiles_per_view = ((a.width + math::kTileSize - 1) / math::kTileSize) *
                                 ((a.height + math::kTileSize - 1) / math::kTileSize);
  const int64_t num_tiles = a.num_batches * a.num_cameras * tiles_per_view;
  if (num_tiles > INT32_MAX)  // the sort's tile keys are 31-bit
    return fail(StatusCode::kInvalidSize,
                "views x " + std::to_string(math::kTileSize) + "-pixel tiles: expected at most 2^31 - 1 per call, " +
                    "got " + std::to_string(num_tiles) + "; render fewer views per call",
                error, error_len);
  if (a.intersection_capacity < 0 || a.intersection_capacity > INT32_MAX)
    return fail(StatusCode::kInvalidArgument,
                "intersection_capacity: expected 0 (sized exactly) or 1 .. 2^31 - 1 slots, got " +
                    std::to_string(a.intersection_capacity),
                error, error_len);
  if (a.intersection_capacity > 0 && !a.num_intersections_out)
    return fail(StatusCode::kNullPointer,
                "num_intersections_out: required with intersection_capacity > 0 (it tells whether the frame fit)",
                error, error_len);
  ForwardState* state = nullptr;
  try {
    DeviceGuard guard(a.device);
    keep_pool_memory(a.device);
    state = new ForwardState(static_cast<cudaStream_t>(a.stream));
    state->device = a.device;
    run_forward(a, *state);
    *state_out = state;
    return 0;
  } catch (const CudaFailure& f) {
    delete state;
    return fail(f.code, f.message, error, error_len);
  } catch (const std::bad_alloc&) {
    delete state;
    return fail(StatusCode::kOutOfMemory, "forward: host out of memory", error, error_len);
  } catch (...) {
    delete state;
    return fail(StatusCode::kDeviceError, "forward: unexpected failure", error, error_len);
  }
}

int api_backward(void* state_ptr, const FlexavatarCudaBackwardArgs* args, char* error, size_t error_len) {
  if (!state_ptr || !args) return fail(StatusCode::kNullPointer, "backward: null state or args", error, error_len);
  const ForwardState& s = *static_cast<const ForwardState*>(state_ptr);
  const FlexavatarCudaBackwardArgs& a = *args;
  if (s.num_intersections < 0)
    return fail(StatusCode::kInvalidArgument,
                "backward: this state is from a sync-free forward (intersection_capacity > 0), which may have "
                "dropped intersections; the backward needs a forward with intersection_capacity = 0",
                error, error_len);
  if (s.num_batches * s.num_gaussians > 0) {
    const struct {
      const void* p;
      const char* name;
    } required[] = {{a.means, "means"},       {a.quats, "quats"},     {a.scales, "scales"},
                    {a.opacities, "opacities"}, {a.sh0, "sh0"},       {a.viewmats, "viewmats"},
                    {a.intrinsics, "Ks"},      {a.v_means, "v_means"}, {a.v_quats, "v_quats"},
                    {a.v_scales, "v_scales"},  {a.v_opacities, "v_opacities"}, {a.v_sh0, "v_sh0"}};
    for (const auto& r : required)
      if (!r.p) return fail(StatusCode::kNullPointer, std::string(r.name) + ": got a null pointer", error, error_len);
  }
  try {
    DeviceGuard guard(s.device);
    run_backward(s, a);
    return 0;
  } catch (const CudaFailure& f) {
    return fail(f.code, f.message, error, error_len);
  } catch (const std::bad_alloc&) {
    return fail(StatusCode::kOutOfMemory, "backward: host out of memory", error, error_len);
  } catch (...) {
    return fail(StatusCode::kDeviceError, "backward: unexpected failure", error, error_len);
  }
}

void api_release_state(void* state_ptr) {
  auto* s = static_cast<ForwardState*>(state_ptr);
  if (!s) return;
  int previous = 0;
  const bool switched = cudaGetDevice(&previous) == cudaSuccess && previous != s->device &&
                        cudaSetDevice(s->device) == cudaSuccess;
  delete s;  // stream-ordered frees on the forward's stream
  if (switched) cudaSetDevice(previous);
  cudaGetLastError();
}

int64_t api_state_num_intersections(const void* state_ptr) {
  return state_ptr ? static_cast<const ForwardState*>(state_ptr)->num_intersections : -1;
}

// ---- ABI 2: memory, streams, copies and frame helpers for the embedding runtime -----------------------

// Runs body() with `device` current; CUDA failures become a status code and message.
template <class Body>
int on_device(int device, const char* what, char* error, size_t error_len, Body body) {
  try {
    DeviceGuard guard(device);
    body();
    return 0;
  } catch (const CudaFailure& f) {
    return fail(f.code, std::string(what) + ": " + f.message, error, error_len);
  } catch (...) {
    return fail(StatusCode::kDeviceError, std::string(what) + ": unexpected failure", error, error_len);
  }
}

int api_device_alloc(void** ptr, size_t bytes, int device, char* error, size_t error_len) {
  if (!ptr) return fail(StatusCode::kNullPointer, "device_alloc: ptr is null", error, error_len);
  *ptr = nullptr;
  return on_device(device, "device_alloc", error, error_len,
                   [&] { check(cudaMalloc(ptr, bytes ? bytes : 1), "cudaMalloc"); });
}

int api_device_free(void* ptr, int device, char* error, size_t error_len) {
  if (!ptr) return 0;
  return on_device(device, "device_free", error, error_len, [&] { check(cudaFree(ptr), "cudaFree"); });
}

// Page-locked memory needs a current context: `device` is made current so that the caller's device, not
// device 0, provides it (cudaMallocHost would otherwise create a context on the current device 0).
int api_host_alloc(void** ptr, size_t bytes, int device, char* error, size_t error_len) {
  if (!ptr) return fail(StatusCode::kNullPointer, "host_alloc: ptr is null", error, error_len);
  *ptr = nullptr;
  return on_device(device, "host_alloc", error, error_len, [&] {
    const cudaError_t err = cudaMallocHost(ptr, bytes ? bytes : 1);
    if (err != cudaSuccess) *ptr = nullptr;
    check(err, "cudaMallocHost");
  });
}

int api_host_free(void* ptr, int device, char* error, size_t error_len) {
  if (!ptr) return 0;
  return on_device(device, "host_free", error, error_len, [&] { check(cudaFreeHost(ptr), "cudaFreeHost"); });
}

int api_stream_create(void** stream, int device, char* error, size_t error_len) {
  if (!stream) return fail(StatusCode::kNullPointer, "stream_create: stream is null", error, error_len);
  *stream = nullptr;
  return on_device(device, "stream_create", error, error_len, [&] {
    keep_pool_memory(device);  // the forward's stream-ordered scratch stays pooled across frames
    cudaStream_t s = nullptr;
    check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    *stream = s;
  });
}

int api_stream_destroy(void* stream, int device, char* error, size_t error_len) {
  if (!stream) return 0;
  return on_device(device, "stream_destroy", error, error_len, [&] {
    check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
    check(cudaStreamDestroy(static_cast<cudaStream_t>(stream)), "cudaStreamDestroy");
  });
}

int api_stream_synchronize(void* stream, int device, char* error, size_t error_len) {
  return on_device(device, "stream_synchronize", error, error_len,
                   [&] { check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize"); });
}

int api_memcpy_async(void* dst, const void* src, size_t bytes, int device, void* stream, char* error,
                     size_t error_len) {
  if (bytes == 0) return 0;
  if (!dst || !src) return fail(StatusCode::kNullPointer, "memcpy_async: null dst or src", error, error_len);
  return on_device(device, "memcpy_async", error, error_len, [&] {
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, static_cast<cudaStream_t>(stream)), "cudaMemcpyAsync");
  });
}

int api_frame_to_rgba8(const float* image, const float* alpha, uint8_t* rgba, int64_t pixels, int device,
                       void* stream, char* error, size_t error_len) {
  if (pixels < 0) return fail(StatusCode::kInvalidSize, "frame_to_rgba8: pixels < 0", error, error_len);
  if (pixels > 0 && (!image || !alpha || !rgba))
    return fail(StatusCode::kNullPointer, "frame_to_rgba8: null image, alpha or rgba", error, error_len);
  if (reinterpret_cast<uintptr_t>(rgba) % 4 != 0)
    return fail(StatusCode::kInvalidArgument, "frame_to_rgba8: rgba must be 4-byte aligned", error, error_len);
  return on_device(device, "frame_to_rgba8", error, error_len, [&] {
    launch_frame_to_rgba8(image, alpha, rgba, pixels, static_cast<cudaStream_t>(stream));
  });
}

int api_count_nonfinite(const float* data, int64_t n, uint32_t* count, int device, void* stream, char* error,
                        size_t error_len) {
  if (n < 0) return fail(StatusCode::kInvalidSize, "count_nonfinite: n < 0", error, error_len);
  if (!count || (n > 0 && !data))
    return fail(StatusCode::kNullPointer, "count_nonfinite: null data or count", error, error_len);
  return on_device(device, "count_nonfinite", error, error_len,
                   [&] { launch_count_nonfinite(data, n, count, static_cast<cudaStream_t>(stream)); });
}

const FlexavatarCudaApi kApi = {
    FLEXAVATAR_CUDA_ABI_VERSION, api_device_count, api_pointer_device, api_forward, api_backward, api_release_state,
    api_state_num_intersections,
    // ABI 2
    api_device_alloc, api_device_free, api_host_alloc, api_host_free, api_stream_create, api_stream_destroy,
    api_stream_synchronize, api_memcpy_async, api_frame_to_rgba8, api_count_nonfinite,
};

}  // namespace
}  // namespace cuda
}  // namespace flexavatar

extern "C" FLEXAVATAR_CUDA_EXPORT const FlexavatarCudaApi* flexavatar_cuda_api(void) {
  return &flexavatar::cuda::kApi;
}
