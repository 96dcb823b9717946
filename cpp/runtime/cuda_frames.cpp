#include "cuda_frames.h"

#include <cstring>
#include <tuple>

#include "flexavatar/raster_types.h"

namespace flexavatar {
namespace runtime {
namespace {

constexpr size_t kErrorLength = 512;

}  // namespace

Status CudaBuffer::allocate(const FlexavatarCudaApi* api, bool on_device, int device, size_t bytes) {
  reset();
  char error[kErrorLength] = {0};
  void* p = nullptr;
  const int code = on_device ? api->device_alloc(&p, bytes, device, error, sizeof(error))
                             : api->host_alloc(&p, bytes, device, error, sizeof(error));
  if (code != 0) {
    const Status s = status_from_c(code, error);
    return Status(s.code(), std::string(on_device ? "CUDA device" : "page-locked host") + " memory of " +
                                std::to_string(bytes) + " bytes: " + s.message());
  }
  api_ = api;
  on_device_ = on_device;
  device_ = device;
  data_ = p;
  bytes_ = bytes;
  return Status::ok_status();
}

void CudaBuffer::reset() {
  if (!data_) return;
  char error[kErrorLength] = {0};
  // A failing free (a lost device) leaves nothing to recover; the pointer is dropped either way.
  if (on_device_) {
    api_->device_free(data_, device_, error, sizeof(error));
  } else {
    api_->host_free(data_, device_, error, sizeof(error));
  }
  data_ = nullptr;
  bytes_ = 0;
}

Status CudaFrames::check(int code, const char* error, const char* what) const {
  if (code == 0) return Status::ok_status();
  const Status s = status_from_c(code, error);
  return Status(s.code(), std::string("CUDA rasterizer path: ") + what + ": " + s.message());
}

Status CudaFrames::open(int device, int64_t num_gaussians, int64_t expression_dim, int64_t code_floats,
                        std::unique_ptr<CudaFrames>* out) {
  std::shared_ptr<CudaLibrary> library;
  Status s = CudaLibrary::load("", &library);
  if (!s.ok()) return Status(StatusCode::kUnavailable, s.message());
  std::string why;
  const int count = library->device_count(&why);
  if (count <= 0)
    return Status(StatusCode::kUnavailable, "no CUDA device is visible (" + library->path() +
                                                " loaded, but the CUDA driver reports no device" +
                                                (why.empty() ? std::string() : ": " + why) + ")");
  if (device < 0 || device >= count)
    return Status(StatusCode::kUnavailable, "CUDA device " + std::to_string(device) + " was requested, but " +
                                                std::to_string(count) + " device(s) are visible (ordinals 0 .. " +
                                                std::to_string(count - 1) + ")");
  std::unique_ptr<CudaFrames> frames(new CudaFrames());
  frames->library_ = library;
  frames->api_ = &library->api();
  frames->device_ = device;
  frames->num_gaussians_ = num_gaussians;
  frames->expression_dim_ = expression_dim;
  frames->code_floats_ = code_floats;
  char error[kErrorLength] = {0};
  s = frames->check(frames->api_->stream_create(&frames->stream_, device, error, sizeof(error)), error,
                    "creating the stream");
  if (!s.ok()) return s;
  const auto* api = frames->api_;
  const size_t gaussian_bytes = size_t(GaussianLayout::total_floats(num_gaussians)) * sizeof(float);
  const size_t stage_bytes = size_t(kCameraFloats + expression_dim) * sizeof(float);
  for (auto [buffer, on_device, bytes] :
       {std::make_tuple(&frames->host_gaussians_, false, gaussian_bytes),
        std::make_tuple(&frames->device_gaussians_, true, gaussian_bytes),
        std::make_tuple(&frames->host_stage_, false, stage_bytes),
        std::make_tuple(&frames->device_stage_, true, stage_bytes),
        std::make_tuple(&frames->host_counters_, false, sizeof(FrameCounters)),
        std::make_tuple(&frames->device_counters_, true, sizeof(FrameCounters))}) {
    s = buffer->allocate(api, on_device, device, bytes);
    if (!s.ok()) return s;
  }
  if (code_floats > 0) {
    s = frames->device_code_.allocate(api, true, device, size_t(code_floats) * sizeof(float));
    if (!s.ok()) return s;
  }
  std::memset(frames->host_stage(), 0, stage_bytes);
  // zero the block's padding on both sides once (the counts of non-finite values read it)
  std::memset(frames->host_gaussians(), 0, gaussian_bytes);
  s = frames->upload_gaussians();
  if (!s.ok()) return s;
  s = frames->wait();
  if (!s.ok()) return s;
  *out = std::move(frames);
  return Status::ok_status();
}

CudaFrames::~CudaFrames() {
  if (stream_) {
    char error[kErrorLength] = {0};
    api_->stream_destroy(stream_, device_, error, sizeof(error));  // waits for queued work first
  }
  // The buffers are released by their destructors (after the stream is gone: nothing uses them any more).
}

Status CudaFrames::wait() {
  char error[kErrorLength] = {0};
  return check(api_->stream_synchronize(stream_, device_, error, sizeof(error)), error, "waiting for the stream");
}

Status CudaFrames::allocate_device(size_t bytes, CudaBuffer* out) const {
  return out->allocate(api_, true, device_, bytes);
}

Status CudaFrames::copy(void* dst, const void* src, size_t bytes, const char* what) const {
  char error[kErrorLength] = {0};
  return check(api_->memcpy_async(dst, src, bytes, device_, stream_, error, sizeof(error)), error, what);
}

Status CudaFrames::upload_code(const float* code) {
  if (!device_code_.data()) return Status(StatusCode::kInternal, "CUDA rasterizer path: no device code buffer");
  Status s = wait();  // a queued decoder may still read the previous code
  if (!s.ok()) return s;
  char error[kErrorLength] = {0};
  s = check(api_->memcpy_async(device_code_.data(), code, size_t(code_floats_) * sizeof(float), device_, stream_,
                               error, sizeof(error)),
            error, "uploading the avatar code");
  if (!s.ok()) return s;
  return wait();  // `code` is the caller's (pageable) memory
}

Status CudaFrames::upload_stage() {
  char error[kErrorLength] = {0};
  return check(api_->memcpy_async(device_stage_.data(), host_stage_.data(), host_stage_.bytes(), device_, stream_,
                                  error, sizeof(error)),
               error, "uploading the camera and expression");
}

Status CudaFrames::upload_camera() {
  char error[kErrorLength] = {0};
  return check(api_->memcpy_async(device_stage_.data(), host_stage_.data(), kCameraFloats * sizeof(float), device_,
                                  stream_, error, sizeof(error)),
               error, "uploading the camera");
}

Status CudaFrames::upload_gaussians() {
  char error[kErrorLength] = {0};
  return check(api_->memcpy_async(device_gaussians_.data(), host_gaussians_.data(), host_gaussians_.bytes(), device_,
                                  stream_, error, sizeof(error)),
               error, "uploading the Gaussians");
}

Status CudaFrames::download_gaussians() {
  char error[kErrorLength] = {0};
  Status s = check(api_->memcpy_async(host_gaussians_.data(), device_gaussians_.data(), device_gaussians_.bytes(),
                                      device_, stream_, error, sizeof(error)),
                   error, "downloading the Gaussians");
  if (!s.ok()) return s;
  return wait();
}

Status CudaFrames::queue_nonfinite_count() {
  char error[kErrorLength] = {0};
  auto* counters = static_cast<FrameCounters*>(device_counters_.data());
  return check(api_->count_nonfinite(device_gaussians(), GaussianLayout::total_floats(num_gaussians_),
                                     &counters->nonfinite, device_, stream_, error, sizeof(error)),
               error, "checking the Gaussians");
}

Status CudaFrames::count_nonfinite_gaussians(uint32_t* count) {
  Status s = queue_nonfinite_count();
  if (!s.ok()) return s;
  char error[kErrorLength] = {0};
  s = check(api_->memcpy_async(host_counters_.data(), device_counters_.data(), sizeof(FrameCounters), device_,
                               stream_, error, sizeof(error)),
            error, "reading the non-finite count");
  if (!s.ok()) return s;
  s = wait();
  if (!s.ok()) return s;
  *count = counters().nonfinite;
  return Status::ok_status();
}

Status CudaFrames::ensure_frame(int32_t width, int32_t height) {
  if (width == width_ && height == height_ && device_frame_.data()) return Status::ok_status();
  Status s = wait();  // the old frame may still be in use by queued work
  if (!s.ok()) return s;
  width_ = height_ = 0;
  host_frame_.reset();
  device_frame_.reset();
  const size_t pixels = size_t(width) * size_t(height);
  const size_t bytes = pixels * FrameSlices<float>::kFloatsPerPixel * sizeof(float);
  s = device_frame_.allocate(api_, true, device_, bytes);
  if (!s.ok()) return s;
  s = host_frame_.allocate(api_, false, device_, bytes);
  if (!s.ok()) {
    device_frame_.reset();
    return s;
  }
  width_ = width;
  height_ = height;
  return Status::ok_status();
}

Status CudaFrames::rasterize(int32_t width, int32_t height, bool exact) {
  if (width != width_ || height != height_)
    return Status(StatusCode::kInternal, "CUDA rasterizer path: frame buffers are not sized for this frame");
  const int64_t g = num_gaussians_, pixels = int64_t(width) * height;
  float* gaussians = device_gaussians();
  const FrameSlices<float> frame(device_frame_.floats(), pixels);
  const float* stage = device_stage();
  FlexavatarCudaForwardArgs args{};
  args.num_batches = 1;
  args.num_gaussians = g;
  args.num_cameras = 1;
  args.width = width;
  args.height = height;
  const RasterSettings defaults;  // the CPU path's settings: same eps2d and clipping planes
  args.eps2d = defaults.eps2d;
  args.near_plane = defaults.near_plane;
  args.far_plane = defaults.far_plane;
  args.means = gaussians + GaussianLayout::offset(0, g);
  args.quats = gaussians + GaussianLayout::offset(1, g);
  args.scales = gaussians + GaussianLayout::offset(2, g);
  args.opacities = gaussians + GaussianLayout::offset(3, g);
  args.sh0 = gaussians + GaussianLayout::offset(4, g);
  args.viewmats = stage;
  args.intrinsics = stage + 16;
  args.backgrounds = stage + 25;
  args.image = frame.rgb;
  args.alpha = frame.alpha;
  args.depth = frame.depth;
  args.device = device_;
  args.stream = stream_;
  last_capacity_ = exact ? 0 : budget_.capacity();
  args.intersection_capacity = last_capacity_;
  args.num_intersections_out = &static_cast<FrameCounters*>(device_counters_.data())->intersections;
  char error[kErrorLength] = {0};
  void* state = nullptr;
  Status s = check(api_->forward(&args, &state, error, sizeof(error)), error, "rasterizing");
  if (!s.ok()) return s;
  if (last_capacity_ == 0) budget_.observe(api_->state_num_intersections(state));  // read back by the forward
  api_->release_state(state);  // no backward pass here; its buffers go back to the pool in stream order
  return check(api_->frame_to_rgba8(frame.rgb, frame.alpha, reinterpret_cast<uint8_t*>(frame.rgba8), pixels, device_,
                                    stream_, error, sizeof(error)),
               error, "converting to RGBA8");
}

Status CudaFrames::download_frame(HostFrame* out, uint32_t outputs) {
  char error[kErrorLength] = {0};
  const int64_t pixels = int64_t(width_) * height_;
  const FrameSlices<float> device(device_frame_.floats(), pixels);
  const FrameSlices<float> host(host_frame_.floats(), pixels);
  Status s;
  if ((outputs & kFrameAll) == kFrameAll) {  // one copy of the whole block
    s = check(api_->memcpy_async(host_frame_.data(), device_frame_.data(), device_frame_.bytes(), device_, stream_,
                                 error, sizeof(error)),
              error, "downloading the frame");
  } else {  // only the slices asked for: RGBA8 alone is 4 of the block's 24 bytes a pixel
    const struct {
      uint32_t flag;
      float *to, *from;
      int64_t floats;  // per pixel
    } slices[] = {{kFrameRgb, host.rgb, device.rgb, 3},
                  {kFrameAlpha, host.alpha, device.alpha, 1},
                  {kFrameDepth, host.depth, device.depth, 1},
                  {kFrameRgba8, host.rgba8, device.rgba8, 1}};
    for (const auto& slice : slices) {
      if (!(outputs & slice.flag) || !s.ok()) continue;
      s = check(api_->memcpy_async(slice.to, slice.from, size_t(slice.floats * pixels) * sizeof(float), device_,
                                   stream_, error, sizeof(error)),
                error, "downloading the frame");
    }
  }
  if (s.ok())
    s = check(api_->memcpy_async(host_counters_.data(), device_counters_.data(), sizeof(FrameCounters), device_,
                                 stream_, error, sizeof(error)),
              error, "downloading the frame's counters");
  if (!s.ok()) return s;
  s = wait();
  if (!s.ok()) return s;
  out->rgb = outputs & kFrameRgb ? host.rgb : nullptr;
  out->alpha = outputs & kFrameAlpha ? host.alpha : nullptr;
  out->depth = outputs & kFrameDepth ? host.depth : nullptr;
  out->rgba = outputs & kFrameRgba8 ? reinterpret_cast<const uint8_t*>(host.rgba8) : nullptr;
  return Status::ok_status();
}

bool CudaFrames::frame_incomplete() {
  const int64_t count = counters().intersections;
  budget_.observe(count);
  return last_capacity_ > 0 && count > last_capacity_;
}

DeviceFrame CudaFrames::device_frame() const {
  const FrameSlices<const float> frame(device_frame_.floats(), int64_t(width_) * height_);
  DeviceFrame f;
  f.width = width_;
  f.height = height_;
  f.device = device_;
  f.stream = stream_;
  f.rgb = frame.rgb;
  f.alpha = frame.alpha;
  f.depth = frame.depth;
  f.rgba = reinterpret_cast<const uint8_t*>(frame.rgba8);
  return f;
}

}  // namespace runtime
}  // namespace flexavatar
