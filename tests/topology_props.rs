//! Property tests of the topology parsers and of detection: arbitrary bytes never panic,
//! valid lists and masks round-trip exactly.

use numa_cache::topology::cpulist::{
    MAX_ID, format_cpulist, parse_cpulist, parse_cpulist_bytes, parse_cpumap, parse_cpumap_bytes,
};
use numa_cache::topology::distance::{parse_distance_row, parse_distance_row_bytes};
use numa_cache::topology::meminfo::{parse_meminfo, parse_meminfo_bytes};
use numa_cache::topology::synthetic::SyntheticMachine;
use proptest::prelude::*;
use std::collections::BTreeSet;

/// Bytes biased towards what the parsers look for, so deep paths get exercised.
fn sysfs_like() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(b"0123456789,- \n\0abcdefABCDEFx:kBNodeMemTotalFree".to_vec()),
            1 => any::<u8>(),
        ],
        0..200,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_cpulist_bytes(&bytes);
        let _ = parse_cpumap_bytes(&bytes);
        let _ = parse_meminfo_bytes(&bytes);
        let _ = parse_distance_row_bytes(&bytes);
    }

    #[test]
    fn parsers_never_panic_on_sysfs_like_bytes(bytes in sysfs_like()) {
        if let Ok(list) = parse_cpulist_bytes(&bytes) {
            prop_assert!(list.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(list.iter().all(|&c| c <= MAX_ID));
        }
        if let Ok(list) = parse_cpumap_bytes(&bytes) {
            prop_assert!(list.windows(2).all(|w| w[0] < w[1]));
        }
        let _ = parse_meminfo_bytes(&bytes);
        let _ = parse_distance_row_bytes(&bytes);
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_strings(text in ".{0,100}") {
        let _ = parse_cpulist(&text);
        let _ = parse_cpumap(&text);
        let _ = parse_meminfo(&text);
        let _ = parse_distance_row(&text);
    }

    #[test]
    fn lists_round_trip(set in prop::collection::btree_set(0..=MAX_ID, 0..300)) {
        let ids: Vec<u32> = set.iter().copied().collect();
        let text = format_cpulist(&ids);
        prop_assert_eq!(parse_cpulist(&text).unwrap(), ids.clone());
        // Canonical text: parse then format gives it back byte for byte, with sysfs junk.
        let junk = format!("{text}\n\0\0");
        prop_assert_eq!(format_cpulist(&parse_cpulist(&junk).unwrap()), text);
    }

    #[test]
    fn dense_ranges_round_trip(ranges in prop::collection::vec((0u32..2000, 0u32..64), 0..20)) {
        let mut set = BTreeSet::new();
        for (start, len) in ranges {
            set.extend(start..start + len);
        }
        let ids: Vec<u32> = set.into_iter().collect();
        let text = format_cpulist(&ids);
        prop_assert_eq!(parse_cpulist(&text).unwrap(), ids);
    }

    #[test]
    fn masks_of_any_number_of_words(words in prop::collection::vec(any::<u32>(), 1..(MAX_ID as usize + 1) / 32)) {
        // Most significant word first, as sysfs prints it.
        let text: Vec<String> = words.iter().map(|w| format!("{w:08x}")).collect();
        let text = text.join(",");
        let mut expected = Vec::new();
        for (i, w) in words.iter().rev().enumerate() {
            for bit in 0..32 {
                if w & (1 << bit) != 0 {
                    expected.push(i as u32 * 32 + bit);
                }
            }
        }
        prop_assert_eq!(parse_cpumap(&format!("{text}\n")).unwrap(), expected);
    }
}

proptest! {
    // Each case writes a small tree: fewer cases.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn detection_never_panics_on_corrupt_trees(
        files in prop::collection::vec((0usize..9, sysfs_like()), 1..6)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut machine = SyntheticMachine::uniform(2, 2, 1 << 20);
        machine.cpuset = Some((vec![0, 1, 2], vec![0, 1]));
        machine.write(dir.path()).unwrap();
        let names = [
            "sys/devices/system/node/online",
            "sys/devices/system/cpu/online",
            "sys/devices/system/node/node0/cpulist",
            "sys/devices/system/node/node1/cpumap",
            "sys/devices/system/node/node1/meminfo",
            "sys/devices/system/node/node0/distance",
            "sys/fs/cgroup/numa-cache.slice/cpuset.cpus.effective",
            "proc/self/cgroup",
            "proc/mounts",
        ];
        for (which, bytes) in &files {
            std::fs::write(dir.path().join(names[*which]), bytes).unwrap();
        }
        let t = numa_cache::topology::detect(dir.path());
        prop_assert!(t.nodes.windows(2).all(|w| w[0].node_id < w[1].node_id));
        prop_assert!(t.numa_available || !t.warnings.is_empty());
        for n in &t.nodes {
            prop_assert!(n.allowed_cpus.iter().all(|c| n.cpus.contains(c)));
        }
        let _ = t.to_json();
    }
}
