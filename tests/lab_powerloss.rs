//! Power loss in the lab: a QEMU guest (Debian's kernel, btrfs loaded as a module) with the
//! cache directory on a btrfs virtio disk writes default and sync puts concurrently, then cuts
//! its own power with sysrq-b (an immediate reset that syncs nothing: the guest's page cache
//! and everything not yet flushed is lost; QEMU exits at the reset). The guest is booted again
//! on the same disk and reads every key back. Three rounds on one disk. Asserted:
//! - every sync-acknowledged value is there (its version or a later one);
//! - every default put answered before a whole full flush that the store reports complete
//!   before the cut is there (the probe prints, with each answer and at the cut, how many full
//!   flushes the store has completed: a put answered at count `n` is due once it reads
//!   `n + 2`, whatever TCG does to the timing);
//! - no value read back is corrupted or torn (nor an error other than a miss).
//!
//! What the lab cannot show: a drive's volatile write cache losing data it was told to flush
//! (QEMU's disk keeps everything that reached it), so fdatasync ordering is proven against
//! the guest kernel's page cache, the layer that loses data here.
//!
//! Prerequisites as tests/numa_lab.rs (qemu-system-x86, busybox-static, cpio, the kernel .deb;
//! fetched into `$NUMA_LAB_CACHE`), plus mkfs.btrfs on the host and the btrfs modules of the
//! same kernel (tests/lab/powerloss/fetch-modules.sh).

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: u32 = 3;
const WRITE_SECS: u32 = 8;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                manifest_dir().join(p)
            }
        })
        .unwrap_or_else(|| manifest_dir().join("target"))
}

fn cache_dir() -> PathBuf {
    std::env::var_os("NUMA_LAB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("lab-cache"))
}

fn script(name: &str, args: &[&Path]) -> Option<String> {
    let out = Command::new("bash")
        .arg(manifest_dir().join(name))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    if out.status.success() {
        return Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    support::skip(&format!("{name} failed ({}); run it as root", out.status));
    None
}

/// Everything the guest needs: kernel, initramfs. None: skip (never under CI).
fn prerequisites() -> Option<(PathBuf, PathBuf)> {
    let cache = cache_dir();
    let kernel = script("tests/lab/fetch-kernel.sh", &[&cache])?;
    let ok = support::require_tool("qemu-system-x86_64", "qemu-system-x86")
        & support::require_tool("busybox", "busybox-static")
        & support::require_tool("cpio", "cpio")
        & support::require_tool("mkfs.btrfs", "btrfs-progs")
        & support::require_root();
    if !ok {
        return None;
    }
    let kernel = PathBuf::from(kernel);
    let mods = script("tests/lab/powerloss/fetch-modules.sh", &[&cache, &kernel])?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(manifest_dir())
        .args(["build", "--quiet", "--example", "powerloss_probe"])
        .status()
        .expect("running cargo build for the probe");
    assert!(status.success(), "building the power-loss probe failed");
    let probe = target_dir().join("debug/examples/powerloss_probe");
    let initrd = cache.join("powerloss-init.cpio.gz");
    script(
        "tests/lab/powerloss/build-initramfs.sh",
        &[&initrd, &probe, Path::new(&mods)],
    )?;
    Some((kernel, initrd))
}

/// Boot the guest on `disk` with `cmdline`; its console output once QEMU exits.
fn boot(kernel: &Path, initrd: &Path, disk: &Path, cmdline: &str, log: &str) -> String {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "1024M", "-smp", "2"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,cache=writeback",
            disk.display()
        ))
        .args([
            "-append",
            &format!("console=ttyS0 quiet loglevel=1 panic=-1 no_timer_check {cmdline}"),
            "-nographic",
            "-no-reboot",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting qemu-system-x86_64");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    let out = String::from_utf8_lossy(&reader.join().unwrap_or_default()).replace('\r', "");
    let _ = std::fs::write(cache_dir().join(format!("{log}.console.log")), &out);
    out
}

/// Per key: the last version acknowledged, and the last acknowledged before a whole full flush
/// that completed before the cut; plus the cut time.
struct Acks {
    sync: BTreeMap<String, u64>,
    default_old: BTreeMap<String, u64>,
    default_any: usize,
    cut_ms: u128,
}

fn parse_acks(console: &str) -> Acks {
    let cut: Vec<u128> = console
        .lines()
        .find_map(|l| l.split("@@CUT ").nth(1))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let [cut_ms, cut_flushes] = cut[..] else {
        panic!("the guest printed no `@@CUT ms flushes` before cutting the power");
    };
    let (mut sync, mut default_old, mut default_any) = (BTreeMap::new(), BTreeMap::new(), 0);
    for line in console.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let ["A", mode, key, v, _ms, flushes] = f.as_slice() else {
            continue;
        };
        let (Ok(v), Ok(flushes)) = (v.parse::<u64>(), flushes.parse::<u128>()) else {
            continue;
        };
        match *mode {
            "s" => {
                let e = sync.entry(key.to_string()).or_insert(v);
                *e = (*e).max(v);
            }
            "d" => {
                default_any += 1;
                // A flush completed at flushes + 1 may have begun before the answer; the one
                // completed at flushes + 2 began after it.
                if flushes + 2 <= cut_flushes {
                    let e = default_old.entry(key.to_string()).or_insert(v);
                    *e = (*e).max(v);
                }
            }
            _ => {}
        }
    }
    Acks {
        sync,
        default_old,
        default_any,
        cut_ms,
    }
}

#[test]
fn power_loss_keeps_every_sync_ack_and_old_default_puts_and_returns_nothing_corrupt() {
    let Some((kernel, initrd)) = prerequisites() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let mk = Command::new("mkfs.btrfs")
        .arg("-q")
        .arg(&disk)
        .status()
        .unwrap();
    assert!(mk.success(), "mkfs.btrfs on the disk image failed");
    for round in 0..ROUNDS {
        let w = boot(
            &kernel,
            &initrd,
            &disk,
            &format!("pl=write pl_secs={WRITE_SECS} pl_round={round}"),
            &format!("powerloss-write-{round}"),
        );
        assert!(
            !w.contains("@@MOUNT-FAILED") && !w.contains("@@INSMOD-FAILED"),
            "round {round}: {w}"
        );
        assert!(
            !w.contains("@@PUT-FAILED") && !w.contains("@@OPEN-FAILED"),
            "round {round}: {w}"
        );
        assert!(
            !w.contains("@@CUT-FAILED"),
            "round {round}: sysrq-b did not reset the guest"
        );
        let acks = parse_acks(&w);
        assert!(
            !acks.sync.is_empty() && !acks.default_old.is_empty(),
            "round {round}: too few acknowledgements to judge ({} sync keys, {} old default keys, cut at {} ms)\n{w}",
            acks.sync.len(),
            acks.default_old.len(),
            acks.cut_ms
        );
        let c = boot(
            &kernel,
            &initrd,
            &disk,
            &format!("pl=check pl_round={round}"),
            &format!("powerloss-check-{round}"),
        );
        assert!(
            c.contains("@@END rc=0"),
            "round {round}: the check did not finish\n{c}"
        );
        let mut got: BTreeMap<String, Option<u64>> = BTreeMap::new();
        for line in c.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let ["G", key, state, ..] = f.as_slice() {
                let v = match *state {
                    "miss" => None,
                    s => Some(s.parse::<u64>().unwrap_or_else(|_| {
                        panic!("round {round}: {key} read back {state}: {line}")
                    })),
                };
                got.insert(key.to_string(), v);
            }
        }
        assert_eq!(got.len(), 32, "round {round}: every key was read\n{c}");
        let mut lost = Vec::new();
        for (key, v) in acks.sync.iter().chain(acks.default_old.iter()) {
            if got.get(key).copied().flatten().is_none_or(|g| g < *v) {
                lost.push(format!("{key}: acknowledged v{v}, read {:?}", got.get(key)));
            }
        }
        assert!(
            lost.is_empty(),
            "round {round}: lost after power loss: {lost:?}"
        );
        eprintln!(
            "round {round}: cut at {} ms; {} sync keys and {} old default keys all present; {} default acks in all; opened in {}",
            acks.cut_ms,
            acks.sync.len(),
            acks.default_old.len(),
            acks.default_any,
            c.lines()
                .find_map(|l| l.strip_prefix("@@OPENED "))
                .unwrap_or("?")
        );
    }
}
