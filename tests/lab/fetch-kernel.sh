#!/usr/bin/env bash
# Fetches Debian's own kernel (the .deb of linux-image-amd64's dependency, never installed,
# only unpacked) into a cache directory, once. Prints the path of the vmlinuz on stdout.
# Usage: fetch-kernel.sh CACHE_DIR
# As root, QEMU, busybox, cpio and btrfs-progs are installed with apt-get when missing.
set -euo pipefail
cache=${1:?usage: fetch-kernel.sh CACHE_DIR}
mkdir -p "$cache"
cd "$cache"

# The kernel and the modules the lab's filesystem needs (brd: a RAM disk whose pages are not
# page cache, so FilePages counts only the filesystem's own cache; btrfs, as in production).
if [[ -n $(ls kroot/boot/vmlinuz-* 2>/dev/null) && -d $(ls -d kroot/lib/modules/*/kernel 2>/dev/null | head -n1)/fs/btrfs ]]; then
  ls kroot/boot/vmlinuz-* | head -n1 | sed "s|^|$PWD/|"
  exit 0
fi

need_update=1
apt_update() { if ((need_update)); then apt-get update -qq >&2; need_update=0; fi; }

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v busybox >/dev/null || missing+=(busybox-static)
command -v cpio >/dev/null || missing+=(cpio)
command -v mkfs.btrfs >/dev/null || [[ -x /sbin/mkfs.btrfs ]] || missing+=(btrfs-progs)
if ((${#missing[@]})); then
  [[ $(id -u) -eq 0 ]] || { echo "missing packages: ${missing[*]} (run as root to install)" >&2; exit 2; }
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image/{print $2; exit}')
if [[ -z $kpkg ]]; then
  apt_update
  kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image/{print $2; exit}')
fi
[[ -n $kpkg ]] || { echo "cannot find the package linux-image-amd64 depends on" >&2; exit 2; }
if ! ls "$kpkg"_*.deb >/dev/null 2>&1; then
  apt-get download "$kpkg" >&2 || { apt_update; apt-get download "$kpkg" >&2; }
fi
rm -rf kroot.tmp
dpkg -x "$kpkg"_*.deb kroot.tmp
# NUMA is built in; the modules tree is kept for btrfs and brd (build-initramfs.sh copies
# only those and what they depend on, by each module's `depends=`).
rm -rf kroot
mkdir -p kroot/boot kroot/lib
mv kroot.tmp/boot/vmlinuz-* kroot/boot/
mv kroot.tmp/lib/modules kroot/lib/modules
rm -rf kroot.tmp "$kpkg"_*.deb
ls kroot/boot/vmlinuz-* | head -n1 | sed "s|^|$PWD/|"
