// Test tool driven by tests/test_cpp_runtime.py: runs the C++ runtime (through the C++ RAII wrapper over
// the C API) on a bundle and writes what it computed as raw little-endian float32 files, which the pytest
// compares against the Python side (PyTorch model + flexavatar.kernels CPU rasterizer).
//
//   runtime_dump BUNDLE CODE.npy|- EXPRESSIONS.f32 CAMERA.f32 OUT_DIR [fp32|fp16|int8 [auto|on|off]]
//     EXPRESSIONS.f32: E x 135 float32; CAMERA.f32: cam2world[16], intrinsics[9], width, height, background[3]
//     auto|on|off: options.fused_decoders (default auto); the decoder file that ran is printed
//   writes OUT_DIR/gaussians_<e>.f32 (means, quats, scales, opacities, sh0 of frame e, concatenated)
//          OUT_DIR/frame_<e>.f32 (rgb [H,W,3], alpha [H,W], depth [H,W]) and OUT_DIR/frame_<e>.rgba ([H,W,4] uint8)
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "flexavatar/flexavatar.hpp"
#include "raw_files.h"

using raw_files::precision_option;
using raw_files::read_floats;
using raw_files::write;

namespace {

// options.fused_decoders from "auto" / "on" / "off", or -1.
int fused_decoders(const std::string& value) {
  if (value == "auto") return FLEXAVATAR_FUSED_DECODERS_AUTO;
  if (value == "on") return FLEXAVATAR_FUSED_DECODERS_ON;
  if (value == "off") return FLEXAVATAR_FUSED_DECODERS_OFF;
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  const int precision = argc >= 7 ? precision_option(argv[6]) : FLEXAVATAR_PRECISION_FP32;
  const int fused = argc >= 8 ? fused_decoders(argv[7]) : FLEXAVATAR_FUSED_DECODERS_AUTO;
  if (argc < 6 || argc > 8 || precision < 0 || fused < 0) {
    std::fprintf(stderr,
                 "usage: runtime_dump BUNDLE CODE.npy|- EXPRESSIONS.f32 CAMERA.f32 OUT_DIR [fp32|fp16|int8 [auto|on|off]]\n"
                 "  auto|on|off: options.fused_decoders (default auto)\n");
    return 2;
  }
  try {
    flexavatar_runtime_options options = flexavatar::default_options();
    options.device = FLEXAVATAR_DEVICE_CPU;
    options.precision = precision;
    options.fused_decoders = fused;
    flexavatar::Runtime rt(argv[1], &options);
    rt.load_avatar_code(std::string(argv[2]) == "-" ? std::string() : argv[2]);
    const flexavatar_runtime_info info = rt.info();
    const std::vector<float> expressions = read_floats(argv[3]);
    const flexavatar_camera camera = raw_files::read_camera(argv[4]);
    const long dim = long(info.expression_dim), g = long(info.num_gaussians);
    const std::string out = argv[5];
    for (long e = 0; e < long(expressions.size()) / dim; ++e) {
      const std::vector<float> expression(expressions.begin() + e * dim, expressions.begin() + (e + 1) * dim);
      const flexavatar_gaussians gs = rt.decode(expression);
      std::vector<float> all;
      all.insert(all.end(), gs.means, gs.means + 3 * g);
      all.insert(all.end(), gs.quats, gs.quats + 4 * g);
      all.insert(all.end(), gs.scales, gs.scales + 3 * g);
      all.insert(all.end(), gs.opacities, gs.opacities + g);
      all.insert(all.end(), gs.sh0, gs.sh0 + 3 * g);
      write(out + "/gaussians_" + std::to_string(e) + ".f32", all.data(), all.size() * sizeof(float));
      const flexavatar_frame f = rt.render(expression, camera);
      const size_t pixels = size_t(f.width) * size_t(f.height);
      std::vector<float> frame(f.rgb, f.rgb + 3 * pixels);
      frame.insert(frame.end(), f.alpha, f.alpha + pixels);
      frame.insert(frame.end(), f.depth, f.depth + pixels);
      write(out + "/frame_" + std::to_string(e) + ".f32", frame.data(), frame.size() * sizeof(float));
      write(out + "/frame_" + std::to_string(e) + ".rgba", f.rgba, 4 * pixels);
    }
    std::printf("provider %s precision %s decoder_file %s\n", info.decoder_provider, info.decoder_precision,
                info.decoder_file);
    return 0;
  } catch (const flexavatar::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
