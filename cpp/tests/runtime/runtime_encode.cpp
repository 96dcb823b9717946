// Test tool driven by tests/test_cpp_runtime.py: encodes a photo with the C++ runtime's encoder (through the
// RAII wrapper over the C API), then renders one frame with that code, and writes both as raw little-endian
// float32 files for the pytest to compare against flexavatar.runtime.Runtime.create_avatar / render.
//
//   runtime_encode BUNDLE IMAGE.f32 PHOTO_CAMERA.f32 FEATURES.f32|- C H W EXPRESSION.f32 CAMERA.f32 OUT_DIR
//                  [FEATURES2.f32 C2 H2 W2]
//     IMAGE.f32: [3, S, S]; PHOTO_CAMERA.f32: cam2world[16], intrinsics[9]; FEATURES.f32: [C, H, W] (or "-":
//     none, the bundle's image-only encoder); EXPRESSION.f32: [135]; CAMERA.f32 as runtime_dump's.
//   writes OUT_DIR/code.f32 ([R², D]) and OUT_DIR/frame.f32 (rgb [H,W,3], alpha [H,W], depth [H,W]); with
//   FEATURES2 (another feature map shape) the same runtime then encodes the photo with it (code2.f32) and with
//   the first features again (code3.f32): the encoder's input rebound per shape.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "flexavatar/flexavatar.hpp"
#include "raw_files.h"

using raw_files::read_floats;
using raw_files::write;

int main(int argc, char** argv) {
  if (argc != 11 && argc != 15) {
    std::fprintf(stderr,
                 "usage: runtime_encode BUNDLE IMAGE.f32 PHOTO_CAMERA.f32 FEATURES.f32|- C H W EXPRESSION.f32 "
                 "CAMERA.f32 OUT_DIR [FEATURES2.f32 C2 H2 W2]\n");
    return 2;
  }
  try {
    flexavatar_runtime_options options = flexavatar::default_options();
    options.device = FLEXAVATAR_DEVICE_CPU;
    flexavatar::Runtime rt(argv[1], &options);
    const std::vector<float> image = read_floats(argv[2]);
    const std::vector<float> photo_camera = read_floats(argv[3]);
    if (photo_camera.size() != 25)
      throw flexavatar::Error(FLEXAVATAR_ERROR_INVALID_SIZE, "photo camera file needs 25 floats");
    const bool with_features = std::string(argv[4]) != "-";
    const std::vector<float> features = with_features ? read_floats(argv[4]) : std::vector<float>();
    flexavatar_encoder_input input =
        with_features ? flexavatar::encoder_input(image, features, std::stoll(argv[5]), std::stoll(argv[6]),
                                                  std::stoll(argv[7]))
                      : flexavatar::encoder_input(image);
    std::copy(photo_camera.begin(), photo_camera.begin() + 16, input.cam2world);
    std::copy(photo_camera.begin() + 16, photo_camera.end(), input.intrinsics);
    rt.create_avatar_code(input);
    const std::vector<float> code = rt.avatar_code();
    const std::string out = argv[10];
    write(out + "/code.f32", code.data(), code.size() * sizeof(float));

    const std::vector<float> expression = read_floats(argv[8]);
    const flexavatar_camera camera = raw_files::read_camera(argv[9]);
    const flexavatar_frame f = rt.render(expression, camera);
    const size_t pixels = size_t(f.width) * size_t(f.height);
    std::vector<float> frame(f.rgb, f.rgb + 3 * pixels);
    frame.insert(frame.end(), f.alpha, f.alpha + pixels);
    frame.insert(frame.end(), f.depth, f.depth + pixels);
    write(out + "/frame.f32", frame.data(), frame.size() * sizeof(float));
    if (argc == 15) {
      const std::vector<float> features2 = read_floats(argv[11]);
      flexavatar_encoder_input second =
          flexavatar::encoder_input(image, features2, std::stoll(argv[12]), std::stoll(argv[13]), std::stoll(argv[14]));
      std::copy(input.cam2world, input.cam2world + 16, second.cam2world);
      std::copy(input.intrinsics, input.intrinsics + 9, second.intrinsics);
      rt.create_avatar_code(second);
      const std::vector<float> code2 = rt.avatar_code();
      write(out + "/code2.f32", code2.data(), code2.size() * sizeof(float));
      rt.create_avatar_code(input);
      const std::vector<float> code3 = rt.avatar_code();
      write(out + "/code3.f32", code3.data(), code3.size() * sizeof(float));
    }
    const flexavatar_runtime_info info = rt.info();
    std::printf("encoders %u feature_channels %lld rasterizer %s encoder_provider %s encoder_fallback '%s'\n",
                info.encoders, static_cast<long long>(info.feature_channels), info.rasterizer, info.encoder_provider,
                info.encoder_fallback);
    return 0;
  } catch (const flexavatar::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
