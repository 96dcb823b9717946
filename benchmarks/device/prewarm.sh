#!/usr/bin/env bash
# The slow preparations of a GPU session, run in the background while the device calls that follow send the
# onnxruntime-gpu wheel parts (none of this needs them):
#
#     setsid bash benchmarks/device/prewarm.sh </dev/null >/dev/null 2>&1 &     # first device call, repo root
#
# 1. builds and installs the package for this GPU (benchmarks/run_gpu.sh's build stage, into build/gpu-run/site);
# 2. builds the FLEX-1 benchmark bundle (random weights, fp32 + fp16 ONNX, checked against PyTorch): the CUDA
#    whole-frame case of bench_runtime.py builds it as a fixture into benchmarks/.cache, then skips while this
#    onnxruntime has no CUDA provider;
# 3. compiles the decoder under torch.compile once, and (4.) the whole frame (below).
# A setsid process outlives the call that started it (the device tool ends only the call's own process group).
# Markers in build/gpu-prewarm/: build.ok (the package is installed), bundle.ok, compile.ok, done (finished, either way);
# gpu_session.sh waits for done and skips its own build after build.ok. Logs: build/gpu-prewarm/*.log.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO" || exit 1
PY=${PYTHON:-python3}
MARK=$REPO/build/gpu-prewarm
rm -rf "$MARK" && mkdir -p "$MARK"
trap 'touch "$MARK/done"' EXIT
date +%s >"$MARK/started"
[[ -d .device/fixtures ]] && export FLEXAVATAR_FIXTURES=$REPO/.device/fixtures
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$REPO/build/inductor-cache}   # run_gpu.sh's
FLEXAVATAR_GPU_STAGES=build FLEXAVATAR_GPU_BUDGET_S=400 OUT=$MARK/build-out bash benchmarks/run_gpu.sh >"$MARK/build.log" 2>&1
grep -q '\[build\] ok' "$MARK/build.log" && touch "$MARK/build.ok"
WORK=$REPO/build/gpu-run
(cd "$WORK" && PYTHONPATH="$WORK/site" PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1 timeout 600 "$PY" -m pytest \
  "$REPO/benchmarks/bench_runtime.py" --rootdir "$REPO" -c "$REPO/pyproject.toml" -p no:cacheprovider \
  --benchmark-only -s -rs -k "ort-cuda and fp32 and not graphs") >"$MARK/bundle.log" 2>&1
ls "$REPO"/benchmarks/.cache/bundle-flex1-*fp16*/manifest.json >/dev/null 2>&1 && touch "$MARK/bundle.ok"
# 3. compiles the FLEX-1 decoder as the "torch-compile" engine does (fp16, Inductor, CUDA graphs) once, so that
#    Inductor's on-disk cache serves the benchmark's torch-compile+cuda case and the torch-compile stage
(cd "$WORK" && PYTHONPATH="$WORK/site" PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1 timeout 300 "$PY" \
  "$REPO/benchmarks/device/torch_compile.py" --variants compiled-fp16 --calls 2 --rounds 1 \
  --json "$MARK/compile.json") >"$MARK/compile.log" 2>&1 && touch "$MARK/compile.ok"
# 4. the same decoder compiled into whole frames (Runtime(compiled_frames=None) on CUDA: decoder, rasterizer and
#    pixels as one graph), through a short host probe (its numbers land in build/gpu-prewarm/host_probe.json)
(cd "$WORK" && PYTHONPATH="$WORK/site" PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1 timeout 300 "$PY" \
  "$REPO/benchmarks/device/host_probe.py" "$(ls -d "$REPO"/benchmarks/.cache/bundle-flex1-*fp16* | head -1)" \
  --engine torch-compile --frames 20 --json "$MARK/host_probe.json") >"$MARK/frames.log" 2>&1 && touch "$MARK/frames.ok"
echo "prewarm finished in $(($(date +%s) - $(cat "$MARK/started"))) s" >>"$MARK/build.log"
