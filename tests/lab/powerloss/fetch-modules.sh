#!/usr/bin/env bash
# Gathers the btrfs module (and every module it needs) of the lab's kernel into
# CACHE_DIR/powerloss-modules, once: Debian builds btrfs and the virtio disk as modules. They
# come from the modules tree fetch-kernel.sh keeps beside VMLINUZ (kroot/lib/modules/VERSION).
# Prints the module folder on stdout, its files in load order listed in its `order`.
# Usage: fetch-modules.sh CACHE_DIR VMLINUZ
#
# A cache never outlives a failed build of it: the set is gathered in a temporary folder,
# checked (every module's `depends=` loaded before it, each built for VERSION), and only then
# renamed into place. The same check runs on reuse, so a broken set (from an older script) is
# gathered again, not trusted. A missing helper (modinfo, ...) stops the script with its name.
set -euo pipefail
cache=${1:?usage: fetch-modules.sh CACHE_DIR VMLINUZ}
vmlinuz=${2:?vmlinuz path}
die() { echo "fetch-modules.sh: $*" >&2; exit 2; }
for pair in modinfo:kmod xz:xz-utils zstd:zstd flock:util-linux find:findutils; do
  command -v "${pair%%:*}" >/dev/null || die "${pair%%:*} is missing (package ${pair##*:})"
done
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
out=$cache/powerloss-modules
version=$(basename "$vmlinuz"); version=${version#vmlinuz-}
mods=$(dirname "$(dirname "$vmlinuz")")/lib/modules/$version
[[ -d $mods/kernel ]] || die "no modules tree for $version at $mods (tests/lab/fetch-kernel.sh keeps it)"
exec 9>"$cache/.powerloss-modules.lock"
flock 9
rm -rf "$cache"/powerloss-modules.?????? # left by a killed run

# valid DIR: DIR/order lists btrfs and virtio_blk's place; every module listed is there, was
# built for $version, and each module its `depends=` names comes earlier in the order.
valid() {
  local dir=$1 m dep deps magic seen=" "
  [[ -s $dir/order ]] && grep -qx btrfs.ko "$dir/order" || return 1
  while read -r m; do
    [[ -s $dir/$m ]] || { echo "fetch-modules.sh: $m missing in $dir" >&2; return 1; }
    magic=$(modinfo -F vermagic "$dir/$m") || return 1
    [[ $magic == "$version "* ]] || { echo "fetch-modules.sh: $m is for ${magic%% *}, not $version" >&2; return 1; }
    deps=$(modinfo -F depends "$dir/$m") || return 1
    for dep in ${deps//,/ }; do
      [[ $seen == *" $dep.ko "* ]] || { echo "fetch-modules.sh: $m needs $dep, not loaded before it in $dir" >&2; return 1; }
    done
    seen+="$m "
  done < "$dir/order"
}

if valid "$out"; then echo "$out"; exit 0; fi
[[ -e $out ]] && echo "fetch-modules.sh: $out fails its check: gathering it again" >&2

work=$(mktemp -d "$cache/powerloss-modules.XXXXXX")
trap 'rm -rf "$work"' EXIT
order=()
find_module() { # the file of module $1 (dashes and underscores are one), or nothing
  find "$mods/kernel" \( -name "$1.ko*" -o -name "${1//_/-}.ko*" -o -name "${1//-/_}.ko*" \) | head -n1
}
add() { # add NAME [optional]: NAME after what it depends on; optional: built in when absent
  local name=$1 optional=${2:-} f dep deps soft softs
  for o in "${order[@]:-}"; do [[ $o == "$name.ko" ]] && return 0; done
  f=$(find_module "$name")
  if [[ -z $f ]]; then
    [[ -n $optional ]] && return 0
    die "module $name not found in $mods"
  fi
  # Modules it asks for by name before it loads (libcrc32c: crc32c, served by crc32c_generic).
  softs=$(modinfo -F softdep "$f" | sed -n 's/^pre: *//p')
  for soft in $softs; do
    if [[ -n $(find_module "$soft") ]]; then add "$soft"
    elif [[ -n $(find_module "${soft}_generic") ]]; then add "${soft}_generic"
    fi
  done
  deps=$(modinfo -F depends "$f")
  for dep in ${deps//,/ }; do add "$dep"; done
  case $f in
    *.xz) xz -dc "$f" > "$work/$name.ko" ;;
    *.zst) zstd -qdc "$f" > "$work/$name.ko" ;;
    *) cp "$f" "$work/$name.ko" ;;
  esac
  order+=("$name.ko")
}
# libcrc32c asks the crypto API for crc32c at load time: a provider goes first.
add crc32c_generic
add btrfs
# The virtio disk: built in on some kernels, modules on Debian's.
add virtio_pci optional
add virtio_blk optional
printf '%s\n' "${order[@]}" > "$work/order"
valid "$work" || die "the gathered modules fail their check (see above)"
rm -rf "$out"
mv "$work" "$out"
trap - EXIT
echo "$out"
