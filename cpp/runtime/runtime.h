// The embedding runtime: bundle → ONNX Runtime decoder session → Gaussians → native rasterizer → RGBA,
// and (once per avatar) photo → encoder session → avatar code.
// Buffers (decoder inputs/outputs, raster outputs, the RGBA frame) are allocated once and reused; a
// frame of the same size allocates nothing.
//
// Rasterizers: the CPU one, or the CUDA one (libflexavatar_cuda, loaded at run time; cuda_frames.h).
// With the CUDA rasterizer and the decoder on ONNX Runtime's CPU provider, the decoder writes into
// page-locked host memory and the Gaussians are uploaded once per frame; with the CUDA provider the
// decoder's inputs and outputs are bound to device buffers and it runs on the rasterizer's stream, so the
// Gaussians never reach the host.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bundle.h"
#include "cuda_frames.h"
#include "flexavatar/cpu_rasterizer.h"
#include "flexavatar/status.h"
#include "ort_session.h"

namespace flexavatar {
namespace runtime {

// kGpu / kNpu: a GPU or NPU through ONNX Runtime's provider for it (choose_host_provider in ort_session.h), with host
// arrays; frames on the CPU rasterizer unless rasterizer CUDA is asked for (the Gaussians are then uploaded, as from
// the CPU provider).
enum class Device { kAuto = 0, kCpu = 1, kCuda = 2, kGpu = 3, kNpu = 4 };
enum class RasterizerChoice { kAuto = 0, kCpu = 1, kCuda = 2 };
// Which decoder file runs when the bundle has a portable one (format "onnx") and one with ONNX Runtime's fused
// contrib kernels ("onnx-ort"): kAuto = fused first on CUDA (fewer kernel launches per frame), portable
// first elsewhere (the CPU is compute-bound: fused measured 0.96-0.98x); kOn = fused first; kOff = portable only.
enum class FusedDecoders { kAuto = 0, kOn = 1, kOff = 2 };

struct RuntimeOptions {
  Device device = Device::kAuto;
  Verify verify = Verify::kFull;
  int num_threads = 0;
  int cuda_device = 0;      // also the device index of kGpu / kNpu (choose_host_provider)
  RasterizerChoice rasterizer = RasterizerChoice::kAuto;
  // Which ONNX files: "fp32", "fp16" or "int8" (decoders only, on ONNX Runtime's CPU provider). The encoder runs
  // its fp32 file when the bundle has none of this precision.
  std::string precision = "fp32";
  bool cuda_graphs = true;         // zero copy only: the decoder replays a CUDA graph (ORT enable_cuda_graph)
  FusedDecoders fused_decoders = FusedDecoders::kAuto;
  uint32_t frame_outputs = kFrameAll;  // kFrame* flags: the FrameView fields render fills (the others null)
};

// Which encoder inputs the bundle supports (the C API's FLEXAVATAR_ENCODER_* flags).
constexpr uint32_t kEncoderImage = 1u, kEncoderFeatures = 2u;

// One photo for the encoder (see flexavatar_encoder_input).
struct EncoderInput {
  const float* image = nullptr;  // [3, S, S] in [0, 1]
  int64_t image_count = 0;
  float cam2world[16];
  float intrinsics[9];
  const float* features = nullptr;  // [C, h, w] or null
  int64_t feature_channels = 0, feature_height = 0, feature_width = 0;
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
using DeviceFrameView = DeviceFrame;

// The bundle's numerics check through this runtime (Runtime::check_numerics).
struct NumericsCheck {
  bool passed = false;        // every decoded value finite and the worst frame at or above target_db
  int64_t expressions = 0;    // frames checked (the check set's expressions)
  double psnr_db = 0;         // worst frame, decoded vs reference Gaussians through this rasterizer (+inf: identical)
  double target_db = 0;       // psnr_target_db(the decoder's precision)
  double max_abs_error[5] = {0, 0, 0, 0, 0};  // means, quats, scales, opacities, sh0
  // The encoder, when the runtime has one for the check's inputs: the check photo's code against PyTorch's, and
  // the worst frame of that code's decoded Gaussians (passed needs it at target too).
  bool encoder_checked = false;
  double code_max_abs_error = 0;
  double encoder_psnr_db = 0;
};
// The PSNR a frame must reach against PyTorch's: 60 dB for fp32 decoders, 40 dB for fp16, 30 dB for int8
// (flexavatar.bundle's PSNR_TARGET_DB, the export's own targets).
double psnr_target_db(const std::string& precision);

class Runtime {
 public:
  static Status create(const std::string& bundle_dir, const RuntimeOptions& options, std::unique_ptr<Runtime>* out);
  ~Runtime();

  int64_t num_gaussians() const { return num_gaussians_; }
  int64_t num_head_tokens() const { return num_head_tokens_; }
  int64_t code_dim() const { return code_dim_; }
  int64_t expression_dim() const { return expression_dim_; }
  int64_t image_size() const { return bundle_.manifest.conventions.image_size; }
  bool has_bundle_avatar_code() const { return bundle_.manifest.has_avatar; }
  const std::string& decoder_provider() const { return decoder_->provider(); }
  // The provider of the encoder last opened ("" before create_avatar_code opened one): the decoder's, or the CPU's
  // where a GPU / NPU provider could not open it; then encoder_fallback() is that provider's error, else "".
  const std::string& encoder_provider() const { return encoder_provider_; }
  const std::string& encoder_fallback() const { return encoder_fallback_; }
  // The manifest's artifacts this runtime left aside (a newer exporter's kinds): "NAME (format 'x')" each.
  const std::vector<std::string>& ignored_artifacts() const { return bundle_.manifest.ignored; }
  // The decoder file's precision ("fp32", "fp16" or "int8").
  const std::string& precision() const { return decoder_precision_; }
  bool cuda_graphs() const { return decoder_ && decoder_->cuda_graphs(); }
  // The decoder model file that runs, relative to the bundle folder (e.g. "decoder.fp16.ort.onnx").
  const std::string& decoder_file() const { return decoder_file_; }
  const char* rasterizer_name() const { return cuda_ ? "cuda" : "cpu"; }
  int rasterizer_device() const { return cuda_ ? cuda_->device() : -1; }
  uint32_t encoders() const;
  int64_t feature_channels() const { return feature_channels_ > 0 ? feature_channels_ : 0; }
  Camera default_camera() const;

  Status set_avatar_code(const float* code, int64_t count);
  Status load_avatar_code(const std::string& npy_path);  // "" = the bundle's avatar_code.npy
  Status get_avatar_code(float* out, int64_t count) const;
  Status create_avatar_code(const EncoderInput& input);
  Status decode(const float* expression, int64_t count, GaussiansView* out);
  // The frame fields in options.frame_outputs (the others null).
  Status render(const float* expression, int64_t count, const Camera& camera, FrameView* out);
  // The CUDA rasterizer's frame left on the device (kUnavailable with the CPU rasterizer).
  Status render_device(const float* expression, int64_t count, const Camera& camera, DeviceFrameView* out);
  // The Gaussians of the last decode / render from another camera, without a decoder run (a stereo pair, or
  // several views of one frame, for one decode). kNoFrame when there is none (see frame_decoded_).
  Status render_view(const Camera& camera, FrameView* out);
  Status render_view_device(const Camera& camera, DeviceFrameView* out);
  // check.npz (the check inputs and PyTorch's fp32 outputs, written at export) through this decoder and
  // rasterizer. Uses the check's avatar code for the check and restores the runtime's afterwards.
  Status check_numerics(NumericsCheck* out);

 private:
  Runtime() = default;
  Status choose_rasterizer();
  Status check_decoder_signature(const ModelArtifact& artifact);
  Status bind_buffers();
  Status check_expression(const float* expression, int64_t count) const;
  Status check_host_gaussians() const;
  // Camera checks; world-to-camera and pixel K of the frame.
  Status prepare_camera(const Camera& camera, float viewmat[16], float k[9]) const;
  // render with these kFrame* fields (check_numerics needs rgb whatever the options say).
  Status render_fields(const float* expression, int64_t count, const Camera& camera, uint32_t fields,
                       FrameView* out);
  Status render_cuda(const float* expression, int64_t count, const Camera& camera, uint32_t fields,
                     FrameView* host, DeviceFrameView* device);
  // The frame of the Gaussians in the CPU rasterizer's input (host_gaussians_) from a prepared camera.
  Status cpu_frame(const Camera& camera, const float viewmat[16], const float k[9], uint32_t fields, FrameView* out);
  // The CUDA rasterizer's frame of the device Gaussians, the camera staged and uploaded: to the host (fields) or
  // left on the device; checks the decoder's non-finite count when `check_nonfinite` (queued with the decoder).
  Status cuda_frame(const Camera& camera, uint32_t fields, bool check_nonfinite, FrameView* host,
                    DeviceFrameView* device);
  Status check_frame_decoded() const;
  Status render_view_cuda(const Camera& camera, const float viewmat[16], const float k[9], FrameView* host,
                          DeviceFrameView* device);
  // Stage a prepared camera for the CUDA rasterizer (after cuda_->wait()).
  void stage_camera(const Camera& camera, const float viewmat[16], const float k[9]);
  Status open_encoder(bool with_features, OrtModel** out);
  // Host Gaussians through this runtime's rasterizer (CPU, or CUDA via the page-locked block) → rgb [H, W, 3].
  Status rasterize_gaussians(const GaussiansView& g, const Camera& camera, std::vector<float>* rgb);
  // The CPU rasterizer on host Gaussians with a prepared camera (prepare_camera) into rgb / alpha / depth.
  Status rasterize_on_cpu(const GaussiansView& g, const float viewmat[16], const float k[9], const Camera& camera,
                          float* rgb, float* alpha, float* depth);
  bool zero_copy() const { return cuda_ && decoder_ && decoder_->on_cuda(); }

  Bundle bundle_;
  RuntimeOptions options_;
  // Declared before the sessions: destroyed after them (they run on its stream and buffers).
  std::unique_ptr<CudaFrames> cuda_;
  std::unique_ptr<OrtModel> decoder_;
  HostProvider host_provider_;   // device GPU / NPU: the provider of the decoder and the encoders; else none
  bool code_folded_in_ = false;  // decoder_avatar: the avatar code is part of the graph
  std::string decoder_file_;     // the decoder artifact's model file (files[0].path)
  std::string decoder_precision_;  // its precision (the numerics check's target)
  bool has_code_ = false;
  // The decoder's outputs hold the frame of the current avatar code's last successful decode / render, for
  // render_view; false before one, after a failed one, and once the code or the outputs are replaced.
  bool frame_decoded_ = false;
  int64_t num_gaussians_ = 0, num_head_tokens_ = 0, code_dim_ = 0, expression_dim_ = 0;
  // Decoder buffers: code [1, R², D], expressions [1, 135]; the outputs [1, G, k] lie in one block
  // (GaussianLayout): host_gaussians_ points into gaussians_ or, with the CUDA rasterizer, into its
  // page-locked host block (so that the upload is a single asynchronous copy).
  std::vector<float> code_, expression_, gaussians_;
  float* host_gaussians_ = nullptr;
  // Rasterizer state and outputs (resized only when the frame size changes).
  CpuRasterizer rasterizer_;
  std::vector<float> image_, alpha_, depth_;
  std::vector<uint8_t> rgba_;
  // Encoders (sessions opened on first use) and their buffers.
  const ModelArtifact* encoder_artifact_ = nullptr;           // role "encoder"
  const ModelArtifact* encoder_features_artifact_ = nullptr;  // role "encoder_features"
  int64_t feature_channels_ = -1;                             // -1: dynamic in the graph
  std::unique_ptr<OrtModel> encoder_, encoder_features_;
  std::string encoder_provider_, encoder_fallback_;
  std::vector<float> encoder_image_, encoder_cam2world_, encoder_intrinsics_, encoder_features_buffer_, encoder_code_;
  std::vector<int64_t> bound_feature_shape_;
  // When the decoder replays CUDA graphs, the encoders do too, on the rasterizer's stream, over device buffers
  // (onnxruntime-gpu 1.31.1 aborted CUDA sessions that run node by node; graph sessions never did). One graph
  // per encoder and, for encoder_features, per DINOv2 feature shape, each shape with a device buffer of its own
  // (a replay reads the addresses it was captured with).
  struct FeatureGraph {
    CudaBuffer features;  // [1, C, h, w]
    int graph_id = 0;
  };
  struct EncoderDevice {
    CudaBuffer image, cam2world, intrinsics, code;  // [1, 3, S, S], [1, 4, 4], [1, 3, 3], [1, R², D]
    std::map<std::vector<int64_t>, std::unique_ptr<FeatureGraph>> features;
  };
  std::unique_ptr<EncoderDevice> encoder_device_;  // allocated with the first encoder graph
  Status encoder_device_buffers();
  Status run_encoder_graph(OrtModel* model, const std::vector<int64_t>& feature_shape, const float* features);
};

}  // namespace runtime
}  // namespace flexavatar
