#!/usr/bin/env bash
# The whole GPU check of a session, as one device call (after the wheel parts, if any, were sent):
#
#     bash benchmarks/device/gpu_session.sh            # on the GPU machine, from the repo root
#
# 1. installs the staged wheels (onnxruntime-gpu) into /tmp/site when .device/parts/ holds them;
# 2. points the tests at the staged fixtures (.device/fixtures, see stage.py);
# 3. waits for prewarm.sh when an earlier call started it (build + FLEX-1 bundle export in the background);
# 4. benchmarks/run_gpu.sh, stages in order of what the GPU sessions so far left open, each under its own time
#    cap, all within FLEXAVATAR_SESSION_BUDGET_S (default 500 s: a device call may take 600 s): the build (skipped
#    after prewarm.sh's), the GPU tests, then with the FLEX-1 bundle: where a frame's time goes (GPU kernels and the
#    host's side), the whole frame (CUDA graphs, eager, batched), C++ vs Python on CUDA, flexavatar-verify on CUDA,
#    the C++ runtime's CUDA check, two runtimes interleaved in one process, and the stages that have given their
#    answers (benchmarks/device/README.md lists them). FLEXAVATAR_GPU_STAGES overrides the list.
# $OUT receives gpu-session.tar.gz (every log) and the new benchmark records (*.json): the device returns
# at most 8 files, so the logs travel as one archive.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO" || exit 1
PY=${PYTHON:-python3}
START=$(date +%s)
BUDGET=${FLEXAVATAR_SESSION_BUDGET_S:-500}
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
# prewarm.sh, started in the background by an earlier call: wait until it is done (its build and export would
# otherwise be repeated here), then skip the build when it installed the package
PREWARM=$REPO/build/gpu-prewarm
if [[ -f $PREWARM/started ]]; then
  waited=0
  # FLEXAVATAR_PREWARM_WAIT=build: only until the package is installed (stages that need no FLEX-1 bundle go
  # first; run_gpu.sh's wait-prewarm stage waits for the rest)
  until [[ -f $PREWARM/done ]] || { [[ ${FLEXAVATAR_PREWARM_WAIT:-all} == build ]] && [[ -f $PREWARM/build.ok ]]; } \
    || ((waited >= ${FLEXAVATAR_PREWARM_WAIT_S:-300})); do sleep 5; waited=$((waited + 5)); done
  echo "prewarm: waited ${waited} s; markers: $(ls "$PREWARM" | tr '\n' ' ')" | tee "$OUT/prewarm.txt"
  tail -3 "$PREWARM/build.log" "$PREWARM/bundle.log" 2>/dev/null | tee -a "$OUT/prewarm.txt"
  cp "$PREWARM"/*.log "$OUT/" 2>/dev/null
fi
BUILD_STAGE=build
[[ -f $PREWARM/build.ok ]] && BUILD_STAGE=
left=$((BUDGET - ($(date +%s) - START)))
FLEXAVATAR_GPU_STAGES=${FLEXAVATAR_GPU_STAGES:-machine $BUILD_STAGE gpu-tests memcheck sort-ab wait-prewarm bench-graphs ort-fusions gpu-profile host-probe torch-compile cpp-runtime bench-cpp verify interleave bench-runtime graph-passes-ab ort-conv upsampler-forms ort-profile-flex1 ort-stress native-check ort-placement} \
  FLEXAVATAR_GPU_BUDGET_S=$((left - 10)) OUT=$OUT bash benchmarks/run_gpu.sh 2>&1 | tail -80
if [[ -n "$RESULTS" ]]; then
  tar czf "$RESULTS/gpu-session.tar.gz" -C "$REPO/build" gpu-session
  cp "$OUT"/history/*.json "$RESULTS/" 2>/dev/null
  ls -la "$RESULTS"
fi
