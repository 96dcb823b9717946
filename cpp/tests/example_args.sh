#!/usr/bin/env bash
# ctest: flexavatar_render's argument and input handling without a bundle. Usage errors (argv) exit 2, bad
# input files exit 1; each prints one line naming the argument; nothing is written.
#   example_args.sh PATH/TO/flexavatar_render SCRATCH_DIR [EMULATOR...]   (a cross build's: runs the program)
set -u
EXE=$1 WORK=$2
shift 2
RUN=("$@" "$EXE")
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK" || exit 1
[ -x "$EXE" ] || { echo "no executable $EXE (the install_example test builds it)"; exit 1; }
FAILED=0
npy() {  # FILE DESCR FORTRAN SHAPE DATA_BYTES: a .npy v1.0 header + zero data
  local header="{'descr': '$2', 'fortran_order': $3, 'shape': $4, }"
  while [ $(( (${#header} + 11) % 64 )) -ne 0 ]; do header="$header "; done
  header="$header"$'\n'
  { printf '\223NUMPY\001\000'; printf "\\$(printf %03o $(( ${#header} % 256 )))\\$(printf %03o $(( ${#header} / 256 )))"
    printf '%s' "$header"; head -c "$5" /dev/zero; } >"$1"
}
expect() {  # CODE PATTERN ARGS...: exit code CODE and one stderr line matching PATTERN
  local code=$1 pattern=$2; shift 2
  "${RUN[@]}" "$@" >out.txt 2>err.txt
  local rc=$? lines; lines=$(wc -l <err.txt)
  if [ "$rc" -ne "$code" ] || ! grep -q -- "$pattern" err.txt || [ "$lines" -ne 1 ]; then
    echo "FAIL: flexavatar_render $* -> exit $rc (expected $code), stderr ($lines lines, expected /$pattern/):"
    cat err.txt; FAILED=1
  else
    echo "ok: $* -> $rc: $(cat err.txt)"
  fi
}
npy e.npy '<f4' False '(2, 135)' 1080
npy ei4.npy '<i4' False '(2, 135)' 1080
npy ef.npy '<f4' True '(2, 135)' 1080
npy short.npy '<f4' False '(2, 135)' 100
echo "not a npy" >text.npy
mkdir bundle && touch afile
"${RUN[@]}" >/dev/null 2>err.txt; rc=$?
{ [ $rc -eq 2 ] && grep -q usage err.txt; } || { echo "FAIL: no arguments -> exit $rc"; FAILED=1; }
expect 2 "missing argument AVATAR" bundle
expect 2 "missing argument OUT_DIR" bundle - e.npy
expect 2 "extra argument 'more'" bundle - e.npy o more
expect 2 "unknown option '--bogus'" bundle - e.npy o --bogus
expect 2 "unknown option '-x'" bundle - e.npy o -x
expect 2 "--camera-tracked needs EXPRESSIONS a tracked sequence .npz" bundle - - o --camera-tracked
expect 2 "--head-pose was given with --camera-tracked" bundle - e.npz o --camera-tracked --head-pose
for flag in --size --threads --device --rasterizer --features --fused-decoders --precision; do expect 2 "$flag: missing value" bundle - e.npy o $flag; done
expect 2 "size: expected an integer" bundle - e.npy o --size abc
expect 2 "size: expected an integer" bundle - e.npy o --size 0
expect 2 "threads: expected an integer" bundle - e.npy o --threads 99999999999999999999
expect 2 "device: expected auto, cpu, cuda, cuda:N, gpu, gpu:N or npu, got 'tpu'" bundle - e.npy o --device tpu
expect 2 "device: expected auto, cpu, cuda, cuda:N, gpu, gpu:N or npu, got 'npu:1'" bundle - e.npy o --device npu:1
expect 2 "device: expected cuda:N" bundle - e.npy o --device cuda:
expect 2 "device: expected gpu:N with N a device index, got 'gpu:x'" bundle - e.npy o --device gpu:x
for device in gpu gpu:1 npu; do expect 1 "BUNDLE nobundle" nobundle - e.npy o --device $device; done  # accepted
expect 2 "rasterizer: expected" bundle - e.npy o --rasterizer gpu
expect 2 "fused-decoders: expected auto, on or off, got 'yes'" bundle - e.npy o --fused-decoders yes
expect 2 "precision: expected fp32, fp16 or int8, got 'int4'" bundle - e.npy o --precision int4
expect 2 "features needs a photo" bundle - e.npy o --features f.npy
expect 1 "BUNDLE nobundle" nobundle - e.npy o
expect 1 "BUNDLE nobundle" nobundle - e.npy o --precision int8   # accepted: the bundle is what fails
expect 1 "AVATAR missing.npy: no such file" bundle missing.npy e.npy o
expect 1 "AVATAR bundle: not a regular file" bundle bundle e.npy o
expect 1 "features missing.npy: no such file" bundle e.npy e.npy o --features missing.npy
expect 1 "EXPRESSIONS missing.npy: cannot open" bundle - missing.npy o
expect 1 "EXPRESSIONS text.npy: neither a .npy file nor an .npz archive" bundle - text.npy o
expect 1 "EXPRESSIONS ei4.npy: dtype .<i4., expected float32" bundle - ei4.npy o
expect 1 "EXPRESSIONS ef.npy: Fortran-ordered array, expected C order" bundle - ef.npy o
expect 1 "EXPRESSIONS short.npy: 100 data bytes, the header.s shape (2, 135) needs 1080" bundle - short.npy o
expect 1 "OUT_DIR afile: exists and is not a directory" bundle - e.npy afile
expect 1 "OUT_DIR no/such: cannot create" bundle - e.npy no/such
[ ! -e o ] || { echo "FAIL: OUT_DIR o was created by a failing run"; FAILED=1; }
exit $FAILED
