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
    case StatusCode::kInvalidHandle: return "invalid handle";
    case StatusCode::kBundleInvalid: return "invalid bundle";
    case StatusCode::kBundleFileMissing: return "bundle file missing";
    case StatusCode::kBundleHashMismatch: return "bundle hash mismatch";
    case StatusCode::kModelError: return "model error";
    case StatusCode::kNoAvatarCode: return "no avatar code";
    case StatusCode::kIoError: return "i/o error";
    case StatusCode::kInternal: return "internal error";
    case StatusCode::kNoFrame: return "no frame";
  }
  return "unknown";
}

}  // namespace flexavatar
