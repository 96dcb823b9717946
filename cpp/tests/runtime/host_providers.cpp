// Prints the C++ runtime's GPU / NPU execution providers in order, each with the options it gets for device indices
// 0 and 1, one line each: "DEVICE INDEX PROVIDER key=value;key=value" (or "refused" for an index the provider does
// not take). tests/test_cpp_runtime.py compares them with the Python runtime's (runtime/engines.py
// ORT_HOST_PROVIDERS through ort_host_provider): the two lists must not drift apart.
#include <cstdio>
#include <string>
#include <utility>

#include "ort_session.h"

using flexavatar::runtime::HostDevice;
using flexavatar::runtime::HostProvider;

int main() {
  for (const auto& [device, label] : {std::make_pair(HostDevice::kGpu, "gpu"), std::make_pair(HostDevice::kNpu, "npu")}) {
    for (const std::string& name : flexavatar::runtime::host_provider_names(device)) {
      for (int index : {0, 1}) {
        HostProvider chosen;
        const flexavatar::Status s =
            flexavatar::runtime::choose_host_provider(device, index, {name, "CPUExecutionProvider"}, "test", &chosen);
        std::string options;
        for (const auto& [key, value] : chosen.options) options += (options.empty() ? "" : ";") + key + "=" + value;
        std::printf("%s %d %s %s\n", label, index, name.c_str(), s.ok() ? options.c_str() : "refused");
      }
    }
  }
  return 0;
}
