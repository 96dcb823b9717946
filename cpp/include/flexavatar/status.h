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
