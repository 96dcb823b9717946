// Test tool driven by tests/test_cpp_runtime.py: the C++ runtime's numerics check (flexavatar_runtime_check_numerics,
// through the C++ RAII wrapper) on a bundle, printed as one JSON line for comparison with the Python runtime's.
//
//   runtime_check BUNDLE [fp32|fp16|int8 [auto|on|off]]     (auto|on|off: options.fused_decoders, default auto)
#include <cmath>
#include <cstdio>
#include <string>

#include "flexavatar/flexavatar.hpp"
#include "raw_files.h"

using raw_files::precision_option;

int main(int argc, char** argv) {
  const std::string precision = argc >= 3 ? argv[2] : "fp32", fused = argc >= 4 ? argv[3] : "auto";
  if (argc < 2 || argc > 4 || precision_option(precision) < 0 ||
      (fused != "auto" && fused != "on" && fused != "off")) {
    std::fprintf(stderr, "usage: runtime_check BUNDLE [fp32|fp16|int8 [auto|on|off]]\n"
                         "  auto|on|off: options.fused_decoders (default auto)\n");
    return 2;
  }
  try {
    flexavatar_runtime_options options = flexavatar::default_options();
    options.device = FLEXAVATAR_DEVICE_CPU;
    options.precision = precision_option(precision);
    options.fused_decoders = fused == "on"    ? FLEXAVATAR_FUSED_DECODERS_ON
                             : fused == "off" ? FLEXAVATAR_FUSED_DECODERS_OFF
                                              : FLEXAVATAR_FUSED_DECODERS_AUTO;
    flexavatar::Runtime rt(argv[1], &options);
    const flexavatar_numerics n = rt.check_numerics();
    auto number = [](double v) { return std::isfinite(v) ? std::to_string(v) : std::string("null"); };
    std::printf("{\"decoder_file\": \"%s\", ", rt.info().decoder_file);
    std::printf("\"passed\": %s, \"num_expressions\": %d, \"psnr_db\": %s, \"target_db\": %s, \"max_abs_error\": {",
                n.passed ? "true" : "false", n.num_expressions, number(n.psnr_db).c_str(), number(n.target_db).c_str());
    const char* names[5] = {"means", "quats", "scales", "opacities", "sh0"};
    for (int i = 0; i < 5; ++i) std::printf("%s\"%s\": %.9g", i ? ", " : "", names[i], n.max_abs_error[i]);
    std::printf("}, \"encoder_checked\": %s, \"code_max_abs_error\": %.9g, \"encoder_psnr_db\": %s}\n",
                n.encoder_checked ? "true" : "false", n.code_max_abs_error, number(n.encoder_psnr_db).c_str());
    return 0;
  } catch (const flexavatar::Error& e) {
    std::fprintf(stderr, "runtime_check: %s\n", e.what());
    return 1;
  }
}
