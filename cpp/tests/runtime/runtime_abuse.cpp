// Abuse of the C API on a real exported bundle (driven by tests/test_cpp_runtime.py, which exports the
// bundle and runs this program in the plain and the AddressSanitizer/LeakSanitizer builds):
// truncated / bit-flipped manifest and ONNX files, wrong shapes, wrong sizes, non-finite inputs, null
// pointers, use after destroy. Every case must return the expected error status; none may crash or leak.
//
//   runtime_abuse BUNDLE SCRATCH_DIR
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "flexavatar/flexavatar.h"
#include "harness.h"

namespace fs = std::filesystem;

namespace {

std::string g_bundle, g_scratch;

std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
void write(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << bytes;
}
// A fresh copy of the bundle to damage.
fs::path copy_bundle(const std::string& name) {
  const fs::path dir = fs::path(g_scratch) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(g_bundle)) fs::copy_file(e.path(), dir / e.path().filename());
  return dir;
}
std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
  return text;
}

flexavatar_status create(const fs::path& dir, flexavatar_runtime** rt, int verify = FLEXAVATAR_VERIFY_FULL,
                         int device = FLEXAVATAR_DEVICE_CPU, int rasterizer = FLEXAVATAR_RASTERIZER_AUTO) {
  flexavatar_runtime_options options;
  flexavatar_runtime_options_init(&options, sizeof(options));
  options.device = device;
  options.verify = verify;
  options.num_threads = 1;
  options.rasterizer = rasterizer;
  return flexavatar_runtime_create(dir.u8string().c_str(), &options, rt);
}

bool error_mentions(const char* word) { return std::string(flexavatar_last_error()).find(word) != std::string::npos; }

// Deterministic pseudo-random numbers (no seeding differences between runs).
uint64_t g_state = 0x9E3779B97F4A7C15ull;
uint64_t next() {
  g_state ^= g_state << 13;
  g_state ^= g_state >> 7;
  g_state ^= g_state << 17;
  return g_state;
}

struct Live {  // a created runtime with the bundle's code, destroyed at scope exit
  flexavatar_runtime* rt = nullptr;
  flexavatar_runtime_info info{};
  Live() {
    CHECK(create(g_bundle, &rt) == FLEXAVATAR_OK);
    info.struct_size = sizeof(info);
    CHECK(flexavatar_runtime_get_info(rt, &info) == FLEXAVATAR_OK);
  }
  ~Live() { flexavatar_runtime_destroy(rt); }
  std::vector<float> code() const { return std::vector<float>(size_t(info.num_head_tokens * info.code_dim), 0.1f); }
};

}  // namespace

TEST_CASE(wrong_sizes_nulls_and_non_finite_inputs_are_rejected) {
  Live live;
  flexavatar_runtime* rt = live.rt;
  std::vector<float> expression(135, 0.f), code = live.code();
  flexavatar_gaussians g;
  flexavatar_frame f;
  CHECK(flexavatar_runtime_decode(rt, expression.data(), 135, &g) == FLEXAVATAR_ERROR_NO_AVATAR_CODE);
  CHECK(flexavatar_runtime_set_avatar_code(rt, code.data(), int64_t(code.size()) - 1) == FLEXAVATAR_ERROR_INVALID_SIZE);
  CHECK(std::string(flexavatar_last_error()).find("expected R") != std::string::npos);
  CHECK(flexavatar_runtime_set_avatar_code(rt, nullptr, int64_t(code.size())) == FLEXAVATAR_ERROR_NULL_POINTER);
  code[5] = NAN;
  CHECK(flexavatar_runtime_set_avatar_code(rt, code.data(), int64_t(code.size())) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  code[5] = 0.1f;
  CHECK(flexavatar_runtime_set_avatar_code(rt, code.data(), int64_t(code.size())) == FLEXAVATAR_OK);
  CHECK(flexavatar_runtime_decode(rt, expression.data(), 134, &g) == FLEXAVATAR_ERROR_INVALID_SIZE);
  CHECK(flexavatar_runtime_decode(rt, nullptr, 135, &g) == FLEXAVATAR_ERROR_NULL_POINTER);
  CHECK(flexavatar_runtime_decode(rt, expression.data(), 135, nullptr) == FLEXAVATAR_ERROR_NULL_POINTER);
  expression[7] = INFINITY;
  CHECK(flexavatar_runtime_decode(rt, expression.data(), 135, &g) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  expression[7] = 0.f;
  CHECK(flexavatar_runtime_decode(rt, expression.data(), 135, &g) == FLEXAVATAR_OK);
  CHECK(g.num_gaussians == live.info.num_gaussians && g.means != nullptr);

  flexavatar_camera cam;
  CHECK(flexavatar_runtime_default_camera(rt, &cam) == FLEXAVATAR_OK);
  cam.width = 32;
  cam.height = 24;
  CHECK(flexavatar_runtime_render(rt, expression.data(), 135, &cam, &f) == FLEXAVATAR_OK);
  CHECK(f.width == 32 && f.height == 24 && f.rgba != nullptr);
  CHECK(flexavatar_runtime_render(rt, expression.data(), 135, nullptr, &f) == FLEXAVATAR_ERROR_NULL_POINTER);
  flexavatar_camera bad = cam;
  bad.width = 0;
  CHECK(flexavatar_runtime_render(rt, expression.data(), 135, &bad, &f) == FLEXAVATAR_ERROR_INVALID_SIZE);
  bad = cam;
  bad.height = 1 << 20;
  CHECK(flexavatar_runtime_render(rt, expression.data(), 135, &bad, &f) == FLEXAVATAR_ERROR_INVALID_SIZE);
  bad = cam;
  bad.intrinsics[0] = 0.f;
  CHECK(flexavatar_runtime_render(rt, expression.data(), 135, &bad, &f) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  bad = cam;
  bad.cam2world[3] = NAN;
  CHECK(flexavatar_runtime_render(rt, expression.data(), 135, &bad, &f) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  bad = cam;
  bad.cam2world[0] = 2.f;  // not a rotation: world2cam = [Rᵀ | -Rᵀ t] would be wrong, not an error
  CHECK(flexavatar_runtime_render(rt, expression.data(), 135, &bad, &f) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  CHECK(std::strstr(flexavatar_last_error(), "camera.cam2world is not rigid") != nullptr);
  bad = cam;
  bad.intrinsics[0] = 500.f;  // pixel units
  CHECK(flexavatar_runtime_render(rt, expression.data(), 135, &bad, &f) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  CHECK(std::strstr(flexavatar_last_error(), "pixel units") != nullptr);
  for (float v : {255.f, -0.5f, float(NAN)}) {
    bad = cam;
    bad.background[1] = v;
    CHECK(flexavatar_runtime_render(rt, expression.data(), 135, &bad, &f) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
    CHECK(std::strstr(flexavatar_last_error(), "camera.background") != nullptr);
  }
  flexavatar_runtime_info small{};
  small.struct_size = 8;
  CHECK(flexavatar_runtime_get_info(rt, &small) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  // The runtime still works after all those errors.
  CHECK(flexavatar_runtime_render(rt, expression.data(), 135, &cam, &f) == FLEXAVATAR_OK);
}

TEST_CASE(use_after_destroy_and_double_destroy_are_reported_not_crashes) {
  flexavatar_runtime* rt = nullptr;
  CHECK(create(g_bundle, &rt) == FLEXAVATAR_OK);
  flexavatar_runtime_destroy(rt);
  std::vector<float> expression(135, 0.f);
  flexavatar_gaussians g;
  CHECK(flexavatar_runtime_decode(rt, expression.data(), 135, &g) == FLEXAVATAR_ERROR_INVALID_HANDLE);
  CHECK(std::string(flexavatar_last_error()).find("destroyed") != std::string::npos);
  flexavatar_runtime_destroy(rt);  // second destroy: ignored
}

TEST_CASE(bad_avatar_code_files_are_rejected) {
  Live live;
  const fs::path dir = fs::path(g_scratch) / "codes";
  fs::create_directories(dir);
  CHECK(flexavatar_runtime_load_avatar_code(live.rt, (dir / "missing.npy").u8string().c_str()) == FLEXAVATAR_ERROR_IO);
  write(dir / "text.npy", "hello");
  CHECK(flexavatar_runtime_load_avatar_code(live.rt, (dir / "text.npy").u8string().c_str()) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  // A valid .npy of the wrong shape: (R², 1, D + 1).
  const long r2 = long(live.info.num_head_tokens), d = long(live.info.code_dim) + 1;
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(r2) + ", 1, " +
                       std::to_string(d) + "), }";
  while ((10 + header.size() + 1) % 64) header += ' ';
  header += '\n';
  std::string npy = std::string("\x93NUMPY\x01\x00", 8) + char(header.size() & 0xFF) + char(header.size() >> 8) + header;
  npy += std::string(size_t(r2 * d) * 4, '\0');
  write(dir / "wrong_shape.npy", npy);
  CHECK(flexavatar_runtime_load_avatar_code(live.rt, (dir / "wrong_shape.npy").u8string().c_str()) == FLEXAVATAR_ERROR_INVALID_SIZE);
  write(dir / "truncated.npy", npy.substr(0, npy.size() - 3));
  CHECK(flexavatar_runtime_load_avatar_code(live.rt, (dir / "truncated.npy").u8string().c_str()) == FLEXAVATAR_ERROR_INVALID_SIZE);
}

TEST_CASE(truncated_and_bit_flipped_manifests_never_crash) {
  const fs::path dir = copy_bundle("manifest");
  const std::string manifest = read(dir / "manifest.json");
  int errors = 0, cases = 0;
  for (size_t n = 0; n + 2 < manifest.size(); n += 97) {  // truncations (a valid JSON prefix is impossible)
    write(dir / "manifest.json", manifest.substr(0, n));
    flexavatar_runtime* rt = nullptr;
    errors += create(dir, &rt, FLEXAVATAR_VERIFY_SIZE) == FLEXAVATAR_ERROR_BUNDLE_INVALID && rt == nullptr;
    ++cases;
  }
  CHECK(errors == cases);
  int ok = 0, failed = 0;
  for (int i = 0; i < 150; ++i) {  // byte flips: an error or (a flip in free text) a working runtime
    std::string damaged = manifest;
    for (int k = 0; k < 3; ++k) damaged[next() % damaged.size()] = char(next() & 0xFF);
    write(dir / "manifest.json", damaged);
    flexavatar_runtime* rt = nullptr;
    const flexavatar_status s = create(dir, &rt, FLEXAVATAR_VERIFY_SIZE);
    if (s == FLEXAVATAR_OK) {
      ++ok;
      flexavatar_runtime_destroy(rt);
    } else {
      ++failed;
      CHECK(rt == nullptr && std::strlen(flexavatar_last_error()) > 0);
    }
  }
  CHECK(ok + failed == 150 && failed > 0);
}

TEST_CASE(truncated_and_corrupted_onnx_files_are_model_or_hash_errors) {
  const fs::path dir = copy_bundle("onnx");
  const fs::path model = dir / "decoder.fp32.onnx";
  const std::string bytes = read(model);
  for (size_t n : {size_t(0), size_t(1), size_t(16), bytes.size() / 3, bytes.size() / 2, bytes.size() - 1}) {
    write(model, bytes.substr(0, n));
    flexavatar_runtime* rt = nullptr;
    CHECK(create(dir, &rt) == FLEXAVATAR_ERROR_BUNDLE_HASH_MISMATCH);
    const flexavatar_status s = create(dir, &rt, FLEXAVATAR_VERIFY_NONE);  // skip the hash: ORT sees it
    CHECK(s == FLEXAVATAR_ERROR_MODEL && rt == nullptr);
    if (s != FLEXAVATAR_ERROR_MODEL) std::printf("    truncation %zu: %s\n", n, flexavatar_last_error());
  }
  // Flipped bytes: the hash catches them; without it ORT fails or the decoder runs (then the output
  // is checked for non-finite values): an error status or a frame, never a crash.
  std::vector<float> expression(135, 0.f);
  int outcomes = 0;
  for (int i = 0; i < 12; ++i) {
    std::string damaged = bytes;
    for (int k = 0; k < 8; ++k) damaged[next() % damaged.size()] ^= char(1 + next() % 255);
    write(model, damaged);
    flexavatar_runtime* rt = nullptr;
    CHECK(create(dir, &rt) == FLEXAVATAR_ERROR_BUNDLE_HASH_MISMATCH);
    if (create(dir, &rt, FLEXAVATAR_VERIFY_NONE) == FLEXAVATAR_OK) {
      flexavatar_runtime_info info{};
      info.struct_size = sizeof(info);
      flexavatar_runtime_get_info(rt, &info);
      std::vector<float> code(size_t(info.num_head_tokens * info.code_dim), 0.1f);
      flexavatar_runtime_set_avatar_code(rt, code.data(), int64_t(code.size()));
      flexavatar_camera cam;
      flexavatar_runtime_default_camera(rt, &cam);
      cam.width = cam.height = 16;
      flexavatar_frame f;
      const flexavatar_status s = flexavatar_runtime_render(rt, expression.data(), 135, &cam, &f);
      CHECK(s == FLEXAVATAR_OK || s == FLEXAVATAR_ERROR_MODEL);
      flexavatar_runtime_destroy(rt);
    }
    ++outcomes;
  }
  CHECK(outcomes == 12);
  write(model, bytes);
  fs::remove(model);
  flexavatar_runtime* rt = nullptr;
  CHECK(create(dir, &rt) == FLEXAVATAR_ERROR_BUNDLE_FILE_MISSING);
  CHECK(create(dir, &rt, FLEXAVATAR_VERIFY_NONE) != FLEXAVATAR_OK);
}

TEST_CASE(manifest_shapes_that_disagree_with_the_model_are_rejected) {
  const fs::path dir = copy_bundle("shapes");
  const std::string manifest = read(dir / "manifest.json");
  Live live;
  const std::string g = std::to_string(live.info.num_gaussians);
  flexavatar_runtime* rt = nullptr;
  // The conventions claim another number of Gaussians than the decoder produces.
  write(dir / "manifest.json", replace_all(manifest, "\"n_gaussians\": " + g, "\"n_gaussians\": 7"));
  CHECK(create(dir, &rt) == FLEXAVATAR_ERROR_BUNDLE_INVALID);
  CHECK(std::string(flexavatar_last_error()).find("shape") != std::string::npos);
  // Another code width than the graph's input.
  const std::string d = std::to_string(live.info.code_dim);
  write(dir / "manifest.json", replace_all(manifest, "\"d_code\": " + d, "\"d_code\": " + d + "1"));
  CHECK(create(dir, &rt) == FLEXAVATAR_ERROR_BUNDLE_INVALID);
  // The decoder entry pointing at a different graph (the encoder's file, hash included).
  const std::string m2 = read(dir / "manifest.json");
  bool has_encoder = fs::exists(dir / "encoder_features.fp32.onnx") || fs::exists(dir / "encoder.fp32.onnx");
  if (has_encoder) {
    const std::string enc = fs::exists(dir / "encoder_features.fp32.onnx") ? "encoder_features.fp32.onnx"
                                                                           : "encoder.fp32.onnx";
    fs::copy_file(dir / enc, dir / "decoder.fp32.onnx", fs::copy_options::overwrite_existing);
    write(dir / "manifest.json", manifest);
    CHECK(create(dir, &rt, FLEXAVATAR_VERIFY_NONE) == FLEXAVATAR_ERROR_BUNDLE_INVALID);
    CHECK(std::string(flexavatar_last_error()).find("decoder.fp32.onnx") != std::string::npos);
  }
  CHECK(has_encoder);
}

TEST_CASE(create_render_destroy_cycles_release_everything) {
  // LeakSanitizer (ASan build) reports anything not released at exit.
  std::vector<float> expression(135, 0.f);
  for (int i = 0; i < 3; ++i) {
    Live live;
    std::vector<float> code = live.code();
    CHECK(flexavatar_runtime_set_avatar_code(live.rt, code.data(), int64_t(code.size())) == FLEXAVATAR_OK);
    flexavatar_camera cam;
    CHECK(flexavatar_runtime_default_camera(live.rt, &cam) == FLEXAVATAR_OK);
    cam.width = cam.height = 32;
    flexavatar_frame f;
    CHECK(flexavatar_runtime_render(live.rt, expression.data(), 135, &cam, &f) == FLEXAVATAR_OK);
  }
}

TEST_CASE(encoder_inputs_are_checked_and_a_failure_keeps_the_previous_code) {
  Live live;
  flexavatar_runtime* rt = live.rt;
  const int64_t s = live.info.image_size, c = live.info.feature_channels;
  const int64_t code_floats = live.info.num_head_tokens * live.info.code_dim;
  CHECK(live.info.encoders != 0u);
  std::vector<float> image(size_t(3 * s * s), 0.5f), features(size_t(c > 0 ? c * 16 : 16), 0.1f);
  std::vector<float> code(static_cast<size_t>(code_floats));
  CHECK(flexavatar_runtime_get_avatar_code(rt, code.data(), code_floats) == FLEXAVATAR_ERROR_NO_AVATAR_CODE);
  std::vector<float> previous = live.code();
  CHECK(flexavatar_runtime_set_avatar_code(rt, previous.data(), code_floats) == FLEXAVATAR_OK);

  flexavatar_encoder_input in;
  flexavatar_encoder_input_init(&in, sizeof(in));
  in.image = image.data();
  in.image_count = int64_t(image.size());
  const bool needs_features = !(live.info.encoders & FLEXAVATAR_ENCODER_IMAGE);
  if (needs_features) {
    // The bundle's encoder takes DINOv2 features: without them, UNAVAILABLE saying what to pass.
    CHECK(flexavatar_runtime_create_avatar_code(rt, &in) == FLEXAVATAR_ERROR_UNAVAILABLE);
    CHECK(error_mentions("without DINOv2") && error_mentions("features"));
    in.features = features.data();
    in.feature_channels = c;
    in.feature_height = in.feature_width = 4;
  }
  const flexavatar_encoder_input good = in;
  CHECK(flexavatar_runtime_create_avatar_code(rt, nullptr) == FLEXAVATAR_ERROR_NULL_POINTER);
  in.struct_size = 8;
  CHECK(flexavatar_runtime_create_avatar_code(rt, &in) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  CHECK(error_mentions("struct_size"));
  in = good;
  in.image = nullptr;
  CHECK(flexavatar_runtime_create_avatar_code(rt, &in) == FLEXAVATAR_ERROR_NULL_POINTER);
  in = good;
  in.image_count -= 1;
  CHECK(flexavatar_runtime_create_avatar_code(rt, &in) == FLEXAVATAR_ERROR_INVALID_SIZE);
  CHECK(error_mentions(("= " + std::to_string(3 * s * s)).c_str()));
  in = good;
  image[17] = NAN;
  CHECK(flexavatar_runtime_create_avatar_code(rt, &in) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  CHECK(error_mentions("element 17") && error_mentions("not finite"));
  image[17] = 1.5f;  // 0-255 data passed as float, or unnormalised
  CHECK(flexavatar_runtime_create_avatar_code(rt, &in) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  CHECK(error_mentions("[0, 1]"));
  image[17] = -0.01f;
  CHECK(flexavatar_runtime_create_avatar_code(rt, &in) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  image[17] = 0.5f;
  in.cam2world[0] = 2.f;  // not a rotation
  CHECK(flexavatar_runtime_create_avatar_code(rt, &in) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  CHECK(error_mentions("rigid"));
  in = good;
  in.intrinsics[0] = 1500.f;  // pixel units
  CHECK(flexavatar_runtime_create_avatar_code(rt, &in) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  CHECK(error_mentions("normalised"));
  in = good;
  in.intrinsics[4] = NAN;
  CHECK(flexavatar_runtime_create_avatar_code(rt, &in) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  if (needs_features) {
    in = good;
    in.feature_channels = c + 1;
    CHECK(flexavatar_runtime_create_avatar_code(rt, &in) == FLEXAVATAR_ERROR_INVALID_SIZE);
    CHECK(error_mentions(("[" + std::to_string(c) + ", h, w]").c_str()));
    in = good;
    in.feature_height = 0;
    CHECK(flexavatar_runtime_create_avatar_code(rt, &in) == FLEXAVATAR_ERROR_INVALID_SIZE);
    in = good;
    features[5] = INFINITY;
    CHECK(flexavatar_runtime_create_avatar_code(rt, &in) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
    CHECK(error_mentions("features") && error_mentions("not finite"));
    features[5] = 0.1f;
  } else {
    in = good;
    in.features = features.data();  // this bundle's encoder computes DINOv2 itself
    in.feature_channels = 768;
    in.feature_height = in.feature_width = 4;
    CHECK(flexavatar_runtime_create_avatar_code(rt, &in) == FLEXAVATAR_ERROR_INVALID_ARGUMENT);
  }
  // None of the failures touched the code set before them.
  CHECK(flexavatar_runtime_get_avatar_code(rt, code.data(), code_floats) == FLEXAVATAR_OK);
  CHECK(code == previous);
  CHECK(flexavatar_runtime_get_avatar_code(rt, code.data(), code_floats - 1) == FLEXAVATAR_ERROR_INVALID_SIZE);
  CHECK(flexavatar_runtime_get_avatar_code(rt, nullptr, code_floats) == FLEXAVATAR_ERROR_NULL_POINTER);

  // Values a hair outside [0, 1] are clipped (as the Python runtime does), then the code changes.
  image[3] = 1.0005f;
  image[4] = -0.0005f;
  CHECK(flexavatar_runtime_create_avatar_code(rt, &good) == FLEXAVATAR_OK);
  CHECK(flexavatar_runtime_get_avatar_code(rt, code.data(), code_floats) == FLEXAVATAR_OK);
  CHECK(code != previous);
  for (float v : code) CHECK(std::isfinite(v));
  // A second photo with other features (new shape: rebinding) and a render with the new code.
  if (needs_features) {
    std::vector<float> wide(size_t(c * 2 * 3), -0.2f);
    in = good;
    in.features = wide.data();
    in.feature_height = 2;
    in.feature_width = 3;
    CHECK(flexavatar_runtime_create_avatar_code(rt, &in) == FLEXAVATAR_OK);
  }
  std::vector<float> expression(135, 0.f);
  flexavatar_camera cam;
  CHECK(flexavatar_runtime_default_camera(rt, &cam) == FLEXAVATAR_OK);
  cam.width = cam.height = 24;
  flexavatar_frame f;
  CHECK(flexavatar_runtime_render(rt, expression.data(), 135, &cam, &f) == FLEXAVATAR_OK);
}

TEST_CASE(rasterizer_choice_cuda_fails_cleanly_without_cuda_and_info_says_which_runs) {
  // Default (AUTO) on the CPU device: the CPU rasterizer; render_device is then unavailable.
  {
    Live live;
    CHECK(std::string(live.info.rasterizer) == "cpu" && live.info.rasterizer_device == -1);
    std::vector<float> code = live.code(), expression(135, 0.f);
    CHECK(flexavatar_runtime_set_avatar_code(live.rt, code.data(), int64_t(code.size())) == FLEXAVATAR_OK);
    flexavatar_camera cam;
    CHECK(flexavatar_runtime_default_camera(live.rt, &cam) == FLEXAVATAR_OK);
    cam.width = cam.height = 16;
    flexavatar_device_frame df{};
    df.struct_size = sizeof(df);
    CHECK(flexavatar_runtime_render_device(live.rt, expression.data(), 135, &cam, &df) == FLEXAVATAR_ERROR_UNAVAILABLE);
    CHECK(error_mentions("CUDA rasterizer"));
    df.struct_size = 4;
    CHECK(flexavatar_runtime_render_device(live.rt, expression.data(), 135, &cam, &df) ==
          FLEXAVATAR_ERROR_INVALID_ARGUMENT);
    // An info struct of the first published size: filled up to decoder_provider, nothing beyond.
    std::vector<unsigned char> raw(sizeof(flexavatar_runtime_info) + 16, 0xCD);
    auto* old = reinterpret_cast<flexavatar_runtime_info*>(raw.data());
    old->struct_size = uint32_t(offsetof(flexavatar_runtime_info, decoder_provider) + 64);
    CHECK(flexavatar_runtime_get_info(live.rt, old) == FLEXAVATAR_OK);
    CHECK(old->num_gaussians == live.info.num_gaussians);
    bool untouched = true;
    for (size_t i = old->struct_size; i < raw.size(); ++i) untouched = untouched && raw[i] == 0xCD;
    CHECK(untouched);
  }
  // Explicit CUDA: a runtime rasterizing on CUDA, or UNAVAILABLE naming why (printed for the pytest).
  for (int device : {int(FLEXAVATAR_DEVICE_CPU), int(FLEXAVATAR_DEVICE_AUTO)}) {
    flexavatar_runtime* rt = nullptr;
    const flexavatar_status s = create(g_bundle, &rt, FLEXAVATAR_VERIFY_SIZE, device, FLEXAVATAR_RASTERIZER_CUDA);
    if (s == FLEXAVATAR_OK) {
      flexavatar_runtime_info info{};
      info.struct_size = sizeof(info);
      CHECK(flexavatar_runtime_get_info(rt, &info) == FLEXAVATAR_OK);
      CHECK(std::string(info.rasterizer) == "cuda" && info.rasterizer_device == 0);
      std::printf("    rasterizer CUDA: available (%s)\n", info.decoder_provider);
      flexavatar_runtime_destroy(rt);
    } else {
      CHECK(s == FLEXAVATAR_ERROR_UNAVAILABLE && rt == nullptr);
      CHECK(error_mentions("rasterizer CUDA was requested") && error_mentions("CUDA"));
      std::printf("    rasterizer CUDA: unavailable: %s\n", flexavatar_last_error());
    }
  }
  flexavatar_runtime* rt = nullptr;
  const flexavatar_status s = create(g_bundle, &rt, FLEXAVATAR_VERIFY_SIZE, FLEXAVATAR_DEVICE_CUDA);
  if (s == FLEXAVATAR_OK) {
    std::printf("    device CUDA: available\n");
    flexavatar_runtime_destroy(rt);
  } else {
    CHECK(s == FLEXAVATAR_ERROR_UNAVAILABLE && rt == nullptr && error_mentions("CUDA"));
    std::printf("    device CUDA: unavailable: %s\n", flexavatar_last_error());
  }
}

TEST_CASE(precision_is_checked_and_reported) {
  {
    Live live;
    CHECK(std::string(live.info.decoder_precision) == "fp32");
  }
  flexavatar_runtime_options options;
  flexavatar_runtime_options_init(&options, sizeof(options));
  CHECK(options.precision == FLEXAVATAR_PRECISION_FP32);
  options.device = FLEXAVATAR_DEVICE_CPU;
  options.precision = 7;
  flexavatar_runtime* rt = nullptr;
  CHECK(flexavatar_runtime_create(g_bundle.c_str(), &options, &rt) == FLEXAVATAR_ERROR_INVALID_ARGUMENT && !rt);
  CHECK(error_mentions("options.precision is 7"));
  // the test bundle holds fp32 files only: fp16 names what is missing and what the bundle has
  options.precision = FLEXAVATAR_PRECISION_FP16;
  CHECK(flexavatar_runtime_create(g_bundle.c_str(), &options, &rt) == FLEXAVATAR_ERROR_BUNDLE_INVALID && !rt);
  CHECK(error_mentions("no fp16 ONNX decoder") && error_mentions("decoder.fp32.onnx"));
  options.precision = FLEXAVATAR_PRECISION_INT8;  // likewise int8 (flexavatar-export --precision fp32,int8)
  CHECK(flexavatar_runtime_create(g_bundle.c_str(), &options, &rt) == FLEXAVATAR_ERROR_BUNDLE_INVALID && !rt);
  CHECK(error_mentions("no int8 ONNX decoder") && error_mentions("decoder.fp32.onnx"));
}

TEST_CASE(cuda_graphs_is_checked_and_reported) {
  flexavatar_runtime_options options;
  flexavatar_runtime_options_init(&options, sizeof(options));
  CHECK(options.cuda_graphs == 1);  // the default: it takes effect on the zero-copy CUDA path only
  options.device = FLEXAVATAR_DEVICE_CPU;
  options.cuda_graphs = 2;
  flexavatar_runtime* rt = nullptr;
  CHECK(flexavatar_runtime_create(g_bundle.c_str(), &options, &rt) == FLEXAVATAR_ERROR_INVALID_ARGUMENT && !rt);
  CHECK(error_mentions("options.cuda_graphs is 2"));
  // on the CPU (the default, 1): it needs the CUDA provider and the CUDA rasterizer, so it does not take effect
  options.cuda_graphs = 1;
  CHECK(flexavatar_runtime_create(g_bundle.c_str(), &options, &rt) == FLEXAVATAR_OK && rt);
  flexavatar_runtime_info info;
  std::memset(&info, 0xff, sizeof(info));
  info.struct_size = sizeof(info);
  CHECK(flexavatar_runtime_get_info(rt, &info) == FLEXAVATAR_OK);
  CHECK(info.cuda_graphs == 0);
  // an older caller's info struct (without the field) gets nothing written past its size
  flexavatar_runtime_info older;
  std::memset(&older, 0xab, sizeof(older));
  older.struct_size = uint32_t(offsetof(flexavatar_runtime_info, cuda_graphs));
  CHECK(flexavatar_runtime_get_info(rt, &older) == FLEXAVATAR_OK);
  int32_t untouched = 0;
  std::memset(&untouched, 0xab, sizeof(untouched));
  CHECK(older.cuda_graphs == untouched);
  flexavatar_runtime_destroy(rt);
}

TEST_CASE(fused_decoders_is_checked_and_reported) {
  flexavatar_runtime_options options;
  flexavatar_runtime_options_init(&options, sizeof(options));
  CHECK(options.fused_decoders == FLEXAVATAR_FUSED_DECODERS_AUTO);  // the default
  options.device = FLEXAVATAR_DEVICE_CPU;
  options.fused_decoders = 3;
  flexavatar_runtime* rt = nullptr;
  CHECK(flexavatar_runtime_create(g_bundle.c_str(), &options, &rt) == FLEXAVATAR_ERROR_INVALID_ARGUMENT && !rt);
  CHECK(error_mentions("options.fused_decoders is 3") && error_mentions("AUTO (0), ON (1) or OFF (2)"));
  // the test bundle has the portable decoder only: every choice runs it, and info names it
  for (int fused : {int(FLEXAVATAR_FUSED_DECODERS_AUTO), int(FLEXAVATAR_FUSED_DECODERS_ON),
                    int(FLEXAVATAR_FUSED_DECODERS_OFF)}) {
    options.fused_decoders = fused;
    CHECK(flexavatar_runtime_create(g_bundle.c_str(), &options, &rt) == FLEXAVATAR_OK && rt);
    flexavatar_runtime_info info;
    std::memset(&info, 0xff, sizeof(info));
    info.struct_size = sizeof(info);
    CHECK(flexavatar_runtime_get_info(rt, &info) == FLEXAVATAR_OK);
    CHECK(std::string(info.decoder_file) == "decoder.fp32.onnx");
    flexavatar_runtime_destroy(rt);
    rt = nullptr;
  }
  // an older caller's options struct (without the field): AUTO, whatever lies beyond its size
  options.struct_size = uint32_t(offsetof(flexavatar_runtime_options, fused_decoders));
  options.fused_decoders = 99;
  CHECK(flexavatar_runtime_create(g_bundle.c_str(), &options, &rt) == FLEXAVATAR_OK && rt);
  // an older caller's info struct (without decoder_file) gets nothing written past its size
  flexavatar_runtime_info older;
  std::memset(&older, 0xab, sizeof(older));
  older.struct_size = uint32_t(offsetof(flexavatar_runtime_info, decoder_file));
  CHECK(flexavatar_runtime_get_info(rt, &older) == FLEXAVATAR_OK);
  bool untouched = true;
  for (char c : older.decoder_file) untouched = untouched && static_cast<unsigned char>(c) == 0xab;
  CHECK(untouched && older.cuda_graphs == 0);
  // a struct that ends inside decoder_file does not get it either (no partial, unterminated copy)
  std::memset(&older, 0xab, sizeof(older));
  older.struct_size = uint32_t(offsetof(flexavatar_runtime_info, decoder_file) + 8);
  CHECK(flexavatar_runtime_get_info(rt, &older) == FLEXAVATAR_OK);
  for (char c : older.decoder_file) untouched = untouched && static_cast<unsigned char>(c) == 0xab;
  CHECK(untouched);
  flexavatar_runtime_destroy(rt);
}

namespace {
// One frame of the test bundle (code 0.1, neutral expression, 40x24) by a CPU runtime with these frame_outputs
// (options_size: the caller's sizeof, for an older struct); the frame's fields copied out, empty where NULL.
struct FrameCopy {
  std::vector<uint8_t> rgba;
  std::vector<float> rgb, alpha, depth;
};

FrameCopy render_with(uint32_t frame_outputs, uint32_t options_size = sizeof(flexavatar_runtime_options)) {
  flexavatar_runtime_options options;
  flexavatar_runtime_options_init(&options, sizeof(options));
  options.device = FLEXAVATAR_DEVICE_CPU;
  options.frame_outputs = frame_outputs;
  options.struct_size = options_size;
  flexavatar_runtime* rt = nullptr;
  FrameCopy copy;
  CHECK(flexavatar_runtime_create(g_bundle.c_str(), &options, &rt) == FLEXAVATAR_OK && rt);
  if (!rt) return copy;
  flexavatar_runtime_info info{};
  info.struct_size = sizeof(info);
  CHECK(flexavatar_runtime_get_info(rt, &info) == FLEXAVATAR_OK);
  const std::vector<float> code(size_t(info.num_head_tokens * info.code_dim), 0.1f), expression(135, 0.f);
  CHECK(flexavatar_runtime_set_avatar_code(rt, code.data(), int64_t(code.size())) == FLEXAVATAR_OK);
  flexavatar_camera cam;
  CHECK(flexavatar_runtime_default_camera(rt, &cam) == FLEXAVATAR_OK);
  cam.width = 40;
  cam.height = 24;
  flexavatar_frame f;
  CHECK(flexavatar_runtime_render(rt, expression.data(), 135, &cam, &f) == FLEXAVATAR_OK);
  const size_t pixels = size_t(cam.width) * cam.height;
  if (f.rgba) copy.rgba.assign(f.rgba, f.rgba + 4 * pixels);
  if (f.rgb) copy.rgb.assign(f.rgb, f.rgb + 3 * pixels);
  if (f.alpha) copy.alpha.assign(f.alpha, f.alpha + pixels);
  if (f.depth) copy.depth.assign(f.depth, f.depth + pixels);
  flexavatar_runtime_destroy(rt);
  return copy;
}
}  // namespace

TEST_CASE(frame_outputs_choose_the_fields_render_fills) {
  flexavatar_runtime_options options;
  flexavatar_runtime_options_init(&options, sizeof(options));
  CHECK(options.frame_outputs == 0);  // the default: every field
  options.device = FLEXAVATAR_DEVICE_CPU;
  options.frame_outputs = 16;
  flexavatar_runtime* rt = nullptr;
  CHECK(flexavatar_runtime_create(g_bundle.c_str(), &options, &rt) == FLEXAVATAR_ERROR_INVALID_ARGUMENT && !rt);
  CHECK(error_mentions("options.frame_outputs is 16") && error_mentions("RGBA8 1, RGB 2, ALPHA 4, DEPTH 8"));

  const FrameCopy all = render_with(0);
  CHECK(!all.rgba.empty() && !all.rgb.empty() && !all.alpha.empty() && !all.depth.empty());
  CHECK(render_with(FLEXAVATAR_FRAME_ALL).rgba == all.rgba);
  const FrameCopy rgba = render_with(FLEXAVATAR_FRAME_RGBA8);   // what an app that shows the frame needs
  CHECK(rgba.rgba == all.rgba && rgba.rgb.empty() && rgba.alpha.empty() && rgba.depth.empty());
  const FrameCopy some = render_with(FLEXAVATAR_FRAME_RGB | FLEXAVATAR_FRAME_DEPTH);
  CHECK(some.rgba.empty() && some.rgb == all.rgb && some.alpha.empty() && some.depth == all.depth);
  // an older caller's options struct (without the field): every field, whatever lies beyond its size
  const FrameCopy older = render_with(FLEXAVATAR_FRAME_RGBA8, uint32_t(offsetof(flexavatar_runtime_options,
                                                                                frame_outputs)));
  CHECK(older.rgba == all.rgba && older.rgb == all.rgb && older.alpha == all.alpha && older.depth == all.depth);
}

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: runtime_abuse BUNDLE SCRATCH_DIR\n");
    return 2;
  }
  g_bundle = argv[1];
  g_scratch = argv[2];
  fs::create_directories(g_scratch);
  return harness::run_all();
}
