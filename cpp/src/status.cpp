#include "flexavatar/status.h"

namespace flexavatar {

const char* status_code_name(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "ok";
    case StatusCode::kNullPointer: return "null pointer";
    case StatusCode::kInvalidSize: return "invalid size";
    case StatusCode::kInvalidArgument: return "invalid argument";
    case StatusCode::kUnavailable: return "unavailable";
    case StatusCode::kDeviceError: return "device error";
    case StatusCode::kOutOfMemory: return "out of memory";
  }
  return "unknown";
}

}  // namespace flexavatar
