#!/usr/bin/env bash
# Builds the NUMA lab's initramfs: busybox, our binaries (stripped), dbus-daemon, and the
# libraries ldd lists for them, and an init that runs every lab check and prints each result
# between "@@BEGIN name" and "@@END name rc=N" lines on the console, then powers off.
# Usage: build-initramfs.sh OUT.cpio.gz NUMACACHECTL LAB_PROBE NUMA_CACHED MODULES_DIR
# MODULES_DIR is the booted kernel's lib/modules/VERSION: brd and btrfs (with what they
# depend on) are copied for the `tier` and `daemon` sections, which run a real cache on btrfs
# on a RAM disk, with mkfs.btrfs from this host.
#
# The image is built in a temporary folder next to OUT and renamed to OUT only after it has
# been checked (every file the init needs is in the archive, every library found, every
# module's dependencies present), so a failed build never leaves an OUT behind.
set -euo pipefail
usage="usage: build-initramfs.sh OUT.cpio.gz NUMACACHECTL LAB_PROBE NUMA_CACHED MODULES_DIR"
out=${1:?$usage}
ctl=${2:?numacachectl path}
probe=${3:?lab_probe path}
daemon=${4:?numa-cached path}
mods=${5:?the kernel modules directory (lib/modules/VERSION)}

die() { echo "build-initramfs.sh: $*" >&2; exit 2; }
# A missing helper stops the script with its name (and the package that has it).
need() { command -v "$1" >/dev/null || die "missing command $1 (package $2)"; }
need busybox busybox-static
need cpio cpio
need gzip gzip
need ldd libc-bin
need find findutils
need dbus-daemon dbus-daemon
mkfs=$(command -v mkfs.btrfs || ls /sbin/mkfs.btrfs /usr/sbin/mkfs.btrfs 2>/dev/null | head -n1 || true)
[[ -n $mkfs ]] || die "missing command mkfs.btrfs (package btrfs-progs)"
for f in "$ctl" "$probe" "$daemon"; do [[ -x $f ]] || die "no executable $f"; done
[[ -d $mods/kernel ]] || die "no kernel modules in $mods"

mkdir -p "$(dirname "$out")"
work=$(mktemp -d "$(dirname "$out")/.lab-init.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/init
mkdir -p "$root"/{bin,proc,sys,dev,tmp,etc,run/dbus}

# The libraries of binary $1, or a stop naming the one ldd cannot find. A static binary has
# none (ldd says so and fails).
libs_of() {
  local listing
  if ! listing=$(ldd "$1" 2>&1); then
    [[ $listing == *"not a dynamic executable"* ]] && return 0
    die "ldd $1 failed: $listing"
  fi
  if grep -q 'not found' <<<"$listing"; then die "a library of $1 is missing: $(grep 'not found' <<<"$listing")"; fi
  grep -o '/[^ ]*\.so[^ ]*' <<<"$listing" || true
}
copy_binary() {
  local b=$1 dest=$root/bin/$(basename "$1") l libs
  if command -v strip >/dev/null; then strip -o "$dest" "$b"; else cp "$b" "$dest"; fi
  libs=$(libs_of "$b")
  for l in $libs; do
    mkdir -p "$root$(dirname "$l")"
    cp -L "$l" "$root$l"
  done
}
cp "$(command -v busybox)" "$root/bin/busybox"
[[ -z $(libs_of "$root/bin/busybox") ]] || die "busybox is not static (package busybox-static)"
for b in "$ctl" "$probe" "$daemon" "$mkfs" "$(command -v dbus-daemon)"; do copy_binary "$b"; done
# dbus-daemon: a bus of its own for numa-cached (section `daemon`); root is the only user.
printf 'root:x:0:0:root:/:/bin/sh\nmessagebus:x:100:100::/:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nmessagebus:x:100:\n' > "$root/etc/group"
cat > "$root/etc/numalab-bus.conf" <<'BUS'
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
BUS

# Modules in load order: each after what its `depends=` names, and after the `softdep=pre:`
# modules that exist under that name or as NAME_generic (libcrc32c's init fails without a
# crc32c implementation: crc32c_generic).
mkdir -p "$root/modules"
order=()
find_module() {
  find "$mods/kernel" \( -name "$1.ko" -o -name "${1//_/-}.ko" -o -name "${1//-/_}.ko" \) | head -n1
}
add_module() {
  local name=$1 file dep deps soft softs
  for m in "${order[@]}"; do [[ $m == "$name" ]] && return; done
  file=$(find_module "$name")
  [[ -n $file ]] || die "module $name not in $mods"
  softs=$(grep -a -o 'softdep=pre: [^[:cntrl:]]*' "$file" | cut -d: -f2 || true)
  for soft in $softs; do
    if [[ -n $(find_module "$soft") ]]; then add_module "$soft"
    elif [[ -n $(find_module "${soft}_generic") ]]; then add_module "${soft}_generic"
    fi
  done
  deps=$(grep -a -o 'depends=[^[:cntrl:]]*' "$file" | head -n1 | cut -d= -f2 | tr , ' ' || true)
  for dep in $deps; do add_module "$dep"; done
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
# Each section's end line says how long it ran (s=, seconds of the guest's uptime).
run() {
  name=$1; shift
  echo "@@BEGIN $name"
  t0=$(cut -d. -f1 /proc/uptime)
  "$@" 2>/tmp/stderr
  rc=$?
  echo "@@END $name rc=$rc s=$(( $(cut -d. -f1 /proc/uptime) - t0 ))"
  if [ -s /tmp/stderr ]; then echo "@@STDERR $name"; cat /tmp/stderr; echo "@@END-STDERR $name"; fi
}
run topology /bin/numacachectl topology --json
run diagnose /bin/lab_probe diagnose
run watcher-topology /bin/lab_probe topology
run pools /bin/lab_probe pools
run bind /bin/lab_probe bind
run hotplug /bin/lab_probe hotplug
# The central claim on a real cache: btrfs on a RAM disk (brd's pages are not page cache,
# so FilePages counts only the filesystem's cache). Only on the machines that ask for it
# (numalab.tier=1 on the kernel command line): it is the slow part under emulation.
if grep -q 'numalab.tier=1' /proc/cmdline; then
for m in $(cat /modules/order); do
  if [ "$m" = brd ]; then insmod /modules/brd.ko rd_nr=1 rd_size=524288; else insmod /modules/$m.ko; fi
done
mkdir -p /lab
/bin/mkfs.btrfs -q -f /dev/ram0 >/tmp/mkfs.log 2>&1 && mount -t btrfs /dev/ram0 /lab
run tier /bin/lab_probe tier /lab
run daemon /bin/lab_probe daemon /lab
fi
echo "@@DONE"
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/image.cpio.gz"

# Check the archive itself before it may replace OUT: the init, every binary it runs, the bus
# config and every module of the load order.
listing=$(gzip -dc "$work/image.cpio.gz" | cpio -it --quiet)
want=(init bin/busybox bin/numacachectl bin/lab_probe bin/numa-cached bin/dbus-daemon
  bin/mkfs.btrfs etc/numalab-bus.conf etc/passwd modules/order)
for m in "${order[@]}"; do want+=("modules/$m.ko"); done
for f in "${want[@]}"; do
  grep -qx "\\(\\./\\)\\?$f" <<<"$listing" || die "the image lacks $f"
done
mv -f "$work/image.cpio.gz" "$out"
