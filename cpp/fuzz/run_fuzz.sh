#!/usr/bin/env bash
# A short libFuzzer run (ASan + UBSan + LeakSanitizer) of the bundle manifest parser, seeded with the
# corpus in cpp/fuzz/corpus (copied: new inputs found during the run stay in the build folder).
#
#   bash cpp/fuzz/run_fuzz.sh            # 30 s; FUZZ_SECONDS=300 for longer
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
rm -rf "$DIR/corpus" "$DIR/artifacts"
mkdir -p "$DIR/corpus" "$DIR/artifacts"
cp cpp/fuzz/corpus/* "$DIR/corpus/"
echo "== libFuzzer: manifest parser, ${SECONDS_TO_RUN} s"
set +e
ASAN_OPTIONS=detect_leaks=1 "$DIR/fuzz_manifest" "$DIR/corpus" -dict=cpp/fuzz/manifest.dict \
  -max_total_time="$SECONDS_TO_RUN" -max_len=16384 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$DIR/artifacts/" 2>&1 | tail -n 15
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  echo "run_fuzz.sh: the fuzzer found a failing input (exit $status); see $DIR/artifacts/" >&2
  exit "$status"
fi
echo "fuzz_manifest: no crash, leak or sanitizer report in ${SECONDS_TO_RUN} s"
