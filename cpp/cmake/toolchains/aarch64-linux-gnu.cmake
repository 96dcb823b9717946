# Cross-compiling the native core and the C++ runtime for 64-bit ARM Linux (Jetson, Raspberry Pi 4/5 with a
# 64-bit OS, Graviton, ...) from an x86-64 Debian / Ubuntu host:
#   apt-get install g++-aarch64-linux-gnu            (+ qemu-user to run the tests: cpp/tests/cross/run_cross.sh aarch64)
#   cmake -S cpp -B build/aarch64 -DCMAKE_TOOLCHAIN_FILE=cpp/cmake/toolchains/aarch64-linux-gnu.cmake \
#         -DONNXRUNTIME_LIBRARY=/path/to/aarch64/libonnxruntime.so.1.x -Dnlohmann_json_DIR=...
# The ONNX Runtime library must be the target's (an aarch64 onnxruntime wheel's onnxruntime/capi/ holds one).
# FLEXAVATAR_CROSS_EMULATOR (a ;-list, e.g. cpp/tests/cross/qemu_aarch64.sh) runs the tests under ctest.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(_flexavatar_triple aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${_flexavatar_triple}-gcc)
set(CMAKE_CXX_COMPILER ${_flexavatar_triple}-g++)
set(CMAKE_FIND_ROOT_PATH /usr/${_flexavatar_triple})
# Programs from the host; libraries and headers of the target only (never the host's x86-64 ones); packages
# (CMake config files such as nlohmann_json's, header-only) where they are given.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
if(FLEXAVATAR_CROSS_EMULATOR)
  set(CMAKE_CROSSCOMPILING_EMULATOR "${FLEXAVATAR_CROSS_EMULATOR}")
endif()
