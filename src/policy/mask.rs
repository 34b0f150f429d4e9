//! Bit masks of CPUs or nodes in the kernel's layout (an array of `unsigned long`), sized
//! for the ids in them, so machines with more than 1024 CPUs work.

use libc::c_ulong;

const WORD_BITS: usize = c_ulong::BITS as usize;

/// A set of CPU or node ids laid out as the kernel's `cpumask`/`nodemask` words.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bitmask {
    words: Vec<c_ulong>,
}

impl Bitmask {
    /// An empty mask able to hold ids below `bits` (at least one word).
    pub fn with_bits(bits: usize) -> Bitmask {
        Bitmask {
            words: vec![0; bits.div_ceil(WORD_BITS).max(1)],
        }
    }

    /// A mask holding exactly `ids`, sized for the largest one.
    pub fn from_ids(ids: &[u32]) -> Bitmask {
        let bits = ids.iter().map(|&i| i as usize + 1).max().unwrap_or(1);
        let mut m = Bitmask::with_bits(bits);
        for &id in ids {
            m.set(id);
        }
        m
    }

    /// Add `id`, growing the mask when needed.
    pub fn set(&mut self, id: u32) {
        let (w, b) = (id as usize / WORD_BITS, id as usize % WORD_BITS);
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        self.words[w] |= 1 << b;
    }

    /// The ids in the mask, ascending.
    pub fn ids(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (w, &word) in self.words.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                out.push((w * WORD_BITS + b) as u32);
                bits &= bits - 1;
            }
        }
        out
    }

    /// The capacity in bits (a multiple of the word size).
    pub fn bits(&self) -> usize {
        self.words.len() * WORD_BITS
    }

    /// The size in bytes, as `sched_setaffinity` wants it.
    pub fn byte_len(&self) -> usize {
        std::mem::size_of_val(self.words.as_slice())
    }

    pub(crate) fn as_ptr(&self) -> *const c_ulong {
        self.words.as_ptr()
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut c_ulong {
        self.words.as_mut_ptr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_beyond_1024() {
        let ids = vec![0, 5, 63, 64, 1023, 1024, 4095];
        let m = Bitmask::from_ids(&ids);
        assert_eq!(m.ids(), ids);
        assert_eq!(m.bits(), 4096);
        assert_eq!(m.byte_len(), 512);
    }
}
