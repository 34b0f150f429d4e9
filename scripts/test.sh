#!/usr/bin/env bash
# Runs every test of numa-cache: formatting, lints, unit tests, integration tests on a real
# btrfs, a real dbus-daemon + polkitd, and the NUMA lab (QEMU with 2-4 emulated nodes).
# As root it installs what is missing (Debian/Ubuntu: apt-get); otherwise it prints exactly
# what is missing and stops. With CI=true nothing may skip; otherwise the skipped tests are
# counted and named at the end, and a run with any skip exits 3, never "all tests passed".
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use, each with the command that proves it is there.
need=(
  "mkfs.btrfs:btrfs-progs"
  "qemu-system-x86_64:qemu-system-x86"
  "busybox:busybox-static"
  "cpio:cpio"
  "lstopo-no-graphics:hwloc"
  "numactl:numactl"
  "hyperfine:hyperfine"
  "dbus-daemon:dbus-daemon"
  "/usr/lib/polkit-1/polkitd:polkitd"
  "pkaction:polkitd"
  "busctl:systemd"
  "gdbus:libglib2.0-bin"
  "runuser:util-linux"
  "curl:curl"
  "promtool:prometheus"
  "zstd:zstd"
  "socat:socat"
  "setpriv:util-linux"
  "unshare:util-linux"
  "/usr/bin/python3:python3"
)
missing=()
for pair in "${need[@]}"; do
  cmd=${pair%%:*}; pkg=${pair##*:}
  if [[ $cmd == /* ]]; then [[ -e $cmd ]] || missing+=("$pkg"); else command -v "$cmd" >/dev/null || missing+=("$pkg"); fi
done
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing packages: ${missing[*]}" >&2
    echo "install them as root: apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 2
  fi
  echo "==> installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    # A newer qemu-utils (a backport some images carry) breaks the suite's qemu-system-common:
    # take the suite's qemu-utils along with it.
    suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
    echo "==> retrying with qemu-utils from $suite"
    apt-get install -y -qq --no-install-recommends --allow-downgrades "${missing[@]}" "qemu-utils/$suite" >/dev/null
  fi
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "the integration tests mount btrfs images and start a private system bus: run as root" >&2
  [[ ${CI:-} == true ]] && exit 2
fi
command -v cargo >/dev/null || { echo "cargo is missing: install Rust (rustup)" >&2; exit 2; }
# schemathesis (PyPI) checks the HTTP gateway against openapi.yaml.
if ! command -v schemathesis >/dev/null; then
  echo "==> installing schemathesis (pip)"
  python3 -m pip install --quiet --disable-pip-version-check schemathesis ||
    { echo "schemathesis is missing and pip could not install it: python3 -m pip install schemathesis" >&2; exit 2; }
fi

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
step "cargo test" cargo test --lib --bins --tests --examples -- --test-threads="${TEST_THREADS:-2}"
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
