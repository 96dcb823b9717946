// flexavatar_render BUNDLE AVATAR EXPRESSIONS OUT_DIR [--size N] [--threads N]
//                   [--device auto|cpu|cuda|cuda:N|gpu|gpu:N|npu] [--rasterizer auto|cpu|cuda]
//                   [--features FEATURES.npy] [--head-pose|--camera-tracked] [--verify] [--no-cuda-graphs]
//                   [--fused-decoders auto|on|off] [--precision fp32|fp16|int8] [--stereo EYE_DISTANCE_M] [--latest]
//
// Renders one PNG frame per expression (frame_00000.png, ...) from the bundle's default camera and prints
// the per-frame latency (decoder + rasterizer + RGBA) as p50 / p95. --head-pose shows each code's rigid head
// pose (the tracked head motion), as the official GUI does; --camera-tracked renders each frame from the tracked
// sequence's own camera instead (EXPRESSIONS a tracked .npz: its cam2world and intrinsics, head motion included).
// --verify first runs the bundle's numerics check on this runtime (flexavatar_runtime_check_numerics) and renders
// only if it passes. --fused-decoders picks the
// bundle's decoder with ONNX Runtime's fused kernels (format onnx-ort) or its portable one (options.fused_decoders;
// auto: fused on the CUDA path, portable on the CPU); the decoder file that runs is printed. --precision picks the
// bundle's fp32, fp16 or int8 ONNX files (options.precision; int8: the decoder on the CPU). --stereo D renders
// each code for two eyes D metres apart along the camera's x axis (frame_*_left.png, frame_*_right.png): the left
// eye with a render, the right one with flexavatar_runtime_render_view (the same Gaussians, no second decode).
// --device gpu / gpu:N / npu runs the bundle's graphs on a GPU or NPU without CUDA through ONNX Runtime's provider
// for it (DirectML, MIGraphX, ROCm, CoreML, WebGPU, OpenVINO; QNN, VitisAI, CoreML, OpenVINO) and draws the frames
// on the CPU; the provider that runs is printed.
//   AVATAR       an avatar code .npy (R², 1, D); "-" for the bundle's own avatar_code.npy; or a photo, encoded by
//                the bundle's encoder: a .png S x S (transparency composited onto white; flexavatar_read_photo), an
//                in-the-wild example .npz (its crop 'image', encoded with its own camera: flexavatar_read_photo_camera)
//                or a .npy [S, S, 3] (or [3, S, S]) in [0, 1] on white (.npy: float32, float64 or float16)
//                (with --features: its DINOv2 features [C, h, w], for bundles exported without DINOv2)
//   EXPRESSIONS  .npy [E, 135] (or [135] for one frame), or an .npz with expression_codes [E, 135] (a tracked
//                sequence, np.savez_compressed: flexavatar_read_expressions); or "-": codes streamed on standard
//                input as they arrive, 540 bytes a frame (135 little-endian float32), each rendered and written
//                before the next is read (flexavatar-render's --expressions - protocol), until the stream ends;
//                with --latest the newest code each frame, those that arrived while a frame rendered skipped (and
//                counted)
//   OUT_DIR      a folder for the PNG frames; or "-": raw rgb24 frames on standard output, frame after frame (with
//                --stereo the two eyes side by side, 2S wide), for a pipe into ffmpeg -f rawvideo, a virtual
//                camera or a compositor; the report then goes to standard error
#if defined(_WIN32)
#ifndef NOMINMAX
#define NOMINMAX
#endif
#include <windows.h>  // before shellapi.h, which needs its types

#include <fcntl.h>
#include <io.h>
#include <shellapi.h>
#else
#include <unistd.h>
#endif

#include <cerrno>
#include <csignal>
#include <filesystem>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "flexavatar/flexavatar.hpp"
#include "png_writer.h"

namespace {

namespace fs = std::filesystem;

// Arguments are UTF-8 (on Windows too, where the path then goes to the system as UTF-16).
fs::path fs_path(const std::string& utf8) { return fs::u8path(utf8); }

// Standard input and output as raw bytes (Windows opens them in text mode: CR LF translation, ^Z as the end).
#if defined(_WIN32)
void binary_stdio() {
  ::_setmode(::_fileno(stdin), _O_BINARY);
  ::_setmode(::_fileno(stdout), _O_BINARY);
}
long read_some(void* buffer, size_t size) { return ::_read(0, buffer, unsigned(std::min<size_t>(size, 1u << 30))); }
long write_some(const void* buffer, size_t size) {
  return ::_write(1, buffer, unsigned(std::min<size_t>(size, 1u << 30)));
}
// The command line as UTF-8: main's argv is in the ANSI code page, which cannot hold every file name.
std::vector<std::string> utf8_arguments(int argc, char** argv) {
  int count = 0;
  LPWSTR* wide = ::CommandLineToArgvW(::GetCommandLineW(), &count);
  if (!wide) return std::vector<std::string>(argv, argv + argc);
  std::vector<std::string> args;
  for (int i = 0; i < count; ++i) {
    const int n = ::WideCharToMultiByte(CP_UTF8, 0, wide[i], -1, nullptr, 0, nullptr, nullptr);
    std::string arg(size_t(n > 0 ? n - 1 : 0), '\0');
    if (n > 1) ::WideCharToMultiByte(CP_UTF8, 0, wide[i], -1, arg.data(), n, nullptr, nullptr);
    args.push_back(std::move(arg));
  }
  ::LocalFree(wide);
  return args;
}
#else
std::vector<std::string> utf8_arguments(int argc, char** argv) { return std::vector<std::string>(argv, argv + argc); }
void binary_stdio() {}
long read_some(void* buffer, size_t size) { return long(::read(STDIN_FILENO, buffer, size)); }
long write_some(const void* buffer, size_t size) { return long(::write(STDOUT_FILENO, buffer, size)); }
#endif

int usage() {
  std::fprintf(stderr,
               "usage: flexavatar_render BUNDLE AVATAR EXPRESSIONS OUT_DIR [--size N] [--threads N] "
               "[--device auto|cpu|cuda|cuda:N|gpu|gpu:N|npu]\n"
               "               [--rasterizer auto|cpu|cuda] [--features FEATURES.npy] [--head-pose|--camera-tracked]\n"
               "               [--verify] [--no-cuda-graphs]"
               " [--fused-decoders auto|on|off] [--precision fp32|fp16|int8]\n"
               "               [--stereo EYE_DISTANCE_M] [--latest]\n"
               "  AVATAR: avatar code .npy float32 (R^2, 1, D); - for the bundle's avatar_code.npy; or a photo\n"
               "          to encode: .png S x S, an in-the-wild example .npz (crop + its camera), or .npy [S, S, 3]\n"
               "          in [0, 1] (--features: DINOv2 features [C, h, w])\n"
               "  EXPRESSIONS: .npy float32 [E, 135], or .npz with expression_codes [E, 135] (a tracked sequence);\n"
               "               - for 540-byte records (135 float32) streamed on stdin\n"
               "  OUT_DIR: a folder for PNG frames; - for raw rgb24 frames on stdout (the report on stderr)\n");
  return 2;
}

// A usage error: one line naming the argument and what was expected, exit code 2.
int usage_error(const std::string& message) {
  std::fprintf(stderr, "flexavatar_render: %s (run without arguments for usage)\n", message.c_str());
  return 2;
}

// A non-negative decimal integer no larger than max_value, or -1.
long parse_count(const std::string& value, long max_value) {
  if (value.empty() || value.size() > 9 || value.find_first_not_of("0123456789") != std::string::npos) return -1;
  const long v = std::strtol(value.c_str(), nullptr, 10);
  return v <= max_value ? v : -1;
}

// An input file the example reads: it must exist and be a regular file (not a directory).
bool check_input_file(const char* what, const std::string& path, std::string* error) {
  std::error_code ec;
  const fs::file_status st = fs::status(fs_path(path), ec);
  if (!fs::exists(st)) return *error = std::string(what) + " " + path + ": no such file", false;
  if (!fs::is_regular_file(st)) return *error = std::string(what) + " " + path + ": not a regular file", false;
  return true;
}

// A .npy input (float32, or float64 / float16 converted) through the library's reader; errors name the argument
// (`what`: AVATAR, --features).
flexavatar::NpyArray read_npy(const char* what, const std::string& path) {
  std::string error;
  if (!check_input_file(what, path, &error)) throw flexavatar::Error(FLEXAVATAR_ERROR_IO, error);
  try {
    return flexavatar::read_npy(path);
  } catch (const flexavatar::Error& e) {
    throw flexavatar::Error(e.status(), std::string(what) + " " + e.message());
  }
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * double(v.size() - 1);
  const size_t lo = size_t(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (pos - double(lo)) * (v[hi] - v[lo]);
}

int choice(const std::string& value, int fallback_error) {
  if (value == "auto") return 0;  // FLEXAVATAR_DEVICE_AUTO / FLEXAVATAR_RASTERIZER_AUTO
  if (value == "cpu") return 1;
  if (value == "cuda") return 2;
  return fallback_error;
}

// --device: a flexavatar_device and its index (options.cuda_device), or -1 with a usage error.
struct DeviceSpec {
  const char* name;  // "cuda": also "cuda:N"
  int device;
  bool indexed;      // takes ":N"
};
constexpr DeviceSpec kDevices[] = {{"auto", FLEXAVATAR_DEVICE_AUTO, false}, {"cpu", FLEXAVATAR_DEVICE_CPU, false},
                                   {"cuda", FLEXAVATAR_DEVICE_CUDA, true},  {"gpu", FLEXAVATAR_DEVICE_GPU, true},
                                   {"npu", FLEXAVATAR_DEVICE_NPU, false}};

int parse_device(const std::string& value, int* index, std::string* error) {
  for (const auto& spec : kDevices) {
    const std::string name = spec.name;
    if (value == name) {
      *index = 0;
      return spec.device;
    }
    if (spec.indexed && value.rfind(name + ":", 0) == 0) {  // name:N, the N-th device
      const long ordinal = parse_count(value.substr(name.size() + 1), 1023);
      if (ordinal < 0) {
        *error = "--device: expected " + name + ":N with N a device index, got '" + value + "'";
        return -1;
      }
      *index = int(ordinal);
      return spec.device;
    }
  }
  *error = "--device: expected auto, cpu, cuda, cuda:N, gpu, gpu:N or npu, got '" + value + "'";
  return -1;
}

bool has_extension(const std::string& path, const char* ext) {
  const size_t n = std::strlen(ext);
  if (path.size() < n) return false;
  std::string tail = path.substr(path.size() - n);
  for (char& c : tail) c = char(std::tolower(static_cast<unsigned char>(c)));
  return tail == ext;
}

// A photo .npy [S, S, 3] or [3, S, S] → [3, S, S]; empty for an avatar code .npy (throws for a wrong-size photo).
std::vector<float> npy_photo(const std::string& avatar, long s, const std::string& features_path) {
  const flexavatar::NpyArray array = read_npy("AVATAR", avatar);
  const std::vector<int64_t>& shape = array.shape;
  const std::vector<float>& values = array.values;
  const bool hwc = shape.size() == 3 && shape[0] == s && shape[1] == s && shape[2] == 3;
  const bool chw = shape.size() == 3 && shape[0] == 3 && shape[1] == s && shape[2] == s;
  const std::string photo = "[" + std::to_string(s) + ", " + std::to_string(s) + ", 3]";
  if (!hwc && !chw) {
    // Image-like but the wrong size: say so rather than let the code loader report a shape mismatch.
    const bool image_like = (shape.size() == 3 && shape[2] == 3 && shape[0] == shape[1] && shape[0] > 1) ||
                            (shape.size() == 3 && shape[0] == 3 && shape[1] == shape[2] && shape[1] > 1) ||
                            (shape.size() == 2 && shape[0] == shape[1] && shape[0] > 1);
    if (image_like)
      throw flexavatar::Error(FLEXAVATAR_ERROR_INVALID_SIZE, "AVATAR " + avatar + ": a photo of shape " +
                                                                 shape_string(shape) + "; this bundle's encoder expects " +
                                                                 photo + " (or [3, S, S]) in [0, 1]");
    if (!features_path.empty())
      throw flexavatar::Error(FLEXAVATAR_ERROR_INVALID_SIZE, "AVATAR " + avatar + ": --features needs a photo " +
                                                                 photo + " as AVATAR, got shape " + shape_string(shape));
    return {};  // an avatar code: the runtime checks its shape
  }
  if (!hwc) return values;
  std::vector<float> image(values.size());  // [S, S, 3] -> the encoder's channel-major [3, S, S]
  for (long y = 0; y < s; ++y)
    for (long x = 0; x < s; ++x)
      for (long c = 0; c < 3; ++c) image[size_t((c * s + y) * s + x)] = values[size_t((y * s + x) * 3 + c)];
  return image;
}

// The avatar: a code file, the bundle's code, or a photo (.png, an in-the-wild example .npz with its camera, or
// .npy; + features) run through the bundle's encoder.
void set_avatar(flexavatar::Runtime& rt, const flexavatar_runtime_info& info, const std::string& avatar,
                const std::string& features_path) {
  if (avatar == "-") return rt.load_avatar_code();
  const long s = long(info.image_size);
  std::vector<float> image;
  const bool crop = has_extension(avatar, ".npz");  // an in-the-wild example: its crop and its camera
  if (crop || has_extension(avatar, ".png")) {  // decoded by the library: transparency composited onto white
    int width = 0, height = 0;
    image = flexavatar::read_photo(avatar, &width, &height);
    if (width != s || height != s)
      throw flexavatar::Error(FLEXAVATAR_ERROR_INVALID_SIZE,
                              "AVATAR " + avatar + ": a " + std::to_string(width) + "x" + std::to_string(height) +
                                  " photo; this bundle's encoder expects " + std::to_string(s) + "x" +
                                  std::to_string(s) + " (crop the head square and resize it first)");
  } else {
    image = npy_photo(avatar, s, features_path);
    if (image.empty()) return rt.load_avatar_code(avatar);
  }
  flexavatar_encoder_input input = flexavatar::encoder_input(image);  // the demo camera ...
  flexavatar::NpyArray feature_file;
  if (!features_path.empty()) {
    feature_file = read_npy("--features", features_path);
    std::vector<int64_t> feature_shape = feature_file.shape;
    if (feature_shape.size() == 4 && feature_shape[0] == 1) feature_shape.erase(feature_shape.begin());
    if (feature_shape.size() != 3)
      throw flexavatar::Error(FLEXAVATAR_ERROR_INVALID_SIZE, "--features " + features_path +
                                                                 ": expected DINOv2 features [C, h, w], got shape " +
                                                                 shape_string(feature_shape));
    input = flexavatar::encoder_input(image, feature_file.values, feature_shape[0], feature_shape[1],
                                      feature_shape[2]);
  }
  if (crop) flexavatar::read_photo_camera(avatar, &input);  // ... or the one the crop was taken with
  rt.create_avatar_code(input);
  const flexavatar_runtime_info ran = rt.info();
  if (ran.encoder_fallback[0])  // the device's provider could not open the encoder: it ran once on the CPU
    std::fprintf(stderr, "warning: %s; the encoder runs once per avatar: it ran on %s\n", ran.encoder_fallback,
                 ran.encoder_provider);
}

// OUT_DIR: an existing directory, or one mkdir creates (its parent must exist).
bool prepare_out_dir(const std::string& out_dir, std::string* error) {
  std::error_code ec;
  const fs::path dir = fs_path(out_dir);
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec)) return *error = "OUT_DIR " + out_dir + ": exists and is not a directory", false;
  } else if (!fs::create_directory(dir, ec) && !fs::is_directory(dir)) {
    return *error = "OUT_DIR " + out_dir + ": cannot create the directory: " + ec.message(), false;
  }
#if !defined(_WIN32)  // Windows has no cheap answer (ACLs): a folder it cannot write fails at the first frame
  if (::access(out_dir.c_str(), W_OK) != 0) return *error = "OUT_DIR " + out_dir + ": not writable", false;
#endif
  return true;
}

// A frame: written to a temporary name in OUT_DIR, then renamed, so no partial frame_NNNNN.png is left behind.
bool write_frame(const std::string& path, const flexavatar_frame& frame, std::string* error) {
  const std::string tmp = path + ".tmp";
  if (!write_png_rgba(fs_path(tmp), frame.rgba, frame.width, frame.height, error)) {
    std::error_code ec;
    fs::remove(fs_path(tmp), ec);
    return false;
  }
  std::error_code ec;
  fs::rename(fs_path(tmp), fs_path(path), ec);  // replaces an existing frame, on Windows too (std::rename does not)
  if (ec) {
    *error = "cannot rename " + tmp + " to " + path + ": " + ec.message();
    fs::remove(fs_path(tmp), ec);
    return false;
  }
  return true;
}

// EXPRESSIONS "-": one record of `dim` little-endian float32 values from standard input, as it arrives (a pipe may
// deliver it in pieces). false at the end of the stream; a stream that ends inside a record also sets *error.
bool read_record(long dim, long index, std::vector<float>* expression, std::string* error) {
  const size_t need = size_t(dim) * sizeof(float);
  std::vector<unsigned char> bytes(need);
  size_t got = 0;
  while (got < need) {
    const long n = read_some(bytes.data() + got, need - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return *error = std::string("EXPRESSIONS -: cannot read standard input: ") + std::strerror(errno), false;
    if (n == 0) break;
    got += size_t(n);
  }
  if (got == 0) return false;
  if (got < need)
    return *error = "EXPRESSIONS -: stream ended inside record " + std::to_string(index) + " (" + std::to_string(got) +
                    " of " + std::to_string(need) + " bytes; expected " + std::to_string(dim) +
                    " little-endian float32 values per frame)",
           false;
  expression->resize(size_t(dim));
  for (size_t i = 0; i < size_t(dim); ++i) {  // little-endian on the wire, whatever this machine's byte order
    const unsigned char* b = bytes.data() + 4 * i;
    const uint32_t bits = uint32_t(b[0]) | uint32_t(b[1]) << 8 | uint32_t(b[2]) << 16 | uint32_t(b[3]) << 24;
    std::memcpy(&(*expression)[i], &bits, 4);
  }
  return true;
}

// EXPRESSIONS "-" with --latest: a thread reads the records as they arrive and keeps only the newest; the render
// loop takes the newest not yet rendered, waiting for one, so a source faster than the renderer lags by one frame
// instead of a growing queue (flexavatar-render's --latest).
class LatestRecords {
 public:
  explicit LatestRecords(long dim) : state_(std::make_shared<State>()) {
    // detached: blocked on standard input when the render loop stops early, it must not hold the process
    std::thread([state = state_, dim] {
      std::vector<float> record;
      std::string error;
      for (long index = 0;; ++index) {
        const bool ok = read_record(dim, index, &record, &error);
        std::lock_guard<std::mutex> lock(state->mutex);
        if (!ok) {
          state->error = error;
          state->done = true;
        } else {
          state->skipped += state->fresh ? 1 : 0;
          state->newest = record;
          state->fresh = true;
          ++state->received;
        }
        state->changed.notify_all();
        if (!ok) return;
      }
    }).detach();
  }
  // The newest record not yet taken; false at the end of the stream (*error set when it ended inside a record).
  bool next(std::vector<float>* expression, std::string* error) {
    std::unique_lock<std::mutex> lock(state_->mutex);
    state_->changed.wait(lock, [&] { return state_->fresh || state_->done; });
    if (!state_->fresh) return *error = state_->error, false;
    *expression = state_->newest;
    state_->fresh = false;
    return true;
  }
  long received() const {
    std::lock_guard<std::mutex> lock(state_->mutex);
    return state_->received;
  }
  long skipped() const {
    std::lock_guard<std::mutex> lock(state_->mutex);
    return state_->skipped;
  }

 private:
  struct State {
    std::mutex mutex;
    std::condition_variable changed;
    std::vector<float> newest;
    bool fresh = false, done = false;
    long received = 0, skipped = 0;
    std::string error;
  };
  std::shared_ptr<State> state_;
};

// OUT_DIR "-": all of `data` to standard output, unbuffered, so a live reader gets each frame as it is rendered.
bool write_stdout(const unsigned char* data, size_t size, std::string* error) {
  while (size > 0) {
    const long n = write_some(data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      return *error = errno == EPIPE ? "standard output was closed before the last frame"
                                     : std::string("cannot write standard output: ") + std::strerror(errno),
             false;
    data += n;
    size -= size_t(n);
  }
  return true;
}

// A frame's colour as rgb24 into `out`, a row of `stride` pixels; column `x0` onwards (the right eye's half).
void put_rgb(const flexavatar_frame& frame, int stride, int x0, std::vector<unsigned char>* out) {
  for (int y = 0; y < frame.height; ++y)
    for (int x = 0; x < frame.width; ++x)
      for (int c = 0; c < 3; ++c)
        (*out)[(size_t(y) * size_t(stride) + size_t(x0 + x)) * 3 + size_t(c)] =
            frame.rgba[(size_t(y) * size_t(frame.width) + size_t(x)) * 4 + size_t(c)];
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args = utf8_arguments(argc, argv);
  argc = int(args.size());
  if (argc <= 1) return usage();
  std::vector<std::string> positional;
  int size = 0, threads = 0;
  int device = FLEXAVATAR_DEVICE_AUTO, rasterizer = FLEXAVATAR_RASTERIZER_AUTO, cuda_device = 0;
  std::string features_path;
  bool head_pose = false, camera_tracked = false, verify = false, cuda_graphs = true, latest = false;
  double eye_distance = -1;  // --stereo: metres between the eyes; < 0: one view
  int fused_decoders = FLEXAVATAR_FUSED_DECODERS_AUTO;
  int precision = FLEXAVATAR_PRECISION_FP32;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = args[size_t(i)];
    if (arg == "--help" || arg == "-h") {
      usage();
      return 0;
    }
    if (arg == "--size" || arg == "--threads" || arg == "--device" || arg == "--rasterizer" || arg == "--features" ||
        arg == "--fused-decoders" || arg == "--precision" || arg == "--stereo") {
      if (i + 1 >= argc) return usage_error(arg + ": missing value");
      const std::string value = args[size_t(++i)];
      if (arg == "--size") {
        const long v = parse_count(value, 8192);
        if (v < 1) return usage_error("--size: expected an integer 1..8192 (pixels), got '" + value + "'");
        size = int(v);
      } else if (arg == "--threads") {
        const long v = parse_count(value, 1024);
        if (v < 0) return usage_error("--threads: expected an integer 0..1024 (0 = default), got '" + value + "'");
        threads = int(v);
      } else if (arg == "--stereo") {
        char* end = nullptr;
        eye_distance = std::strtod(value.c_str(), &end);
        if (value.empty() || *end != '\0' || !(eye_distance >= 0 && eye_distance <= 1))
          return usage_error("--stereo: expected the distance between the eyes in metres, 0..1 (e.g. 0.063), "
                             "got '" + value + "'");
      } else if (arg == "--features") {
        if (value.empty()) return usage_error("--features: expected a DINOv2 features .npy path, got ''");
        features_path = value;
      } else if (arg == "--fused-decoders") {
        if (value == "auto") {
          fused_decoders = FLEXAVATAR_FUSED_DECODERS_AUTO;
        } else if (value == "on") {
          fused_decoders = FLEXAVATAR_FUSED_DECODERS_ON;
        } else if (value == "off") {
          fused_decoders = FLEXAVATAR_FUSED_DECODERS_OFF;
        } else {
          return usage_error("--fused-decoders: expected auto, on or off, got '" + value + "'");
        }
      } else if (arg == "--precision") {
        static const char* const kPrecisions[] = {"fp32", "fp16", "int8"};  // indexed by flexavatar_precision
        precision = int(std::find(std::begin(kPrecisions), std::end(kPrecisions), value) - std::begin(kPrecisions));
        if (precision == int(std::size(kPrecisions)))
          return usage_error("--precision: expected fp32, fp16 or int8, got '" + value + "'");
      } else if (arg == "--device") {
        std::string error;
        if ((device = parse_device(value, &cuda_device, &error)) < 0) return usage_error(error);
      } else if ((rasterizer = choice(value, -1)) < 0) {
        return usage_error("--rasterizer: expected auto, cpu or cuda, got '" + value + "'");
      }
    } else if (arg == "--head-pose") {
      head_pose = true;
    } else if (arg == "--camera-tracked") {  // each frame from the tracked sequence's own camera
      camera_tracked = true;
    } else if (arg == "--verify") {
      verify = true;
    } else if (arg == "--latest") {  // EXPRESSIONS -: the newest code each frame
      latest = true;
    } else if (arg == "--no-cuda-graphs") {  // the CUDA sessions node by node (default: replayed CUDA graphs)
      cuda_graphs = false;
    } else if (arg.size() > 1 && arg[0] == '-') {
      return usage_error("unknown option '" + arg + "'");
    } else {
      positional.push_back(arg);
    }
  }
  static const char* const kNames[] = {"BUNDLE", "AVATAR", "EXPRESSIONS", "OUT_DIR"};
  if (positional.size() < 4)
    return usage_error(std::string("missing argument ") + kNames[positional.size()] +
                       " (expected BUNDLE AVATAR EXPRESSIONS OUT_DIR)");
  if (positional.size() > 4)
    return usage_error("unexpected extra argument '" + positional[4] + "' (expected BUNDLE AVATAR EXPRESSIONS OUT_DIR)");
  const std::string bundle = positional[0], avatar = positional[1], expr_path = positional[2],
                    out_dir = positional[3];
  for (size_t k = 0; k < 4; ++k)
    if (positional[k].empty()) return usage_error(std::string(kNames[k]) + ": empty argument");
  if (avatar == "-" && !features_path.empty())
    return usage_error("--features needs a photo .npy as AVATAR, not '-' (the bundle's avatar_code.npy)");
  const bool stream_in = expr_path == "-";   // codes as they arrive on standard input
  if (latest && !stream_in)
    return usage_error("--latest needs EXPRESSIONS - (codes streamed on standard input), not '" + expr_path + "'");
  if (camera_tracked && stream_in)
    return usage_error("--camera-tracked needs EXPRESSIONS a tracked sequence .npz (its cameras), not - (a stream "
                       "has no cameras)");
  if (camera_tracked && head_pose)
    return usage_error("--head-pose was given with --camera-tracked (expected one of them: the tracked cameras "
                       "already show the head's motion)");
  const bool stream_out = out_dir == "-";    // raw frames on standard output
  FILE* const say = stream_out ? stderr : stdout;  // stdout may carry the frames
#if defined(SIGPIPE)
  if (stream_out) std::signal(SIGPIPE, SIG_IGN);  // a reader that leaves: a write error to report, not a silent death
#endif
  if (stream_in || stream_out) binary_stdio();
  try {
    // The inputs and OUT_DIR before loading the bundle (which can take seconds): fail fast, write nothing.
    std::string error;
    std::error_code ec;
    if (!fs::is_directory(fs_path(bundle), ec)) {
      std::fprintf(stderr, "error: BUNDLE %s: not a directory (expected an exported bundle with manifest.json)\n",
                   bundle.c_str());
      return 1;
    }
    if ((avatar != "-" && !check_input_file("AVATAR", avatar, &error)) ||
        (!features_path.empty() && !check_input_file("--features", features_path, &error))) {
      std::fprintf(stderr, "error: %s\n", error.c_str());
      return 1;
    }
    // .npy [E, 135] or a tracked sequence's .npz (expression_codes), checked by the library (shape, finite values)
    std::vector<float> expressions;
    if (!stream_in) {
      try {
        expressions = flexavatar::read_expressions(expr_path);
      } catch (const flexavatar::Error& e) {
        std::fprintf(stderr, "error: EXPRESSIONS %s\n", e.message().c_str());
        return 1;
      }
    }
    std::vector<flexavatar_camera> tracked;  // --camera-tracked: cam2world and intrinsics; the size comes later
    if (camera_tracked) {
      try {
        tracked = flexavatar::read_sequence_cameras(expr_path, flexavatar_camera{});
      } catch (const flexavatar::Error& e) {
        std::fprintf(stderr, "error: --camera-tracked: %s\n", e.message().c_str());
        return 1;
      }
      if (tracked.size() * size_t(135) != expressions.size()) {
        std::fprintf(stderr, "error: --camera-tracked: %s holds %zu cameras for %zu expression codes (expected one "
                             "camera per frame)\n", expr_path.c_str(), tracked.size(), expressions.size() / 135);
        return 1;
      }
    }
    if (!stream_out && !prepare_out_dir(out_dir, &error)) {
      std::fprintf(stderr, "error: %s\n", error.c_str());
      return 1;
    }

    flexavatar_runtime_options options = flexavatar::default_options();
    options.device = device;
    options.cuda_device = cuda_device;
    options.rasterizer = rasterizer;
    options.num_threads = threads;
    options.cuda_graphs = cuda_graphs ? 1 : 0;
    options.fused_decoders = fused_decoders;
    options.precision = precision;
    options.frame_outputs = FLEXAVATAR_FRAME_RGBA8;  // the PNGs need nothing else: 1 of 6 MiB a 512² frame on CUDA
    flexavatar::Runtime rt(bundle, &options);
    const flexavatar_runtime_info info = rt.info();
    if (info.ignored_artifacts > 0)  // a newer exporter's files: the bundle runs without them
      std::fprintf(stderr, "warning: %d artifact(s) of this bundle are of a kind this flexavatar %s does not know and "
                           "are left aside: %s\n", int(info.ignored_artifacts), flexavatar_version(),
                   info.ignored_names);

    const long dim = info.expression_dim;
    const long frames = long(expressions.size()) / dim;  // of the file; a stream's are counted as they come
    if (verify) {
      // the export's check set through this provider, precision and rasterizer, before anything is written
      const flexavatar_numerics n = rt.check_numerics();
      std::fprintf(say, "numerics (%s, %s, %s rasterizer): worst frame %.1f dB (target %.0f dB); max |err| means "
                   "%.2g, quats %.2g, scales %.2g, opacities %.2g, sh0 %.2g",
                   info.decoder_provider, info.decoder_precision, info.rasterizer, n.psnr_db, n.target_db,
                  n.max_abs_error[0], n.max_abs_error[1], n.max_abs_error[2], n.max_abs_error[3], n.max_abs_error[4]);
      if (n.encoder_checked)
        std::fprintf(say, "; encoder: code max |err| %.2g, worst frame %.1f dB", n.code_max_abs_error,
                     n.encoder_psnr_db);
      std::fprintf(say, ": %s\n", n.passed ? "ok" : "FAILED");
      if (!n.passed) {
        std::fprintf(stderr, "error: the numerics check failed: this runtime's frames are not the exported model's "
                             "(nothing rendered)\n");
        return 1;
      }
    }
    set_avatar(rt, info, avatar, features_path);

    flexavatar_camera camera = rt.default_camera();
    if (size > 0) camera.width = camera.height = size;
    const bool stereo = eye_distance >= 0;
    for (flexavatar_camera& c : tracked) {  // the default camera's size and background
      c.width = camera.width;
      c.height = camera.height;
      std::copy(camera.background, camera.background + 3, c.background);
    }
    // The camera of frame `index` for eye `side` (-1: no stereo): the tracked one of the frame or the default one,
    // moved by ∓ half the eye distance along its own x axis (row-major: column 0 is x), showing the code's head pose
    // with --head-pose.
    auto view = [&](long index, int side, const std::vector<float>& code) {
      flexavatar_camera c = tracked.empty() ? camera : tracked[size_t(index)];
      if (side >= 0)
        for (int r = 0; r < 3; ++r)
          c.cam2world[4 * r + 3] += float((side ? 0.5 : -0.5) * eye_distance * c.cam2world[4 * r]);
      return head_pose ? flexavatar::posed_camera(c, code) : c;
    };
    std::vector<double> ms;
    std::vector<float> expression(static_cast<size_t>(dim));
    // OUT_DIR "-": one rgb24 frame, the eyes side by side with --stereo (the frame is the runtime's until its next
    // call: the left eye is copied out before the right one is rendered)
    const int views = stereo ? 2 : 1;
    std::vector<unsigned char> raw(stream_out ? size_t(camera.width) * size_t(views) * size_t(camera.height) * 3 : 0);
    long rendered = 0;
    std::unique_ptr<LatestRecords> newest = latest ? std::make_unique<LatestRecords>(dim) : nullptr;
    for (;; ++rendered) {
      if (stream_in) {
        if (newest ? !newest->next(&expression, &error) : !read_record(dim, rendered, &expression, &error)) {
          if (error.empty()) break;  // the stream ended between records
          std::fprintf(stderr, "error: %s (%ld frames written)\n", error.c_str(), rendered);
          return 1;
        }
      } else {
        if (rendered == frames) break;
        std::copy(expressions.begin() + rendered * dim, expressions.begin() + (rendered + 1) * dim,
                  expression.begin());
      }
      const auto start = std::chrono::steady_clock::now();
      const flexavatar_frame frame = rt.render(expression, view(rendered, stereo ? 0 : -1, expression));
      char name[40];
      std::snprintf(name, sizeof(name), stereo ? "frame_%05ld_left.png" : "frame_%05ld.png", rendered);
      // the frame is the runtime's until its next call: written (or copied) before the right eye is rendered (not
      // timed)
      const auto written = std::chrono::steady_clock::now();
      if (stream_out) {
        put_rgb(frame, camera.width * views, 0, &raw);
      } else if (!write_frame(out_dir + "/" + name, frame, &error)) {
        std::fprintf(stderr, "error: %s\n", error.c_str());
        return 1;
      }
      const auto resumed = std::chrono::steady_clock::now();
      double frame_ms = std::chrono::duration<double, std::milli>(written - start).count();
      if (stereo) {
        const flexavatar_frame right = rt.render_view(view(rendered, 1, expression));
        std::snprintf(name, sizeof(name), "frame_%05ld_right.png", rendered);
        const auto done = std::chrono::steady_clock::now();
        frame_ms += std::chrono::duration<double, std::milli>(done - resumed).count();
        if (stream_out) {
          put_rgb(right, camera.width * views, camera.width, &raw);
        } else if (!write_frame(out_dir + "/" + name, right, &error)) {
          std::fprintf(stderr, "error: %s\n", error.c_str());
          return 1;
        }
      }
      if (stream_out && !write_stdout(raw.data(), raw.size(), &error)) {
        std::fprintf(stderr, "error: %s (%ld frames written)\n", error.c_str(), rendered);
        return 1;
      }
      ms.push_back(frame_ms);
    }
    std::fprintf(say, "flexavatar %s, %ld Gaussians, decoder on %s%s, %s rasterizer, decoder file %s\n",
                 flexavatar_version(), long(info.num_gaussians), info.decoder_provider,
                 info.cuda_graphs ? " (CUDA graphs)" : "", info.rasterizer, info.decoder_file);
    std::fprintf(say, "%ld frames %dx%d%s -> %s\n", rendered, camera.width * (stream_out ? views : 1), camera.height,
                 stereo ? (stream_out ? " (stereo: left and right eye side by side, one decode)"
                                      : " (stereo: left and right eye, one decode)")
                        : "",
                 stream_out ? "standard output (rgb24)" : out_dir.c_str());
    if (newest)
      std::fprintf(say, "--latest: rendered the newest of %ld streamed codes each time; %ld arrived while a frame "
                        "rendered and were skipped\n", newest->received(), newest->skipped());
    if (ms.empty()) {
      std::fprintf(say, "no frames: the expression stream was empty\n");
    } else {
      std::fprintf(say, "latency per frame: p50 %.3f ms, p95 %.3f ms (first frame %.3f ms)\n", percentile(ms, 0.5),
                   percentile(ms, 0.95), ms.front());
    }
    return 0;
  } catch (const flexavatar::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
