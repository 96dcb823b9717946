#include "ort_session.h"

#include <dlfcn.h>
#include <sys/stat.h>

#include <mutex>

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
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&OrtGetApiBase), &info) == 0 || !info.dli_fname) return true;  // let ORT decide
  std::string dir = info.dli_fname;
  const size_t slash = dir.find_last_of('/');
  dir = slash == std::string::npos ? std::string(".") : dir.substr(0, slash);
  const std::string bridge = dir + "/libonnxruntime_providers_cuda.so";
  struct stat st;
  if (::stat(bridge.c_str(), &st) == 0) return true;
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

}  // namespace

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
    return model->check(api->SetSessionGraphOptimizationLevel(options.get(), ORT_ENABLE_ALL),
                        "graph optimisation level");
  };
  s = cpu_options();
  if (!s.ok()) return s;

  model->provider_ = "CPUExecutionProvider";
  const bool cuda_possible = (config.try_cuda || config.require_cuda) &&
                             (config.require_cuda || cuda_provider_present(&model->cuda_fallback_reason_));
  if (cuda_possible) {
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
  s = model->check(api->CreateSession(model->env_.get(), path.c_str(), options.get(), &raw_session), "CreateSession");
  if (!s.ok() && model->on_cuda() && !config.require_cuda) {
    // The CUDA provider loaded but its session cannot start (no CUDA device, a driver too old for it): the
    // C API does not fall back by itself (the Python API does); device AUTO then runs on the CPU provider.
    model->cuda_fallback_reason_ = s.message();
    model->provider_ = "CPUExecutionProvider";
    model->cuda_graphs_ = false;
    s = cpu_options();
    if (!s.ok()) return s;
    raw_session = nullptr;
    s = model->check(api->CreateSession(model->env_.get(), path.c_str(), options.get(), &raw_session),
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
  // A CUDA graph reads its inputs from the device buffers it was captured with: nothing to copy at bind time.
  if (on_cuda() && !cuda_graphs_) {
    // ONNX Runtime copies an input to the device its consumers run on when it is *bound*
    // (IOBinding::BindInput → CopyOneInputAcrossDevices), not when the graph runs: a host buffer bound to
    // a CUDA session would be read as it was at bind time forever. Binding again before each run copies
    // what the buffers hold now (a no-op for device buffers whose consumers are on the device).
    for (const auto& [key, value] : bound_values_) {
      if (key.rfind("in:", 0) != 0) continue;
      Status s = check(api_->BindInput(binding_.get(), key.c_str() + 3, value.get()), "BindInput " + key.substr(3));
      if (!s.ok()) return s;
    }
  }
  return check(api_->RunWithBinding(session_.get(), run_options, binding_.get()), "Run");
}

}  // namespace runtime
}  // namespace flexavatar
