#!/usr/bin/env bash
# Fetches the btrfs module (and the modules it needs) of the lab's kernel into
# CACHE_DIR/powerloss-modules, once: the lab's fetch-kernel.sh keeps only the vmlinuz, and
# Debian builds btrfs as a module. Prints the module folder on stdout, its files in load order
# listed in CACHE_DIR/powerloss-modules/order.
# Usage: fetch-modules.sh CACHE_DIR VMLINUZ
set -euo pipefail
cache=${1:?usage: fetch-modules.sh CACHE_DIR VMLINUZ}
vmlinuz=${2:?vmlinuz path}
out=$cache/powerloss-modules
if [[ -s $out/order ]] && grep -q btrfs "$out/order" && grep -q virtio_blk "$out/order"; then echo "$out"; exit 0; fi
version=$(basename "$vmlinuz"); version=${version#vmlinuz-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
pkg=linux-image-$version
apt-get download "$pkg" >&2 || { apt-get update -qq >&2; apt-get download "$pkg" >&2; }
dpkg -x "$pkg"_*.deb kroot
mods=kroot/lib/modules/$version/kernel
mkdir -p "$out.tmp"
order=()
add() {
  local name=$1 optional=${2:-} f dep
  for o in "${order[@]:-}"; do [[ $o == "$name.ko" ]] && return 0; done
  f=$(find "$mods" -name "$name.ko" -o -name "$name.ko.xz" -o -name "$name.ko.zst" | head -n1)
  if [[ -z $f ]]; then
    [[ -n $optional ]] && return 0 # built into the kernel
    echo "module $name not found in $pkg" >&2; exit 2
  fi
  for dep in $(modinfo -F depends "$f" | tr ',' ' '); do add "$dep"; done
  case $f in
    *.xz) xz -dc "$f" > "$out.tmp/$name.ko" ;;
    *.zst) zstd -qdc "$f" > "$out.tmp/$name.ko" ;;
    *) cp "$f" "$out.tmp/$name.ko" ;;
  esac
  order+=("$name.ko")
}
# libcrc32c asks the crypto API for crc32c at load time: a provider goes first.
add crc32c_generic
add btrfs
# The virtio disk: built in on some kernels, modules on Debian's.
add virtio_pci optional
add virtio_blk optional
printf '%s\n' "${order[@]}" > "$out.tmp/order"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "$out"
