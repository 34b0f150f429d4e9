//! The C allocator's heap settings for the daemon (glibc `mallopt`).
//!
//! By default glibc gives the top of a heap back to the kernel as soon as more than
//! 128 KiB of it is free, and moves its mmap threshold around as large blocks come and go.
//! Under a steady stream of puts the heap of each thread then shrinks and regrows all the
//! time, and every regrowth faults in fresh zeroed pages under the copy that touches them
//! (perf on the put round of `scripts/bench-bus-throughput.sh`: ~6% of the daemon's CPU in
//! `clear_page`). Fixed settings keep a few MiB of free heap per arena instead.

/// What [`tune_heap`] sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapTuning {
    /// Free bytes at the top of a heap kept before it is trimmed (`M_TRIM_THRESHOLD`).
    pub trim_threshold: usize,
    /// Extra bytes asked of the kernel each time a heap grows (`M_TOP_PAD`).
    pub top_pad: usize,
    /// Blocks this large or larger get a mapping of their own, returned when freed
    /// (`M_MMAP_THRESHOLD`): a 256 MiB value never stays in a heap after it is gone.
    pub mmap_threshold: usize,
}

impl HeapTuning {
    /// The daemon's settings: at most 8 MiB of free heap kept per arena, grown 1 MiB at a
    /// time, blocks of 1 MiB and more mapped on their own.
    pub const DAEMON: HeapTuning = HeapTuning {
        trim_threshold: 8 << 20,
        top_pad: 1 << 20,
        mmap_threshold: 1 << 20,
    };
}

/// A `mallopt` parameter glibc refused.
#[derive(Debug, thiserror::Error)]
#[error("the C allocator refused mallopt({param}, {value})")]
pub struct HeapTuningError {
    /// The parameter's name.
    pub param: &'static str,
    /// The value asked for.
    pub value: usize,
}

/// Apply `t` to the process's C allocator. Call before other threads start (glibc applies
/// it to arenas made later too, but a setting changed under running threads is racy to
/// reason about).
pub fn tune_heap(t: HeapTuning) -> Result<(), HeapTuningError> {
    let params = [
        ("M_TRIM_THRESHOLD", libc::M_TRIM_THRESHOLD, t.trim_threshold),
        ("M_TOP_PAD", libc::M_TOP_PAD, t.top_pad),
        ("M_MMAP_THRESHOLD", libc::M_MMAP_THRESHOLD, t.mmap_threshold),
    ];
    for (param, code, value) in params {
        let v = libc::c_int::try_from(value).map_err(|_| HeapTuningError { param, value })?;
        // SAFETY: mallopt only changes allocator parameters; it takes plain integers and
        // has no memory-safety preconditions.
        if unsafe { libc::mallopt(code, v) } != 1 {
            return Err(HeapTuningError { param, value });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_settings_are_accepted_and_too_large_is_named() {
        tune_heap(HeapTuning::DAEMON).expect("glibc accepts the daemon's settings");
        let e = tune_heap(HeapTuning {
            trim_threshold: usize::MAX,
            ..HeapTuning::DAEMON
        })
        .expect_err("a value past c_int is refused");
        assert_eq!(e.param, "M_TRIM_THRESHOLD");
        assert!(e.to_string().contains("M_TRIM_THRESHOLD"));
    }
}
