#!/usr/bin/env bash
# Builds the NUMA lab's initramfs: busybox, our binaries (stripped) and the libraries ldd
# lists for them, and an init that runs every lab check and prints each result between
# "@@BEGIN name" and "@@END name rc=N" lines on the console, then powers off.
# Usage: build-initramfs.sh OUT.cpio.gz NUMACACHECTL LAB_PROBE
set -euo pipefail
out=${1:?usage: build-initramfs.sh OUT.cpio.gz NUMACACHECTL LAB_PROBE}
ctl=${2:?numacachectl path}
probe=${3:?lab_probe path}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/init
mkdir -p "$root"/{bin,proc,sys,dev,tmp}
cp "$(command -v busybox)" "$root/bin/busybox"
for b in "$ctl" "$probe"; do
  dest=$root/bin/$(basename "$b")
  if command -v strip >/dev/null; then strip -o "$dest" "$b"; else cp "$b" "$dest"; fi
  for l in $(ldd "$b" | grep -o '/lib[^ ]*'); do
    mkdir -p "$root$(dirname "$l")"
    cp -L "$l" "$root$l"
  done
done
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
echo "@@DONE"
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out.tmp"
mv "$out.tmp" "$out"
