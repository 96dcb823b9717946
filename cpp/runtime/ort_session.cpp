#include "ort_session.h"

#include <algorithm>
#include <filesystem>
#include <mutex>

#include "platform.h"

namespace flexavatar {
namespace runtime {
namespace {

const OrtApi* g_api = nullptr;

// One ORT environment per process (ORT's rule), shared by all sessions and released with the last one.
Status shared_env(const OrtApi* api, std::shared_ptr<OrtEnv>* out) {
  static std::mutex mutex;
  static std::weak_ptr<OrtEnv> current;
  std::lock_guard<std::mutex> lock(mutex);
  if (auto env = current.lock()) {
    *out = env;
    return Status::ok_status();
  }
  OrtEnv* raw = nullptr;
  if (OrtStatus* s = api->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "flexavatar", &raw)) {
    const std::string message = api->GetErrorMessage(s);
    api->ReleaseStatus(s);
    return Status(StatusCode::kModelError, "ONNX Runtime: CreateEnv failed: " + message);
  }
  std::shared_ptr<OrtEnv> env(raw, [api](OrtEnv* p) { api->ReleaseEnv(p); });
  current = env;
  *out = env;
  return Status::ok_status();
}

// Whether ORT's CUDA provider bridge lies beside the loaded ORT library (ORT loads it from there). The
// CPU-only wheel has none; asking it for CUDA would log a loader error on every session.
bool cuda_provider_present(std::string* reason) {
  const std::string dir = platform::module_directory(reinterpret_cast<const void*>(&OrtGetApiBase));
  if (dir.empty()) return true;  // let ORT decide
#if defined(_WIN32)
  const std::string bridge = dir + "onnxruntime_providers_cuda.dll";
#else
  const std::string bridge = dir + "libonnxruntime_providers_cuda.so";
#endif
  std::error_code ec;
  if (std::filesystem::exists(platform::fs_path(bridge), ec)) return true;
  *reason = "this ONNX Runtime build has no CUDA execution provider (no " + bridge + ")";
  return false;
}

// The options ONNX Runtime will use, read back (GetCUDAProviderOptionsAsString: "key=value;..."), against what
// was set: the integer and boolean keys, whose text form is unambiguous. A mismatch is an error, not a silently
// different session (TF32 on, or ORT's own stream racing the rasterizer's). Skipped where ORT cannot print them.
Status check_effective_cuda_options(const OrtApi* api, const OrtCUDAProviderOptionsV2* cuda,
                                    const std::vector<std::pair<std::string, std::string>>& wanted,
                                    bool user_stream) {
  OrtAllocator* allocator = nullptr;
  char* text = nullptr;
  if (OrtStatus* st = api->GetAllocatorWithDefaultOptions(&allocator)) {
    api->ReleaseStatus(st);
    return Status::ok_status();
  }
  if (OrtStatus* st = api->GetCUDAProviderOptionsAsString(cuda, allocator, &text)) {
    api->ReleaseStatus(st);
    return Status::ok_status();
  }
  const std::string all = text ? text : "";
  if (text)
    if (OrtStatus* st = api->AllocatorFree(allocator, text)) api->ReleaseStatus(st);
  const std::string mismatch = cuda_options_mismatch(all, wanted, user_stream);
  if (!mismatch.empty())
    return Status(StatusCode::kInternal, "ONNX Runtime's CUDA provider options did not take: " + mismatch +
                                             " (options: " + all + ")");
  return Status::ok_status();
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + (shape[i] < 0 ? "?" : std::to_string(shape[i]));
  return s + "]";
}

std::string file_name(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// ---- GPU / NPU providers (choose_host_provider) ----

// How a provider is added to the session options. ONNX Runtime's generic SessionOptionsAppendExecutionProvider takes
// DML, QNN and CoreML by a short name (CoreML since 1.20, before this header's 1.21), WebGPU and MIGraphX in newer
// releases (1.32, the one here, takes all five; a release that does not know a name answers "Unknown provider name",
// reported as kUnavailable); the header's comment on it still lists QNN only. Not MIGraphX's own entry point: it
// takes a struct the caller allocates, whose layout changed after 1.21 (a field inserted in the middle), so this
// header's struct would be misread by the libraries that have MIGraphX now. OpenVINO and VitisAI have string-keyed
// entry points of their own (the header asks for those where they exist); ROCm takes an options object that the
// library allocates (its own layout).
enum class Append { kGeneric, kOpenVino, kVitisAi, kRocm };
// How the device index reaches the provider (runtime/engines.py ort_host_provider).
enum class Index { kDeviceId, kOpenVinoDeviceType, kOwnChoice };

struct ProviderOption {
  const char* key;
  const char* value;
};

struct HostProviderSpec {
  HostDevice device;
  const char* name;        // GetAvailableProviders' name
  Append append;
  const char* short_name;  // Append::kGeneric: the name the generic entry point takes
  Index index;
  ProviderOption options[2];  // {nullptr, nullptr}: none
};

// Python's ORT_HOST_PROVIDERS, in its order (preferred first), with the same options.
constexpr HostProviderSpec kHostProviders[] = {
    {HostDevice::kGpu, "DmlExecutionProvider", Append::kGeneric, "DML", Index::kDeviceId, {}},
    {HostDevice::kGpu, "MIGraphXExecutionProvider", Append::kGeneric, "MIGraphX", Index::kDeviceId, {}},
    {HostDevice::kGpu, "ROCMExecutionProvider", Append::kRocm, nullptr, Index::kDeviceId, {}},
    {HostDevice::kGpu, "CoreMLExecutionProvider", Append::kGeneric, "CoreML", Index::kOwnChoice,
     {{"ModelFormat", "MLProgram"}, {"MLComputeUnits", "CPUAndGPU"}}},
    {HostDevice::kGpu, "WebGpuExecutionProvider", Append::kGeneric, "WebGPU", Index::kOwnChoice, {}},
    {HostDevice::kGpu, "OpenVINOExecutionProvider", Append::kOpenVino, nullptr, Index::kOpenVinoDeviceType,
     {{"device_type", "GPU"}}},
    {HostDevice::kNpu, "QNNExecutionProvider", Append::kGeneric, "QNN", Index::kOwnChoice, {{"backend_type", "htp"}}},
    {HostDevice::kNpu, "VitisAIExecutionProvider", Append::kVitisAi, nullptr, Index::kOwnChoice, {}},
    {HostDevice::kNpu, "CoreMLExecutionProvider", Append::kGeneric, "CoreML", Index::kOwnChoice,
     {{"ModelFormat", "MLProgram"}, {"MLComputeUnits", "CPUAndNeuralEngine"}}},
    {HostDevice::kNpu, "OpenVINOExecutionProvider", Append::kOpenVino, nullptr, Index::kOpenVinoDeviceType,
     {{"device_type", "NPU"}}},
};

// Indexed by HostDevice: its name in messages, and the ONNX Runtime builds that have its providers (Python's
// ORT_HOST_PACKAGES, with the release packages a C / C++ app links).
constexpr const char* kHostDeviceNames[] = {"GPU", "NPU"};
constexpr const char* kHostDeviceBuilds[] = {
    "use an ONNX Runtime build that has one: DirectML (Windows, any GPU: NuGet Microsoft.ML.OnnxRuntime.DirectML, "
    "pip onnxruntime-directml), OpenVINO (Intel: pip onnxruntime-openvino), or AMD's ROCm build (MIGraphX, Linux); "
    "on macOS ONNX Runtime's own release has CoreML",
    "use an ONNX Runtime build that has one: QNN (Snapdragon: NuGet Microsoft.ML.OnnxRuntime.QNN, pip "
    "onnxruntime-qnn), OpenVINO (Intel: pip onnxruntime-openvino), or AMD's Ryzen AI build (VitisAI); on macOS and "
    "iOS ONNX Runtime's own release has CoreML"};

// By name: a provider is added the same way for either device (its options, in HostProvider, say which).
const HostProviderSpec* find_host_provider(const std::string& name) {
  for (const auto& spec : kHostProviders)
    if (name == spec.name) return &spec;
  return nullptr;
}

std::string joined(const std::vector<std::string>& names) {
  std::string text;
  for (const auto& name : names) text += (text.empty() ? "" : ", ") + name;
  return text.empty() ? std::string("none") : text;
}

// Adds `provider` (a choose_host_provider result) to the session options; kUnavailable with ONNX Runtime's reason.
Status append_host_provider(const OrtApi* api, OrtSessionOptions* options, const HostProvider& provider) {
  const HostProviderSpec* spec = find_host_provider(provider.name);
  if (!spec) return Status(StatusCode::kInternal, "no entry point for execution provider " + provider.name);
  std::vector<const char*> keys, values;
  for (const auto& [key, value] : provider.options) {
    keys.push_back(key.c_str());
    values.push_back(value.c_str());
  }
  OrtStatus* status = nullptr;
  switch (spec->append) {
    case Append::kGeneric:
      status = api->SessionOptionsAppendExecutionProvider(options, spec->short_name, keys.data(), values.data(),
                                                          keys.size());
      break;
    case Append::kOpenVino:
      status = api->SessionOptionsAppendExecutionProvider_OpenVINO_V2(options, keys.data(), values.data(), keys.size());
      break;
    case Append::kVitisAi:
      status = api->SessionOptionsAppendExecutionProvider_VitisAI(options, keys.data(), values.data(), keys.size());
      break;
    case Append::kRocm: {
      OrtROCMProviderOptions* rocm = nullptr;
      status = api->CreateROCMProviderOptions(&rocm);
      if (!status) status = api->UpdateROCMProviderOptions(rocm, keys.data(), values.data(), keys.size());
      if (!status) status = api->SessionOptionsAppendExecutionProvider_ROCM(options, rocm);
      if (rocm) api->ReleaseROCMProviderOptions(rocm);
      break;
    }
  }
  if (!status) return Status::ok_status();
  const std::string message = api->GetErrorMessage(status);
  api->ReleaseStatus(status);
  return Status(StatusCode::kUnavailable, "ONNX Runtime could not add " + provider.name + ": " + message);
}

}  // namespace

std::vector<std::string> host_provider_names(HostDevice device) {
  std::vector<std::string> names;
  for (const auto& spec : kHostProviders)
    if (spec.device == device && std::find(names.begin(), names.end(), spec.name) == names.end())
      names.push_back(spec.name);
  return names;
}

Status choose_host_provider(HostDevice device, int device_index, const std::vector<std::string>& available,
                            const std::string& version, HostProvider* out) {
  const std::string device_name = kHostDeviceNames[int(device)];
  auto has = [&](const std::string& name) {
    return std::find(available.begin(), available.end(), name) != available.end();
  };
  for (const auto& spec : kHostProviders) {
    if (spec.device != device || !has(spec.name)) continue;
    HostProvider chosen{spec.name, {}};
    for (const auto& option : spec.options)
      if (option.key) chosen.options.emplace_back(option.key, option.value);
    switch (spec.index) {
      case Index::kDeviceId:
        chosen.options.emplace_back("device_id", std::to_string(device_index));
        break;
      case Index::kOpenVinoDeviceType:  // OpenVINO names its devices: "GPU" is the first GPU, "GPU.1" the second
        for (auto& [key, value] : chosen.options)
          if (key == "device_type" && device_index) value += "." + std::to_string(device_index);
        break;
      case Index::kOwnChoice:
        if (device_index)
          return Status(StatusCode::kInvalidArgument,
                        "device " + device_name + ": the device index (options.cuda_device) is " +
                            std::to_string(device_index) + " for " + spec.name +
                            ", expected 0: this provider picks its device itself");
        break;
    }
    *out = std::move(chosen);
    return Status::ok_status();
  }
  if (device == HostDevice::kGpu && has("CUDAExecutionProvider"))
    return Status(StatusCode::kUnavailable,
                  "device GPU: this ONNX Runtime build (" + version + ", onnxruntime-gpu) reaches NVIDIA GPUs through "
                  "CUDA: use device CUDA (it has no other GPU provider; it has " + joined(available) + ")");
  return Status(StatusCode::kUnavailable,
                "device " + device_name + ": this ONNX Runtime build (" + version + ") has no " + device_name +
                    " execution provider (looked for " + joined(host_provider_names(device)) + "; it has " +
                    joined(available) + "): " + kHostDeviceBuilds[int(device)]);
}

Status ort_available_providers(std::vector<std::string>* out, std::string* version) {
  const OrtApi* api = nullptr;
  Status s = ort_api(&api);
  if (!s.ok()) return s;
  char** names = nullptr;
  int count = 0;
  if (OrtStatus* st = api->GetAvailableProviders(&names, &count)) {
    const std::string message = api->GetErrorMessage(st);
    api->ReleaseStatus(st);
    return Status(StatusCode::kModelError, "ONNX Runtime: GetAvailableProviders failed: " + message);
  }
  // released however the copy ends (it may throw bad_alloc, caught at the C boundary)
  struct Release {
    const OrtApi* api;
    char** names;
    int count;
    ~Release() {
      if (OrtStatus* st = api->ReleaseAvailableProviders(names, count)) api->ReleaseStatus(st);
    }
  } release{api, names, count};
  out->assign(names, names + count);
  *version = OrtGetApiBase()->GetVersionString();
  return Status::ok_status();
}

std::string cuda_options_mismatch(const std::string& effective_text,
                                  const std::vector<std::pair<std::string, std::string>>& wanted, bool user_stream) {
  std::map<std::string, std::string> effective;
  size_t start = 0;
  while (start < effective_text.size()) {
    size_t end = effective_text.find(';', start);
    if (end == std::string::npos) end = effective_text.size();
    const std::string item = effective_text.substr(start, end - start);
    const size_t eq = item.find('=');
    if (eq != std::string::npos) {
      std::string value = item.substr(eq + 1);
      if (value == "true") value = "1";
      if (value == "false") value = "0";
      effective[item.substr(0, eq)] = value;
    }
    start = end + 1;
  }
  std::vector<std::pair<std::string, std::string>> checked;
  for (const auto& [key, value] : wanted)
    if (key == "device_id" || key == "use_tf32" || key == "enable_cuda_graph" || key == "do_copy_in_default_stream")
      checked.emplace_back(key, value);
  if (user_stream) checked.emplace_back("has_user_compute_stream", "1");
  std::string mismatches;
  for (const auto& [key, value] : checked) {
    const auto it = effective.find(key);
    if (it != effective.end() && it->second != value)
      mismatches += (mismatches.empty() ? "" : "; ") + key + " is " + it->second + ", expected " + value;
  }
  return mismatches;
}

std::vector<std::pair<std::string, std::string>> cuda_provider_options(const SessionConfig& config) {
  // As the Python runtime (runtime/gpu.py cuda_provider_options). cuDNN's convolution search: HEURISTIC for fp16
  // files (the FLEX-1 fp16 decoder, H200, CUDA graphs, side by side: 2.09 ms a call vs 4.36 ms with EXHAUSTIVE,
  // whose timed search picks cuDNN's implicit_convolve_sgemm / dgrad_engine kernels, without tensor cores; DEFAULT
  // was slower still), EXHAUSTIVE for fp32. An arena that grows by what is asked. No TF32: fp32 means fp32
  // (ORT's default TF32 MatMul/Conv moved FLEX-1 frames by up to 0.08).
  std::vector<std::pair<std::string, std::string>> options = {
      {"device_id", std::to_string(config.cuda_device)},
      {"cudnn_conv_algo_search", config.precision == "fp16" ? "HEURISTIC" : "EXHAUSTIVE"},
      {"arena_extend_strategy", "kSameAsRequested"},
      {"use_tf32", "0"},
      {"do_copy_in_default_stream", "1"},
  };
  if (config.cuda_graphs && config.cuda_stream) options.emplace_back("enable_cuda_graph", "1");
  return options;
}

Status ort_api(const OrtApi** out) {
  static std::once_flag once;
  std::call_once(once, [] { g_api = OrtGetApiBase()->GetApi(ORT_API_VERSION); });
  if (!g_api)
    return Status(StatusCode::kUnavailable, "the ONNX Runtime library (" +
                                                std::string(OrtGetApiBase()->GetVersionString()) +
                                                ") does not serve C API version " + std::to_string(ORT_API_VERSION));
  *out = g_api;
  return Status::ok_status();
}

void OrtDeleter::operator()(OrtEnv* p) const { g_api->ReleaseEnv(p); }
void OrtDeleter::operator()(OrtSession* p) const { g_api->ReleaseSession(p); }
void OrtDeleter::operator()(OrtSessionOptions* p) const { g_api->ReleaseSessionOptions(p); }
void OrtDeleter::operator()(OrtValue* p) const { g_api->ReleaseValue(p); }
void OrtDeleter::operator()(OrtIoBinding* p) const { g_api->ReleaseIoBinding(p); }
void OrtDeleter::operator()(OrtMemoryInfo* p) const { g_api->ReleaseMemoryInfo(p); }
void OrtDeleter::operator()(OrtTypeInfo* p) const { g_api->ReleaseTypeInfo(p); }
void OrtDeleter::operator()(OrtRunOptions* p) const { g_api->ReleaseRunOptions(p); }

Status OrtModel::check(OrtStatus* status, const std::string& what) const {
  if (!status) return Status::ok_status();
  const std::string message = api_->GetErrorMessage(status);
  const OrtErrorCode code = api_->GetErrorCode(status);
  api_->ReleaseStatus(status);
  return Status(code == ORT_NO_SUCHFILE ? StatusCode::kBundleFileMissing : StatusCode::kModelError,
                "ONNX Runtime: " + what + " (" + path_ + "): " + message);
}

OrtModel::~OrtModel() {
  binding_.reset();  // before the values it references and the session
  bound_values_.clear();
  run_options_.reset();
  graph_run_options_.clear();
  session_.reset();
}

Status OrtModel::open(const std::string& path, const SessionConfig& config, std::unique_ptr<OrtModel>* out) {
  std::unique_ptr<OrtModel> model(new OrtModel());
  model->path_ = path;
  Status s = ort_api(&model->api_);
  if (!s.ok()) return s;
  const OrtApi* api = model->api_;
  s = shared_env(api, &model->env_);
  if (!s.ok()) return s;

  OrtPtr<OrtSessionOptions> options;
  auto cpu_options = [&]() -> Status {
    OrtSessionOptions* raw_options = nullptr;
    Status st = model->check(api->CreateSessionOptions(&raw_options), "CreateSessionOptions");
    if (!st.ok()) return st;
    options.reset(raw_options);
    if (config.num_threads > 0) {
      st = model->check(api->SetIntraOpNumThreads(options.get(), config.num_threads), "SetIntraOpNumThreads");
      if (!st.ok()) return st;
    }
    // ONNX Runtime's intra-op threads spin (busy-wait) for a while after Run returns; here the rasterizer runs
    // next and needs those cores. Spinning inside a run (between the decoder's ~550 nodes) is kept.
    st = model->check(api->AddSessionConfigEntry(options.get(), "session.force_spinning_stop", "1"),
                      "session.force_spinning_stop");
    if (!st.ok()) return st;
    for (const auto& [dim, value] : config.static_dims) {
      st = model->check(api->AddFreeDimensionOverrideByName(options.get(), dim.c_str(), value),
                        "AddFreeDimensionOverrideByName " + dim);
      if (!st.ok()) return st;
    }
    return model->check(api->SetSessionGraphOptimizationLevel(options.get(), ORT_ENABLE_ALL),
                        "graph optimisation level");
  };
  s = cpu_options();
  if (!s.ok()) return s;

  model->provider_ = "CPUExecutionProvider";
  const bool host_device = !config.host_provider.name.empty();
  const bool cuda_possible = !host_device && (config.try_cuda || config.require_cuda) &&
                             (config.require_cuda || cuda_provider_present(&model->cuda_fallback_reason_));
  if (host_device) {
    // The CPU provider stays below it (ONNX Runtime appends it last) for the nodes the device provider does not take.
    s = append_host_provider(api, options.get(), config.host_provider);
    if (!s.ok()) return s;
    model->provider_ = config.host_provider.name;
    model->host_device_ = true;
  } else if (cuda_possible) {
    OrtStatus* cuda_status = nullptr;
    OrtCUDAProviderOptionsV2* cuda = nullptr;
    const auto pairs = cuda_provider_options(config);
    std::vector<const char*> keys, values;
    for (const auto& [key, value] : pairs) {
      keys.push_back(key.c_str());
      values.push_back(value.c_str());
    }
    cuda_status = api->CreateCUDAProviderOptions(&cuda);
    if (!cuda_status) cuda_status = api->UpdateCUDAProviderOptions(cuda, keys.data(), values.data(), keys.size());
    if (!cuda_status && config.cuda_stream)
      cuda_status = api->UpdateCUDAProviderOptionsWithValue(cuda, "user_compute_stream", config.cuda_stream);
    const bool graphs = config.cuda_graphs && config.cuda_stream;
    if (!cuda_status) {
      s = check_effective_cuda_options(api, cuda, pairs, config.cuda_stream != nullptr);
      if (!s.ok()) {
        api->ReleaseCUDAProviderOptions(cuda);
        return s;
      }
    }
    if (!cuda_status) cuda_status = api->SessionOptionsAppendExecutionProvider_CUDA_V2(options.get(), cuda);
    if (cuda) api->ReleaseCUDAProviderOptions(cuda);
    if (cuda_status) {
      model->cuda_fallback_reason_ = api->GetErrorMessage(cuda_status);
      api->ReleaseStatus(cuda_status);
      if (config.require_cuda)
        return Status(StatusCode::kUnavailable, "device CUDA was requested but ONNX Runtime cannot use CUDA: " +
                                                    model->cuda_fallback_reason_);
    } else {
      model->provider_ = "CUDAExecutionProvider";
      model->cuda_graphs_ = graphs;
    }
  }

  OrtSession* raw_session = nullptr;
  const std::filesystem::path model_path = platform::fs_path(path);  // ORTCHAR_T: wchar_t on Windows
  OrtStatus* created = api->CreateSession(model->env_.get(), model_path.c_str(), options.get(), &raw_session);
  if (created && host_device && api->GetErrorCode(created) != ORT_NO_SUCHFILE &&
      api->GetErrorCode(created) != ORT_INVALID_PROTOBUF) {
    // The provider, not the file (which the CPU provider would open): as Python's ExecutionProviderError. The C API
    // has no fallback to a CPU session of its own, so a session that exists runs on this provider.
    const std::string message = api->GetErrorMessage(created);
    api->ReleaseStatus(created);
    return Status(StatusCode::kUnavailable,
                  model->provider_ + " could not open " + file_name(path) + ": " + message);
  }
  s = model->check(created, "CreateSession");
  if (!s.ok() && model->on_cuda() && !config.require_cuda) {
    // The CUDA provider loaded but its session cannot start (no CUDA device, a driver too old for it): the
    // C API does not fall back by itself (the Python API does); device AUTO then runs on the CPU provider.
    model->cuda_fallback_reason_ = s.message();
    model->provider_ = "CPUExecutionProvider";
    model->cuda_graphs_ = false;
    s = cpu_options();
    if (!s.ok()) return s;
    raw_session = nullptr;
    s = model->check(api->CreateSession(model->env_.get(), model_path.c_str(), options.get(), &raw_session),
                     "CreateSession");
  }
  if (!s.ok()) return s;
  model->session_.reset(raw_session);

  OrtAllocator* allocator = nullptr;
  s = model->check(api->GetAllocatorWithDefaultOptions(&allocator), "GetAllocatorWithDefaultOptions");
  if (!s.ok()) return s;
  for (int pass = 0; pass < 2; ++pass) {
    size_t count = 0;
    s = model->check(pass == 0 ? api->SessionGetInputCount(raw_session, &count)
                               : api->SessionGetOutputCount(raw_session, &count), "tensor count");
    if (!s.ok()) return s;
    auto& infos = pass == 0 ? model->inputs_ : model->outputs_;
    for (size_t i = 0; i < count; ++i) {
      TensorInfo info;
      char* name = nullptr;
      s = model->check(pass == 0 ? api->SessionGetInputName(raw_session, i, allocator, &name)
                                 : api->SessionGetOutputName(raw_session, i, allocator, &name), "tensor name");
      if (!s.ok()) return s;
      info.name = name;
      if (OrtStatus* freed = api->AllocatorFree(allocator, name)) api->ReleaseStatus(freed);
      OrtTypeInfo* raw_type = nullptr;
      s = model->check(pass == 0 ? api->SessionGetInputTypeInfo(raw_session, i, &raw_type)
                                 : api->SessionGetOutputTypeInfo(raw_session, i, &raw_type), "tensor type");
      if (!s.ok()) return s;
      OrtPtr<OrtTypeInfo> type(raw_type);
      const OrtTensorTypeAndShapeInfo* tensor = nullptr;
      s = model->check(api->CastTypeInfoToTensorInfo(type.get(), &tensor), "tensor info");
      if (!s.ok()) return s;
      if (!tensor) return Status(StatusCode::kModelError, path + ": " + info.name + " is not a tensor");
      size_t dims = 0;
      s = model->check(api->GetDimensionsCount(tensor, &dims), "dimension count");
      if (!s.ok()) return s;
      info.shape.resize(dims);
      s = model->check(api->GetDimensions(tensor, info.shape.data(), dims), "dimensions");
      if (!s.ok()) return s;
      s = model->check(api->GetTensorElementType(tensor, &info.type), "element type");
      if (!s.ok()) return s;
      infos.push_back(info);
    }
  }

  OrtMemoryInfo* raw_memory = nullptr;
  s = model->check(api->CreateCpuMemoryInfo(OrtDeviceAllocator, OrtMemTypeDefault, &raw_memory), "memory info");
  if (!s.ok()) return s;
  model->cpu_memory_.reset(raw_memory);
  if (model->on_cuda()) {
    raw_memory = nullptr;
    s = model->check(api->CreateMemoryInfo("Cuda", OrtDeviceAllocator, config.cuda_device, OrtMemTypeDefault,
                                           &raw_memory),
                     "CUDA memory info");
    if (!s.ok()) return s;
    model->cuda_memory_.reset(raw_memory);
    if (config.cuda_stream) {
      OrtRunOptions* raw_run = nullptr;
      s = model->check(api->CreateRunOptions(&raw_run), "CreateRunOptions");
      if (!s.ok()) return s;
      model->run_options_.reset(raw_run);
      s = model->check(api->AddRunConfigEntry(raw_run, "disable_synchronize_execution_providers", "1"),
                       "run option disable_synchronize_execution_providers");
      if (!s.ok()) return s;
    }
  }
  OrtIoBinding* raw_binding = nullptr;
  s = model->check(api->CreateIoBinding(raw_session, &raw_binding), "CreateIoBinding");
  if (!s.ok()) return s;
  model->binding_.reset(raw_binding);
  *out = std::move(model);
  return Status::ok_status();
}

Status OrtModel::bind(bool input, const std::string& name, float* data, const std::vector<int64_t>& shape,
                      Memory memory) {
  const char* what = input ? "input" : "output";
  if (memory == Memory::kCuda && !cuda_memory_)
    return Status(StatusCode::kInternal, std::string("bind ") + what + " " + name +
                                             ": a CUDA buffer needs a session on the CUDA execution provider");
  if (memory == Memory::kHost && cuda_graphs_)
    return Status(StatusCode::kInternal, std::string("bind ") + what + " " + name +
                                             ": a CUDA graph reads and writes device buffers only");
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  OrtValue* raw = nullptr;
  const OrtMemoryInfo* where = memory == Memory::kCuda ? cuda_memory_.get() : cpu_memory_.get();
  Status s = check(api_->CreateTensorWithDataAsOrtValue(where, data, size_t(count) * sizeof(float), shape.data(),
                                                       shape.size(), ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &raw),
                   std::string(what) + " tensor " + name + " " + shape_text(shape));
  if (!s.ok()) return s;
  OrtPtr<OrtValue> value(raw);
  s = input ? check(api_->BindInput(binding_.get(), name.c_str(), raw), "BindInput " + name)
            : check(api_->BindOutput(binding_.get(), name.c_str(), raw), "BindOutput " + name);
  if (!s.ok()) return s;
  // The binding now refers to the new value; the one it replaced (same name) is released here.
  bound_values_[std::string(input ? "in:" : "out:") + name] = std::move(value);
  return Status::ok_status();
}

Status OrtModel::bind_input(const std::string& name, float* data, const std::vector<int64_t>& shape, Memory memory) {
  return bind(true, name, data, shape, memory);
}

Status OrtModel::bind_output(const std::string& name, float* data, const std::vector<int64_t>& shape, Memory memory) {
  return bind(false, name, data, shape, memory);
}

Status OrtModel::run(int graph_id) {
  OrtRunOptions* run_options = run_options_.get();
  if (cuda_graphs_ && graph_id != 0) {
    if (graph_id < 0) return Status(StatusCode::kInternal, "CUDA graph id " + std::to_string(graph_id) + " < 0");
    OrtPtr<OrtRunOptions>& slot = graph_run_options_[graph_id];
    if (!slot) {
      OrtRunOptions* raw = nullptr;
      Status s = check(api_->CreateRunOptions(&raw), "CreateRunOptions");
      if (!s.ok()) {
        graph_run_options_.erase(graph_id);
        return s;
      }
      OrtPtr<OrtRunOptions> created(raw);
      s = check(api_->AddRunConfigEntry(raw, "disable_synchronize_execution_providers", "1"),
                "run option disable_synchronize_execution_providers");
      if (s.ok())
        s = check(api_->AddRunConfigEntry(raw, "gpu_graph_id", std::to_string(graph_id).c_str()),
                  "run option gpu_graph_id");
      if (!s.ok()) {
        graph_run_options_.erase(graph_id);
        return s;
      }
      slot = std::move(created);
    }
    run_options = slot.get();
  }
  // A run a GPU / NPU provider fails names it (Python: ExecutionProviderError "... failed running FILE: ...").
  auto device_check = [&](OrtStatus* status, const std::string& what) -> Status {
    if (!status || !host_device_) return check(status, what);
    const std::string message = api_->GetErrorMessage(status);
    api_->ReleaseStatus(status);
    return Status(StatusCode::kDeviceError, provider_ + " failed running " + file_name(path_) + " (" + what + "): " +
                                                message);
  };
  // A CUDA graph reads its inputs from the device buffers it was captured with: nothing to copy at bind time.
  if ((on_cuda() && !cuda_graphs_) || host_device_) {
    // ONNX Runtime copies an input to the device its consumers run on when it is *bound*
    // (IOBinding::BindInput → CopyOneInputAcrossDevices), not when the graph runs: a host buffer bound to
    // a CUDA (or any device provider's) session would be read as it was at bind time forever. Binding again
    // before each run copies what the buffers hold now (a no-op for device buffers whose consumers are on the device).
    for (const auto& [key, value] : bound_values_) {
      if (key.rfind("in:", 0) != 0) continue;
      Status s = device_check(api_->BindInput(binding_.get(), key.c_str() + 3, value.get()),
                              "BindInput " + key.substr(3));
      if (!s.ok()) return s;
    }
  }
  return device_check(api_->RunWithBinding(session_.get(), run_options, binding_.get()), "Run");
}

}  // namespace runtime
}  // namespace flexavatar
