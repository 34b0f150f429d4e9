#!/usr/bin/env bash
# Fetches Debian's own kernel (the .deb of linux-image-amd64's dependency, never installed,
# only unpacked) into a cache directory, once. Prints the path of the vmlinuz on stdout.
# Usage: fetch-kernel.sh CACHE_DIR
# With CI=true, QEMU, busybox and cpio are installed with apt-get when missing.
set -euo pipefail
cache=${1:?usage: fetch-kernel.sh CACHE_DIR}
mkdir -p "$cache"
cd "$cache"

if [[ -n $(ls kroot/boot/vmlinuz-* 2>/dev/null) ]]; then
  ls kroot/boot/vmlinuz-* | head -n1 | sed "s|^|$PWD/|"
  exit 0
fi

need_update=1
apt_update() { if ((need_update)); then apt-get update -qq >&2; need_update=0; fi; }

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v busybox >/dev/null || missing+=(busybox-static)
command -v cpio >/dev/null || missing+=(cpio)
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
# Only the kernel image is needed: NUMA is built in, no module is loaded by the lab.
mkdir -p kroot/boot
mv kroot.tmp/boot/vmlinuz-* kroot/boot/
rm -rf kroot.tmp "$kpkg"_*.deb
ls kroot/boot/vmlinuz-* | head -n1 | sed "s|^|$PWD/|"
