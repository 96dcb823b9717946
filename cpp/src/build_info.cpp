#include "flexavatar/build_info.h"

namespace flexavatar {

BuildInfo build_info() {
  return BuildInfo{FLEXAVATAR_VERSION, FLEXAVATAR_CXX_COMPILER, FLEXAVATAR_WITH_CUDA != 0};
}

}  // namespace flexavatar
