#include <mutex>
#include <map>
#include <string>
#include <vector>

#include "flexavatar/cuda_rasterizer.h"

#if defined(_WIN32)
#define FLEXAVATAR_HAS_DLOPEN 0
#else
#define FLEXAVATAR_HAS_DLOPEN 1
#include <dlfcn.h>
#endif

namespace flexavatar {
namespace {

#if FLEXAVATAR_HAS_DLOPEN
// Directory of the binary (shared library, Python extension or executable) holding this code.
std::string own_directory() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&own_directory), &info) == 0 || !info.dli_fname) return {};
  const std::string file = info.dli_fname;
  const auto slash = file.find_last_of('/');
  return slash == std::string::npos ? std::string() : file.substr(0, slash + 1);
}
#endif

}  // namespace

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
#if !FLEXAVATAR_HAS_DLOPEN
  return Status(StatusCode::kUnavailable, "the CUDA rasterizer is only loadable on POSIX systems in this build");
#else
  std::vector<std::string> candidates;
  if (!path.empty()) {
    candidates.push_back(path);
  } else {
    const std::string dir = own_directory();
    if (!dir.empty()) candidates.push_back(dir + file_name());
    candidates.push_back(file_name());  // LD_LIBRARY_PATH / rpath
  }
  std::string errors;
  for (const auto& candidate : candidates) {
    void* handle = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      const char* e = dlerror();
      errors += "\n  " + candidate + ": " + (e ? e : "not loadable");
      continue;
    }
    auto entry = reinterpret_cast<FlexavatarCudaEntryFn>(dlsym(handle, FLEXAVATAR_CUDA_ENTRY_SYMBOL));
    const FlexavatarCudaApi* api = entry ? entry() : nullptr;
    if (!api || api->abi_version != FLEXAVATAR_CUDA_ABI_VERSION) {
      errors += "\n  " + candidate + ": not a flexavatar CUDA library of ABI version " +
                std::to_string(FLEXAVATAR_CUDA_ABI_VERSION);
      dlclose(handle);
      continue;
    }
    std::shared_ptr<CudaLibrary> lib(new CudaLibrary(handle, api, candidate));
    loaded[path] = lib;
    *out = lib;
    return Status::ok_status();
  }
  return Status(StatusCode::kUnavailable,
                std::string("the CUDA rasterizer library (") + file_name() +
                    ") was not found or could not be loaded; build with a CUDA toolkit (FLEXAVATAR_CUDA=ON). Tried:" +
                    errors);
#endif
}

}  // namespace flexavatar
