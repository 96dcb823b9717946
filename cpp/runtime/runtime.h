// The embedding runtime: bundle → ONNX Runtime decoder session → Gaussians → native rasterizer → RGBA.
// Buffers (decoder inputs/outputs, raster outputs, the RGBA frame) are allocated once and reused; a
// frame of the same size allocates nothing.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bundle.h"
#include "flexavatar/cpu_rasterizer.h"
#include "flexavatar/status.h"
#include "ort_session.h"

namespace flexavatar {
namespace runtime {

enum class Device { kAuto = 0, kCpu = 1, kCuda = 2 };

struct RuntimeOptions {
  Device device = Device::kAuto;
  Verify verify = Verify::kFull;
  int num_threads = 0;
  int cuda_device = 0;
};

struct Camera {
  float cam2world[16];
  float intrinsics[9];  // normalised
  int32_t width = 0, height = 0;
  float background[3] = {1.f, 1.f, 1.f};
};

// Views of the runtime's buffers (valid until the next decode/render).
struct GaussiansView {
  int64_t num_gaussians = 0;
  const float *means = nullptr, *quats = nullptr, *scales = nullptr, *opacities = nullptr, *sh0 = nullptr;
};
struct FrameView {
  int32_t width = 0, height = 0;
  const uint8_t* rgba = nullptr;
  const float *rgb = nullptr, *alpha = nullptr, *depth = nullptr;
};

class Runtime {
 public:
  static Status create(const std::string& bundle_dir, const RuntimeOptions& options, std::unique_ptr<Runtime>* out);

  int64_t num_gaussians() const { return num_gaussians_; }
  int64_t num_head_tokens() const { return num_head_tokens_; }
  int64_t code_dim() const { return code_dim_; }
  int64_t expression_dim() const { return expression_dim_; }
  int64_t image_size() const { return bundle_.manifest.conventions.image_size; }
  bool has_bundle_avatar_code() const { return bundle_.manifest.has_avatar; }
  const std::string& decoder_provider() const { return decoder_->provider(); }
  Camera default_camera() const;

  Status set_avatar_code(const float* code, int64_t count);
  Status load_avatar_code(const std::string& npy_path);  // "" = the bundle's avatar_code.npy
  Status decode(const float* expression, int64_t count, GaussiansView* out);
  Status render(const float* expression, int64_t count, const Camera& camera, FrameView* out);

 private:
  Runtime() = default;
  Status check_decoder_signature(const ModelArtifact& artifact);
  Status bind_buffers();

  Bundle bundle_;
  RuntimeOptions options_;
  std::unique_ptr<OrtModel> decoder_;
  bool code_folded_in_ = false;  // decoder_avatar: the avatar code is part of the graph
  bool has_code_ = false;
  int64_t num_gaussians_ = 0, num_head_tokens_ = 0, code_dim_ = 0, expression_dim_ = 0;
  // Decoder buffers: code [1, R², D], expressions [1, 135], outputs [1, G, k].
  std::vector<float> code_, expression_, means_, quats_, scales_, opacities_, sh0_;
  // Rasterizer state and outputs (resized only when the frame size changes).
  CpuRasterizer rasterizer_;
  std::vector<float> image_, alpha_, depth_;
  std::vector<uint8_t> rgba_;
};

}  // namespace runtime
}  // namespace flexavatar
