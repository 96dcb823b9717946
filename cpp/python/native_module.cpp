// flexavatar._native: the pybind11 face of the native core.
#include <pybind11/pybind11.h>

#include "flexavatar/build_info.h"

namespace py = pybind11;

PYBIND11_MODULE(_native, m) {
  m.doc() = "flexavatar native core (C++ rasterizers and runtime)";
  m.def("build_info", [] {
    const auto info = flexavatar::build_info();
    py::dict d;
    d["version"] = info.version;
    d["compiler"] = info.compiler;
    d["cuda"] = info.with_cuda;
    return d;
  }, "Build configuration of the native core: version, compiler, CUDA on/off.");
}
