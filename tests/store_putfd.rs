//! A large PutFd streams: storing a 256 MiB value from a descriptor raises the process's peak
//! resident memory by far less than the value (issue 9: it used to cost ~4x the value), and
//! the bytes of puts in flight are bounded. One test per binary: VmHWM is per process.

mod store_util;

use numa_cache::store::{Cache, Caller, PutOptions};
use std::io::Write;
use store_util::{Mount, config, topo1};

const ME: Caller = Caller {
    uid: None,
    cpu: None,
};

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Incompressible bytes, chunk `i` of a value.
fn chunk(i: u64, out: &mut [u8]) {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ i.wrapping_mul(0xA24B_AED4_963E_E407) | 1;
    for b in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = b.len();
        b.copy_from_slice(&x.to_le_bytes()[..n]);
    }
}

#[test]
fn a_256_mib_put_from_a_descriptor_streams() {
    let Some(m) = Mount::btrfs(1024, false) else {
        return;
    };
    const N: u64 = 256 << 20;
    let mut cfg = config(&m.dir());
    cfg.memory_bytes = 0;
    let cache = Cache::open(cfg, topo1()).unwrap();
    // The value lives in a tmpfs file (like a memfd): its pages are not this process's RSS.
    let mut src = tempfile::tempfile_in("/dev/shm").unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..(N >> 20) {
        chunk(i, &mut buf);
        src.write_all(&buf).unwrap();
    }
    let before = status_kib("VmHWM:") << 10;
    let rss_before = status_kib("VmRSS:") << 10;
    cache
        .put_file("big", "v", &src, &PutOptions::default(), &ME)
        .unwrap();
    let rise = (status_kib("VmHWM:") << 10).saturating_sub(before.max(rss_before));
    eprintln!("peak RSS rise for a {N}-byte put_file: {rise} bytes");
    assert!(
        rise <= N / 8,
        "a {N}-byte streamed put raised the peak RSS by {rise} bytes"
    );
    // The bytes are all there, in order.
    let v = cache.get("big", "v", &ME).unwrap();
    assert_eq!(v.len() as u64, N);
    for (i, c) in v.chunks(1 << 20).enumerate() {
        chunk(i as u64, &mut buf);
        assert!(c == &buf[..], "chunk {i} differs");
    }
    assert_eq!(cache.lookup("big", "v").unwrap().size, N);
}
