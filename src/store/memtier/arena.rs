//! Memory of one node for its memory tier. Every byte lives in an anonymous mapping whose
//! policy is set with `mbind(MPOL_PREFERRED, {node})` before its first touch, so:
//!
//! - the pages are allocated on the node by whichever thread copies the value in;
//! - automatic NUMA balancing leaves them alone: its scanner skips mappings that carry their
//!   own policy (the kernel's `vma_policy_mof()`; `mbind` never sets `MPOL_F_MOF`), so reads
//!   from threads on other nodes do not migrate them (issue 13 measured 14,699 pages moved by
//!   120 reads when the tier lived on the heap).
//!
//! MPOL_PREFERRED rather than MPOL_BIND: when the node is full the kernel falls back to
//! another node instead of OOM-killing the daemon on a page fault; where the pages really are
//! is what the kernel reports (`/proc/PID/numa_maps` shows these mappings as `prefer:N`).
//!
//! Values up to [`LARGEST_SLOT`] bytes take a slot of a power-of-two size class in a
//! [`CHUNK`]-byte mapping (one mapping per many values: the process has ~65k mappings in
//! all); larger values get a mapping of their own. A chunk whose slots are all free is
//! unmapped unless it is its class's last; a freed slot stays resident for the next value.
//! A few freed large mappings (4 of up to 4 MiB) are kept for the next value of the same
//! size: a fresh mapping costs mmap, mbind, a fault per page and an munmap.

use crate::policy::{MemPolicyMode, MoveFlags, mbind};
use std::io;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The smallest slot.
const SMALLEST_SLOT: usize = 64;
/// The largest slot; larger values get their own mapping.
pub const LARGEST_SLOT: usize = 128 << 10;
/// Bytes of one chunk of slots.
pub const CHUNK: usize = 512 << 10;
const SPARE_MAPPINGS: usize = 4;
const SPARE_BYTES: usize = 4 << 20;
const CLASSES: usize = (LARGEST_SLOT / SMALLEST_SLOT).trailing_zeros() as usize + 1;

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize
}

/// A value the arena could not hold.
#[derive(Debug, thiserror::Error)]
pub enum ArenaError {
    /// mmap refused a new mapping (out of address space or of the process's map count).
    #[error("mapping {len} bytes for node {node:?}'s memory tier failed: {source}")]
    Map {
        /// The node the mapping was for.
        node: Option<u32>,
        /// Its size.
        len: usize,
        /// The errno.
        #[source]
        source: io::Error,
    },
}

/// One size class: chunks by id (None = an id free for reuse).
struct Class {
    slot: usize,
    chunks: Vec<Option<Chunk>>,
}

struct Chunk {
    base: usize,
    free: Vec<u32>,
    live: u32,
}

struct Inner {
    node: Option<u32>,
    page: usize,
    classes: Vec<Mutex<Class>>,
    /// Mappings of dropped large values kept for the next value of the same size (a tier
    /// replaces values as fast as it takes them): no mmap, mbind, page faults or munmap
    /// with its TLB shootdown. At most SPARE_MAPPINGS of at most SPARE_BYTES each.
    spare: Mutex<Vec<(usize, usize)>>,
    /// Set once mbind has failed, so the warning is logged once per arena.
    unbound_logged: AtomicBool,
}

/// Node-bound memory for one node's tier. Cheap to clone (shared).
#[derive(Clone)]
pub struct NodeArena {
    inner: Arc<Inner>,
}

/// Bytes copied into a [`NodeArena`]: read-only, freed (slot returned, mapping unmapped)
/// when dropped.
pub struct NodeBytes {
    ptr: *const u8,
    len: usize,
    home: Home,
}

enum Home {
    Empty,
    Own {
        map_len: usize,
        arena: Arc<Inner>,
    },
    Slot {
        arena: Arc<Inner>,
        class: usize,
        chunk: u32,
        slot: u32,
    },
}

// SAFETY: the bytes are written once, before the value is handed out, and only read after;
// the slot or mapping belongs to this value alone until it is dropped.
unsafe impl Send for NodeBytes {}
// SAFETY: as above: shared access is read-only.
unsafe impl Sync for NodeBytes {}

impl NodeArena {
    /// An arena whose pages prefer `node`; `None` places nothing (a host without NUMA, or
    /// tests), though values still get mappings of their own.
    pub fn new(node: Option<u32>) -> NodeArena {
        let classes = (0..CLASSES)
            .map(|i| {
                Mutex::new(Class {
                    slot: SMALLEST_SLOT << i,
                    chunks: Vec::new(),
                })
            })
            .collect();
        NodeArena {
            inner: Arc::new(Inner {
                node,
                page: page_size(),
                classes,
                spare: Mutex::new(Vec::new()),
                unbound_logged: AtomicBool::new(false),
            }),
        }
    }

    /// The node its pages are placed on, if any.
    pub fn node(&self) -> Option<u32> {
        self.inner.node
    }

    /// The bytes a value of `len` bytes occupies here (its slot or its page-rounded mapping).
    pub fn footprint(&self, len: usize) -> usize {
        match class_of(len) {
            _ if len == 0 => 0,
            Some(c) => SMALLEST_SLOT << c,
            None => len.div_ceil(self.inner.page) * self.inner.page,
        }
    }

    /// A copy of `data` in this node's memory.
    pub fn copy_in(&self, data: &[u8]) -> Result<NodeBytes, ArenaError> {
        let len = data.len();
        if len == 0 {
            return Ok(NodeBytes {
                ptr: std::ptr::NonNull::<u8>::dangling().as_ptr(),
                len: 0,
                home: Home::Empty,
            });
        }
        let (ptr, home) = match class_of(len) {
            Some(class) => {
                let (chunk, slot, addr) = self.inner.take_slot(class)?;
                (
                    addr as *mut u8,
                    Home::Slot {
                        arena: Arc::clone(&self.inner),
                        class,
                        chunk,
                        slot,
                    },
                )
            }
            None => {
                let map_len = self.footprint(len);
                let addr = match self.inner.take_spare(map_len) {
                    Some(a) => a,
                    None => self.inner.map(map_len)?,
                };
                (
                    addr as *mut u8,
                    Home::Own {
                        map_len,
                        arena: Arc::clone(&self.inner),
                    },
                )
            }
        };
        // SAFETY: `ptr` starts at least `len` writable bytes (a slot of a class >= len, or a
        // mapping of >= len bytes) that nothing else refers to; `data` is a distinct buffer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr, len) };
        Ok(NodeBytes { ptr, len, home })
    }

    /// Bytes mapped for slots (every chunk, used or not), for tests and diagnostics.
    pub fn chunk_bytes(&self) -> usize {
        self.inner
            .classes
            .iter()
            .map(|c| {
                c.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .chunks
                    .iter()
                    .flatten()
                    .count()
                    * CHUNK
            })
            .sum()
    }
}

/// The size class of a value of `len` bytes (None: too large for a slot).
fn class_of(len: usize) -> Option<usize> {
    if len > LARGEST_SLOT {
        return None;
    }
    let slot = len.max(SMALLEST_SLOT).next_power_of_two();
    Some((slot / SMALLEST_SLOT).trailing_zeros() as usize)
}

impl Inner {
    /// A new anonymous mapping of `len` bytes, its policy set to this arena's node.
    fn map(&self, len: usize) -> Result<usize, ArenaError> {
        // SAFETY: an anonymous private mapping at an address the kernel chooses touches no
        // existing memory.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(ArenaError::Map {
                node: self.node,
                len,
                source: io::Error::last_os_error(),
            });
        }
        if let Some(node) = self.node
            && let Err(e) = mbind(
                addr as usize,
                len,
                MemPolicyMode::Preferred,
                &[node],
                MoveFlags::NONE,
            )
            && !self.unbound_logged.swap(true, Ordering::Relaxed)
        {
            // Still usable: the pages go where the writing thread is, and NUMA balancing may
            // move them. Said once per node.
            tracing::warn!(
                "memory tier of node {node}: mbind failed ({e}); its pages are not bound to the node"
            );
        }
        // Fault every page in now, under the policy just set, in one call: the values copied
        // in next would otherwise fault them one by one, on the put path (about 5% of the
        // daemon's CPU in a stream of 4 KiB puts while the tier fills). Best effort: a kernel
        // before 5.14 (EINVAL) or a short memory (ENOMEM) leaves them to fault as before.
        // SAFETY: `addr..addr+len` is the anonymous mapping made above; populating it
        // writes no byte that anything reads.
        unsafe {
            libc::madvise(addr, len, libc::MADV_POPULATE_WRITE);
        }
        Ok(addr as usize)
    }

    fn unmap(&self, addr: usize, len: usize) {
        // SAFETY: `addr..addr+len` is a mapping this arena made and nothing refers to any
        // more (its last value was dropped).
        unsafe { libc::munmap(addr as *mut libc::c_void, len) };
    }

    fn take_spare(&self, map_len: usize) -> Option<usize> {
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        let i = spare.iter().position(|&(_, l)| l == map_len)?;
        Some(spare.swap_remove(i).0)
    }

    /// A large value's mapping is free: keep it for the next value of its size, or unmap.
    fn give_back_mapping(&self, addr: usize, map_len: usize) {
        if map_len <= SPARE_BYTES {
            let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
            if spare.len() < SPARE_MAPPINGS {
                spare.push((addr, map_len));
                return;
            }
        }
        self.unmap(addr, map_len);
    }

    fn take_slot(&self, class: usize) -> Result<(u32, u32, usize), ArenaError> {
        let mut c = self.classes[class]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let slot_len = c.slot;
        for (id, ch) in c.chunks.iter_mut().enumerate() {
            if let Some(ch) = ch
                && let Some(s) = ch.free.pop()
            {
                ch.live += 1;
                return Ok((id as u32, s, ch.base + s as usize * slot_len));
            }
        }
        let base = self.map(CHUNK)?;
        let slots = (CHUNK / slot_len) as u32;
        // Slots are handed out from the lowest address up: pages are touched in order.
        let mut free: Vec<u32> = (1..slots).rev().collect();
        free.shrink_to_fit();
        let chunk = Chunk {
            base,
            free,
            live: 1,
        };
        let id = match c.chunks.iter().position(Option::is_none) {
            Some(i) => {
                c.chunks[i] = Some(chunk);
                i
            }
            None => {
                c.chunks.push(Some(chunk));
                c.chunks.len() - 1
            }
        };
        Ok((id as u32, 0, base))
    }

    fn give_back(&self, class: usize, chunk: u32, slot: u32) {
        let mut c = self.classes[class]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let others = c.chunks.iter().flatten().count() > 1;
        let Some(Some(ch)) = c.chunks.get_mut(chunk as usize) else {
            return;
        };
        ch.live -= 1;
        if ch.live == 0 && others {
            let base = ch.base;
            c.chunks[chunk as usize] = None;
            drop(c);
            self.unmap(base, CHUNK);
            return;
        }
        // The slot's pages stay resident for the next value (a chunk goes back to the
        // kernel once all its slots are free).
        ch.free.push(slot);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Every NodeBytes keeps this Inner alive, so every chunk and spare mapping is unused.
        for &(addr, len) in self.spare.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            self.unmap(addr, len);
        }
        for c in &self.classes {
            let c = c.lock().unwrap_or_else(|p| p.into_inner());
            for ch in c.chunks.iter().flatten() {
                self.unmap(ch.base, CHUNK);
            }
        }
    }
}

impl NodeBytes {
    /// The start address (for page-placement queries).
    pub fn addr(&self) -> usize {
        self.ptr as usize
    }
}

impl Deref for NodeBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` starts `len` initialized bytes (copied in by copy_in) that stay
        // mapped and unchanged until this value is dropped; for len 0 it is dangling but
        // non-null and aligned, which a zero-length slice allows.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl AsRef<[u8]> for NodeBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for NodeBytes {
    fn drop(&mut self) {
        match &self.home {
            Home::Empty => {}
            Home::Own { map_len, arena } => arena.give_back_mapping(self.ptr as usize, *map_len),
            Home::Slot {
                arena,
                class,
                chunk,
                slot,
            } => arena.give_back(*class, *chunk, *slot),
        }
    }
}

impl std::fmt::Debug for NodeBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeBytes({} bytes at {:#x})", self.len, self.addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy the kernel reports for the page at `addr` (get_mempolicy MPOL_F_ADDR).
    fn policy_at(addr: usize) -> (i32, u64) {
        let mut mode: libc::c_int = -1;
        let mut mask: [libc::c_ulong; 16] = [0; 16];
        const MPOL_F_ADDR: libc::c_ulong = 2;
        // SAFETY: get_mempolicy writes one int and at most 1024 bits into the buffers given.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_get_mempolicy,
                &mut mode as *mut libc::c_int,
                mask.as_mut_ptr(),
                1024 as libc::c_ulong,
                addr as libc::c_ulong,
                MPOL_F_ADDR,
            )
        };
        assert_eq!(rc, 0, "get_mempolicy: {}", io::Error::last_os_error());
        (mode, mask[0])
    }

    #[test]
    fn copies_read_back_in_every_class_and_above() {
        let a = NodeArena::new(None);
        for len in [
            0,
            1,
            63,
            64,
            65,
            4095,
            4096,
            4097,
            100_000,
            LARGEST_SLOT,
            LARGEST_SLOT + 1,
            3 << 20,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let b = a.copy_in(&data).unwrap();
            assert_eq!(&b[..], &data[..], "len {len}");
            assert!(a.footprint(len) >= len);
        }
    }

    #[test]
    fn the_kernel_sees_the_node_policy_on_slots_and_own_mappings() {
        // Node 0 exists on every Linux host.
        let a = NodeArena::new(Some(0));
        let small = a.copy_in(&[1u8; 100]).unwrap();
        let large = a.copy_in(&vec![2u8; LARGEST_SLOT * 3]).unwrap();
        for b in [&small, &large] {
            let (mode, mask) = policy_at(b.addr());
            assert_eq!(mode, MemPolicyMode::Preferred.raw(), "{b:?}");
            assert_eq!(mask, 1, "{b:?}");
        }
        // Unbound memory reports the default policy: the check above can fail.
        let plain = NodeArena::new(None).copy_in(&[3u8; 100]).unwrap();
        assert_eq!(policy_at(plain.addr()).0, MemPolicyMode::Default.raw());
    }

    #[test]
    fn slots_are_reused_and_empty_chunks_unmapped() {
        let a = NodeArena::new(Some(0));
        let per_chunk = CHUNK / 1024;
        let held: Vec<NodeBytes> = (0..per_chunk * 3)
            .map(|i| a.copy_in(&vec![i as u8; 1000]).unwrap())
            .collect();
        assert_eq!(a.chunk_bytes(), 3 * CHUNK);
        for (i, b) in held.iter().enumerate() {
            assert!(b.iter().all(|&x| x == i as u8), "slot {i} overwritten");
        }
        drop(held);
        // The class keeps one chunk; the others went back to the kernel.
        assert_eq!(a.chunk_bytes(), CHUNK);
        let again = a.copy_in(&[9u8; 1000]).unwrap();
        assert_eq!(a.chunk_bytes(), CHUNK);
        assert_eq!(&again[..3], &[9, 9, 9]);
    }
}

#[cfg(test)]
mod reuse_tests {
    use super::*;

    #[test]
    fn a_freed_large_mapping_is_reused_for_the_same_size() {
        let a = NodeArena::new(Some(0));
        let first = a.copy_in(&vec![1u8; 300_000]).unwrap();
        let addr = first.addr();
        drop(first);
        let second = a.copy_in(&vec![2u8; 300_000]).unwrap();
        assert_eq!(second.addr(), addr, "the spare mapping was not reused");
        assert!(second.iter().all(|&b| b == 2));
        // Another size gets a mapping of its own.
        let other = a.copy_in(&vec![3u8; 600_000]).unwrap();
        assert_ne!(other.addr(), addr);
        assert!(other.iter().all(|&b| b == 3));
    }
}
