#!/bin/bash
# numa-cache's copy of the systemd lab (tests/systemd_lab.rs drives it; changes from the
# reference recipe: its own cache folder, `make` in the image so the guest runs the README's
# `make install`, and LAB_STAGE_FILES).
#
# systemd-lab: boot a real Debian userland (systemd as PID 1, D-Bus, polkitd, btrfs-progs) under
# QEMU with emulated NUMA nodes, run a test script inside as root, and print what it printed.
#
#   recipe.sh build                      build the cached root image once (1-2 min; 680 MB)
#   recipe.sh run REPO TEST [BIN_DIR]    boot a throw-away copy of the image, run TEST inside,
#                                        print its output, exit with its rc (boot 20-50 s +
#                                        the test + ~7 s power-off; `run` builds first if needed)
#   recipe.sh shell [REPO [BIN_DIR]]     boot interactively (root, empty password; poweroff to quit)
#
# Example: recipe.sh run /path/to/repo ./smoke.sh
#
# `run` stages REPO for the guest: a copy of its sources (without target/ and .git) with the
# executables of BIN_DIR (default REPO/target/release) copied into repo/target/release, and
# `make install DESTDIR=... PREFIX=/usr CARGO=true` of that copy when REPO has a Makefile with an
# install target (CARGO=true turns the Makefile's `cargo build` step into a no-op). REPO itself is
# only read. Inside the guest the test script sees:
#   $LAB_REPO      /lab/in/repo      the staged copy of REPO
#   $LAB_DESTDIR   /lab/in/destdir   the `make install` tree (copy it to / to install)
#   $LAB_OUT       /lab/out          files written here come back (printed path at the end)
#   $LAB_SCRATCH   /dev/disk/by-id/virtio-scratch, a blank disk (LAB_SCRATCH_SIZE, default 4G)
#   user labuser (uid 1000), unprivileged, no login session (polkit: allow_any applies).
# TEST is copied to /lab/in/test.sh and run with bash, cwd /lab/in, stdin /dev/null, killed
# after LAB_TEST_TIMEOUT. It runs from lab-run.service after multi-user.target, as root, in that
# unit's cgroup (so `systemctl is-system-running` says "starting" while it runs);
# the guest powers off when it returns. After the run, /lab/out also holds journal.txt (the
# whole boot's journal, short-monotonic), journal.json (same, -o json), rc and console.log.
#
# Needs: root, Debian (apt sources reaching a Debian archive), ~2 GiB disk in the cache, ~3 GiB
# RAM per run. No KVM: nested KVM hangs on these machines, so QEMU runs with -accel tcg.
#
# Environment (all optional):
#   LAB_CACHE          cache directory (default /var/cache/numa-cache-systemd-lab): lock, and KEY/ with
#                      root.img, vmlinuz, initrd.img (renamed into place only once built and checked)
#   LAB_STAGE_FILES    more host files, space-separated, copied to /lab/in/files/ ($LAB_IN/files)
#   LAB_SUITE          Debian suite (default: this host's VERSION_CODENAME)
#   LAB_SOURCES        apt sources file(s) to build from, space-separated (default: this host's
#                      sources for LAB_SUITE signed by the Debian archive keyring, and
#                      /etc/apt/sources.list, so the mirror apt uses is used; the image keeps none)
#   LAB_EXTRA_PKGS     more packages, comma-separated, baked into the image
#   LAB_NODES          NUMA nodes (default 2), LAB_CPUS_PER_NODE (2), LAB_MEM_PER_NODE (whole
#                      GiB with a G suffix, default 1G); each node is one socket,
#                      LAB_DISTANCE (SLIT distance between different nodes, default 21)
#   LAB_NUMA_ARGS      replaces the generated -smp/-m/-numa arguments entirely
#   LAB_BUS            dbus (default: dbus-daemon) or broker (dbus-broker); both are installed
#   LAB_TEST_TIMEOUT   seconds the test may run inside (default 900)
#   LAB_VM_TIMEOUT     seconds before QEMU is killed (default LAB_TEST_TIMEOUT + 300)
#   LAB_STRIP          1 (default): strip debug info from the staged executables (faster 9p copy)
#   LAB_VERBOSE        1: stream the serial console while the VM runs
#   LAB_KEEP           1: keep the run directory (default: keep; 0 deletes it after printing)
#   LAB_APPEND         more kernel command line words
#   LAB_SCRATCH_IMG    a scratch disk image that outlives the run (created blank if missing), so
#                      a second run sees what the first left on it: crash and power-loss tests
set -euo pipefail

LAB_CACHE=${LAB_CACHE:-/var/cache/numa-cache-systemd-lab}
. /etc/os-release
LAB_SUITE=${LAB_SUITE:-${VERSION_CODENAME:-bookworm}}
LAB_NODES=${LAB_NODES:-2}
LAB_CPUS_PER_NODE=${LAB_CPUS_PER_NODE:-2}
LAB_MEM_PER_NODE=${LAB_MEM_PER_NODE:-1G}
LAB_DISTANCE=${LAB_DISTANCE:-21}
LAB_BUS=${LAB_BUS:-dbus}
LAB_TEST_TIMEOUT=${LAB_TEST_TIMEOUT:-900}
LAB_VM_TIMEOUT=${LAB_VM_TIMEOUT:-$((LAB_TEST_TIMEOUT + 300))}
LAB_STRIP=${LAB_STRIP:-1}
LAB_VERBOSE=${LAB_VERBOSE:-0}
LAB_KEEP=${LAB_KEEP:-1}
LAB_SCRATCH_SIZE=${LAB_SCRATCH_SIZE:-4G}

# Packages of the image. dbus and dbus-broker are both installed (dbus-daemon is the default,
# the kernel command line word lab.bus=broker switches); linux-image-amd64 brings the kernel
# and its modules (btrfs, 9p, loop are modules) and initramfs-tools builds the initrd inside.
PKGS="systemd,systemd-sysv,udev,kmod,dbus,dbus-broker,polkitd,libpam-systemd,btrfs-progs,e2fsprogs,procps,psmisc,strace,libglib2.0-bin,linux-image-amd64,initramfs-tools,zstd,make"
[ -n "${LAB_EXTRA_PKGS:-}" ] && PKGS="$PKGS,$LAB_EXTRA_PKGS"

die() { echo "recipe.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"

# ---------------------------------------------------------------------------------------------
# Files installed into the guest image.

# The guest side of `run`: mounts the host's 9p share, runs the test, saves results, powers off.
guest_lab_run() { cat <<'EOF'
#!/bin/bash
# lab-run: run /lab/in/test.sh from the host's 9p share (tag "lab"), save its output and the
# journal into /lab/out, then power off. Started by lab-run.service after multi-user.target.
set -u
con=/dev/ttyS0
say() { echo "lab-run: $*" > "$con"; }
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p" | tail -1; }
modprobe -a 9pnet_virtio 9p || say "modprobe 9p failed"
mkdir -p /lab
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576 lab /lab; then
    say "cannot mount the 9p share 'lab'"; systemctl poweroff --no-block; exit 1
fi
mkdir -p /lab/out
export LAB=/lab LAB_IN=/lab/in LAB_OUT=/lab/out LAB_REPO=/lab/in/repo LAB_DESTDIR=/lab/in/destdir
export LAB_SCRATCH=/dev/disk/by-id/virtio-scratch
timeout_s=$(arg lab.timeout); timeout_s=${timeout_s:-900}
udevadm settle -t 30 || true
echo "@@LAB-BEGIN uptime=$(cut -d' ' -f1 /proc/uptime)s@@" > "$con"
cd /lab/in
timeout -k 10 "$timeout_s" bash /lab/in/test.sh < /dev/null 2>&1 | tee /lab/out/test.log > "$con"
rc=${PIPESTATUS[0]}
echo "$rc" > /lab/out/rc
echo "@@LAB-END rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)s@@" > "$con"
journalctl -b --no-pager -o short-monotonic > /lab/out/journal.txt 2>&1
journalctl -b --no-pager -o json > /lab/out/journal.json 2>&1
sync; cd /; umount /lab
systemctl poweroff --no-block
EOF
}

guest_lab_run_unit() { cat <<'EOF'
[Unit]
Description=Lab: run the host's test script, then power off
After=multi-user.target
ConditionKernelCommandLine=!lab.shell

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/lab-run
TimeoutStartSec=infinity
StandardOutput=journal
StandardError=journal

[Install]
WantedBy=multi-user.target
EOF
}

# A systemd generator: lab.bus=broker on the kernel command line makes dbus.service the
# dbus-broker unit (generator.early outranks /etc and /lib).
guest_bus_generator() { cat <<'EOF'
#!/bin/sh
case " $(cat /proc/cmdline) " in
    *" lab.bus=broker "*) ln -sf /lib/systemd/system/dbus-broker.service "$2/dbus.service" ;;
esac
EOF
}

# mmdebstrap customize hook: runs on the host with /proc, /sys, /dev mounted in the chroot $1.
customize() {
    local r=$1
    echo numalab > "$r/etc/hostname"
    echo "127.0.1.1 numalab" >> "$r/etc/hosts"
    echo "LABEL=labroot / ext4 rw,errors=remount-ro 0 1" > "$r/etc/fstab"
    # Fixed machine-id: no first-boot logic (systemd-firstboot would prompt on the console).
    rm -f "$r/etc/machine-id"; chroot "$r" systemd-machine-id-setup >/dev/null
    chroot "$r" systemctl mask -q systemd-firstboot.service apt-daily.timer apt-daily-upgrade.timer \
        dpkg-db-backup.timer e2scrub_all.timer fstrim.timer e2scrub_reap.service
    # Console login for `shell` (the VM has no network device) and an unprivileged test user.
    chroot "$r" passwd -qd root
    chroot "$r" useradd -m -s /bin/bash -u 1000 labuser
    # The guest has no network: drop the apt sources (they name the host's mirror).
    rm -f "$r/etc/apt/sources.list" "$r"/etc/apt/sources.list.d/*
    # dbus-daemon by default (dbus-broker's postinst made itself dbus.service); see the generator.
    rm -f "$r/etc/systemd/system/dbus.service"
    chroot "$r" systemctl disable -q dbus-broker.service 2>/dev/null || true
    guest_lab_run > "$r/usr/local/sbin/lab-run"; chmod 0755 "$r/usr/local/sbin/lab-run"
    guest_lab_run_unit > "$r/etc/systemd/system/lab-run.service"
    chroot "$r" systemctl enable -q lab-run.service
    mkdir -p "$r/etc/systemd/system-generators"
    guest_bus_generator > "$r/etc/systemd/system-generators/lab-bus"
    chmod 0755 "$r/etc/systemd/system-generators/lab-bus"
    # A small initrd: just what mounts an ext4 root on virtio-blk (MODULES=most is 37 MB).
    echo "MODULES=list" > "$r/etc/initramfs-tools/conf.d/lab.conf"
    printf '%s\n' virtio_pci virtio_blk ext4 >> "$r/etc/initramfs-tools/modules"
    chroot "$r" update-initramfs -u -k all >/dev/null
}

# ---------------------------------------------------------------------------------------------
# build: the cached image (root.img: ext4, sparse; vmlinuz; initrd.img), rebuilt when the
# package list, suite or this script's guest files change.

default_sources() {
    # The host's apt sources for this suite that apt verifies with the Debian archive keyring
    # (deb822 files naming debian-archive-keyring), plus /etc/apt/sources.list: the same
    # mirror apt uses. Third-party repositories (their own keyrings) are left out.
    local f out=""
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -s "$f" ] && grep -qE "^[^#]*\b$LAB_SUITE\b" "$f" || continue
        if [ "$f" = /etc/apt/sources.list ] || grep -q debian-archive-keyring "$f"; then out="$out $f"; fi
    done
    echo "$out"
}

cache_key() {
    { echo "$LAB_SUITE $PKGS"; declare -f customize guest_lab_run guest_lab_run_unit guest_bus_generator; } \
        | sha256sum | cut -c1-16
}

# Host tools: installed by the project's one installer (scripts/test.sh), never here. A
# missing one stops the script with its name and its Debian package.
host_tools() {
    local pair missing=""
    for pair in mmdebstrap:mmdebstrap qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils \
        mkfs.ext4:e2fsprogs e2fsck:e2fsprogs debugfs:e2fsprogs make:make strip:binutils \
        flock:util-linux sha256sum:coreutils; do
        command -v "${pair%%:*}" >/dev/null || missing="$missing ${pair%%:*} (package ${pair#*:})"
    done
    [ -z "$missing" ] || die "missing host tools:$missing; scripts/test.sh installs them"
}

# The image's own checks, before it is renamed into place: a complete image or none.
check_image() {   # $1 build folder
    local d=$1 f kver
    for f in root.img vmlinuz initrd.img; do [ -s "$d/$f" ] || die "image check: $f is missing or empty"; done
    e2fsck -fn "$d/root.img" >/dev/null 2>&1 || die "image check: e2fsck finds root.img damaged"
    in_img() { debugfs -R "stat $1" "$d/root.img" 2>/dev/null | grep -q '^Inode:'; }
    for f in /usr/local/sbin/lab-run /etc/systemd/system/lab-run.service \
        /etc/systemd/system-generators/lab-bus /usr/lib/polkit-1/polkitd; do
        in_img "$f" || die "image check: $f is not in root.img"
    done
    for f in make busctl gdbus mkfs.btrfs dbus-broker dbus-daemon setpriv taskset logger; do
        in_img "/usr/bin/$f" || in_img "/usr/sbin/$f" || in_img "/bin/$f" || in_img "/sbin/$f" \
            || die "image check: no $f in root.img"
    done
    kver=$(debugfs -R "ls -p /usr/lib/modules" "$d/root.img" 2>/dev/null | awk -F/ '$6 ~ /^[0-9]/ {print $6; exit}')
    [ -n "$kver" ] || die "image check: no kernel modules folder in root.img"
    for f in kernel/fs/btrfs kernel/fs/9p kernel/net/9p; do
        debugfs -R "stat /usr/lib/modules/$kver/$f" "$d/root.img" 2>/dev/null | grep -q '^Inode:' \
            || die "image check: modules $f of kernel $kver are not in root.img"
    done
}

# The image lives in $LAB_CACHE/<key>/, a folder renamed into place only once built and
# checked, so a killed or failed build never leaves an image later runs would trust. Builds
# and runs take $LAB_CACHE/lock: a build holds it exclusively, a run shared while its VM uses
# the image (so no concurrent build removes an image in use), so concurrent callers wait
# instead of racing. Sets IMG to the image folder; the lock stays held on fd 9 (shared).
cmd_build() {
    host_tools
    local key; key=$(cache_key)
    mkdir -p "$LAB_CACHE"
    exec 9>"$LAB_CACHE/lock"
    flock -x 9
    IMG="$LAB_CACHE/$key"
    if [ -d "$IMG" ]; then
        echo "recipe.sh: cached image $IMG is current" >&2
        flock -s 9; return 0
    fi
    local sources=${LAB_SOURCES:-$(default_sources)}
    [ -n "$sources" ] || die "no apt sources for $LAB_SUITE found; set LAB_SOURCES"
    # Left by a killed build (never trusted), and images of other keys (and the old layout).
    rm -rf "$LAB_CACHE"/.build.* "$LAB_CACHE/build.tmp" "$LAB_CACHE/root.img" "$LAB_CACHE/vmlinuz" \
        "$LAB_CACHE/initrd.img" "$LAB_CACHE/key"
    find "$LAB_CACHE" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} +
    local t0=$SECONDS tmp; tmp=$(mktemp -d "$LAB_CACHE/.build.XXXXXX")
    local hook="$tmp/customize.sh"
    { echo 'set -e'; declare -f customize guest_lab_run guest_lab_run_unit guest_bus_generator; echo 'customize "$1"'; } > "$hook"
    echo "recipe.sh: mmdebstrap $LAB_SUITE from$sources (log: $tmp/mmdebstrap.log)" >&2
    # shellcheck disable=SC2086
    mmdebstrap --mode=root --variant=apt --include="$PKGS" \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --customize-hook="bash $hook \"\$1\"" \
        "$LAB_SUITE" "$tmp/root" $sources > "$tmp/mmdebstrap.log" 2>&1 \
        || { tail -30 "$tmp/mmdebstrap.log" >&2; rm -rf "$tmp"; die "mmdebstrap failed"; }
    cp "$tmp"/root/boot/vmlinuz-* "$tmp/vmlinuz"
    cp "$tmp"/root/boot/initrd.img-* "$tmp/initrd.img"
    # ext4 image from the directory: used size + 1.5 GiB free for what tests install.
    local mb; mb=$(( $(du -sm "$tmp/root" | cut -f1) + 1536 ))
    mkfs.ext4 -q -L labroot -d "$tmp/root" "$tmp/root.img" "${mb}M" >/dev/null \
        || { rm -rf "$tmp"; die "mkfs.ext4 failed"; }
    rm -rf "$tmp/root" "$hook"
    # A failed image stays in its .build folder to be looked at; no run uses it, the next
    # build deletes it.
    ( check_image "$tmp" ) || die "the built image failed its checks (kept in $tmp); nothing cached"
    mv -T "$tmp" "$IMG"
    echo "recipe.sh: built $IMG in $((SECONDS - t0)) s ($(du -sh "$IMG" | cut -f1) on disk)" >&2
    flock -s 9
}

# ---------------------------------------------------------------------------------------------
# run / shell

numa_args() {
    if [ -n "${LAB_NUMA_ARGS:-}" ]; then echo "$LAB_NUMA_ARGS"; return; fi
    local n=$LAB_NODES c=$LAB_CPUS_PER_NODE i j a
    local memg=${LAB_MEM_PER_NODE%G}
    # One socket a node, so no cache is shared across nodes (else the kernel warns
    # "CPU #2's llc-sibling CPU #0 is not on the same node").
    a="-smp $((n * c)),sockets=$n,cores=$c,threads=1 -m $((n * memg))G"
    for ((i = 0; i < n; i++)); do
        a="$a -object memory-backend-ram,id=m$i,size=$LAB_MEM_PER_NODE"
        a="$a -numa node,nodeid=$i,cpus=$((i * c))-$((i * c + c - 1)),memdev=m$i"
    done
    for ((i = 0; i < n; i++)); do for ((j = i + 1; j < n; j++)); do
        a="$a -numa dist,src=$i,dst=$j,val=$LAB_DISTANCE"
    done; done
    echo "$a"
}

stage_repo() {   # $1 repo, $2 bin dir, $3 destination (share/in)
    local repo=$1 bindir=$2 in=$3 f
    mkdir -p "$in/repo/target/release"
    tar -C "$repo" --exclude=./target --exclude=./.git -cf - . | tar -C "$in/repo" -xf -
    if [ -d "$bindir" ]; then
        for f in "$bindir"/*; do
            [ -f "$f" ] && [ -x "$f" ] || continue
            if [ "$LAB_STRIP" = 1 ] && command -v strip >/dev/null; then
                strip --strip-debug -o "$in/repo/target/release/${f##*/}" "$f"
            else
                cp "$f" "$in/repo/target/release/"
            fi
        done
    fi
    if [ -f "$in/repo/Makefile" ] && grep -q '^install:' "$in/repo/Makefile"; then
        make -s -C "$in/repo" install DESTDIR="$in/destdir" PREFIX=/usr CARGO=true \
            CLI_BIN="$in/repo/target/release/numacachectl" >/dev/null \
            || echo "recipe.sh: warning: make install failed; \$LAB_DESTDIR is incomplete" >&2
    fi
}

boot() {   # $1 run dir, $2 "run" or "shell"
    local run=$1 mode=$2 append
    qemu-img create -q -f qcow2 -F raw -b "$IMG/root.img" "$run/root.qcow2"
    if [ -n "${LAB_SCRATCH_IMG:-}" ]; then
        # A scratch disk that outlives the run: a second run sees what the first left on it.
        [ -e "$LAB_SCRATCH_IMG" ] || truncate -s "$LAB_SCRATCH_SIZE" "$LAB_SCRATCH_IMG"
        ln -sf "$(realpath "$LAB_SCRATCH_IMG")" "$run/scratch.img"
    else
        truncate -s "$LAB_SCRATCH_SIZE" "$run/scratch.img"
    fi
    append="root=LABEL=labroot rw console=ttyS0 panic=-1 net.ifnames=0 lab.timeout=$LAB_TEST_TIMEOUT lab.bus=$LAB_BUS"
    if [ "$mode" = run ]; then append="$append quiet loglevel=3 systemd.show_status=error"; else append="$append lab.shell"; fi
    append="$append ${LAB_APPEND:-}"
    # shellcheck disable=SC2046
    set -- qemu-system-x86_64 -accel tcg -cpu max $(numa_args) \
        -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img" -append "$append" \
        -drive "file=$run/root.qcow2,if=virtio,format=qcow2,cache=unsafe" \
        -drive "file=$run/scratch.img,if=none,id=scratch,format=raw,cache=unsafe" \
        -device virtio-blk-pci,drive=scratch,serial=scratch \
        -virtfs "local,path=$run/share,mount_tag=lab,security_model=none" \
        -nic none -no-reboot
    if [ "$mode" = shell ]; then "$@" -nographic; return; fi
    if [ "$LAB_VERBOSE" = 1 ]; then
        timeout -k 10 "$LAB_VM_TIMEOUT" "$@" -display none -monitor none -serial stdio < /dev/null | tee "$run/console.log"
    else
        timeout -k 10 "$LAB_VM_TIMEOUT" "$@" -display none -monitor none -serial "file:$run/console.log" < /dev/null
    fi
}

cmd_run() {
    [ $# -ge 2 ] || die "usage: recipe.sh run REPO TEST_SCRIPT [BIN_DIR]"
    local repo test bindir run t0 rc
    repo=$(realpath "$1"); test=$(realpath "$2"); bindir=$(realpath -m "${3:-$repo/target/release}")
    [ -d "$repo" ] || die "no repo $repo"; [ -f "$test" ] || die "no test script $test"
    cmd_build
    run=$(mktemp -d /tmp/systemd-lab-run.XXXXXX)
    mkdir -p "$run/share/in" "$run/share/out"
    t0=$SECONDS
    stage_repo "$repo" "$bindir" "$run/share/in"
    cp "$test" "$run/share/in/test.sh"
    if [ -n "${LAB_STAGE_FILES:-}" ]; then
        mkdir -p "$run/share/in/files"
        # shellcheck disable=SC2086
        cp $LAB_STAGE_FILES "$run/share/in/files/"
    fi
    echo "recipe.sh: staged in $((SECONDS - t0)) s; booting (run dir $run)" >&2
    t0=$SECONDS
    boot "$run" run || echo "recipe.sh: qemu exited with $? (124: LAB_VM_TIMEOUT)" >&2
    cp "$run/console.log" "$run/share/out/console.log" 2>/dev/null || true
    echo "recipe.sh: VM ran $((SECONDS - t0)) s" >&2
    if [ -f "$run/share/out/test.log" ]; then
        cat "$run/share/out/test.log"
    else
        echo "recipe.sh: the test produced no output; console:" >&2; tail -50 "$run/console.log" >&2
    fi
    rc=$(cat "$run/share/out/rc" 2>/dev/null || echo 125)
    echo "recipe.sh: test rc=$rc" >&2
    echo "recipe.sh: the run wrote $(du -m "$run/root.qcow2" | cut -f1) MiB to the root overlay, $(du -mL "$run/scratch.img" | cut -f1) MiB to the scratch disk" >&2
    if [ "$LAB_KEEP" = 0 ]; then rm -rf "$run"; else
        rm -f "$run/root.qcow2" "$run/scratch.img"
        echo "recipe.sh: results in $run/share/out (test.log, journal.txt, journal.json, console.log)" >&2
    fi
    return "$rc"
}

cmd_shell() {
    cmd_build
    local run; run=$(mktemp -d /tmp/systemd-lab-run.XXXXXX)
    mkdir -p "$run/share/in" "$run/share/out"
    [ -n "${1:-}" ] && stage_repo "$(realpath "$1")" "$(realpath -m "${2:-$1/target/release}")" "$run/share/in"
    echo "recipe.sh: login as root (no password); the share: modprobe -a 9pnet_virtio 9p; mount -t 9p -o trans=virtio,version=9p2000.L lab /mnt" >&2
    boot "$run" shell
}

case "${1:-}" in
    build) shift; cmd_build "$@" ;;
    run) shift; cmd_run "$@" ;;
    shell) shift; cmd_shell "$@" ;;
    *) sed -n "2,11p" "$0"; exit 2 ;;
esac
