#include <mutex>
#include <map>
#include <string>
#include <vector>

#include "flexavatar/cuda_rasterizer.h"
#include "platform.h"

namespace flexavatar {

const char* CudaLibrary::file_name() {
#if defined(_WIN32)
  return "flexavatar_cuda.dll";
#elif defined(__APPLE__)
  return "libflexavatar_cuda.dylib";
#else
  return "libflexavatar_cuda.so";
#endif
}

Status status_from_c(int code, const char* message) {
  if (code == 0) return Status::ok_status();
  return Status(static_cast<StatusCode>(code), message ? message : "");
}

int CudaLibrary::device_count(std::string* why) const {
  int count = 0;
  char err[256] = {0};
  const int code = api_->device_count(&count, err, sizeof(err));
  if (why) *why = err;
  return code != 0 ? 0 : count;
}

Status CudaLibrary::load(const std::string& path, std::shared_ptr<CudaLibrary>* out) {
  static std::mutex mutex;
  static std::map<std::string, std::shared_ptr<CudaLibrary>> loaded;
  if (!out) return Status(StatusCode::kNullPointer, "CudaLibrary::load: out is null");
  std::lock_guard<std::mutex> lock(mutex);
  auto it = loaded.find(path);
  if (it != loaded.end()) {
    *out = it->second;
    return Status::ok_status();
  }
  std::vector<std::string> candidates;
  if (!path.empty()) {
    candidates.push_back(path);
  } else {
    // beside the binary holding this code first (the wheel's extension module, libflexavatar_runtime)
    const std::string dir = platform::module_directory(reinterpret_cast<const void*>(&CudaLibrary::file_name));
    if (!dir.empty()) candidates.push_back(dir + file_name());
    candidates.push_back(file_name());  // the loader's search path (LD_LIBRARY_PATH, rpath; Windows: PATH)
  }
  std::string errors;
  for (const auto& candidate : candidates) {
    platform::SharedLibrary library;
    std::string why;
    if (!library.open(candidate, &why)) {
      errors += "\n  " + candidate + ": " + why;
      continue;
    }
    auto entry = reinterpret_cast<FlexavatarCudaEntryFn>(library.symbol(FLEXAVATAR_CUDA_ENTRY_SYMBOL));
    const FlexavatarCudaApi* api = entry ? entry() : nullptr;
    if (!api || api->abi_version != FLEXAVATAR_CUDA_ABI_VERSION) {
      errors += "\n  " + candidate + ": not a flexavatar CUDA library of ABI version " +
                std::to_string(FLEXAVATAR_CUDA_ABI_VERSION);
      library.close();
      continue;
    }
    std::shared_ptr<CudaLibrary> lib(new CudaLibrary(library.handle, api, candidate));
    loaded[path] = lib;
    *out = lib;
    return Status::ok_status();
  }
  return Status(StatusCode::kUnavailable,
                std::string("the CUDA rasterizer library (") + file_name() +
                    ") was not found or could not be loaded; build with a CUDA toolkit (FLEXAVATAR_CUDA=ON). Tried:" +
                    errors);
}

}  // namespace flexavatar
