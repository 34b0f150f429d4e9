#!/usr/bin/env bash
# Runs every test of numa-cache: formatting, lints, unit tests, integration tests on a real
# btrfs, a real dbus-daemon + polkitd, and the NUMA lab (QEMU with 2-4 emulated nodes).
# As root it first installs every package any test needs (Debian/Ubuntu: one apt-get call,
# one pip call); otherwise it prints exactly what is missing and stops. With CI=true nothing
# may skip; otherwise the skipped tests are counted and named at the end, and a run with any
# skip exits 3, never "all tests passed".
set -euo pipefail
cd "$(dirname "$0")/.."

# Everything any test, lab or test script calls, installed here, once, before any test starts:
# no test installs anything (a tool still missing fails its test at once, naming it). One
# `apt-get install` of the packages of this list that are not installed (naming an installed
# one would upgrade it, and an image's pinned libraries can refuse that) and one `pip install`.
# Who needs each package:
apt_packages=(
  btrfs-progs      # mkfs.btrfs, btrfs: store_* tests, dbus tests' state images, both labs
  e2fsprogs        # mkfs.ext4: client_direct_flood, tests/systemd/recipe.sh; lsattr: store_sync_prepared
  mount            # mount, umount, losetup: store_util, client_direct_flood, app_journal
  util-linux       # runuser, setpriv, unshare, taskset: dbus tests, app_daemon, app_journal, topology_live
  passwd           # useradd, groupadd, userdel: tests/dbus, tests/gateway/polkit.rs
  procps           # kill: dbus tests
  dbus-daemon      # the private system bus of every bus test
  polkitd          # /usr/lib/polkit-1/polkitd, pkaction: polkit checks of the bus and gateway tests
  systemd          # busctl: bus tests
  libglib2.0-bin   # gdbus: bus tests (calls as another user)
  curl             # gateway_http, gateway_metrics
  prometheus       # promtool: gateway_metrics
  socat            # gateway_schemathesis
  python3          # /usr/bin/python3: app_journal, gateway_starvation
  numactl          # topology_live
  tar bzip2        # topology_fixtures (the hwloc captures are .tar.bz2)
  qemu-system-x86  # qemu-system-x86_64: numa_lab, lab_powerloss, systemd_lab
  qemu-utils       # qemu-img: tests/systemd/recipe.sh
  busybox-static   # the lab initramfs' userland: numa_lab, lab_powerloss
  cpio             # packs the lab initramfs
  kmod             # modinfo: tests/lab/powerloss/fetch-modules.sh (module dependencies)
  xz-utils zstd    # unpack compressed kernel modules (fetch-modules.sh)
  binutils         # strip, nm: lab initramfs builders, fetch-modules.sh's symbol check
  dpkg-dev         # dpkg-buildpackage, dpkg-parsechangelog: systemd_lab's package, make deb
  debhelper        # dh: the package build (systemd_lab)
  make             # make install / make deb: systemd_lab
  lintian          # the_debian_package_is_lintian_clean (systemd_lab)
  mmdebstrap       # the systemd lab's root image (tests/systemd/recipe.sh)
  strace           # fault injection (strace -e inject=...) at kill points
)
pip_packages=(
  schemathesis     # gateway_schemathesis: the gateway against openapi.yaml
)
# The commands the tests call, each with its package: checked after the install.
commands=(
  mkfs.btrfs:btrfs-progs btrfs:btrfs-progs mkfs.ext4:e2fsprogs lsattr:e2fsprogs
  mount:mount umount:mount losetup:mount runuser:util-linux setpriv:util-linux
  unshare:util-linux taskset:util-linux useradd:passwd groupadd:passwd userdel:passwd
  kill:procps dbus-daemon:dbus-daemon /usr/lib/polkit-1/polkitd:polkitd pkaction:polkitd
  busctl:systemd gdbus:libglib2.0-bin curl:curl promtool:prometheus socat:socat
  /usr/bin/python3:python3 numactl:numactl tar:tar bzip2:bzip2
  qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils busybox:busybox-static cpio:cpio
  modinfo:kmod xz:xz-utils zstd:zstd strip:binutils nm:binutils
  dpkg-buildpackage:dpkg-dev dh:debhelper make:make lintian:lintian mmdebstrap:mmdebstrap
  strace:strace schemathesis:pip:schemathesis
)

apt_missing=()
for pkg in "${apt_packages[@]}"; do
  [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null) == ii* ]] || apt_missing+=("$pkg")
done
pip_missing=()
for pkg in "${pip_packages[@]}"; do
  python3 -m pip show --quiet "$pkg" >/dev/null 2>&1 || pip_missing+=("$pkg")
done
if ((${#apt_missing[@]} + ${#pip_missing[@]})) && [[ $(id -u) -ne 0 ]]; then
  ((${#apt_missing[@]})) && echo "missing packages: ${apt_missing[*]} (as root: apt-get install -y --no-install-recommends ${apt_missing[*]})" >&2
  ((${#pip_missing[@]})) && echo "missing Python packages: ${pip_missing[*]} (python3 -m pip install ${pip_missing[*]})" >&2
  exit 2
fi
if ((${#apt_missing[@]})); then
  echo "==> installing ${apt_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Wait for another apt or dpkg (an unattended upgrade) instead of failing on its lock.
  apt=(apt-get -qq -y -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confold)
  # The lists' lock does not wait as dpkg's does: try again while another update holds it.
  for try in 1 2 3 4 5 6; do
    "${apt[@]}" update && break
    ((try < 6)) || { echo "apt-get update failed" >&2; exit 2; }
    sleep 10
  done
  args=(--no-install-recommends "${apt_missing[@]}")
  # A newer qemu-utils (the backport a fresh machine of this kind carries) conflicts with the
  # suite's qemu-system-common: apt then either refuses or quietly removes qemu-utils (and
  # qemu-img with it). Either way, take the suite's qemu-utils along. Asked of a dry run, so
  # the install itself is one call.
  if ! plan=$("${apt[@]}" install -s "${args[@]}" 2>&1) || grep -q '^Remv ' <<<"$plan"; then
    suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
    echo "==> installing qemu-utils from $suite along with qemu-system-x86"
    args+=(--allow-downgrades "qemu-utils/$suite")
  fi
  "${apt[@]}" install "${args[@]}" >/dev/null ||
    { echo "apt-get install failed: ${apt_missing[*]}" >&2; exit 2; }
fi
if ((${#pip_missing[@]})); then
  echo "==> installing ${pip_missing[*]} (pip)"
  python3 -m pip install --quiet --disable-pip-version-check "${pip_missing[@]}" ||
    { echo "pip install failed: ${pip_missing[*]}" >&2; exit 2; }
  # pyenv's shims for the new console scripts (schemathesis).
  if command -v pyenv >/dev/null; then pyenv rehash; fi
fi
absent=()
for c in "${commands[@]}"; do
  cmd=${c%%:*}; pkg=${c#*:}
  if [[ $cmd == /* ]]; then [[ -e $cmd ]]; else command -v "$cmd" >/dev/null; fi || absent+=("$cmd (${pkg})")
done
if ((${#absent[@]})); then
  printf 'still missing after the install: %s\n' "${absent[@]}" >&2
  exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "the integration tests mount btrfs images and start a private system bus: run as root" >&2
  [[ ${CI:-} == true ]] && exit 2
fi
command -v cargo >/dev/null || { echo "cargo is missing: install Rust (rustup)" >&2; exit 2; }

# Tests that skip (a missing prerequisite outside CI) append "binary: test<TAB>reason" here
# (tests/support/mod.rs `skip`): libtest hides a passing test's stderr, and a skipped test
# passes.
skip_log=$(mktemp)
trap 'rm -f "$skip_log"' EXIT
export NUMA_CACHE_SKIP_LOG=$skip_log

# A CI run builds once from a fresh clone: incremental caches would only double the disk used.
[[ ${CI:-} == true ]] && export CARGO_INCREMENTAL=0
echo "==> disk: $(df -h --output=avail "${CARGO_TARGET_DIR:-.}" 2>/dev/null | tail -1 | tr -d ' ') free for target/"

failed=()
step() { # step NAME CMD...: run every check even after one fails, so one run shows all of them
  local name=$1; shift
  echo "==> $name"
  local t0=$SECONDS
  if "$@"; then echo "    ok: $name ($((SECONDS - t0)) s)"; else echo "    FAILED: $name"; failed+=("$name"); fi
}
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy --all-targets -- -D warnings (also type-checks the benches)" cargo clippy --all-targets --quiet -- -D warnings
step "cargo test" cargo test --no-fail-fast --lib --bins --tests --examples -- --test-threads="${TEST_THREADS:-2}"
step "doc tests" cargo test --doc --quiet
skipped=$(cut -f1 "$skip_log" | sort -u | wc -l)
if ((skipped)); then
  echo "==> $skipped test(s) skipped, so they proved nothing:" >&2
  sort -u "$skip_log" | awk -F'\t' '{ printf "    %s: %s\n", $1, $2 }' >&2
fi
if ((${#failed[@]})); then
  printf 'FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
if ((skipped)); then
  # Under CI a skip already failed its test; outside CI a run with skips is not a pass.
  echo "NOT all tests ran: $skipped skipped (see above); the others passed" >&2
  exit 3
fi
echo "all tests passed"
