#!/usr/bin/env bash
# Runs an aarch64 Linux program on an x86-64 host under qemu-user (the ctest emulator of the aarch64 cross build,
# cpp/tests/cross/run_cross.sh aarch64):   qemu_aarch64.sh PROGRAM [ARGS...]
#
# ONNX Runtime reads /proc/cpuinfo at load (its cpuinfo library) and crashes on the host's x86 one, which
# qemu-user 7 passes through: the program therefore runs in a private mount namespace (unshare -m as root,
# else in a user namespace: unshare -rm) with an aarch64 /proc/cpuinfo (two Neoverse-N1 cores, fp/asimd/dotprod)
# bound over it.
set -euo pipefail
SYSROOT=${FLEXAVATAR_AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}
command -v qemu-aarch64 >/dev/null || { echo "qemu_aarch64.sh: qemu-aarch64 not found (apt-get install qemu-user)" >&2; exit 127; }
[ -d "$SYSROOT/lib" ] || { echo "qemu_aarch64.sh: no aarch64 libraries in $SYSROOT (apt-get install g++-aarch64-linux-gnu)" >&2; exit 127; }
if [ "${FLEXAVATAR_QEMU_NAMESPACE:-}" != 1 ]; then
  export FLEXAVATAR_QEMU_NAMESPACE=1
  if [ "$(id -u)" = 0 ]; then exec unshare -m "$0" "$@"; else exec unshare -rm "$0" "$@"; fi
fi
CPUINFO=$(mktemp)
trap 'rm -f "$CPUINFO"' EXIT
for cpu in 0 1; do
  printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$cpu"
done >"$CPUINFO"
mount --bind "$CPUINFO" /proc/cpuinfo
qemu-aarch64 -L "$SYSROOT" "$@"
