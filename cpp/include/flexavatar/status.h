// Error reporting of the native core: functions return a Status instead of throwing or aborting,
// so that bad input at the boundary (Python, C++ apps, the CUDA library's C ABI) stays recoverable.
#pragma once

#include <string>
#include <utility>

namespace flexavatar {

enum class StatusCode : int {
  kOk = 0,
  kNullPointer = 1,      // a required buffer pointer is null
  kInvalidSize = 2,      // a size/count is negative, zero where it must not be, or too large
  kInvalidArgument = 3,  // any other bad argument (mismatched counts, bad K, ...)
  kUnavailable = 4,      // the CUDA library or a CUDA device is not present
  kDeviceError = 5,      // a CUDA call failed
  kOutOfMemory = 6,
  // The embedding runtime's codes (cpp/runtime; the C API's flexavatar_status has the same values).
  kInvalidHandle = 7,       // a null, destroyed or foreign handle
  kBundleInvalid = 8,       // manifest.json missing, not JSON, wrong schema/version or a bad field
  kBundleFileMissing = 9,   // a file the manifest lists is not there
  kBundleHashMismatch = 10, // a bundle file's size or sha256 differs from the manifest
  kModelError = 11,         // ONNX Runtime failed to load or run a model
  kNoAvatarCode = 12,       // decode/render before an avatar code was set
  kIoError = 13,            // reading a file failed
  kInternal = 14,           // a bug (an unexpected exception caught at the C boundary)
  kNoFrame = 15,            // render_view before a decode/render of the current avatar code
};

const char* status_code_name(StatusCode code);

class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status ok_status() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

}  // namespace flexavatar
