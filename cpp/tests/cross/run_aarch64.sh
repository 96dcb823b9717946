#!/usr/bin/env bash
# The native core and the C++ runtime cross-built for aarch64 Linux and their ctest run under qemu-user: the
# rasterizer's unit tests, the runtime's unit tests on ONNX Runtime's own aarch64 library (NEON kernels), the
# installed CMake package and the example. tests/test_cross_aarch64.py runs the aarch64 runtime on an exported
# bundle against PyTorch's numbers.
#
#   bash cpp/tests/cross/run_aarch64.sh [--build-only]      # build dir: build/cross-aarch64
#
# Needs (Debian / Ubuntu): g++-aarch64-linux-gnu qemu-user nlohmann-json3-dev, pip (it downloads the newest
# aarch64 onnxruntime wheel for its library: ONNXRUNTIME_AARCH64_WHEEL=FILE uses a given one), and root or
# CAP_SYS_ADMIN for qemu_aarch64.sh's mount namespace.
set -euo pipefail
BUILD_ONLY=0
case ${1:-} in
  --build-only) BUILD_ONLY=1 ;;
  "") ;;
  *) echo "usage: run_aarch64.sh [--build-only]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/../../.."
ROOT=${FLEXAVATAR_CTEST_BUILD_ROOT:-build}
WORK=$ROOT/cross-aarch64
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
missing=()
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
[ -f /usr/include/nlohmann/json.hpp ] || missing+=(nlohmann-json3-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "run_aarch64.sh: missing ${missing[*]} (apt-get install ${missing[*]})" >&2
  exit 3
fi

# ONNX Runtime for aarch64: the library inside its Linux wheel (the C API is the same on every platform).
ORT_DIR=$WORK/onnxruntime
if ! ls "$ORT_DIR"/onnxruntime/capi/libonnxruntime.so.* >/dev/null 2>&1; then
  rm -rf "$ORT_DIR" && mkdir -p "$ORT_DIR/wheel"
  wheel=${ONNXRUNTIME_AARCH64_WHEEL:-}
  if [ -z "$wheel" ]; then
    echo "== [aarch64] downloading the onnxruntime wheel for manylinux aarch64 (its libonnxruntime.so)"
    python3 -m pip download -q --no-deps --only-binary=:all: --dest "$ORT_DIR/wheel" \
      --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 --platform manylinux2014_aarch64 \
      --python-version "$(python3 -c 'import sys; print("%d%d" % sys.version_info[:2])')" "onnxruntime>=1.23" 2>&1 |
      grep -v "^WARNING: Location" || true
    wheel=$(ls "$ORT_DIR"/wheel/onnxruntime-*.whl 2>/dev/null | head -n 1)
    [ -n "$wheel" ] || { echo "run_aarch64.sh: could not download an aarch64 onnxruntime wheel" >&2; exit 1; }
  fi
  python3 -m zipfile -e "$wheel" "$ORT_DIR"
fi
ORT_LIB=$(ls "$ORT_DIR"/onnxruntime/capi/libonnxruntime.so.* | sort | tail -n 1)

# nlohmann_json is header-only, but its CMake package points at /usr/include, where the host's (x86-64) C
# headers are too: a private copy keeps them out of the cross build's include path.
JSON=$WORK/nlohmann_json
if [ ! -f "$JSON/include/nlohmann/json.hpp" ]; then
  json_cmake=$(dirname "$(ls /usr/share/cmake/nlohmann_json/nlohmann_jsonConfig.cmake \
    /usr/lib/cmake/nlohmann_json/nlohmann_jsonConfig.cmake 2>/dev/null | head -n 1)")
  mkdir -p "$JSON/include" "$JSON/share/cmake"
  cp -r /usr/include/nlohmann "$JSON/include/"
  cp -r "$json_cmake" "$JSON/share/cmake/nlohmann_json"
fi

GENERATOR=()
command -v ninja >/dev/null 2>&1 && GENERATOR=(-G Ninja)
echo "== [aarch64] configure + build (ONNX Runtime $(basename "$ORT_LIB"))"
cmake -S cpp -B "$WORK/build" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$PWD/cpp/cmake/toolchains/aarch64-linux-gnu.cmake" \
  -DFLEXAVATAR_CROSS_EMULATOR="$PWD/cpp/tests/cross/qemu_aarch64.sh" \
  -DFLEXAVATAR_CUDA=OFF -DFLEXAVATAR_BUILD_TESTS=ON -DFLEXAVATAR_BUILD_PYTHON=OFF -DFLEXAVATAR_RUNTIME=ON \
  -DONNXRUNTIME_LIBRARY="$ORT_LIB" -Dnlohmann_json_DIR="$JSON/share/cmake/nlohmann_json" \
  >"$WORK/configure.log" 2>&1 || { cat "$WORK/configure.log"; exit 1; }
grep "flexavatar: runtime" "$WORK/configure.log" || true
cmake --build "$WORK/build" --parallel "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
[ "$BUILD_ONLY" = 1 ] && exit 0
echo "== [aarch64] ctest under qemu-user"
ctest --test-dir "$WORK/build" --output-on-failure
