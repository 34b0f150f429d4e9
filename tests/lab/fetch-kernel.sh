#!/usr/bin/env bash
# Fetches Debian's own kernel (the .deb of linux-image-amd64's dependency, never installed,
# only unpacked) into a cache directory, once. Prints the path of the vmlinuz on stdout.
# Usage: fetch-kernel.sh CACHE_DIR
# Installs nothing: scripts/test.sh installs every package; a missing tool stops this script
# with its name. The cache (CACHE_DIR/kroot) is built in a temporary folder, checked, and only
# then renamed into place; a cache that fails the same check on reuse is built again.
set -euo pipefail
cache=${1:?usage: fetch-kernel.sh CACHE_DIR}
die() { echo "fetch-kernel.sh: $*" >&2; exit 2; }
for pair in apt-get:apt apt-cache:apt dpkg:dpkg flock:util-linux; do
  command -v "${pair%%:*}" >/dev/null || die "${pair%%:*} is missing (package ${pair##*:})"
done
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
cd "$cache"
# One fetch at a time (the NUMA lab's tests and the power-loss lab share the cache).
exec 9>"$cache/.fetch-kernel.lock"
flock 9
rm -rf kroot.?????? # left by a killed run

# A usable kernel tree: one vmlinuz and its modules tree holding every module
# its modules.order lists (the lab initramfs builders copy brd, btrfs and what they need).
# Everything is in place before `.complete` (written last, before the rename) names the package.
valid() {
  local root=$1 vmlinuz version mods n=0 rel
  [[ -s $root/.complete ]] || return 1
  vmlinuz=$(ls "$root"/boot/vmlinuz-* 2>/dev/null | head -n1)
  [[ -s $vmlinuz ]] || return 1
  version=${vmlinuz##*/vmlinuz-}
  mods=$root/lib/modules/$version
  [[ -s $mods/modules.order && -d $mods/kernel/fs/btrfs ]] || return 1
  while read -r rel; do
    [[ -s $mods/$rel || -s $mods/$rel.xz || -s $mods/$rel.zst ]] || { echo "fetch-kernel.sh: $rel missing in $mods" >&2; return 1; }
    n=$((n + 1))
  done < "$mods/modules.order"
  ((n > 100))
}
print() { ls "$PWD"/kroot/boot/vmlinuz-* | head -n1; }

if valid kroot; then print; exit 0; fi
[[ -e kroot ]] && echo "fetch-kernel.sh: $cache/kroot is incomplete: fetching it again" >&2

need_update=1
apt_update() { if ((need_update)); then apt-get update -qq >&2; need_update=0; fi; }
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image/{print $2; exit}')
if [[ -z $kpkg ]]; then
  apt_update
  kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image/{print $2; exit}')
fi
[[ -n $kpkg ]] || die "cannot find the package linux-image-amd64 depends on"

work=$(mktemp -d "$cache/kroot.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && { apt-get download "$kpkg" >&2 || { apt_update; apt-get download "$kpkg" >&2; }; })
dpkg -x "$work/$kpkg"_*.deb "$work/x"
# NUMA is built in; the modules tree is kept for btrfs and brd (the initramfs builders copy
# only those and what they depend on, by each module's `depends=`).
new=$work/kroot
mkdir -p "$new/boot" "$new/lib"
mv "$work"/x/boot/vmlinuz-* "$new/boot/"
src=$work/x/lib/modules
[[ -d $src ]] || src=$work/x/usr/lib/modules
mv "$src" "$new/lib/modules"
echo "$kpkg" > "$new/.complete"
valid "$new" || die "the unpacked $kpkg is not a usable kernel tree"
rm -rf kroot
mv "$new" kroot
print
