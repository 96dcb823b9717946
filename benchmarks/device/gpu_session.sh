#!/usr/bin/env bash
# The whole GPU check of a session, as one device call (after the wheel parts, if any, were sent):
#
#     bash benchmarks/device/gpu_session.sh            # on the GPU machine, from the repo root
#
# 1. installs the staged wheels (onnxruntime-gpu) into /tmp/site when .device/parts/ holds them;
# 2. points the tests at the staged fixtures (.device/fixtures, see stage.py);
# 3. cpp/tests/gpu/gpu_check.sh: native CUDA rasterizer tests, sanitizer, the C++ runtime's CUDA path;
# 4. benchmarks/run_gpu.sh: GPU tests, ONNX Runtime node placement and the benchmarks (ORT-CUDA cases run when
#    step 1 happened), in what is left of FLEXAVATAR_SESSION_BUDGET_S (default 540 s: a device call may take
#    600 s). The benchmarks default to what no GPU has measured yet — the whole frame of the Python and C++
#    runtimes on CUDA at FLEX-1 size (ORT-CUDA fp32/fp16, CUDA graphs, PyTorch eager beside them); set
#    FLEXAVATAR_BENCH_SELECT (a pytest -k expression) to choose others ("" for the whole suite).
# $OUT receives gpu-session.tar.gz (every log) and the new benchmark records (*.json): the device returns
# at most 8 files, so the logs travel as one archive.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO" || exit 1
PY=${PYTHON:-python3}
START=$(date +%s)
BUDGET=${FLEXAVATAR_SESSION_BUDGET_S:-540}
RESULTS=${OUT:-}
OUT=$REPO/build/gpu-session
rm -rf "$OUT" && mkdir -p "$OUT"
if [[ -f .device/parts/index.json ]]; then
  "$PY" benchmarks/device/unpack.py --target /tmp/site 2>&1 | tee "$OUT/unpack.log" \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
[[ -d .device/fixtures ]] && export FLEXAVATAR_FIXTURES=$REPO/.device/fixtures
# the C++ runtime's ORT CUDA provider resolves libcudart/libcublas/libcudnn through the loader path: add the
# nvidia-* wheels' lib folders (Python processes get them from torch / onnxruntime.preload_dlls instead)
NVIDIA_LIBS=$("$PY" - <<'PYEOF' 2>/dev/null
import glob, os, site
dirs = [d for p in site.getsitepackages() for d in sorted(glob.glob(os.path.join(p, "nvidia", "*", "lib")))]
print(":".join(dirs))
PYEOF
)
[[ -n "$NVIDIA_LIBS" ]] && export LD_LIBRARY_PATH=$NVIDIA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
"$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" 2>&1 | tee "$OUT/ort.txt"
OUT=$OUT/cpp timeout 240 bash cpp/tests/gpu/gpu_check.sh 2>&1 | tee "$OUT/gpu_check.log" | tail -40
# the C++ runtime benchmark's CUDA case uses gpu_check.sh's runtime build (run_ctest.sh builds without CUDA)
[[ -f build/gpu-check/cpp-runtime/libflexavatar_runtime.so ]] &&
  export FLEXAVATAR_CPP_RUNTIME_LIB=$REPO/build/gpu-check/cpp-runtime/libflexavatar_runtime.so
left=$((BUDGET - ($(date +%s) - START)))
FLEXAVATAR_BENCH_SELECT=${FLEXAVATAR_BENCH_SELECT-(bench_runtime or bench_cpp_runtime) and cuda} \
  FLEXAVATAR_GPU_BUDGET_S=$((left - 15)) OUT=$OUT bash benchmarks/run_gpu.sh 2>&1 | tail -60
if [[ -n "$RESULTS" ]]; then
  tar czf "$RESULTS/gpu-session.tar.gz" -C "$REPO/build" gpu-session
  cp "$OUT"/history/*.json "$RESULTS/" 2>/dev/null
  ls -la "$RESULTS"
fi
