#!/usr/bin/env bash
# Builds the NUMA lab's initramfs: busybox, our binaries (stripped) and the libraries ldd
# lists for them, and an init that runs every lab check and prints each result between
# "@@BEGIN name" and "@@END name rc=N" lines on the console, then powers off.
# Usage: build-initramfs.sh OUT.cpio.gz NUMACACHECTL LAB_PROBE MODULES_DIR
# MODULES_DIR is the booted kernel's lib/modules/VERSION: brd and btrfs (with what they
# depend on) are copied for the `tier` section, which runs a real Cache on btrfs on a RAM
# disk, with mkfs.btrfs from this host.
set -euo pipefail
out=${1:?usage: build-initramfs.sh OUT.cpio.gz NUMACACHECTL LAB_PROBE MODULES_DIR}
ctl=${2:?numacachectl path}
probe=${3:?lab_probe path}
mods=${4:?the kernel modules directory (lib/modules/VERSION)}
mkfs=$(command -v mkfs.btrfs || ls /sbin/mkfs.btrfs /usr/sbin/mkfs.btrfs 2>/dev/null | head -n1 || true)
[[ -n $mkfs ]] || { echo "mkfs.btrfs not found (package btrfs-progs)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/init
mkdir -p "$root"/{bin,proc,sys,dev,tmp}
cp "$(command -v busybox)" "$root/bin/busybox"
for b in "$ctl" "$probe" "$mkfs"; do
  dest=$root/bin/$(basename "$b")
  if command -v strip >/dev/null; then strip -o "$dest" "$b"; else cp "$b" "$dest"; fi
  for l in $(ldd "$b" | grep -o '/lib[^ ]*'); do
    mkdir -p "$root$(dirname "$l")"
    cp -L "$l" "$root$l"
  done
done
# Modules in load order: each after what its `depends=` names, and after the `softdep=pre:`
# modules that exist under that name or as NAME_generic (libcrc32c's init fails without a
# crc32c implementation: crc32c_generic).
mkdir -p "$root/modules"
order=()
find_module() {
  find "$mods/kernel" \( -name "$1.ko" -o -name "${1//_/-}.ko" -o -name "${1//-/_}.ko" \) | head -n1
}
add_module() {
  local name=$1 file dep soft
  for m in "${order[@]}"; do [[ $m == "$name" ]] && return; done
  file=$(find_module "$name")
  [[ -n $file ]] || { echo "module $name not in $mods" >&2; exit 2; }
  for soft in $(grep -a -o 'softdep=pre: [^[:cntrl:]]*' "$file" | cut -d: -f2); do
    if [[ -n $(find_module "$soft") ]]; then add_module "$soft"
    elif [[ -n $(find_module "${soft}_generic") ]]; then add_module "${soft}_generic"
    fi
  done
  for dep in $(grep -a -o 'depends=[^[:cntrl:]]*' "$file" | head -n1 | cut -d= -f2 | tr , ' '); do
    add_module "$dep"
  done
  order+=("$name")
  cp "$file" "$root/modules/$name.ko"
}
add_module brd
add_module btrfs
printf '%s\n' "${order[@]}" > "$root/modules/order"
cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
# Kernel messages would interleave with our output on the console.
echo 1 > /proc/sys/kernel/printk
run() {
  name=$1; shift
  echo "@@BEGIN $name"
  "$@" 2>/tmp/stderr
  rc=$?
  echo "@@END $name rc=$rc"
  if [ -s /tmp/stderr ]; then echo "@@STDERR $name"; cat /tmp/stderr; echo "@@END-STDERR $name"; fi
}
run topology /bin/numacachectl topology --json
run diagnose /bin/numacachectl diagnose --json
run watcher-topology /bin/lab_probe topology
run pools /bin/lab_probe pools
run bind /bin/lab_probe bind
run hotplug /bin/lab_probe hotplug
# The central claim on a real Cache: btrfs on a RAM disk (brd's pages are not page cache,
# so FilePages counts only the filesystem's cache). Only on the machines that ask for it
# (numalab.tier=1 on the kernel command line): it is the slow part under emulation.
if grep -q 'numalab.tier=1' /proc/cmdline; then
for m in $(cat /modules/order); do
  if [ "$m" = brd ]; then insmod /modules/brd.ko rd_nr=1 rd_size=524288; else insmod /modules/$m.ko; fi
done
mkdir -p /lab
/bin/mkfs.btrfs -q -f /dev/ram0 >/tmp/mkfs.log 2>&1 && mount -t btrfs /dev/ram0 /lab
run tier /bin/lab_probe tier /lab
fi
echo "@@DONE"
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out.tmp"
mv "$out.tmp" "$out"
