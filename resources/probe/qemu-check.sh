#!/usr/bin/env bash
# Dev tool (not CI): runs every probe scenario under QEMU's software emulator
# (TCG) against QEMU's own virtio-blk, the reference device, in every cache
# mode, and checks the probe's output and the images it wrote.
#
#   resources/probe/qemu-check.sh            # all checks
#   PROBE_ELF=path/to/probe.elf resources/probe/qemu-check.sh
#   ACCEL=kvm resources/probe/qemu-check.sh   # through this host's KVM instead
#
# Needs qemu-system-x86_64 and python3. Images live under /var/tmp (a disk
# file system, so cache=none and directsync can open them with O_DIRECT).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ -z "${PROBE_ELF:-}" ]; then
  cargo build -q -p probe
  PROBE_ELF=$(ls -t target/debug/build/probe-*/out/probe.elf | head -1)
fi
work=$(mktemp -d /var/tmp/probe-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0

# QEMU's microvm gives the first -device the transport at 0xfeb02e00, the
# next one 0x200 lower. Its auto-kernel-cmdline does not reach a PVH kernel
# (the command line is cut at its original length), so we append the
# virtio_mmio.device= entries ourselves, in the same 512@ADDR:IRQ form.
mmio_entry() { printf 'virtio_mmio.device=512@0x%x:%d' $((0xfeb02e00 - 0x200 * $1)) $((28 - $1)); }

# run NAME EXPECTED_RC APPEND [DISK_SPEC...]; DISK_SPEC is
# "file,drive-options;device-options". Output goes to $work/NAME.log.
run() {
  local name=$1 want=$2 append=$3
  shift 3
  local args=() i=0 spec auto=1
  # A test that names the transport itself gets no automatic entry.
  [[ $append == *virtio_mmio.device=* ]] && auto=0
  for spec in "$@"; do
    args+=(-drive "id=d$i,format=raw,if=none,file=${spec%%;*}")
    args+=(-device "virtio-blk-device,drive=d$i${spec#*;}")
    [ $auto = 0 ] || append+=" $(mmio_entry $i)"
    i=$((i + 1))
  done
  local rc=0
  timeout "${RUN_TIMEOUT:-60}" qemu-system-x86_64 -M microvm -accel "${ACCEL:-tcg}" -nodefaults -no-user-config \
    -nographic -serial stdio -global virtio-mmio.force-legacy=false \
    -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel "$PROBE_ELF" -append "$append" \
    "${args[@]}" >"$work/$name.log" 2>"$work/$name.err" || rc=$?
  if [ "$rc" != "$want" ]; then
    bad "$name" "exit status $rc, expected $want"
    return 1
  fi
}

ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() {
  failed=$((failed + 1))
  echo "FAIL $1: $2"
  sed 's/^/     | /' "$work/$1.log" | tail -20
}

# expect NAME REGEX...: every regex must match a line of NAME's output.
expect() {
  local name=$1 re
  shift
  for re in "$@"; do
    if ! grep -Eq -- "$re" "$work/$name.log"; then
      bad "$name" "no line matches /$re/"
      return 1
    fi
  done
  ok "$name"
}

# check_stream IMAGE COUNT: block b must hold the last seq written to it.
check_stream() {
  python3 - "$1" "$2" <<'PY'
import struct, sys
path, count = sys.argv[1], int(sys.argv[2])
data = open(path, "rb").read()
blocks = len(data) // 4096
for b in range(min(blocks, count)):
    seq = max(n for n in range(count) if n % blocks == b)
    want = struct.pack("<Q", seq) * 512
    if data[b * 4096:(b + 1) * 4096] != want:
        sys.exit(f"block {b}: expected seq {seq}")
PY
}

img() { truncate -s "${2:-64M}" "$work/$1.img"; echo "$work/$1.img"; }

all="info,rw,flush,wce,getid,discard,zeroes,badchain"
for mode in writeback none writethrough directsync unsafe; do
  case $mode in writethrough | directsync) wb=0 ;; *) wb=1 ;; esac
  f=$(img "$mode")
  run "all-$mode" 1 "probe=$all" "$f,cache=$mode,discard=unmap;,serial=ser-$mode" &&
    expect "all-$mode" "^PROBE info disk=0 features=0x[0-9a-f]+ capacity=131072 blk_size=512 writeback=$wb " \
      "^PROBE rw disk=0 .*beyond_end_status=1 result=ok" \
      "^PROBE flush disk=0 write_status=0 flush_status=0 result=ok" \
      "^PROBE wce disk=0 writeback_set=0 writeback_read=0 result=ok" \
      "^PROBE wce disk=0 writeback_set=1 writeback_read=1 result=ok" \
      "^PROBE getid disk=0 status=0 id=ser-$mode result=ok" \
      "^PROBE discard disk=0 .*status=0 .*result=ok" \
      "^PROBE zeroes disk=0 status=0 result=ok" \
      "^PROBE badchain disk=0 kind=short_header outcome=needs_reset recovered=1 result=ok" \
      "^PROBE badchain disk=0 kind=readonly_status outcome=needs_reset recovered=1 result=ok" \
      "^PROBE verdict=pass reason=ok$"
  f=$(img "stream-$mode")
  run "stream-$mode" 1 "probe=stream stream.count=40 stream.depth=4 stream.flush_every=8" \
    "$f,cache=$mode;" &&
    expect "stream-$mode" "^PROBE stream disk=0 count=40 depth=4 flush_every=8$" \
      "^PROBE ack seq=39$" "^PROBE flushed seq=39$" "^PROBE stream disk=0 acks=40 result=ok" \
      "^PROBE verdict=pass" &&
    if check_stream "$f" 40; then ok "stream-$mode-image"; else bad "stream-$mode" "image content"; fi
done

# A driver that refuses FLUSH and CONFIG_WCE: Linux then calls the cache
# write-through; the probe skips the flush and wce scenarios.
f=$(img nofeat)
run nofeatures 1 "probe=info,rw,flush,wce,stream stream.count=4 stream.flush_every=2 probe.nofeatures=flush,wce" \
  "$f,cache=writeback;" &&
  expect nofeatures "^PROBE info disk=0 .* writeback=0 " "skipped=flush_not_negotiated result=ok" \
    "skipped=config_wce_not_negotiated result=ok" "note=flush_not_negotiated" "^PROBE verdict=pass"
neg=$(grep -Eo 'negotiated=0x[0-9a-f]+' "$work/nofeatures.log" || echo negotiated=0x200)
if (((${neg#negotiated=} & (1 << 9 | 1 << 11)) == 0)); then ok nofeatures-bits; else bad nofeatures "$neg"; fi

# Without EVENT_IDX the probe honours VRING_USED_F_NO_NOTIFY instead.
f=$(img noevidx)
run no-event-idx 1 "probe=rw,stream stream.count=20 stream.depth=4 probe.nofeatures=event_idx" "$f;" &&
  expect no-event-idx "^PROBE rw disk=0 .*result=ok" "^PROBE ack seq=19$" "^PROBE verdict=pass"

# Read-only drive: writes refused with IOERR, flush and reads succeed.
f=$(img ro)
run readonly 1 "probe=info,readonly" "$f,readonly=on;" &&
  expect readonly "^PROBE readonly disk=0 ro=1 write_status=1 flush_status=0 read_status=0 result=ok" \
    "^PROBE verdict=pass"

# The probe can fail: readonly on a writable drive must give verdict=fail.
f=$(img rw-not-ro)
run readonly-on-writable 3 "probe=readonly" "$f;" &&
  expect readonly-on-writable "^PROBE verdict=fail reason=ro_not_offered$"

run unknown-scenario 3 "probe=nosuch" "$(img unk);" &&
  expect unknown-scenario "^PROBE verdict=fail reason=unknown_scenario$"
run no-disks 3 "probe=info" && expect no-disks "^PROBE verdict=fail reason=no_disks$"

# Two disks, scenarios on the second only; 4K@ size form as ferrite writes it.
a=$(img two-a 32M)
b=$(img two-b 16M)
run two-disks 1 "probe=info,rw probe.disk=1" "$a;,serial=first" "$b;,serial=second" &&
  expect two-disks "^PROBE info disk=0 .*capacity=65536 " "^PROBE info disk=1 .*capacity=32768 " \
    "^PROBE rw disk=1 " "^PROBE verdict=pass"
if grep -q "^PROBE rw disk=0" "$work/two-disks.log"; then bad two-disks "ran on disk 0"; fi
f=$(img form4k)
run size-4k 1 "probe=rw virtio_mmio.device=4K@0xfeb02e00:28" "$f;" &&
  expect size-4k "^PROBE start disks=1 " "^PROBE rw disk=0 .*result=ok" "^PROBE verdict=pass"

# 4 KiB logical blocks: I/O stays block-aligned.
f=$(img lbs4k)
run blk4096 1 "probe=info,rw,flush,zeroes" "$f;,logical_block_size=4096,physical_block_size=4096" &&
  expect blk4096 "^PROBE info disk=0 .*blk_size=4096 " "^PROBE rw disk=0 .*result=ok" "^PROBE verdict=pass"

# Wrapping at the end of a small disk (16 blocks), and count=0 (forever).
f=$(img wrap 64K)
run wrap 1 "probe=stream stream.count=40 stream.depth=2" "$f;" &&
  expect wrap "^PROBE ack seq=39$" "^PROBE verdict=pass" &&
  if check_stream "$f" 40; then ok wrap-image; else bad wrap "image content"; fi
f=$(img forever 64K)
RUN_TIMEOUT=3 run forever 124 "probe=stream stream.count=0 stream.depth=3 stream.flush_every=5" "$f;" &&
  if [ "$(grep -c '^PROBE ack' "$work/forever.log")" -gt 100 ] && grep -q '^PROBE flushed' "$work/forever.log" &&
    ! grep -q verdict "$work/forever.log"; then ok forever; else bad forever "expected >100 acks, flushes, no verdict"; fi

echo "passed $passed, failed $failed"
[ "$failed" -eq 0 ]
