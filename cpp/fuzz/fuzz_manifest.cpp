// libFuzzer target: the bundle manifest parser (runtime/manifest.cpp) on arbitrary bytes. Any input must
// give OK or a kBundleInvalid status with a message; crashes, sanitizer reports and leaks are bugs.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  flexavatar::runtime::Manifest manifest;
  const flexavatar::Status s =
      flexavatar::runtime::parse_manifest(reinterpret_cast<const char*>(data), size, &manifest);
  if (!s.ok() && (s.code() != flexavatar::StatusCode::kBundleInvalid || s.message().empty())) std::abort();
  if (s.ok()) {
    // A manifest that parses is internally consistent: every artifact has its model file first.
    for (const auto& a : manifest.artifacts) {
      if (a.files.empty()) std::abort();
    }
    (void)manifest.files();
  }
  return 0;
}
