#!/usr/bin/env bash
# Builds the power-loss lab's initramfs: busybox, the btrfs modules, the probe and its
# libraries. The init mounts /dev/vda (btrfs, made on the host) and, by the kernel command
# line, either writes (`pl=write`, cutting the power itself with sysrq-b after `pl_secs`) or
# checks (`pl=check`), printing between "@@BEGIN" and "@@END rc=N" lines on the console.
# Usage: build-initramfs.sh OUT.cpio.gz PROBE MODULE_DIR
set -euo pipefail
out=${1:?usage: build-initramfs.sh OUT.cpio.gz PROBE MODULE_DIR}
probe=${2:?probe path}
mods=${3:?module folder}
die() { echo "build-initramfs.sh: $*" >&2; exit 2; }
for pair in busybox:busybox-static cpio:cpio gzip:gzip ldd:libc-bin; do
  command -v "${pair%%:*}" >/dev/null || die "${pair%%:*} is missing (package ${pair##*:})"
done
[[ -s $mods/order ]] || die "$mods/order is missing (tests/lab/powerloss/fetch-modules.sh)"
while read -r m; do [[ -s $mods/$m ]] || die "$mods/$m is missing"; done < "$mods/order"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/init
mkdir -p "$root"/{bin,proc,sys,dev,tmp,mnt,lib/pl}
cp "$(command -v busybox)" "$root/bin/busybox"
if command -v strip >/dev/null; then strip -o "$root/bin/probe" "$probe"; else cp "$probe" "$root/bin/probe"; fi
for l in $(ldd "$probe" | grep -o '/lib[^ ]*'); do
  mkdir -p "$root$(dirname "$l")"
  cp -L "$l" "$root$l"
done
while read -r m; do cp "$mods/$m" "$root/lib/pl/"; done < "$mods/order"
cp "$mods/order" "$root/lib/pl/"
cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
echo 1 > /proc/sys/kernel/printk
for m in $(cat /lib/pl/order); do insmod /lib/pl/$m || echo "@@INSMOD-FAILED $m"; done
mode=; secs=6; round=0
for a in $(cat /proc/cmdline); do
  case $a in pl=*) mode=${a#pl=};; pl_secs=*) secs=${a#pl_secs=};; pl_round=*) round=${a#pl_round=};; esac
done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
if ! mount -t btrfs /dev/vda /mnt; then echo "@@MOUNT-FAILED"; poweroff -f; fi
echo "@@BEGIN $mode"
/bin/probe "$mode" /mnt/cache "r$round" "$secs"
echo "@@END rc=$?"
# The write mode never gets here (it cuts the power); the check mode stops cleanly.
umount /mnt
poweroff -f
INIT
chmod +x "$root/init"
# Written beside OUT and renamed: a killed build never leaves a cut-short OUT behind.
tmp=$(mktemp "$out.XXXXXX")
trap 'rm -rf "$work" "$tmp"' EXIT
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$tmp"
gzip -t "$tmp"
mv "$tmp" "$out"
