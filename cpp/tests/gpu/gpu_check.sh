#!/usr/bin/env bash
# GPU check of the native CUDA rasterizer, for a machine with a GPU and no network:
#   bash cpp/tests/gpu/gpu_check.sh
# Builds flexavatar (CUDA for this GPU's architecture only, to build fast) into a private folder,
# runs the gpu-marked tests of tests/test_kernels_native.py, times forward / forward+backward at
# 512x512 with 58,361 Gaussians next to the reference and Triton, and runs compute-sanitizer on a
# small forward+backward; then builds the C++ embedding runtime with CUDA and runs its GPU ctest
# (runtime_cuda_check: CUDA vs CPU rasterizer through the C API, device-pointer frames). Logs go to $OUT
# when set (else build/gpu-check).
#   bash cpp/tests/gpu/gpu_check.sh [PART ...]     PART: build tests timing memcheck runtime (default: all, in order),
#                                                  or sort-ab (the CUDA sort's two forms timed side by side)
# FLEXAVATAR_SITE: an installed flexavatar with a CUDA-built _native (e.g. benchmarks/run_gpu.sh's): used instead
# of the build part's own folder, and the build part is skipped when it imports.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../../.." && pwd)
PY=${PYTHON:-python3}
WORK=$REPO/build/gpu-check
SITE=${FLEXAVATAR_SITE:-$WORK/site}
LOGS=${OUT:-$WORK/logs}
mkdir -p "$WORK" "$LOGS"
ARCH=${CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)}
ARCH=${ARCH:-90}
# an outer PYTHONPATH (e.g. onnxruntime-gpu unpacked by benchmarks/device/unpack.py into /tmp/site) is kept
# after the build's own folder, so the CMake ONNX Runtime lookup and the tests see the same ORT build
EXTRA_PATH=${PYTHONPATH:+:$PYTHONPATH}
pyrun() { (cd "$WORK" && PYTHONPATH="$SITE$EXTRA_PATH" PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1 "$PY" "$@"); }

PARTS=("$@")
((${#PARTS[@]})) || PARTS=(build tests timing memcheck runtime)
want() { local p; for p in "${PARTS[@]}"; do [[ $p == "$1" ]] && return 0; done; return 1; }

if want build && [[ -n "${FLEXAVATAR_SITE:-}" ]] && pyrun -c "import flexavatar._native" 2>/dev/null; then
  echo "== build: skipped, using $SITE"
elif want build; then
echo "== build (sm_$ARCH)"
t0=$(date +%s)
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) FLEXAVATAR_CUDA=ON "$PY" -m pip install --no-build-isolation --no-deps --no-index \
  --target "$SITE" --upgrade "$REPO" -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCH" \
  -Cbuild-dir="$WORK/build" >"$LOGS/build.log" 2>&1 || { tail -40 "$LOGS/build.log"; exit 1; }
echo "   built in $(($(date +%s) - t0)) s"
fi
pyrun -c "import flexavatar._native as n; print(n.build_info(), n.cuda_info())"

if want tests; then
echo "== gpu tests"
timeout 150 bash -c "cd '$WORK' && PYTHONPATH='$SITE$EXTRA_PATH' PYTHONSAFEPATH=1 '$PY' -m pytest '$REPO/tests/test_kernels_native.py' \
  --rootdir '$REPO' -c '$REPO/pyproject.toml' -p no:cacheprovider -q -rs" 2>&1 | tee "$LOGS/tests.log" | tail -25

fi
if want timing; then
echo "== timing"
timeout 100 bash -c "cd '$WORK' && PYTHONPATH='$SITE$EXTRA_PATH' PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1 '$PY' '$REPO/cpp/tests/gpu/time_cuda.py'" 2>&1 \
  | tee "$LOGS/timing.log"

fi
if want sort-ab; then
echo "== sort forms side by side (FLEXAVATAR_CUDA_SORT)"
timeout 60 bash -c "cd '$WORK' && PYTHONPATH='$SITE$EXTRA_PATH' PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1 '$PY' '$REPO/cpp/tests/gpu/time_cuda.py' --sort-ab" 2>&1 \
  | tee "$LOGS/sort-ab.log"

fi
if want memcheck && command -v compute-sanitizer >/dev/null; then
  echo "== compute-sanitizer (memcheck, small scene)"
  (cd "$WORK" && PYTHONPATH="$SITE$EXTRA_PATH" PYTHONSAFEPATH=1 timeout 60 compute-sanitizer --tool memcheck --error-exitcode 3 \
    "$PY" "$REPO/cpp/tests/gpu/time_cuda.py" --small) >"$LOGS/memcheck.log" 2>&1
  echo "   memcheck exit $?"; grep -E "ERROR SUMMARY|Invalid" "$LOGS/memcheck.log" | head -5
fi

# The C++ embedding runtime's CUDA rasterizer path: a standalone CMake build of cpp/ with the runtime and
# CUDA (ONNX Runtime from the Python wheel, nlohmann-json3-dev), the reduced fixture's bundle exported by
# the Python exporter with an avatar code from the Python encoder, then ctest runtime_cuda_check (CUDA
# rasterizer vs CPU rasterizer, device-pointer frame vs host frame, zero copy when ONNX Runtime has CUDA).
want runtime || exit 0
echo "== C++ runtime, CUDA rasterizer (ctest runtime_cuda_check)"
RT_BUILD=$WORK/cpp-runtime
# The fixtures: $FLEXAVATAR_FIXTURES, a copy staged inside the tree (../shared does not travel), else ../shared.
if [[ -z "${FLEXAVATAR_FIXTURES:-}" ]]; then
  for candidate in "$REPO/shared/fixtures" "$REPO/../shared/fixtures"; do
    [[ -d "$candidate" ]] && { FLEXAVATAR_FIXTURES=$(cd "$candidate" && pwd); break; }
  done
fi
export FLEXAVATAR_FIXTURES=${FLEXAVATAR_FIXTURES:-}
GENERATOR=()
command -v ninja >/dev/null 2>&1 && GENERATOR=(-G Ninja)
t0=$(date +%s)
if cmake -S "$REPO/cpp" -B "$RT_BUILD" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release -DFLEXAVATAR_CUDA=ON \
     -DFLEXAVATAR_RUNTIME=ON -DFLEXAVATAR_BUILD_TESTS=ON -DFLEXAVATAR_INSTALL_DEV=OFF -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
     -DPython3_EXECUTABLE="$(command -v "$PY")" >"$LOGS/runtime_build.log" 2>&1 &&
   cmake --build "$RT_BUILD" --parallel "$(nproc)" --target runtime_cuda_check >>"$LOGS/runtime_build.log" 2>&1; then
  echo "   built in $(($(date +%s) - t0)) s"
  timeout 300 bash -c "cd '$WORK' && PYTHONPATH='$SITE$EXTRA_PATH' PYTHONSAFEPATH=1 '$PY' - '$REPO' '$RT_BUILD/test_bundle'" \
    >"$LOGS/runtime_bundle.log" 2>&1 <<'PY'
import os, sys, warnings
from pathlib import Path
import numpy as np
from flexavatar.config import FlexConfig
from flexavatar.export import export_bundle
from flexavatar.runtime import Camera, Runtime

official = Path(os.environ.get("FLEXAVATAR_FIXTURES") or Path(sys.argv[1]).parent / "shared" / "fixtures") / "official_flex"
if not official.is_dir():
    sys.exit(f"no fixtures at {official}: set FLEXAVATAR_FIXTURES (or stage shared/fixtures in the tree)")
out = Path(sys.argv[2])
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    config = FlexConfig.from_official_json(official / "config.json")
    if not (out / "manifest.json").is_file():
        export_bundle(official / "state_dict.safetensors", out, template=official / "gghead_template.obj",
                      config=config, precisions=("fp32",), targets=("onnx",), force=True, progress=None)
fixture = np.load(official / "inputs.npz")
rt = Runtime(out, backend="onnxruntime", device="cpu", rasterizer="cpu")
avatar = rt.create_avatar(fixture["images"][0][0].transpose(1, 2, 0),
                          camera=Camera(fixture["cam2world"][0][0], fixture["intrinsics"][0][0]),
                          features=fixture["features"][0][0])
avatar.save(str(out) + "_code.npy")
print("bundle + code written")
PY
  if [ -f "$RT_BUILD/test_bundle_code.npy" ]; then
    # first without any node-by-node CUDA session (onnxruntime-gpu 1.31.1 aborts those at random), then all of it
    echo "   -- CUDA graphs only (FLEXAVATAR_TEST_GRAPHS_ONLY=1)"
    FLEXAVATAR_TEST_GRAPHS_ONLY=1 FLEXAVATAR_TEST_BUNDLE=$RT_BUILD/test_bundle \
      FLEXAVATAR_TEST_CODE=$RT_BUILD/test_bundle_code.npy timeout 120 \
      ctest --test-dir "$RT_BUILD" -R '^runtime_cuda_check$' --output-on-failure -V 2>&1 | tee "$LOGS/runtime_cuda_graphs.log" \
      | grep -E "SKIP|NOTE|FAIL|passed|failed|decode|numerics|latency|Skipped|tests passed" | tail -25
    echo "   -- every path"
    FLEXAVATAR_TEST_BUNDLE=$RT_BUILD/test_bundle FLEXAVATAR_TEST_CODE=$RT_BUILD/test_bundle_code.npy timeout 180 \
      ctest --test-dir "$RT_BUILD" -R '^runtime_cuda_check$' --output-on-failure -V 2>&1 | tee "$LOGS/runtime_cuda.log" \
      | grep -E "SKIP|NOTE|FAIL|passed|failed|frame|numerics|latency|rasterizer|Skipped|tests passed" | tail -40
  else
    echo "   FAIL: exporting the test bundle failed:"; tail -15 "$LOGS/runtime_bundle.log"
  fi
else
  echo "   SKIP: the C++ runtime did not configure or build here (it needs ONNX Runtime and nlohmann-json3-dev):"
  grep -E "FLEXAVATAR_RUNTIME=ON needs|error" "$LOGS/runtime_build.log" | head -5
fi
