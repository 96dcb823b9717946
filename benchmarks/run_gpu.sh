#!/usr/bin/env bash
# One command for a GPU machine without network access:
#
#     bash benchmarks/run_gpu.sh
#
# Builds and installs flexavatar offline into a private folder (nothing is downloaded: the machine's
# python3 must already have torch, numpy, safetensors, pytest, pytest-benchmark, scikit-build-core,
# pybind11, cmake and ninja), runs the GPU tests and the benchmark suite inside a total time budget,
# writes the run record into benchmarks/history/, renders the dashboard, and copies the new records,
# the dashboard and all logs to $OUT when that variable is set. A failing or timed-out stage is
# logged and the next stage still runs; the script itself exits 0 unless it could not start.
#
# Knobs (environment):
#   FLEXAVATAR_GPU_BUDGET_S   total seconds for everything (default 420)
#   FLEXAVATAR_BENCH_ARGS     extra pytest arguments for the benchmarks (split on spaces), e.g. "-x"
#   FLEXAVATAR_BENCH_SELECT   a pytest -k expression for the benchmarks, e.g. "bench_runtime and cuda"
#   FLEXAVATAR_BENCH_MAX_TIME seconds per case (--benchmark-max-time, default 0.5)
#   FLEXAVATAR_GIT_COMMIT     commit to record when the tree has no .git (a copied working tree)
#   FLEXAVATAR_GPU_TESTS_CAP  seconds for the GPU tests stage (default 210: 90 s on the H200 of 2026-11-27, plus
#                             the compiled-frame tests' Inductor compilations)
#   FLEXAVATAR_GPU_STAGES     the stages to run, in order (default: machine build gpu-tests ort-placement
#                             benchmarks dashboard). Also: bench-runtime (the Python runtime's CUDA whole frame,
#                             #7), cpp-runtime (C++ runtime with CUDA + its ctest, via gpu_check.sh), bench-cpp
#                             (C++ vs Python whole frame on CUDA, #9), ort-probe (ONNX Runtime CUDA settings
#                             on the FLEX-1 fp16 decoder, benchmarks/device/ort_cuda_probe.py; ort-stress: 3000
#                             calls of four of them), ort-profile-flex1 (kernel time per op type of the FLEX-1
#                             bundle's files on CUDA), graph-passes-ab (the FLEX-1 decoder with and without
#                             export.graph_passes, side by side), gpu-profile (GPU time per kernel class of
#                             the FLEX-1 whole frame, CUPTI, and the host's side), host-probe (the Python runtime's
#                             host time a frame: stages, collections, render_cuda line by line), torch-compile (the PyTorch
#                             decoder under torch.compile vs the bundle's ORT decoders), ort-fusions (the FLEX-1 decoders with ONNX
#                             Runtime's fused transformer kernels vs as exported), verify (flexavatar-verify of the FLEX-1 bundle on
#                             CUDA, fp16 and fp32), wait-prewarm (until prewarm.sh is done), memcheck (compute-sanitizer on the rasterizer), sort-ab (the CUDA
#                             sort's two forms side by side, cpp/tests/gpu/time_cuda.py --sort-ab), native-check (gpu_check.sh's rasterizer
#                             timing and compute-sanitizer; its tests are among gpu-tests). The build is for
#                             this GPU's architecture only.
#   FLEXAVATAR_FIXTURES       the fixtures folder (default: .device/fixtures staged in the tree by
#                             benchmarks/device/stage.py, else ../shared/fixtures)
#   PYTHON                    interpreter (default python3)
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
BUDGET_S=${FLEXAVATAR_GPU_BUDGET_S:-420}
MAX_TIME=${FLEXAVATAR_BENCH_MAX_TIME:-0.5}
START=$(date +%s)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
WORK=$REPO/build/gpu-run
SITE=$WORK/site
LOGS=$WORK/logs-$STAMP
HISTORY=$REPO/benchmarks/history
# one Inductor cache for prewarm.sh and every stage (the same folder whatever each call's TMPDIR): the benchmark's
# compiled frames are then loaded from prewarm's compilation, not compiled again
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$REPO/build/inductor-cache}
mkdir -p "$LOGS" "$HISTORY" || { echo "cannot create $LOGS" >&2; exit 1; }
SUMMARY=$LOGS/summary.txt

if [[ -z "${FLEXAVATAR_GIT_COMMIT:-}" ]] && git -C "$REPO" rev-parse HEAD >/dev/null 2>&1; then
  export FLEXAVATAR_GIT_COMMIT=$(git -C "$REPO" rev-parse HEAD)
fi

say() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# stage NAME CAP_SECONDS COMMAND...: run with a timeout of min(CAP, budget left - RESERVE), log, go on.
RESERVE=25 # kept for the dashboard and the copy at the end
stage() {
  local name=$1 cap=$2
  shift 2
  local limit=$(($(left) - RESERVE))
  ((cap < limit)) && limit=$cap
  if ((limit < 10)); then
    say "[$name] SKIPPED: time budget spent"
    return 0
  fi
  say "== [$name] limit ${limit}s: $*"
  local t0=$(date +%s) rc verdict
  # timeout cannot run shell functions directly: run them in a child bash (functions are exported).
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  case $rc in
    0) verdict="ok" ;;
    124 | 137) verdict="TIMEOUT after ${limit}s" ;;
    5) verdict="no tests selected (pytest exit 5)" ;;
    *) verdict="FAILED (exit $rc)" ;;
  esac
  say "   [$name] $verdict in $(($(date +%s) - t0))s, log $LOGS/$name.log"
  tail -n 6 "$LOGS/$name.log" | sed 's/^/   | /' | tee -a "$SUMMARY"
  return 0
}

# Python with the installed package first; run from $WORK so the source folder flexavatar/ (which has
# no compiled _native module) never shadows the installed one.
# Unbuffered: a stage killed at its time cap keeps everything it printed.
pyrun() { (cd "$WORK" && PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1 "$PY" "$@"); }

machine_info() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || echo "no nvidia-smi"
  "$PY" - <<'EOF'
import importlib, platform, os
print("python", platform.python_version(), "cpus", os.cpu_count())
for name in ("torch", "triton", "onnxruntime", "numpy", "safetensors", "pytest_benchmark"):
    try:
        mod = importlib.import_module(name)
        print(name, getattr(mod, "__version__", "?"))
    except Exception as err:  # noqa: BLE001 - report, don't fail
        print(name, "unavailable:", err)
import torch
print("cuda available", torch.cuda.is_available(), "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
EOF
  command -v nvcc && nvcc --version | tail -1
}

pip_install() {
  # CUDA for this machine's GPU only (the default list of six architectures takes minutes longer)
  local arch
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) PIP_BREAK_SYSTEM_PACKAGES=1 \
    "$PY" -m pip install --no-build-isolation --no-deps --no-index --target "$SITE" --upgrade -v "$REPO" \
    -Cbuild-dir="$WORK/build" ${arch:+-Ccmake.define.CMAKE_CUDA_ARCHITECTURES=$arch}
}

# The package as plain source (no compiled _native): what still runs when the native build fails.
source_site() {
  mkdir -p "$SITE/flexavatar" && cp -r "$REPO/flexavatar/." "$SITE/flexavatar/" || return 1
  for sub in export runtime kernels; do
    [[ -d "$REPO/$sub" ]] && ln -s "$REPO/$sub" "$SITE/flexavatar/$sub"
  done
  return 0
}

build() {
  rm -rf "$SITE"
  if pip_install; then
    echo "BUILD: full (native module with FLEXAVATAR_CUDA=${FLEXAVATAR_CUDA:-AUTO})"
  elif rm -rf "$SITE" && FLEXAVATAR_CUDA=OFF pip_install; then
    echo "BUILD: the CUDA build failed; installed with FLEXAVATAR_CUDA=OFF (C++ CPU only)"
  else
    rm -rf "$SITE"
    source_site
    echo "BUILD: native build FAILED; using the Python sources only (no flexavatar._native)"
    return 1
  fi
  pyrun -c "import flexavatar, flexavatar._native as n; print('installed', flexavatar.__file__, n.__file__)"
}

gpu_tests() {
  # --capture=sys: what C++ libraries print (ONNX Runtime's message before an abort) reaches the log;
  # pytest-xdist (in the GPU image) when present: a worker that a native abort kills fails its test and is
  # replaced, and the rest of the tests still run
  local workers=()
  pyrun -c "import xdist" 2>/dev/null && workers=(-n 2)
  pyrun -m pytest "$REPO/tests" --rootdir "$REPO" -c "$REPO/pyproject.toml" -m gpu -p no:cacheprovider -q -rs \
    --capture=sys "${workers[@]}"
}

ort_placement() {
  # which execution provider runs each node of the bundle's graphs (a CPU-placed compute node copies
  # inside every frame and rules out CUDA graphs); skipped when this onnxruntime has no CUDA provider
  if ! pyrun -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
    echo "SKIP: this onnxruntime has no CUDAExecutionProvider"
    return 0
  fi
  pyrun "$REPO/benchmarks/device/ort_placement.py" --provider cuda --times --json "$LOGS/ort_placement.json"
}

# bench [-k EXPRESSION]: the benchmark suite (or a selection) into the history; -s: the export's progress and
# each case's correctness line reach the log as they happen; log_cli: the runtime's warnings too (e.g. "compiled
# frames failed"), which pytest otherwise shows for failed cases only
bench() {
  # shellcheck disable=SC2086  # FLEXAVATAR_BENCH_ARGS is a list of words on purpose
  pyrun -m pytest "$REPO/benchmarks" --rootdir "$REPO" -c "$REPO/pyproject.toml" -p no:cacheprovider \
    -o log_cli=true --log-cli-level=WARNING --benchmark-only --benchmark-max-time="$MAX_TIME" --benchmark-min-rounds=5 \
    --benchmark-warmup=on --benchmark-warmup-iterations=3 --benchmark-columns=min,median,mean,ops,rounds \
    --bench-history "$HISTORY" -rs -s "$@" ${FLEXAVATAR_BENCH_ARGS:-}
}

benchmarks() {
  local selection=()
  [[ -n "${FLEXAVATAR_BENCH_SELECT:-}" ]] && selection=(-k "$FLEXAVATAR_BENCH_SELECT")
  bench "${selection[@]}"
}

# gpu_check.sh PARTS with this run's installed package (its build part is then skipped)
gpu_check() {
  FLEXAVATAR_SITE=$SITE OUT=$LOGS/gpu-check bash "$REPO/cpp/tests/gpu/gpu_check.sh" "$@"
}

# C++ vs Python whole frame on CUDA: the C++ runtime that gpu_check.sh's runtime part built with CUDA
bench_cpp() {
  local lib=$REPO/build/gpu-check/cpp-runtime/libflexavatar_runtime.so
  [[ -f $lib ]] || { echo "no CUDA build of the C++ runtime at $lib (the cpp-runtime stage failed?)"; return 1; }
  # one process per runtime and precision: ONNX Runtime's CUDA provider binds to the first ORT core of a process
  # (the C++ runtime's libonnxruntime or the Python module's), and an abort in one case leaves the others' figures
  # the CUDA-graph pair only: the node-by-node pairs ("not graphs and fp16/fp32") abort their processes on
  # onnxruntime-gpu 1.31.1 (benchmarks/device/README.md); run them by hand with another version
  local rc=0 selection runtime
  for selection in "cuda-graphs and not fused and fp16" "fused and fp16"; do
    for runtime in cpp python; do
      FLEXAVATAR_CPP_RUNTIME_LIB=$lib bench -k "test_whole_frame_${runtime}_runtime and flex1 and cuda and $selection" || rc=$?
    done
  done
  return $rc
}

# the FLEX-1 benchmark bundle with fp16 files (benchmarks/.cache, written by prewarm.sh or bench-runtime)
flex1_fp16_bundle() {
  local bundle
  bundle=$(ls -d "$REPO"/benchmarks/.cache/bundle-flex1-*fp16*/ 2>/dev/null | head -1)
  [[ -n $bundle ]] || { echo "no FLEX-1 fp16 bundle in benchmarks/.cache (prewarm.sh or bench-runtime makes it)" >&2; return 1; }
  echo "$bundle"
}

# where the FLEX-1 decoder's time goes on the CUDA provider: kernel time per op type of each file of the FLEX-1
# benchmark bundle (one profiled run after a warm-up; the fp16 decoder is the one to make faster, issue #7)
ort_profile_flex1() {
  local bundle
  bundle=$(flex1_fp16_bundle) || return 1
  pyrun "$REPO/benchmarks/device/ort_placement.py" "$bundle" --provider cuda --times --json "$LOGS/ort_profile_flex1.json"
}

# each ONNX Runtime CUDA setting of the runtime, and variants, on the FLEX-1 fp16 decoder (ort_cuda_probe.py);
# ort_probe stress: 3000 calls of the settings that matter for the intermittent abort (README, GPU notes)
ort_probe() {
  local bundle
  bundle=$(flex1_fp16_bundle) || return 1
  if [[ ${1:-} == conv ]]; then
    # cuDNN's convolution search for the upsampler, side by side with CUDA graphs: the runtime's choice
    # (HEURISTIC for fp16, EXHAUSTIVE for fp32) against the other (2026-11-27, H200, fp16: 2.09 vs 4.36 ms a call),
    # and ORT's NHWC convolutions with the fp16 choice (the profile's 8 nchwToNhwc transposes a frame, 0.065 ms)
    pyrun "$REPO/benchmarks/device/ort_cuda_probe.py" "$bundle" --precision fp16 --frames 200 --timeout 60 \
      --variants runtime+graphs,prefer-nhwc+graphs,cudnn-exhaustive+graphs --json "$LOGS/ort_cuda_conv_fp16.json" &&
    pyrun "$REPO/benchmarks/device/ort_cuda_probe.py" "$bundle" --precision fp32 --frames 200 --timeout 60 \
      --variants runtime+graphs,cudnn-heuristic+graphs --json "$LOGS/ort_cuda_conv_fp32.json"
  elif [[ ${1:-} == stress ]]; then
    pyrun "$REPO/benchmarks/device/ort_cuda_probe.py" "$bundle" --precision fp16 --frames 3000 --timeout 120 \
      --variants runtime,runtime+graphs,sync-at-run-end,no-user-stream --json "$LOGS/ort_cuda_stress.json"
  else
    pyrun "$REPO/benchmarks/device/ort_cuda_probe.py" "$bundle" --precision fp16 --json "$LOGS/ort_cuda_probe.json"
  fi
}

# two runtimes of the FLEX-1 bundle on ONNX Runtime CUDA in one process, decoding different expressions in turn
# (graph_interleave.py): each call's Gaussians are its own input's, against the CPU provider
interleave() {
  local bundle
  bundle=$(flex1_fp16_bundle) || return 1
  pyrun "$REPO/benchmarks/device/graph_interleave.py" "$bundle" --precision fp32 --json "$LOGS/interleave.json"
}

# the FLEX-1 decoder with and without export.graph_passes, fp32 and fp16, CUDA graphs, alternating rounds in one
# process (benchmarks/device/graph_passes_ab.py): what the exact graph rewrites buy on this GPU (issue #7)
graph_passes_ab() {
  local bundle weights=$REPO/benchmarks/.cache/flex1-random-seed0.safetensors
  bundle=$(flex1_fp16_bundle) || return 1
  [[ -f $weights ]] || { echo "no FLEX-1 random weights at $weights (prewarm.sh or bench-runtime writes them)"; return 1; }
  pyrun "$REPO/benchmarks/device/graph_passes_ab.py" "$weights" --bundle "$bundle" \
    --template "$FLEXAVATAR_FIXTURES/official_flex/gghead_template.obj" --json "$LOGS/graph_passes_ab.json"
}

# the FLEX-1 bundle's decoders with ONNX Runtime's fused transformer kernels (export/ort_fusions.py:
# SkipLayerNormalization, FastGelu; 75 nodes fewer in fp16) against the files as exported, CUDA graphs, alternating
# rounds (benchmarks/device/ort_fusions_ab.py): the ONNX Runtime route to fewer kernels a frame (issue #7)
ort_fusions() {
  local bundle
  bundle=$(flex1_fp16_bundle) || return 1
  pyrun "$REPO/benchmarks/device/ort_fusions_ab.py" "$bundle" --precision fp16 --json "$LOGS/ort_fusions_ab.json"
}

# the upsampler in three exact forms (ConvTranspose + FIR as bundles hold it; export.graph_passes.subpixel_upsampling;
# im2col GEMMs), ONNX Runtime CUDA graphs fp32/fp16 × cuDNN HEURISTIC/EXHAUSTIVE, and the FLEX-1 bundle's decoders
# with and without the sub-pixel pass, alternating rounds (benchmarks/device/upsampler_forms.py): which form the
# fp16 decoder should export (issue #7)
upsampler_forms() {
  local bundle
  bundle=$(flex1_fp16_bundle) || return 1
  pyrun "$REPO/benchmarks/device/upsampler_forms.py" --bundle "$bundle" --json "$LOGS/upsampler_forms.json"
}

# the PyTorch decoder under torch.compile (Inductor, CUDA graphs), fp32 and fp16 autocast, against eager and the
# FLEX-1 bundle's ONNX Runtime decoders, side by side (benchmarks/device/torch_compile.py)
torch_compile() {
  local bundle
  bundle=$(flex1_fp16_bundle) || return 1
  # fp16 (the target), the FIR as Inductor's multiply-adds and as cuDNN's convolution: each compiles in ~20 s (H200)
  pyrun "$REPO/benchmarks/device/torch_compile.py" --bundle "$bundle" --json "$LOGS/torch_compile.json" \
    --variants eager-fp16,compiled-fp16,compiled-fp16-fir-conv,ort-fp16,ort-fp32
}

# GPU time per kernel class of the whole frame as the GPU ran it (CUPTI through torch.profiler: ONNX Runtime's,
# cuBLAS/cuDNN's and the rasterizer's kernels; benchmarks/device/gpu_kernel_profile.py), fp16 and fp32 with CUDA graphs
gpu_profile() {
  local bundle precision rc=0
  bundle=$(flex1_fp16_bundle) || return 1
  # fp16 first, then the same frames decoded under torch.compile (Inductor + CUDA graphs, fp16: the kernels its
  # fusion leaves), fp32 last (the stage's cap may end it)
  pyrun "$REPO/benchmarks/device/gpu_kernel_profile.py" "$bundle" --precision fp16 \
    --json "$LOGS/gpu_kernel_profile_fp16.json" || rc=$?
  pyrun "$REPO/benchmarks/device/gpu_kernel_profile.py" "$bundle" --precision fp16 --engine torch-compile \
    --json "$LOGS/gpu_kernel_profile_torch_compile_fp16.json" || rc=$?
  pyrun "$REPO/benchmarks/device/gpu_kernel_profile.py" "$bundle" --precision fp32 \
    --json "$LOGS/gpu_kernel_profile_fp32.json" || rc=$?
  return $rc
}

# where the Python runtime's host time goes, one frame at a time, without cProfile (benchmarks/device/host_probe.py):
# render / render_async p50, garbage collections, timed stages, and render_cuda line by line; ONNX Runtime fp16
# (fused decoder, CUDA graphs; then with the compiled rasterizer), then torch-compile fp16 with compiled whole
# frames, and with separate calls
host_probe() {
  local bundle rc=0
  bundle=$(flex1_fp16_bundle) || return 1
  pyrun "$REPO/benchmarks/device/host_probe.py" "$bundle" --frames 100 --json "$LOGS/host_probe_ort_fp16.json" || rc=$?
  pyrun "$REPO/benchmarks/device/host_probe.py" "$bundle" --frames 100 --compiled-frames \
    --json "$LOGS/host_probe_ort_frames_fp16.json" || rc=$?
  pyrun "$REPO/benchmarks/device/host_probe.py" "$bundle" --frames 100 --engine torch-compile \
    --json "$LOGS/host_probe_torch_compile_frames_fp16.json" || rc=$?
  pyrun "$REPO/benchmarks/device/host_probe.py" "$bundle" --frames 100 --engine torch-compile --separate-calls \
    --json "$LOGS/host_probe_torch_compile_fp16.json" || rc=$?
  return $rc
}

# the bundle's numerics check on this GPU (flexavatar-verify: check.npz through ONNX Runtime CUDA, fp16 and fp32,
# with the runtime's defaults, CUDA graphs included): PSNR per graph vs the PyTorch fp32 outputs recorded at export
verify_numerics() {
  local bundle precision rc=0
  bundle=$(flex1_fp16_bundle) || return 1
  for precision in fp16 fp32; do
    pyrun -c "import sys; from flexavatar.runtime.cli import verify_main; sys.exit(verify_main(sys.argv[1:]))" \
      "$bundle" --backend onnxruntime --device cuda --rasterizer cuda --precision $precision \
      --json "$LOGS/verify_$precision.json" || rc=$?
  done
  return $rc
}

# fixtures: a copy staged inside the tree (benchmarks/device/stage.py; ../shared does not travel), else ../shared
if [[ -z "${FLEXAVATAR_FIXTURES:-}" ]]; then
  for candidate in "$REPO/.device/fixtures" "$REPO/../shared/fixtures"; do
    [[ -d "$candidate" ]] && { FLEXAVATAR_FIXTURES=$(cd "$candidate" && pwd); break; }
  done
fi
export FLEXAVATAR_FIXTURES=${FLEXAVATAR_FIXTURES:-}
export REPO PY MAX_TIME WORK SITE HISTORY LOGS
export -f host_probe pyrun machine_info pip_install source_site build gpu_tests ort_placement bench benchmarks gpu_check bench_cpp ort_probe ort_profile_flex1 flex1_fp16_bundle graph_passes_ab gpu_profile verify_numerics interleave upsampler_forms torch_compile ort_fusions
ls "$HISTORY" >"$WORK/history-before.txt" 2>/dev/null
say "flexavatar GPU run $STAMP, budget ${BUDGET_S}s, repo $REPO, commit ${FLEXAVATAR_GIT_COMMIT:-unknown}"
for name in ${FLEXAVATAR_GPU_STAGES:-machine build gpu-tests ort-placement benchmarks}; do
  case $name in
    machine) stage machine 30 machine_info ;;
    build) stage build 200 build ;;
    gpu-tests) stage gpu-tests "${FLEXAVATAR_GPU_TESTS_CAP:-210}" gpu_tests ;;
    ort-placement) stage ort-placement 90 ort_placement ;;
    ort-profile-flex1) stage ort-profile-flex1 90 ort_profile_flex1 ;;
    graph-passes-ab) stage graph-passes-ab 180 graph_passes_ab ;;
    gpu-profile) stage gpu-profile 150 gpu_profile ;;
    torch-compile) stage torch-compile 240 torch_compile ;;
    host-probe) stage host-probe 150 host_probe ;;
    verify) stage verify 150 verify_numerics ;;
    benchmarks) stage benchmarks 100000 benchmarks ;;
    bench-runtime) stage bench-runtime 260 bench -k "bench_runtime and cuda" ;;
    # the CUDA cases that do not run ONNX Runtime node by node (its non-graph CUDA mode aborts, README)
    # (torch-compile: its first frame compiles, from prewarm.sh's Inductor cache when that ran)
    bench-graphs) stage bench-graphs 300 bench -k "bench_runtime and cuda and (graphs or eager or compile)" ;;
    cpp-runtime) stage cpp-runtime 150 gpu_check runtime ;;
    bench-cpp) stage bench-cpp 120 bench_cpp ;;
    ort-probe) stage ort-probe 150 ort_probe ;;
    ort-stress) stage ort-stress 200 ort_probe stress ;;
    ort-conv) stage ort-conv 100 ort_probe conv ;;
    interleave) stage interleave 90 interleave ;;
    upsampler-forms) stage upsampler-forms 180 upsampler_forms ;;
    ort-fusions) stage ort-fusions 120 ort_fusions ;;
    # (no prewarm.sh on this machine, e.g. a single-call session or a fresh machine: nothing to wait for)
    wait-prewarm) stage wait-prewarm 300 bash -c "until [[ ! -f '$REPO/build/gpu-prewarm/started' || -f '$REPO/build/gpu-prewarm/done' ]]; do sleep 2; done" ;;
    native-check) stage native-check 150 gpu_check timing memcheck ;;
    memcheck) stage memcheck 90 gpu_check memcheck ;;   # compute-sanitizer alone (the sync-free sort's first run)
    # the CUDA sort's two forms, native forward side by side; the later stages keep the old form when the new
    # one's frames are not the old one's (or it did not run), so that their figures stay those of right frames
    sort-ab) stage sort-ab 70 gpu_check sort-ab
      if ! grep -q "frames bit-identical: True" "$LOGS/sort-ab.log" 2>/dev/null; then
        export FLEXAVATAR_CUDA_SORT=tile-depth-keys
        say "   [sort-ab] the depth-first sort's frames were not confirmed: FLEXAVATAR_CUDA_SORT=tile-depth-keys from here on"
      fi ;;
    dashboard) ;;   # always last, below
    *) say "[$name] unknown stage (FLEXAVATAR_GPU_STAGES)" ;;
  esac
done
RESERVE=0 stage dashboard 30 pyrun -m flexavatar.dashboard "$HISTORY" -o "$WORK/dashboard.html"

NEW=$(ls "$HISTORY" | grep -vxF -f "$WORK/history-before.txt" || true)
say "new run records: ${NEW:-none}"
if [[ -n "$NEW" ]]; then   # issue #7's target against this run's figures, in full in the summary
  (cd "$HISTORY" && "$PY" "$REPO/benchmarks/device/target_summary.py" $NEW) 2>&1 | tee -a "$SUMMARY"
fi
say "done in $(($(date +%s) - START))s"
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT/history" "$OUT/logs"
  for f in $NEW; do cp "$HISTORY/$f" "$OUT/history/"; done
  cp -r "$LOGS"/* "$OUT/logs/" 2>/dev/null
  [[ -f "$WORK/dashboard.html" ]] && cp "$WORK/dashboard.html" "$OUT/"
  echo "copied records, dashboard and logs to $OUT"
fi
exit 0
