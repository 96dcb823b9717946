#!/usr/bin/env bash
# GPU check of the native CUDA rasterizer, for a machine with a GPU and no network:
#   bash cpp/tests/gpu/gpu_check.sh
# Builds flexavatar (CUDA for this GPU's architecture only, to build fast) into a private folder,
# runs the gpu-marked tests of tests/test_kernels_native.py, times forward / forward+backward at
# 512x512 with 58,361 Gaussians next to the reference and Triton, and runs compute-sanitizer on a
# small forward+backward. Logs go to $OUT when set (else build/gpu-check).
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../../.." && pwd)
PY=${PYTHON:-python3}
WORK=$REPO/build/gpu-check
SITE=$WORK/site
LOGS=${OUT:-$WORK/logs}
mkdir -p "$WORK" "$LOGS"
ARCH=${CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)}
ARCH=${ARCH:-90}
pyrun() { (cd "$WORK" && PYTHONPATH="$SITE" PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1 "$PY" "$@"); }

echo "== build (sm_$ARCH)"
t0=$(date +%s)
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) FLEXAVATAR_CUDA=ON "$PY" -m pip install --no-build-isolation --no-deps --no-index \
  --target "$SITE" --upgrade "$REPO" -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCH" \
  -Cbuild-dir="$WORK/build" >"$LOGS/build.log" 2>&1 || { tail -40 "$LOGS/build.log"; exit 1; }
echo "   built in $(($(date +%s) - t0)) s"
pyrun -c "import flexavatar._native as n; print(n.build_info(), n.cuda_info())"

echo "== gpu tests"
timeout 150 bash -c "cd '$WORK' && PYTHONPATH='$SITE' PYTHONSAFEPATH=1 '$PY' -m pytest '$REPO/tests/test_kernels_native.py' \
  --rootdir '$REPO' -c '$REPO/pyproject.toml' -p no:cacheprovider -q -rs" 2>&1 | tee "$LOGS/tests.log" | tail -25

echo "== timing"
timeout 100 bash -c "cd '$WORK' && PYTHONPATH='$SITE' PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1 '$PY' '$REPO/cpp/tests/gpu/time_cuda.py'" 2>&1 \
  | tee "$LOGS/timing.log"

if command -v compute-sanitizer >/dev/null; then
  echo "== compute-sanitizer (memcheck, small scene)"
  (cd "$WORK" && PYTHONPATH="$SITE" PYTHONSAFEPATH=1 timeout 60 compute-sanitizer --tool memcheck --error-exitcode 3 \
    "$PY" "$REPO/cpp/tests/gpu/time_cuda.py" --small) >"$LOGS/memcheck.log" 2>&1
  echo "   memcheck exit $?"; grep -E "ERROR SUMMARY|Invalid" "$LOGS/memcheck.log" | head -5
fi
