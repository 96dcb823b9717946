// Run-time access to the CUDA rasterizer library. The core never links CUDA: it dlopens
// libflexavatar_cuda (next to the core's own binary, or by the path you give) on first use,
// so the same build runs on machines without CUDA and reports why CUDA is unavailable.
#pragma once

#include <memory>
#include <string>

#include "flexavatar/cuda_api.h"
#include "flexavatar/status.h"

namespace flexavatar {

class CudaLibrary {
 public:
  // Loads (once per process and path) and returns the library. An empty path searches next to the
  // binary that contains the core, then the dynamic loader's path.
  static Status load(const std::string& path, std::shared_ptr<CudaLibrary>* out);
  // Default file name of the CUDA library on this platform.
  static const char* file_name();

  const FlexavatarCudaApi& api() const { return *api_; }
  const std::string& path() const { return path_; }
  // Usable devices; with none, *why (if given) holds the driver's reason when it gave one.
  int device_count(std::string* why = nullptr) const;

 private:
  CudaLibrary(void* handle, const FlexavatarCudaApi* api, std::string path)
      : handle_(handle), api_(api), path_(std::move(path)) {}
  void* handle_;  // never closed: unloading a CUDA runtime mid-process is unsafe
  const FlexavatarCudaApi* api_;
  std::string path_;
};

// Turns a code/message pair returned by the C ABI into a Status.
Status status_from_c(int code, const char* message);

}  // namespace flexavatar
