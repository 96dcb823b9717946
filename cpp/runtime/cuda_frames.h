// The runtime's CUDA rasterizer path, through the run-time-loaded libflexavatar_cuda (so the runtime has no
// link-time CUDA dependency and a CPU-only machine runs the same binary): one non-blocking stream, device
// buffers for the Gaussians, the camera + expression and the frame, and page-locked host mirrors of them.
// Everything is allocated when the path opens, the frame buffers again only when the frame size changes;
// the forward pass's scratch comes from the CUDA library's stream-ordered pool (kept across frames).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "flexavatar/cuda_rasterizer.h"
#include "flexavatar/status.h"
#include "intersection_budget.h"

namespace flexavatar {
namespace runtime {

// Device or page-locked host memory from the CUDA library; released in the destructor.
class CudaBuffer {
 public:
  CudaBuffer() = default;
  ~CudaBuffer() { reset(); }
  CudaBuffer(const CudaBuffer&) = delete;
  CudaBuffer& operator=(const CudaBuffer&) = delete;

  Status allocate(const FlexavatarCudaApi* api, bool on_device, int device, size_t bytes);
  void reset();
  void* data() const { return data_; }
  float* floats() const { return static_cast<float*>(data_); }
  size_t bytes() const { return bytes_; }

 private:
  const FlexavatarCudaApi* api_ = nullptr;
  bool on_device_ = false;
  int device_ = 0;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Layout of the Gaussian block (host and device alike): means [G,3] | quats [G,4] | scales [G,3] |
// opacities [G] | sh0 [G,3], float32, each slice starting on a 256-byte boundary: with zero copy the decoder
// writes the slices as bound outputs, and G is odd for FLEX-1 (58,361), so unpadded slices would only be
// 4-byte aligned for kernels that may store vectors. The padding is zeroed once and never written.
struct GaussianLayout {
  static constexpr int64_t kAlignFloats = 64;  // 256 bytes
  static int64_t padded(int64_t floats) { return (floats + kAlignFloats - 1) / kAlignFloats * kAlignFloats; }
  static int64_t offset(int output, int64_t g) {  // output: index into means, quats, scales, opacities, sh0
    static constexpr int64_t widths[] = {3, 4, 3, 1, 3};
    int64_t start = 0;
    for (int i = 0; i < output; ++i) start += padded(widths[i] * g);
    return start;
  }
  static int64_t total_floats(int64_t g) { return offset(5, g); }
};

// Layout of the frame block (host and device alike): rgb [H,W,3] | alpha [H,W] | depth [H,W] float32, then
// rgba8 [H,W,4] (one float's room per pixel).
template <typename Float>
struct FrameSlices {
  Float* rgb;
  Float* alpha;
  Float* depth;
  Float* rgba8;  // reinterpret as uint8_t
  static constexpr int64_t kFloatsPerPixel = 6;
  FrameSlices(Float* block, int64_t pixels)
      : rgb(block), alpha(block + 3 * pixels), depth(block + 4 * pixels), rgba8(block + 5 * pixels) {}
};

struct DeviceFrame {
  int32_t width = 0, height = 0, device = 0;
  void* stream = nullptr;
  const uint8_t* rgba = nullptr;
  const float *rgb = nullptr, *alpha = nullptr, *depth = nullptr;
};
// Frame fields a host render fills (the C API's FLEXAVATAR_FRAME_* flags); on the CUDA path, the slices copied.
constexpr uint32_t kFrameRgba8 = 1u, kFrameRgb = 2u, kFrameAlpha = 4u, kFrameDepth = 8u, kFrameAll = 15u;

struct HostFrame {
  const uint8_t* rgba = nullptr;
  const float *rgb = nullptr, *alpha = nullptr, *depth = nullptr;
};

class CudaFrames {
 public:
  // Staged per frame in one copy: world-to-camera [16], pixel K [9], background [3], then the expression.
  static constexpr int64_t kCameraFloats = 32;

  // Loads the CUDA library and checks that `device` exists (kUnavailable naming the reason otherwise),
  // then allocates the stream and the fixed buffers. code_floats = 0: no device copy of the avatar code
  // (the decoder runs on the CPU).
  static Status open(int device, int64_t num_gaussians, int64_t expression_dim, int64_t code_floats,
                     std::unique_ptr<CudaFrames>* out);
  ~CudaFrames();

  int device() const { return device_; }
  void* stream() const { return stream_; }
  const std::string& library_path() const { return library_->path(); }

  float* host_gaussians() const { return host_gaussians_.floats(); }      // page-locked [GaussianLayout::total_floats(G)]
  float* device_gaussians() const { return device_gaussians_.floats(); }  // [GaussianLayout::total_floats(G)]
  float* device_code() const { return device_code_.floats(); }            // [R² D] or null
  float* host_stage() const { return host_stage_.floats(); }              // page-locked [32 + E]
  float* device_stage() const { return device_stage_.floats(); }          // [32 + E]
  float* device_expression() const { return device_stage_.floats() + kCameraFloats; }

  // Waits until everything queued on the stream is done (the staging buffers may then be rewritten).
  Status wait();
  // Copies code_floats floats from host memory to the device code buffer and waits.
  Status upload_code(const float* code);
  // Queues host_stage → device_stage.
  Status upload_stage();
  // The camera part of the stage only (the first kCameraFloats floats): the decoder's input is left alone.
  Status upload_camera();
  // Queues host_gaussians → device_gaussians.
  Status upload_gaussians();
  // device_gaussians → host_gaussians, then waits.
  Status download_gaussians();
  // Counts non-finite values of device_gaussians on the device and waits for the count.
  Status count_nonfinite_gaussians(uint32_t* count);
  // The same count, queued only: download_frame brings it back with the frame (FrameCounters::nonfinite).
  Status queue_nonfinite_count();
  // Device memory on this path's device (for other graphs on its stream: the encoder's inputs and code).
  Status allocate_device(size_t bytes, CudaBuffer* out) const;
  // Queues a copy of `bytes` on the stream (host ↔ device, device ↔ device: unified addressing gives the
  // direction). A pageable host source or destination makes it synchronous with the host, as cudaMemcpyAsync does.
  Status copy(void* dst, const void* src, size_t bytes, const char* what) const;
  // Frame buffers for width x height (reallocated only when the size changes).
  Status ensure_frame(int32_t width, int32_t height);
  // Queues the CUDA rasterizer on device_gaussians with the staged camera, then the RGBA8 conversion.
  // exact: size the sort by the intersection count read back to the host (a wait); otherwise sort the
  // budget's capacity without waiting (the first frame is exact either way: nothing is measured yet).
  Status rasterize(int32_t width, int32_t height, bool exact);
  // One copy of the whole frame (rgb, alpha, depth, rgba) and of the frame's counters to page-locked host
  // memory, then waits. Then `counters()` holds the frame's counts.
  Status download_frame(HostFrame* out, uint32_t outputs);
  DeviceFrame device_frame() const;
  // Read back with the frame by download_frame: non-finite Gaussian values (after queue_nonfinite_count) and
  // the exact intersection count of the last rasterize.
  struct FrameCounters {
    uint32_t nonfinite;
    uint32_t padding;
    int64_t intersections;
  };
  const FrameCounters& counters() const { return *static_cast<const FrameCounters*>(host_counters_.data()); }
  // After download_frame: whether the last rasterize (sync-free) had fewer slots than intersections; records
  // the count in the budget either way.
  bool frame_incomplete();

 private:
  CudaFrames() = default;
  Status check(int code, const char* error, const char* what) const;

  std::shared_ptr<CudaLibrary> library_;
  const FlexavatarCudaApi* api_ = nullptr;
  int device_ = 0;
  void* stream_ = nullptr;
  int64_t num_gaussians_ = 0, expression_dim_ = 0, code_floats_ = 0;
  int32_t width_ = 0, height_ = 0;
  CudaBuffer host_gaussians_, device_gaussians_, device_code_, host_stage_, device_stage_;
  CudaBuffer host_counters_, device_counters_;  // FrameCounters
  IntersectionBudget budget_;
  int64_t last_capacity_ = 0;  // of the last rasterize (0: sized exactly)
  // Frame, floats: rgb [3P] | alpha [P] | depth [P] | rgba [4P bytes] (P = width·height).
  CudaBuffer host_frame_, device_frame_;
};

}  // namespace runtime
}  // namespace flexavatar
