// Build configuration of the native core, queryable at run time.
#pragma once

namespace flexavatar {

struct BuildInfo {
  const char* version;       // package version, e.g. "0.1.0"
  const char* compiler;      // C++ compiler id and version
  bool with_cuda;            // CUDA rasterizer library built alongside
};

BuildInfo build_info();

}  // namespace flexavatar
