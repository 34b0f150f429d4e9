//! The engine on a real, loop-mounted btrfs: subvolumes and their compression property,
//! snapshots and rotation, corruption, index rebuild, a full disk; and once on tmpfs for the
//! plain-folder fallback.

mod store_util;

use numa_cache::store::{Cache, Caller, PutOptions, StoreError};
use std::process::Command;
use store_util::{Mount, check_value, config, topo1, topo2, value_for};

fn btrfs_out(args: &[&str]) -> String {
    let o = Command::new("btrfs")
        .args(args)
        .output()
        .expect("running btrfs");
    assert!(
        o.status.success(),
        "btrfs {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn one_subvolume_per_node_with_compression_off() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let cache = Cache::open(config(&m.dir()), topo2()).unwrap();
    assert!(cache.btrfs());
    assert_eq!(cache.stats_json()["btrfs"], true);
    let list = btrfs_out(&["subvolume", "list", m.path.to_str().unwrap()]);
    let mut paths: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split(" path ").nth(1))
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        ["cache/shards/node0", "cache/shards/node1"],
        "{list}"
    );
    for n in 0..2 {
        let shard = m.dir().join(format!("shards/node{n}"));
        let prop = btrfs_out(&["property", "get", shard.to_str().unwrap(), "compression"]);
        assert_eq!(prop.trim(), "compression=none", "node{n}: {prop}");
    }
    // Explicit placement lands in that node's subvolume.
    let me = Caller::default();
    let node = cache
        .put(
            "ns",
            "k",
            b"on node one",
            &PutOptions {
                node: Some(1),
                ..Default::default()
            },
            &me,
        )
        .unwrap();
    assert_eq!(node, 1);
    assert_eq!(cache.lookup("ns", "k").unwrap().node, 1);
    let bad = cache
        .put(
            "ns",
            "k",
            b"x",
            &PutOptions {
                node: Some(7),
                ..Default::default()
            },
            &me,
        )
        .unwrap_err();
    assert!(
        matches!(bad, StoreError::InvalidArgument(ref m) if m.contains("node 7")),
        "{bad}"
    );
}

#[test]
fn snapshot_holds_exactly_the_entries_present_and_rotation_keeps_n() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let me = Caller::default();
    let cache = Cache::open(config(&m.dir()), topo1()).unwrap();
    for i in 0..20 {
        cache
            .put(
                "snap",
                &format!("k{i}"),
                &value_for(&format!("k{i}"), 0, 3000),
                &PutOptions::default(),
                &me,
            )
            .unwrap();
    }
    let name = cache.create_snapshot().unwrap();
    // Changes after the snapshot must not show in it.
    cache.delete("snap", "k0", &me).unwrap();
    cache
        .put(
            "snap",
            "k1",
            &value_for("k1", 1, 3000),
            &PutOptions::default(),
            &me,
        )
        .unwrap();
    cache
        .put(
            "snap",
            "late",
            &value_for("late", 0, 3000),
            &PutOptions::default(),
            &me,
        )
        .unwrap();

    let snap = m.dir().join("snapshots").join(&name);
    let shard = snap.join("node0");
    let list = btrfs_out(&["subvolume", "show", shard.to_str().unwrap()]);
    assert!(
        list.contains("readonly"),
        "snapshot is not read-only: {list}"
    );
    // Open the snapshot as a cache of its own (copy it: the snapshot itself is read-only).
    let copy = m.path.join("restored");
    std::fs::create_dir_all(copy.join("shards")).unwrap();
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(&shard)
            .arg(copy.join("shards/node0"))
            .status()
            .unwrap()
            .success()
    );
    std::fs::copy(snap.join("index.db"), copy.join("index.db")).unwrap();
    let restored = Cache::open(config(&copy), topo1()).unwrap();
    assert_eq!(restored.totals().entries, 20);
    for i in 0..20 {
        let k = format!("k{i}");
        assert_eq!(check_value(&k, &restored.get("snap", &k, &me).unwrap()), 0);
    }
    assert!(matches!(
        restored.get("snap", "late", &me),
        Err(StoreError::NotFound { .. })
    ));
    drop(restored);

    let mut names = vec![name];
    for _ in 0..4 {
        names.push(cache.create_snapshot().unwrap());
    }
    let kept = cache.list_snapshots().unwrap();
    assert_eq!(kept, names[2..].to_vec(), "rotation keeps the newest 3");
    let subvols = btrfs_out(&["subvolume", "list", m.path.to_str().unwrap()]);
    assert_eq!(
        subvols.lines().filter(|l| l.contains("snapshots/")).count(),
        3,
        "{subvols}"
    );
    cache.delete_snapshot(&kept[0]).unwrap();
    assert_eq!(cache.list_snapshots().unwrap(), kept[1..].to_vec());
    assert!(matches!(
        cache.delete_snapshot("../../etc"),
        Err(StoreError::InvalidArgument(_))
    ));
}

#[test]
fn flipped_byte_is_corrupted_never_wrong_bytes_and_deleted_index_is_rebuilt() {
    let Some(m) = Mount::btrfs(256, false) else {
        return;
    };
    let me = Caller::default();
    let dir = m.dir();
    {
        let mut cfg = config(&dir);
        cfg.memory_bytes = 0; // read from disk every time
        let cache = Cache::open(cfg, topo1()).unwrap();
        for i in 0..50 {
            let k = format!("k{i}");
            cache
                .put(
                    "c",
                    &k,
                    &value_for(&k, i % 2, 2000 + i as usize * 37),
                    &PutOptions::default(),
                    &me,
                )
                .unwrap();
        }
        let recs = store_util::records(&dir);
        assert_eq!(recs.len(), 50, "one record per put on disk");
        for (n, (f, off, len, _, _)) in recs.into_iter().take(6).enumerate() {
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&f)
                .unwrap();
            // Flip in the header for some records, in the payload for others.
            let at = off + if n % 2 == 0 { 20 } else { len - 10 };
            let mut b = [0u8; 1];
            file.read_exact_at(&mut b, at).unwrap();
            b[0] ^= 0x01;
            file.write_all_at(&b, at).unwrap();
        }
        let (mut corrupted, mut good) = (0, 0);
        for i in 0..50 {
            let k = format!("k{i}");
            match cache.get("c", &k, &me) {
                Ok(v) => {
                    check_value(&k, &v);
                    good += 1;
                }
                Err(StoreError::Corrupted(msg)) => {
                    assert!(msg.contains(&k), "{msg}");
                    corrupted += 1;
                }
                Err(e) => panic!("{k}: {e}"),
            }
        }
        assert_eq!((corrupted, good), (6, 44));
        cache.flush().unwrap();
        assert_eq!(cache.stats_json()["corrupted"], 6);
        // Dropped: now a plain miss, and counted as gone.
        assert_eq!(cache.totals().entries, 44);
    }
    std::fs::remove_file(dir.join("index.db")).unwrap();
    let cache = Cache::open(config(&dir), topo1()).unwrap();
    assert_eq!(
        cache.totals().entries,
        44,
        "rebuilt index has every remaining entry"
    );
    let mut found = 0;
    for i in 0..50 {
        let k = format!("k{i}");
        if let Ok(v) = cache.get("c", &k, &me) {
            assert_eq!(check_value(&k, &v), i % 2);
            found += 1;
        }
    }
    assert_eq!(found, 44);
    drop(cache);
    // A garbage index is moved aside and rebuilt too.
    std::fs::write(
        dir.join("index.db"),
        b"this is not a database at all, not even close.........",
    )
    .unwrap();
    let cache = Cache::open(config(&dir), topo1()).unwrap();
    assert_eq!(cache.totals().entries, 44);
}

#[test]
fn full_disk_gives_no_space_keeps_earlier_entries_and_recovers() {
    let Some(m) = Mount::btrfs(160, true) else {
        return;
    };
    let me = Caller::default();
    let mut cfg = config(&m.dir());
    cfg.max_bytes = 1 << 40; // the filesystem, not the cap, runs out
    cfg.memory_bytes = 0;
    let cache = Cache::open(cfg, topo1()).unwrap();
    let mut written = Vec::new();
    let mut no_space = None;
    for i in 0..400 {
        let k = format!("big{i}");
        // Odd versions are incompressible: 1 MiB each on disk.
        match cache.put(
            "full",
            &k,
            &value_for(&k, 1, 1 << 20),
            &PutOptions::default(),
            &me,
        ) {
            Ok(_) => written.push(k),
            Err(e) => {
                no_space = Some(e);
                break;
            }
        }
    }
    let err = no_space.expect("a 160 MiB filesystem cannot take 400 MiB");
    assert!(matches!(err, StoreError::NoSpace(_)), "{err}");
    assert!(
        written.len() > 20,
        "only {} puts before NoSpace",
        written.len()
    );
    // Earlier entries read back intact or were evicted to make room; reads keep working.
    let mut intact = 0;
    for k in &written {
        match cache.get("full", k, &me) {
            Ok(v) => {
                assert_eq!(check_value(k, &v), 1);
                intact += 1;
            }
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => panic!("{k}: {e}"),
        }
    }
    assert!(intact > 0);
    assert!(cache.totals().evictions > 0, "pressure eviction freed room");
    // After eviction freed room, puts succeed again.
    // btrfs frees the space of deleted extents at its next transaction commit: give it a
    // generous deadline rather than a fixed number of short tries.
    let mut ok = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for attempt in 0.. {
        if std::time::Instant::now() > deadline {
            break;
        }
        let k = format!("after{attempt}");
        if cache
            .put(
                "full",
                &k,
                &value_for(&k, 1, 1 << 20),
                &PutOptions::default(),
                &me,
            )
            .is_ok()
        {
            assert_eq!(check_value(&k, &cache.get("full", &k, &me).unwrap()), 1);
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(ok, "the cache did not recover after eviction");
}

#[test]
fn tmpfs_fallback_plain_folders() {
    let Some(m) = Mount::tmpfs() else { return };
    let me = Caller::default();
    let cache = Cache::open(config(&m.dir()), topo1()).unwrap();
    assert!(!cache.btrfs());
    assert_eq!(cache.stats_json()["btrfs"], false);
    cache
        .put(
            "t",
            "k",
            b"plain folders work too",
            &PutOptions::default(),
            &me,
        )
        .unwrap();
    let name = cache.create_snapshot().unwrap();
    cache.delete("t", "k", &me).unwrap();
    assert_eq!(
        cache.get("t", "k", &me).unwrap_err().to_string(),
        "no entry \"k\" in namespace \"t\""
    );
    let snap_segments = std::fs::read_dir(
        m.dir()
            .join("snapshots")
            .join(&name)
            .join("node0")
            .join("seg"),
    )
    .unwrap()
    .count();
    assert_eq!(snap_segments, 1, "the snapshot kept its hard link");
    cache.delete_snapshot(&name).unwrap();
    assert!(cache.list_snapshots().unwrap().is_empty());
}
