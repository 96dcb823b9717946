# Cross-compiling the native core and the C++ runtime for 64-bit Windows with MinGW-w64 from a Debian / Ubuntu
# host (the tests run under Wine: cpp/tests/cross/run_cross.sh windows):
#   apt-get install g++-mingw-w64-x86-64-posix                 (+ wine64 to run the tests)
#   cmake -S cpp -B build/windows -DCMAKE_TOOLCHAIN_FILE=cpp/cmake/toolchains/x86_64-w64-mingw32.cmake \
#         -DONNXRUNTIME_LIBRARY=/path/to/onnxruntime.dll -Dnlohmann_json_DIR=...
# ONNX Runtime's Windows DLL (a win_amd64 onnxruntime wheel's onnxruntime/capi/ holds one) links directly; the
# C API is plain C, so a MinGW program uses the MSVC-built DLL. The posix thread model gives std::thread and
# std::mutex. FLEXAVATAR_CROSS_EMULATOR (a ;-list, e.g. cpp/tests/cross/wine_run.sh) runs the tests under ctest.
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR AMD64)
set(_flexavatar_triple x86_64-w64-mingw32)
set(CMAKE_C_COMPILER ${_flexavatar_triple}-gcc-posix)
set(CMAKE_CXX_COMPILER ${_flexavatar_triple}-g++-posix)
set(CMAKE_RC_COMPILER ${_flexavatar_triple}-windres)
set(CMAKE_FIND_ROOT_PATH /usr/${_flexavatar_triple})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
# The GCC runtime (libstdc++, libgcc, winpthread) linked in: the programs and DLLs need no MinGW DLLs beside them.
set(CMAKE_EXE_LINKER_FLAGS_INIT "-static-libgcc -static-libstdc++ -Wl,-Bstatic,--whole-archive -lwinpthread -Wl,--no-whole-archive,-Bdynamic")
set(CMAKE_SHARED_LINKER_FLAGS_INIT "-static-libgcc -static-libstdc++ -Wl,-Bstatic,--whole-archive -lwinpthread -Wl,--no-whole-archive,-Bdynamic")
if(FLEXAVATAR_CROSS_EMULATOR)
  set(CMAKE_CROSSCOMPILING_EMULATOR "${FLEXAVATAR_CROSS_EMULATOR}")
endif()
