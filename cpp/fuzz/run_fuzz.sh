#!/usr/bin/env bash
# Short libFuzzer runs (ASan + UBSan + LeakSanitizer), one after the other, of the bundle manifest parser (seeds:
# cpp/fuzz/corpus), the expression-file / .npz / DEFLATE readers (cpp/fuzz/corpus_expressions) and the PNG photo
# reader (cpp/fuzz/corpus_png).
#
#   bash cpp/fuzz/run_fuzz.sh            # 30 s each; FUZZ_SECONDS=300 for longer
# Needs clang with libFuzzer (Debian: clang libclang-rt-14-dev) and nlohmann-json3-dev.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${FLEXAVATAR_CTEST_BUILD_ROOT:-build}
DIR=$ROOT/fuzz
SECONDS_TO_RUN=${FUZZ_SECONDS:-30}
CLANGXX=${FUZZ_CXX:-$(command -v clang++ || command -v clang++-14 || true)}
[ -n "$CLANGXX" ] || { echo "run_fuzz.sh: clang++ not found (apt-get install clang libclang-rt-14-dev)" >&2; exit 1; }
GENERATOR=()
command -v ninja >/dev/null 2>&1 && GENERATOR=(-G Ninja)
cmake -S cpp/fuzz -B "$DIR" "${GENERATOR[@]}" -DCMAKE_CXX_COMPILER="$CLANGXX" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$DIR.configure.log" 2>&1 ||
  { cat "$DIR.configure.log"; exit 1; }
cmake --build "$DIR"
# TARGET CORPUS_DIR DICT: one run of SECONDS_TO_RUN, the corpus copied (new inputs found stay in the build folder)
fuzz() {
  local target=$1 seeds=$2 dict=$3
  rm -rf "$DIR/corpus-$target" "$DIR/artifacts-$target"
  mkdir -p "$DIR/corpus-$target" "$DIR/artifacts-$target"
  cp "$seeds"/* "$DIR/corpus-$target/"
  echo "== libFuzzer: $target, ${SECONDS_TO_RUN} s"
  set +e
  ASAN_OPTIONS=detect_leaks=1 "$DIR/$target" "$DIR/corpus-$target" -dict="$dict" \
    -max_total_time="$SECONDS_TO_RUN" -max_len=16384 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$DIR/artifacts-$target/" 2>&1 | tail -n 15
  local status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then
    echo "run_fuzz.sh: the fuzzer found a failing input for $target (exit $status); see $DIR/artifacts-$target/" >&2
    exit "$status"
  fi
  echo "$target: no crash, leak or sanitizer report in ${SECONDS_TO_RUN} s"
}
fuzz fuzz_manifest cpp/fuzz/corpus cpp/fuzz/manifest.dict
fuzz fuzz_expressions cpp/fuzz/corpus_expressions cpp/fuzz/expressions.dict
fuzz fuzz_png cpp/fuzz/corpus_png cpp/fuzz/png.dict
