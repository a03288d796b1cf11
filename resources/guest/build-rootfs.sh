#!/usr/bin/env bash
# Builds ferrite's guest root disk: a 64 MiB ext4 image holding static busybox
# (with its applet links), the checking /init (resources/guest/rootfs/init),
# a static `outb` helper for the debug-exit port and the power-cut tests'
# static `ackwriter`. Needs no root
# privileges: the tree is staged in a directory and `mkfs.ext4 -d` copies it.
#
# Usage: build-rootfs.sh [OUT_BASE]
#   OUT_BASE (or $FERRITE_GUEST_ROOTFS_DIR) defaults to
#   ${CARGO_TARGET_DIR:-<repo>/target}/guest-rootfs.
#
# The image goes to OUT_BASE/<key>/rootfs.ext4, where <key> hashes this
# script, the files under rootfs/, and the busybox-static, e2fsprogs and gcc
# versions; a second run with the same inputs does no work. The image path is
# the last line printed on stdout. The image is the pristine original: copy it
# before booting a guest that mounts it read-write.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
files="$here/rootfs"

log() { echo "build-rootfs: $*" >&2; }
die() { echo "build-rootfs: error: $*" >&2; exit 1; }

base="${1:-${FERRITE_GUEST_ROOTFS_DIR:-${CARGO_TARGET_DIR:-$repo/target}/guest-rootfs}}"
size=64M
busybox=/bin/busybox

for tool in mkfs.ext4 debugfs e2fsck gcc sha256sum dpkg-query; do
  command -v "$tool" >/dev/null || die "'$tool' not found (run scripts/setup)"
done
bbver="$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null)" ||
  die "package busybox-static is not installed (run scripts/setup)"
e2ver="$(dpkg-query -W -f='${Version}' e2fsprogs 2>/dev/null)" || die "package e2fsprogs is not installed"
[ -x "$busybox" ] || die "$busybox missing (apt-get install busybox-static)"
# A dynamic busybox (package `busybox`) would not run in the guest.
if LC_ALL=C file -b "$busybox" 2>/dev/null | grep -q 'dynamically linked'; then
  die "$busybox is dynamically linked: install busybox-static"
fi

key="$({
  echo "rootfs-v1 busybox-static $bbver e2fsprogs $e2ver size $size"
  echo "gcc $(gcc -dumpfullversion) $(gcc -dumpmachine)"
  echo "script"; cat "${BASH_SOURCE[0]}"
  (cd "$files" && find . -type f | LC_ALL=C sort | while read -r f; do echo "file $f"; cat "$f"; done)
} | sha256sum | cut -c1-16)"

out="$base/$key"
img="$out/rootfs.ext4"
mkdir -p "$base"
exec 9>"$base/.lock"
flock 9

if [ -f "$img" ]; then
  log "cached: $img"
  echo "$img"
  exit 0
fi

started=$SECONDS
tmp="$base/.tmp-$key-$$"
rm -rf "$tmp"
stage="$tmp/root"
mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,root,etc}
chmod 1777 "$stage/tmp"

cp "$busybox" "$stage/bin/busybox"
# One link per applet, where busybox would install it (bin/sh, sbin/reboot...).
"$busybox" --list-full | while read -r applet; do
  [ "$applet" = bin/busybox ] && continue
  mkdir -p "$stage/$(dirname "$applet")"
  rel="$(realpath -m --relative-to="$stage/$(dirname "$applet")" "$stage/bin/busybox")"
  ln -sf "$rel" "$stage/$applet"
done
[ -L "$stage/bin/sh" ] || die "busybox --list-full gave no bin/sh"

for prog in outb ackwriter; do
  gcc -static -Os -Wall -Wextra -Werror -o "$stage/bin/$prog" "$files/$prog.c"
  strip "$stage/bin/$prog" 2>/dev/null || true
done
install -m 0755 "$files/init" "$stage/init"
# Booted from a disk, the kernel runs /sbin/init (/init is only the
# initramfs default): point it at the checking script, not busybox init.
ln -sfn ../init "$stage/sbin/init"
echo "ferrite-guest" >"$stage/etc/hostname"

# Same inputs, same image: fixed timestamps, UUID and directory hash seed.
find "$stage" -exec touch -h -d @0 {} +
E2FSPROGS_FAKE_TIME=1 mkfs.ext4 -q -F -L ferrite-root \
  -U 6c1e2a80-5f0e-4d6b-9a1f-000000000001 \
  -E root_owner=0:0,hash_seed=6c1e2a80-5f0e-4d6b-9a1f-000000000002 \
  -d "$stage" "$tmp/rootfs.ext4" "$size" >&2 ||
  die "mkfs.ext4 -d failed"
# mkfs.ext4 -d copies each file's ctime, which only root can set on the
# staged files: set it in the image instead.
(cd "$stage" && find . | LC_ALL=C sort | sed -e 's|^\.||' -e 's|^$|/|' -e 's|.*|sif "&" ctime @0|') >"$tmp/ctime.cmds"
E2FSPROGS_FAKE_TIME=1 debugfs -w -f "$tmp/ctime.cmds" "$tmp/rootfs.ext4" >/dev/null 2>"$tmp/debugfs.log" ||
  die "debugfs could not set ctimes: $(tail -n 3 "$tmp/debugfs.log")"
if grep -v '^debugfs' "$tmp/debugfs.log" | grep -q .; then
  die "debugfs could not set ctimes: $(grep -v '^debugfs' "$tmp/debugfs.log" | head -n 3)"
fi
e2fsck -fn "$tmp/rootfs.ext4" >"$tmp/fsck.log" 2>&1 || die "e2fsck finds the new image broken: $(tail -n 5 "$tmp/fsck.log")"
rm -rf "$stage" "$tmp/ctime.cmds" "$tmp/debugfs.log" "$tmp/fsck.log"
rm -rf "$out"
mv "$tmp" "$out"
log "built in $((SECONDS - started)) s: $img"
echo "$img"
