#!/usr/bin/env bash
# Configure, build and run the native core's C++ tests (ctest) twice: a normal Release build and an
# AddressSanitizer + UndefinedBehaviorSanitizer build. Standalone build of cpp/ (no Python, no
# CUDA), so it needs only cmake, a C++17 compiler and (optionally) ninja.
#
#   bash cpp/tests/run_ctest.sh            # build dirs under build/ctest-*
#   FLEXAVATAR_CTEST_BUILD_ROOT=/tmp/x bash cpp/tests/run_ctest.sh
#   bash cpp/tests/run_ctest.sh --build-only release asan   # configure + build only (tests/test_cpp_runtime.py)
#
# The embedding runtime (cpp/runtime) is built when ONNX Runtime and nlohmann_json are found
# (FLEXAVATAR_RUNTIME=AUTO; set FLEXAVATAR_RUNTIME=ON to fail without them, OFF to skip it).
set -euo pipefail
BUILD_ONLY=0
SUITES=()
for arg in "$@"; do
  case $arg in
    --build-only) BUILD_ONLY=1 ;;
    release|asan) SUITES+=("$arg") ;;
    *) echo "usage: run_ctest.sh [--build-only] [release] [asan]" >&2; exit 2 ;;
  esac
done
[ ${#SUITES[@]} -gt 0 ] || SUITES=(release asan)
cd "$(dirname "$0")/../.."
ROOT=${FLEXAVATAR_CTEST_BUILD_ROOT:-build}
mkdir -p "$ROOT"
JOBS=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}
GENERATOR=()
command -v ninja >/dev/null 2>&1 && GENERATOR=(-G Ninja)

run_suite() {  # NAME BUILD_TYPE EXTRA_CXX_FLAGS
  local name=$1 build_type=$2 flags=$3 dir=$ROOT/ctest-$1
  echo "== [$name] configure + build ($build_type${flags:+, $flags})"
  cmake -S cpp -B "$dir" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE="$build_type" -DFLEXAVATAR_CUDA=OFF \
    -DFLEXAVATAR_BUILD_TESTS=ON -DFLEXAVATAR_BUILD_PYTHON=OFF -DCMAKE_CXX_FLAGS="$flags" \
    -DFLEXAVATAR_RUNTIME="${FLEXAVATAR_RUNTIME:-AUTO}" >"$dir.configure.log" 2>&1 ||
    { cat "$dir.configure.log"; return 1; }
  grep "flexavatar: runtime" "$dir.configure.log" || true
  cmake --build "$dir" --parallel "$JOBS"
  [ "$BUILD_ONLY" = 1 ] && return 0
  echo "== [$name] ctest"
  ctest --test-dir "$dir" --output-on-failure
}

for suite in "${SUITES[@]}"; do
  case $suite in
    release) run_suite release Release "" ;;
    # halt_on_error: any report fails the run; detect_leaks works inside containers run as root too.
    asan) ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
      run_suite asan RelWithDebInfo "-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" ;;
  esac
done
