#!/usr/bin/env bash
# The native core and the C++ runtime cross-built for another platform from an x86-64 Debian / Ubuntu host, and
# their ctest suite run there under an emulator: the rasterizer's unit tests, the runtime's unit tests on that
# platform's own ONNX Runtime library, the installed CMake package and the example application.
# tests/test_cross_platforms.py runs the cross-built runtime on an exported bundle against PyTorch's numbers.
#
#   bash cpp/tests/cross/run_cross.sh aarch64|windows [--build-only]     # build dir: build/cross-<target>
#
#   aarch64  Linux on 64-bit ARM (Jetson, Raspberry Pi 4/5, Graviton): GCC aarch64-linux-gnu, run under qemu-user
#            (qemu_aarch64.sh; needs root or user namespaces for its mount namespace)
#   windows  64-bit Windows: MinGW-w64 against ONNX Runtime's MSVC-built onnxruntime.dll, run under Wine
#            (wine_run.sh)
# Needs the target's packages (the script names the missing ones and exits 3), nlohmann-json3-dev, and pip: it
# downloads the newest onnxruntime wheel (≥ 1.23) of the target for its library (ONNXRUNTIME_CROSS_WHEEL=FILE
# uses a given one).
set -euo pipefail
TARGET=${1:-}
BUILD_ONLY=0
[ "${2:-}" = --build-only ] && BUILD_ONLY=1
case $TARGET in
  aarch64)
    TOOLCHAIN=aarch64-linux-gnu.cmake EMULATOR=qemu_aarch64.sh
    TOOLS=("aarch64-linux-gnu-g++:g++-aarch64-linux-gnu" "qemu-aarch64:qemu-user")
    WHEEL_PLATFORMS=(manylinux_2_28_aarch64 manylinux_2_27_aarch64 manylinux2014_aarch64)
    LIBRARY_GLOB="libonnxruntime.so.*" ;;
  windows)
    TOOLCHAIN=x86_64-w64-mingw32.cmake EMULATOR=wine_run.sh
    TOOLS=("x86_64-w64-mingw32-g++-posix:g++-mingw-w64-x86-64-posix" "wine64:wine64")
    WHEEL_PLATFORMS=(win_amd64)
    LIBRARY_GLOB="onnxruntime.dll" ;;
  *) echo "usage: run_cross.sh aarch64|windows [--build-only]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/../../.."
ROOT=${FLEXAVATAR_CTEST_BUILD_ROOT:-build}
WORK=$ROOT/cross-$TARGET
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

missing=()
for tool in "${TOOLS[@]}"; do
  # wine64 lives in /usr/lib/wine on Debian, not on PATH
  command -v "${tool%%:*}" >/dev/null || [ -x "/usr/lib/wine/${tool%%:*}" ] || missing+=("${tool#*:}")
done
[ -f /usr/include/nlohmann/json.hpp ] || missing+=(nlohmann-json3-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "run_cross.sh $TARGET: missing ${missing[*]} (apt-get install ${missing[*]})" >&2
  exit 3
fi

# The target's ONNX Runtime: the library inside its onnxruntime wheel (the C API is the same everywhere).
ORT=$WORK/onnxruntime
if ! ls "$ORT"/onnxruntime/capi/$LIBRARY_GLOB >/dev/null 2>&1; then
  rm -rf "$ORT" && mkdir -p "$ORT/wheel"
  wheel=${ONNXRUNTIME_CROSS_WHEEL:-}
  if [ -z "$wheel" ]; then
    echo "== [$TARGET] downloading the onnxruntime wheel for ${WHEEL_PLATFORMS[0]} (its ONNX Runtime library)"
    platforms=()
    for p in "${WHEEL_PLATFORMS[@]}"; do platforms+=(--platform "$p"); done
    python3 -m pip download -q --no-deps --only-binary=:all: --dest "$ORT/wheel" "${platforms[@]}" \
      --python-version "$(python3 -c 'import sys; print("%d%d" % sys.version_info[:2])')" "onnxruntime>=1.23" 2>&1 |
      grep -v "^WARNING: Location" || true
    wheel=$(ls "$ORT"/wheel/onnxruntime-*.whl 2>/dev/null | head -n 1 || true)
    [ -n "$wheel" ] || { echo "run_cross.sh: could not download an onnxruntime wheel for $TARGET" >&2; exit 1; }
  fi
  python3 -m zipfile -e "$wheel" "$ORT"
fi
ORT_LIB=$(ls "$ORT"/onnxruntime/capi/$LIBRARY_GLOB | sort | tail -n 1)

# nlohmann_json is header-only, but its CMake package points at /usr/include, where the host's C headers are
# too: a private copy keeps them out of the cross build's include path.
JSON=$WORK/nlohmann_json
if [ ! -f "$JSON/include/nlohmann/json.hpp" ]; then
  mkdir -p "$JSON/include" "$JSON/share/cmake"
  cp -r /usr/include/nlohmann "$JSON/include/"
  for config in /usr/share/cmake/nlohmann_json /usr/lib/cmake/nlohmann_json; do
    [ -f "$config/nlohmann_jsonConfig.cmake" ] && cp -r "$config" "$JSON/share/cmake/nlohmann_json" && break
  done
fi

GENERATOR=()
command -v ninja >/dev/null 2>&1 && GENERATOR=(-G Ninja)
echo "== [$TARGET] configure + build (ONNX Runtime $(basename "$ORT_LIB"))"
cmake -S cpp -B "$WORK/build" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$PWD/cpp/cmake/toolchains/$TOOLCHAIN" \
  -DFLEXAVATAR_CROSS_EMULATOR="$PWD/cpp/tests/cross/$EMULATOR" \
  -DFLEXAVATAR_CUDA=OFF -DFLEXAVATAR_BUILD_TESTS=ON -DFLEXAVATAR_BUILD_PYTHON=OFF -DFLEXAVATAR_RUNTIME=ON \
  -DONNXRUNTIME_LIBRARY="$ORT_LIB" -Dnlohmann_json_DIR="$JSON/share/cmake/nlohmann_json" \
  >"$WORK/configure.log" 2>&1 || { cat "$WORK/configure.log"; exit 1; }
grep "flexavatar: runtime" "$WORK/configure.log" || true
cmake --build "$WORK/build" --parallel "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
# What the emulator needs to run the tests (the pytest reads it too): Windows programs find their DLLs here.
echo "FLEXAVATAR_WINE_DLL_DIRS=$WORK/build:$(dirname "$ORT_LIB")" >"$WORK/emulator.env"
echo "WINEPREFIX=$WORK/wineprefix" >>"$WORK/emulator.env"
[ "$BUILD_ONLY" = 1 ] && exit 0
echo "== [$TARGET] ctest under $EMULATOR"
set -a; . "$WORK/emulator.env"; set +a
ctest --test-dir "$WORK/build" --output-on-failure
