#!/usr/bin/env bash
# Cross-checks the guest kernel and root disk under QEMU, independently of
# ferrite: boots vmlinux (and once the bzImage) on QEMU's microvm machine with
# a virtio-mmio disk, once per cache mode, and expects /init's verdict
# (`GUEST verdict=pass`, debug-exit value 0x10, QEMU exit status 33).
#
# Usage: check-qemu.sh [MODE...]   (default: all five modes)
#   FERRITE_QEMU_ACCEL=tcg|kvm     (default tcg: QEMU's software emulator,
#                                   fast here; kvm uses /dev/kvm)
#   FERRITE_QEMU_APPEND="..."      extra kernel command line
#   FERRITE_QEMU_TIMEOUT=seconds   per boot (default 120 for tcg, 900 for kvm)
# Console logs go to ${CARGO_TARGET_DIR:-<repo>/target}/guest-qemu/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
logs="${CARGO_TARGET_DIR:-$repo/target}/guest-qemu"
accel="${FERRITE_QEMU_ACCEL:-tcg}"
extra="${FERRITE_QEMU_APPEND:-}"
if [ "$accel" = kvm ]; then timeout_s="${FERRITE_QEMU_TIMEOUT:-900}"; else timeout_s="${FERRITE_QEMU_TIMEOUT:-120}"; fi
command -v qemu-system-x86_64 >/dev/null || { echo "check-qemu: qemu-system-x86_64 not found (apt-get install qemu-system-x86)" >&2; exit 1; }

kernel_dir="$("$here/build-kernel.sh" | tail -n 1)"
image="$("$here/build-rootfs.sh" | tail -n 1)"
mkdir -p "$logs"

# boot KERNEL MODE: prints one summary line, returns non-zero on failure.
boot() {
  local kernel="$1" mode="$2" name disk log rc start secs
  name="$(basename "$kernel")-$mode"
  disk="$logs/$name.ext4"
  log="$logs/$name.log"
  cp "$image" "$disk"
  start=$(date +%s.%N)
  set +e
  timeout "$timeout_s" qemu-system-x86_64 \
    -M microvm,acpi=off,auto-kernel-cmdline=on -accel "$accel" -cpu max -smp 1 -m 256M \
    -nodefaults -no-user-config -nographic -no-reboot -serial stdio \
    -kernel "$kernel" \
    -append "console=ttyS0 root=/dev/vda rw reboot=k panic=-1 ferrite.cache=$mode $extra" \
    -device isa-debug-exit,iobase=0xf4,iosize=4 \
    -drive "id=d0,file=$disk,format=raw,if=none,cache=$mode" \
    -device virtio-blk-device,drive=d0 </dev/null >"$log" 2>&1
  rc=$?
  set -e
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  rm -f "$disk"
  local verdict init_at
  verdict="$(grep -a -o 'GUEST verdict=.*' "$log" | tr -d '\r' || true)"
  init_at="$(grep -a -m1 -E 'Run /.* as init process' "$log" | sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p' || true)"
  printf 'check-qemu: %-22s accel=%s exit=%s wall=%.1fs run_init_at=%ss %s\n' \
    "$name" "$accel" "$rc" "$secs" "${init_at:-?}" "${verdict:-no verdict}"
  [ "$rc" -eq 33 ] && [ "$verdict" = "GUEST verdict=pass" ] || {
    echo "check-qemu: $name failed; console log: $log" >&2
    return 1
  }
}

modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(writeback none writethrough directsync unsafe)
failed=0
for mode in "${modes[@]}"; do
  boot "$kernel_dir/vmlinux" "$mode" || failed=1
done
boot "$kernel_dir/bzImage" "${modes[0]}" || failed=1
exit "$failed"
