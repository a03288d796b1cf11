#!/usr/bin/env bash
# Builds ferrite's guest kernel (vmlinux with a PVH entry, and an LZ4 bzImage)
# from Debian's linux-source-6.1 package, reproducibly:
#
#   make tinyconfig + resources/guest/kernel.config + make olddefconfig,
#   with resources/guest/patches/*.patch applied to the source.
#
# Usage: build-kernel.sh [OUT_BASE]
#   OUT_BASE (or $FERRITE_GUEST_KERNEL_DIR) defaults to
#   ${CARGO_TARGET_DIR:-<repo>/target}/guest-kernel.
#
# Results go to OUT_BASE/<key>/ (vmlinux, bzImage, config), where <key> hashes
# everything that decides the result: the config fragment, the source package
# version, the patches, this script and the compiler version. A second run with
# the same inputs does no work. The output directory is the last line printed
# on stdout; progress and the build log go to stderr.
#
# The unpacked, patched source tree is kept in OUT_BASE/src-<srckey>/ (srckey:
# source version + patches), so a config change rebuilds incrementally.
# Set FERRITE_JOBS to change the make parallelism (default: nproc).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
fragment="$here/kernel.config"
tarball=/usr/src/linux-source-6.1.tar.xz
srcpkg=linux-source-6.1

log() { echo "build-kernel: $*" >&2; }
die() { echo "build-kernel: error: $*" >&2; exit 1; }

base="${1:-${FERRITE_GUEST_KERNEL_DIR:-${CARGO_TARGET_DIR:-$repo/target}/guest-kernel}}"
jobs="${FERRITE_JOBS:-$(nproc)}"

for tool in make gcc flex bison bc lz4 patch tar sha256sum dpkg-query; do
  command -v "$tool" >/dev/null || die "'$tool' not found (run scripts/setup)"
done
[ -r "$tarball" ] || die "$tarball missing (apt-get install $srcpkg; or run scripts/setup)"
[ -r "$fragment" ] || die "$fragment missing"

srcver="$(dpkg-query -W -f='${Version}' "$srcpkg" 2>/dev/null)" ||
  die "package $srcpkg is not installed"
mapfile -t patches < <(find "$here/patches" -maxdepth 1 -name '*.patch' | LC_ALL=C sort)

# Hash of the source: package version and every patch (name and content).
srckey="$({
  echo "src-v1 $srcpkg $srcver"
  for p in "${patches[@]}"; do echo "patch $(basename "$p")"; cat "$p"; done
} | sha256sum | cut -c1-16)"
# Hash of the result: source, config fragment, this script, compiler.
key="$({
  echo "kernel-v1 $srckey"
  echo "fragment"; cat "$fragment"
  echo "script"; cat "${BASH_SOURCE[0]}"
  echo "gcc $(gcc -dumpfullversion) $(gcc -dumpmachine)"
} | sha256sum | cut -c1-16)"

out="$base/$key"
mkdir -p "$base"
# One build at a time per OUT_BASE (parallel test runs share the cache).
exec 9>"$base/.lock"
flock 9

if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ] && [ -f "$out/config" ]; then
  log "cached: $out"
  echo "$out"
  exit 0
fi

started=$SECONDS
tree="$base/src-$srckey"
src="$tree/linux-source-6.1"
if [ ! -f "$tree/.ready" ]; then
  log "unpacking $srcpkg $srcver into $tree"
  rm -rf "$tree"
  mkdir -p "$tree"
  tar -xf "$tarball" -C "$tree"
  [ -f "$src/Makefile" ] || die "unexpected layout in $tarball (no linux-source-6.1/Makefile)"
  for p in "${patches[@]}"; do
    log "applying $(basename "$p")"
    patch -d "$src" -p1 --forward --batch --quiet <"$p" || die "patch $(basename "$p") does not apply"
  done
  touch "$tree/.ready"
fi

# Fixed build identity, so the same inputs give the same kernel banner.
export KBUILD_BUILD_TIMESTAMP="1970-01-01 00:00:00 UTC"
export KBUILD_BUILD_USER=ferrite KBUILD_BUILD_HOST=ferrite KBUILD_BUILD_VERSION=1

buildlog="$tree/build.log"
: >"$buildlog"
run_make() {
  if ! make -C "$src" -j"$jobs" "$@" >>"$buildlog" 2>&1; then
    tail -n 40 "$buildlog" >&2
    die "make $* failed (full log: $buildlog)"
  fi
}

log "configuring (tinyconfig + $(basename "$fragment"))"
run_make tinyconfig
"$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$fragment" >>"$buildlog" 2>&1 ||
  die "merge_config.sh failed (log: $buildlog)"
run_make olddefconfig

# Every line of the fragment must have survived olddefconfig unchanged: a
# missing dependency silently drops an option, which would only show at boot.
bad=0
while IFS= read -r line; do
  if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
    if ! grep -qxF "$line" "$src/.config"; then
      got="$(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" "$src/.config" || echo "absent")"
      log "wanted '$line', got '$got'"
      bad=1
    fi
  elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
    if grep -qE "^${BASH_REMATCH[1]}=" "$src/.config"; then
      log "wanted '$line', got '$(grep -E "^${BASH_REMATCH[1]}=" "$src/.config")'"
      bad=1
    fi
  fi
done <"$fragment"
[ "$bad" -eq 0 ] || die "config fragment not satisfied (see above; .config: $src/.config)"

log "building vmlinux and bzImage with make -j$jobs (log: $buildlog)"
run_make vmlinux bzImage

tmp="$base/.tmp-$key-$$"
rm -rf "$tmp"
mkdir -p "$tmp"
cp "$src/vmlinux" "$tmp/vmlinux"
cp "$src/arch/x86/boot/bzImage" "$tmp/bzImage"
cp "$src/.config" "$tmp/config"
cp "$fragment" "$tmp/kernel.config"
rm -rf "$out"
mv "$tmp" "$out"
log "built in $((SECONDS - started)) s: $out"
echo "$out"
