// A small RAII layer over ONNX Runtime's C API (onnxruntime_c_api.h): the C API is versioned and
// ABI-stable (an older header works with a newer library) and reports errors as values, which suits a
// runtime whose own interface must not throw.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#if defined(_WIN32) && !defined(_MSC_VER)
// MinGW: ONNX Runtime's header writes the calling convention and one SAL annotation the MSVC way on Windows.
#ifndef _stdcall
#define _stdcall __stdcall
#endif
#ifndef _Return_type_success_
#define _Return_type_success_(expr)
#endif
#endif
#include <onnxruntime_c_api.h>

#include "flexavatar/status.h"

namespace flexavatar {
namespace runtime {

// The ORT API table for this header's ORT_API_VERSION, or kUnavailable if the library is older.
Status ort_api(const OrtApi** out);

struct OrtDeleter {
  void operator()(OrtEnv* p) const;
  void operator()(OrtSession* p) const;
  void operator()(OrtSessionOptions* p) const;
  void operator()(OrtValue* p) const;
  void operator()(OrtIoBinding* p) const;
  void operator()(OrtMemoryInfo* p) const;
  void operator()(OrtTypeInfo* p) const;
  void operator()(OrtRunOptions* p) const;
};
template <class T>
using OrtPtr = std::unique_ptr<T, OrtDeleter>;

struct TensorInfo {
  std::string name;
  std::vector<int64_t> shape;  // -1 = dynamic
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
};

// ---- GPUs and NPUs without CUDA: ONNX Runtime's providers that take and give host arrays ----
// As the Python runtime (runtime/engines.py ORT_HOST_PROVIDERS): ONNX Runtime copies the inputs to the device and
// the outputs back inside each run, and the CPU provider stays below for the nodes the device provider does not take.
enum class HostDevice { kGpu, kNpu };

// One execution provider and the options that point it at its device.
struct HostProvider {
  std::string name;  // as GetAvailableProviders names it, e.g. "DmlExecutionProvider"; "" = none
  std::vector<std::pair<std::string, std::string>> options;
};

// The providers that may run `device`, preferred first: Python's ORT_HOST_PROVIDERS[device], all of it, in its order.
std::vector<std::string> host_provider_names(HostDevice device);

// The first of host_provider_names(device) in `available` (the loaded library's GetAvailableProviders), with its
// options for device `device_index`: "device_id" for DirectML, MIGraphX and ROCm, OpenVINO's device_type "GPU.N" /
// "NPU.N". kUnavailable when `available` has none of them (naming what was looked for, what there is, and the ONNX
// Runtime builds that have them; `version`: the library's, for the message); kInvalidArgument for an index other than
// 0 when that provider picks its device itself (CoreML, WebGPU, QNN, VitisAI). Pure: unit-tested with made-up lists.
Status choose_host_provider(HostDevice device, int device_index, const std::vector<std::string>& available,
                            const std::string& version, HostProvider* out);

// The execution providers the loaded ONNX Runtime library has (GetAvailableProviders), and its version.
Status ort_available_providers(std::vector<std::string>* out, std::string* version);

struct SessionConfig {
  int num_threads = 0;     // 0 = ORT default (all cores)
  bool try_cuda = false;   // append the CUDA execution provider first
  bool require_cuda = false;
  int cuda_device = 0;
  // CUDA provider only: run the graph on this cudaStream_t (the rasterizer's), and let run() return
  // without waiting for it (the rasterizer's work is queued behind it on the same stream).
  void* cuda_stream = nullptr;
  // CUDA provider with cuda_stream only: capture the graph on its first runs and replay it after (ORT
  // enable_cuda_graph). Every input and output must then be a device buffer bound once, at a fixed address.
  bool cuda_graphs = false;
  // The model file's precision ("fp32", "fp16" or "int8"): picks the cuDNN convolution search
  // (cuda_provider_options). int8 files never get here with CUDA: Runtime::create keeps them on the CPU provider.
  std::string precision = "fp32";
  // A GPU / NPU provider (choose_host_provider) in place of CUDA, with the CPU provider below it. Never a silent CPU
  // session: a provider that cannot be added, or whose session cannot be created, is kUnavailable naming it; a run it
  // fails is kDeviceError naming it.
  HostProvider host_provider;
  // Dynamic dims pinned by name (ONNX Runtime's free dimension overrides), e.g. {"E", 1}: with a GPU / NPU provider
  // the runtime pins the leading dim of each graph's inputs to 1 (static_dims_of), as the Python runtime does (NPU
  // compilers take static shapes only; DirectML and CoreML plan static graphs better).
  std::vector<std::pair<std::string, int64_t>> static_dims;
};

// The CUDA provider's string options for `config`, as (key, value) pairs. They go to ONNX Runtime in ONE
// UpdateCUDAProviderOptions call: each call recreates the options from the defaults with only the keys it is
// given, so a second call would silently undo the first (it did: a later enable_cuda_graph call turned TF32
// back on and dropped the user stream, and the CUDA-graph decoder raced the rasterizer on its own stream).
// The stream (a pointer) is set afterwards with UpdateCUDAProviderOptionsWithValue, which changes one key.
std::vector<std::pair<std::string, std::string>> cuda_provider_options(const SessionConfig& config);

// "" when the options ONNX Runtime reports (GetCUDAProviderOptionsAsString: "key=value;...") agree with `wanted`
// on the integer and boolean keys (their text form is unambiguous; keys it does not report are not judged) and
// on the user stream; else each key that differs and how ("; "-separated).
std::string cuda_options_mismatch(const std::string& effective_text,
                                  const std::vector<std::pair<std::string, std::string>>& wanted, bool user_stream);

// Where a bound buffer lives: host memory, or CUDA device memory on the session's device.
enum class Memory { kHost, kCuda };

// One model session with fixed, pre-bound float32 input/output buffers (IO binding): run() only
// executes the graph, it allocates nothing of its own per call.
class OrtModel {
 public:
  static Status open(const std::string& path, const SessionConfig& config, std::unique_ptr<OrtModel>* out);
  ~OrtModel();

  const std::vector<TensorInfo>& inputs() const { return inputs_; }
  const std::vector<TensorInfo>& outputs() const { return outputs_; }
  const std::string& provider() const { return provider_; }
  const std::string& cuda_fallback_reason() const { return cuda_fallback_reason_; }
  bool on_cuda() const { return provider_ == "CUDAExecutionProvider"; }
  bool cuda_graphs() const { return cuda_graphs_; }

  // Binds caller-owned float32 buffers (they must outlive the model or the next bind of the same name,
  // which replaces the binding). Device buffers need the CUDA provider. Each run() reads what the input
  // buffers hold then (on the CUDA provider it binds them again: ONNX Runtime copies inputs at bind time).
  Status bind_input(const std::string& name, float* data, const std::vector<int64_t>& shape,
                    Memory memory = Memory::kHost);
  Status bind_output(const std::string& name, float* data, const std::vector<int64_t>& shape,
                     Memory memory = Memory::kHost);
  // graph_id (CUDA graphs only): ONNX Runtime captures one graph per id, on the id's first runs, over the
  // buffers bound then; later runs with that id replay it and must find the same buffer addresses bound.
  Status run(int graph_id = 0);

 private:
  OrtModel() = default;
  Status check(OrtStatus* status, const std::string& what) const;
  const OrtApi* api_ = nullptr;
  std::shared_ptr<OrtEnv> env_;
  OrtPtr<OrtSession> session_;
  OrtPtr<OrtIoBinding> binding_;
  Status bind(bool input, const std::string& name, float* data, const std::vector<int64_t>& shape, Memory memory);
  OrtPtr<OrtMemoryInfo> cpu_memory_, cuda_memory_;
  OrtPtr<OrtRunOptions> run_options_;  // set when run() must not wait for the CUDA stream
  std::map<int, OrtPtr<OrtRunOptions>> graph_run_options_;  // CUDA graph ids other than 0
  std::map<std::string, OrtPtr<OrtValue>> bound_values_;  // "in:" / "out:" + name
  std::vector<TensorInfo> inputs_, outputs_;
  std::string path_, provider_, cuda_fallback_reason_;
  bool cuda_graphs_ = false;
  bool host_device_ = false;  // on a GPU / NPU provider (SessionConfig::host_provider)
};

}  // namespace runtime
}  // namespace flexavatar
