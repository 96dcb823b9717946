#!/usr/bin/env bash
# Runs a Windows program of the MinGW cross build under Wine (its ctest emulator, cpp/tests/cross/run_cross.sh windows):
#   wine_run.sh PROGRAM.exe [ARGS...]
# The program finds its DLLs beside itself and in FLEXAVATAR_WINE_DLL_DIRS (host folders, ':'-separated: the
# build folder's flexavatar_runtime.dll, ONNX Runtime's onnxruntime.dll), which go to Wine's WINEPATH. Host paths
# in ARGS work as they are: Wine maps / to drive Z:, and a Windows program reads "/tmp/x" as Z:\tmp\x.
set -euo pipefail
WINE=$(command -v wine64 || command -v wine || ls /usr/lib/wine/wine64 2>/dev/null || true)
[ -n "$WINE" ] || { echo "wine_run.sh: wine64 not found (apt-get install wine64)" >&2; exit 127; }
export WINEDEBUG=${WINEDEBUG:--all}  # Wine's own fixme/err lines would mix into the program's stderr
windows_dirs=""
IFS=':' read -r -a dirs <<<"${FLEXAVATAR_WINE_DLL_DIRS:-}"
for dir in "${dirs[@]}"; do
  [ -n "$dir" ] && windows_dirs="$windows_dirs;Z:${dir//\//\\}"
done
export WINEPATH="${windows_dirs#;}${WINEPATH:+;$WINEPATH}"
exec "$WINE" "$@"
