//! The blob file format: a self-describing header (so the index can be rebuilt from the files
//! alone) followed by a zstd frame, or the raw bytes when compression does not pay.
//!
//! Layout, little endian: magic `NCB1`, version u16, flags u16, id u64, logical length u64,
//! payload length u64, xxh3-64 of the logical bytes u64, created u64, expires u64 (0: never),
//! namespace length u16, key length u16, owner u32 (uid + 1 of the namespace's owner, 0: none;
//! version 1 wrote 0 here), namespace, key, xxh3-64 of everything before it (the header
//! checksum), then the payload. The same record is a file of its own (large values, and every
//! value a version-1 cache wrote) or one record of an append-only segment (`segment.rs`).
//!
//! Version 3 (written only for the records of a PutMany; every other record stays version 2,
//! so an older build still reads them) adds `FLAG_BATCH`: the stored payload ends with a
//! 16-byte batch trailer, counted in the payload length: the id of the batch's first record
//! u64, the number of records in the batch u32 (their ids are `first..first + count`), and
//! the low 32 bits of the xxh3-64 of (id, first, count) u32. Recovery indexes a batch's
//! records only when all of them are there and intact (recovery.rs), so a crash between the
//! writes of a batch leaves it whole or absent.

use std::cell::RefCell;
use xxhash_rust::xxh3::xxh3_64;

/// File magic.
pub const MAGIC: &[u8; 4] = b"NCB1";
/// Format version written by this build for a record of its own (2: the owner field).
pub const VERSION: u16 = 2;
/// Format version of a record in a batch (3: `FLAG_BATCH` and its trailer).
pub const VERSION_BATCH: u16 = 3;
/// Flag: the payload is a zstd frame.
pub const FLAG_ZSTD: u16 = 1;
/// Flag (version 3): the stored payload ends with a batch trailer (`TRAILER_LEN` bytes).
/// (Flag 2 is segment.rs's `FLAG_TOMBSTONE`.)
pub const FLAG_BATCH: u16 = 4;
/// Length of a batch trailer: first id u64, count u32, check u32.
pub const TRAILER_LEN: usize = 16;
/// Size of the fixed part of the header.
pub const FIXED_LEN: usize = 64;
/// Largest header: fixed part, longest namespace and key, header checksum.
pub const MAX_HEADER_LEN: usize = FIXED_LEN + 64 + 1024 + 8;
/// Values whose compressed form saves less than this share are stored raw.
const MIN_SAVING: f64 = 0.10;
/// Values above this size are sampled before a full compression attempt.
const SAMPLE_ABOVE: usize = 128 << 10;
const SAMPLE_LEN: usize = 64 << 10;

/// The PutMany a record belongs to: records `first..first + count`, written together and
/// indexed together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Batch {
    /// Id of its first record.
    pub first: u64,
    /// Records in it (their ids follow each other).
    pub count: u32,
}

impl Batch {
    /// Is record `id` one of this batch's?
    pub fn holds(&self, id: u64) -> bool {
        id >= self.first && id - self.first < u64::from(self.count)
    }

    /// The trailer record `id` of this batch ends with.
    fn trailer(&self, id: u64) -> [u8; TRAILER_LEN] {
        let mut t = [0u8; TRAILER_LEN];
        t[..8].copy_from_slice(&self.first.to_le_bytes());
        t[8..12].copy_from_slice(&self.count.to_le_bytes());
        let check = trailer_check(id, &t[..12]);
        t[12..].copy_from_slice(&check.to_le_bytes());
        t
    }
}

/// The check of a trailer: low 32 bits of the xxh3-64 of the record's id and the trailer's
/// first 12 bytes (a torn trailer, or one copied to another record, fails it).
fn trailer_check(id: u64, fields: &[u8]) -> u32 {
    let mut b = [0u8; 20];
    b[..8].copy_from_slice(&id.to_le_bytes());
    b[8..].copy_from_slice(fields);
    xxh3_64(&b) as u32
}

/// What a blob header says about its entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Entry id (also the file name).
    pub id: u64,
    /// FLAG_* bits.
    pub flags: u16,
    /// Logical (uncompressed) length.
    pub logical_len: u64,
    /// Bytes on disk after the header (the batch trailer included).
    pub payload_len: u64,
    /// xxh3-64 of the logical bytes.
    pub checksum: u64,
    /// Creation time, unix seconds.
    pub created: u64,
    /// Expiry, unix seconds (0: never).
    pub expires: u64,
    /// Namespace.
    pub namespace: String,
    /// Key.
    pub key: String,
    /// The namespace's owner when the record was written (None: no owner, or a v1 record).
    pub owner: Option<u32>,
    /// Bytes of the header, checksum included.
    pub header_len: usize,
}

impl Header {
    /// Size of the whole file.
    pub fn stored_len(&self) -> u64 {
        self.header_len as u64 + self.payload_len
    }
}

/// Why a blob could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Structure is wrong (magic, version, lengths, header checksum).
    #[error("bad blob header: {0}")]
    Header(String),
    /// The payload did not decode to the logical bytes the header promises.
    #[error("blob payload does not match its checksum: {0}")]
    Payload(String),
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn compress(level: i32, data: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().map(|(l, _)| *l) != Some(level) {
            *c = zstd::bulk::Compressor::new(level).ok().map(|z| (level, z));
        }
        let (_, z) = c.as_mut()?;
        z.compress(data).ok()
    })
}

fn pays(raw: usize, compressed: usize) -> bool {
    (compressed as f64) < raw as f64 * (1.0 - MIN_SAVING)
}

/// Encode a whole blob file: header then payload, compressed when the value has at least
/// `min_compress` bytes and compression saves ≥ 10%; a record of a `batch` ends with its
/// trailer (version 3). Returns the file and the checksum.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    id: u64,
    namespace: &str,
    key: &str,
    value: &[u8],
    level: i32,
    min_compress: usize,
    created: u64,
    expires: u64,
    owner: Option<u32>,
    batch: Option<Batch>,
) -> (Vec<u8>, u64) {
    let checksum = xxh3_64(value);
    let worth_trying = value.len() >= min_compress.max(64)
        && (value.len() <= SAMPLE_ABOVE
            || compress(level, &value[..SAMPLE_LEN])
                .map(|c| pays(SAMPLE_LEN, c.len()))
                .unwrap_or(false));
    let compressed = if worth_trying {
        compress(level, value).filter(|c| pays(value.len(), c.len()))
    } else {
        None
    };
    let (flags, payload): (u16, &[u8]) = match &compressed {
        Some(c) => (FLAG_ZSTD, c),
        None => (0, value),
    };
    let mut out = encode_header(
        &HeaderFields {
            id,
            flags,
            logical_len: value.len() as u64,
            payload_len: payload.len() as u64,
            checksum,
            created,
            expires,
            owner,
            batch,
        },
        namespace,
        key,
    );
    out.reserve_exact(payload.len() + batch.map_or(0, |_| TRAILER_LEN));
    out.extend_from_slice(payload);
    if let Some(b) = batch {
        out.extend_from_slice(&b.trailer(id));
    }
    (out, checksum)
}

/// The fixed fields of a header, for [`encode_header`].
pub struct HeaderFields {
    /// Entry id.
    pub id: u64,
    /// FLAG_* bits.
    pub flags: u16,
    /// Logical length.
    pub logical_len: u64,
    /// Payload length (the batch trailer not included: it is added for a `batch`).
    pub payload_len: u64,
    /// xxh3-64 of the logical bytes.
    pub checksum: u64,
    /// Creation, unix seconds.
    pub created: u64,
    /// Expiry, unix seconds (0: never).
    pub expires: u64,
    /// Namespace owner.
    pub owner: Option<u32>,
    /// The PutMany the record belongs to: version 3, `FLAG_BATCH`, the trailer counted in
    /// the payload length.
    pub batch: Option<Batch>,
}

/// Length of the header of a record of `namespace`/`key`.
pub fn header_len(namespace: &str, key: &str) -> usize {
    FIXED_LEN + namespace.len() + key.len() + 8
}

/// Encode just a header (a streamed put writes the payload first, then this in front).
pub fn encode_header(f: &HeaderFields, namespace: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_len(namespace, key));
    let (version, flags, payload_len) = match f.batch {
        Some(_) => (
            VERSION_BATCH,
            f.flags | FLAG_BATCH,
            f.payload_len + TRAILER_LEN as u64,
        ),
        None => (VERSION, f.flags, f.payload_len),
    };
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    for v in [
        f.id,
        f.logical_len,
        payload_len,
        f.checksum,
        f.created,
        f.expires,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&(namespace.len() as u16).to_le_bytes());
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    let owner_field = f.owner.map_or(0, |u| u.saturating_add(1));
    out.extend_from_slice(&owner_field.to_le_bytes());
    out.extend_from_slice(namespace.as_bytes());
    out.extend_from_slice(key.as_bytes());
    let hh = xxh3_64(&out);
    out.extend_from_slice(&hh.to_le_bytes());
    out
}

/// Would zstd at `level` save ≥ 10% on data that starts with `sample`?
pub fn compression_pays(level: i32, sample: &[u8]) -> bool {
    compress(level, sample)
        .map(|c| pays(sample.len(), c.len()))
        .unwrap_or(false)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Parse and check the header at the start of `b` (which may hold just the header).
pub fn parse_header(b: &[u8]) -> Result<Header, BlobError> {
    if b.len() < FIXED_LEN + 8 {
        return Err(BlobError::Header(format!(
            "file is {} bytes, shorter than a header",
            b.len()
        )));
    }
    if &b[0..4] != MAGIC {
        return Err(BlobError::Header("wrong magic".into()));
    }
    let version = u16_at(b, 4);
    if !(1..=VERSION_BATCH).contains(&version) {
        return Err(BlobError::Header(format!(
            "format version {version}, this build reads 1-{VERSION_BATCH}"
        )));
    }
    if u16_at(b, 6) & FLAG_BATCH != 0 && version < VERSION_BATCH {
        return Err(BlobError::Header(format!(
            "a batch flag in a version {version} header"
        )));
    }
    let ns_len = u16_at(b, 56) as usize;
    let key_len = u16_at(b, 58) as usize;
    let header_len = FIXED_LEN + ns_len + key_len + 8;
    if ns_len > 64 || key_len > 1024 || b.len() < header_len {
        return Err(BlobError::Header(
            "namespace or key length out of range".into(),
        ));
    }
    let body = FIXED_LEN + ns_len + key_len;
    if xxh3_64(&b[..body]) != u64_at(b, body) {
        return Err(BlobError::Header("header checksum mismatch".into()));
    }
    let namespace = std::str::from_utf8(&b[FIXED_LEN..FIXED_LEN + ns_len])
        .map_err(|_| BlobError::Header("namespace is not UTF-8".into()))?
        .to_string();
    let key = std::str::from_utf8(&b[FIXED_LEN + ns_len..body])
        .map_err(|_| BlobError::Header("key is not UTF-8".into()))?
        .to_string();
    Ok(Header {
        flags: u16_at(b, 6),
        id: u64_at(b, 8),
        logical_len: u64_at(b, 16),
        payload_len: u64_at(b, 24),
        checksum: u64_at(b, 32),
        created: u64_at(b, 40),
        expires: u64_at(b, 48),
        namespace,
        key,
        owner: match u32::from_le_bytes([b[60], b[61], b[62], b[63]]) {
            0 => None,
            n => Some(n - 1),
        },
        header_len,
    })
}

/// Decode the payload that follows `h` in `file` and verify it against the header checksum
/// (and a batch trailer against its check).
pub fn decode_payload(h: &Header, file: &[u8]) -> Result<Vec<u8>, BlobError> {
    let payload = file
        .get(h.header_len..)
        .filter(|p| p.len() as u64 == h.payload_len)
        .ok_or_else(|| {
            BlobError::Payload(format!(
                "file holds {} payload bytes, header says {}",
                file.len().saturating_sub(h.header_len),
                h.payload_len
            ))
        })?;
    let value_len = payload.len() - trailer_len(h, payload)?;
    decode_payload_bytes(h, &payload[..value_len])
}

/// The batch of the record whose header is `h` and stored payload (trailer included)
/// `payload`: None for a record of its own (no `FLAG_BATCH`); an error when the trailer is
/// torn, or does not name this record.
pub fn batch_of(h: &Header, payload: &[u8]) -> Result<Option<Batch>, BlobError> {
    if h.flags & FLAG_BATCH == 0 {
        return Ok(None);
    }
    let t = payload
        .len()
        .checked_sub(TRAILER_LEN)
        .map(|at| &payload[at..])
        .ok_or_else(|| BlobError::Payload("payload shorter than its batch trailer".into()))?;
    let b = Batch {
        first: u64_at(t, 0),
        count: u32::from_le_bytes([t[8], t[9], t[10], t[11]]),
    };
    let check = u32::from_le_bytes([t[12], t[13], t[14], t[15]]);
    if check != trailer_check(h.id, &t[..12]) || !b.holds(h.id) {
        return Err(BlobError::Payload(format!(
            "the batch trailer of record {} is torn or not its own",
            h.id
        )));
    }
    Ok(Some(b))
}

/// Bytes of `payload` that are the batch trailer (0 without one), checked.
fn trailer_len(h: &Header, payload: &[u8]) -> Result<usize, BlobError> {
    Ok(batch_of(h, payload)?.map_or(0, |_| TRAILER_LEN))
}

fn decode_payload_bytes(h: &Header, payload: &[u8]) -> Result<Vec<u8>, BlobError> {
    let value = if h.flags & FLAG_ZSTD != 0 {
        DECOMPRESSOR.with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = zstd::bulk::Decompressor::new().ok();
            }
            let d = d
                .as_mut()
                .ok_or_else(|| BlobError::Payload("no zstd decompression context".into()))?;
            let mut out = Vec::with_capacity(h.logical_len as usize);
            d.decompress_to_buffer(payload, &mut out)
                .map_err(|e| BlobError::Payload(format!("zstd: {e}")))?;
            Ok::<_, BlobError>(out)
        })?
    } else {
        payload.to_vec()
    };
    if value.len() as u64 != h.logical_len || xxh3_64(&value) != h.checksum {
        return Err(BlobError::Payload(
            "xxh3 of the decoded bytes differs from the header".into(),
        ));
    }
    Ok(value)
}

/// Decode a blob read as header and payload, checking it belongs to `id` and has `checksum`.
/// A raw payload is returned as it is, without a copy.
pub fn decode_parts(
    header: &[u8],
    payload: Vec<u8>,
    id: u64,
    checksum: u64,
) -> Result<Vec<u8>, BlobError> {
    let h = parse_header(header)?;
    if h.id != id || h.checksum != checksum || h.header_len != header.len() {
        return Err(BlobError::Header(format!(
            "file is entry {} with checksum {:016x}, the index expects entry {id} with {checksum:016x}",
            h.id, h.checksum
        )));
    }
    if h.payload_len != payload.len() as u64 {
        return Err(BlobError::Payload(format!(
            "payload is {} bytes, header says {}",
            payload.len(),
            h.payload_len
        )));
    }
    // The trailer goes without a copy: the value is what precedes it.
    let value_len = payload.len() - trailer_len(&h, &payload)?;
    let mut payload = payload;
    payload.truncate(value_len);
    if h.flags & FLAG_ZSTD != 0 {
        return decode_payload_bytes(&h, &payload);
    }
    if payload.len() as u64 != h.logical_len || xxh3_64(&payload) != h.checksum {
        return Err(BlobError::Payload(
            "xxh3 of the stored bytes differs from the header".into(),
        ));
    }
    Ok(payload)
}

/// Decode a record read as header and payload, checking it is entry `id` of `namespace`/`key`
/// (the in-memory map keeps no checksum: the header's own checksums and these names decide).
pub fn decode_record(
    header: &[u8],
    payload: Vec<u8>,
    id: u64,
    namespace: &str,
    key: &str,
) -> Result<Vec<u8>, BlobError> {
    let h = parse_header(header)?;
    if h.id != id || h.namespace != namespace || h.key != key || h.header_len != header.len() {
        return Err(BlobError::Header(format!(
            "record is entry {} of {:?}/{:?}, the index expects entry {id} of {namespace:?}/{key:?}",
            h.id, h.namespace, h.key
        )));
    }
    let sum = h.checksum;
    decode_parts(header, payload, id, sum)
}

/// Decode a whole file, checking it belongs to `id` and has `checksum`.
pub fn decode(file: &[u8], id: u64, checksum: u64) -> Result<Vec<u8>, BlobError> {
    let h = parse_header(file)?;
    if h.id != id || h.checksum != checksum {
        return Err(BlobError::Header(format!(
            "file is entry {} with checksum {:016x}, the index expects entry {id} with {checksum:016x}",
            h.id, h.checksum
        )));
    }
    decode_payload(&h, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_compressed_and_raw() {
        let text = b"hello world ".repeat(500);
        let (f, _) = encode(7, "ns", "k", &text, 3, 0, 10, 0, Some(1000), None);
        let h = parse_header(&f).unwrap();
        assert_eq!((h.flags, h.owner), (FLAG_ZSTD, Some(1000)));
        assert!(f.len() < text.len() / 4);
        assert_eq!(decode(&f, 7, h.checksum).unwrap(), text);

        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..5000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let (f, _) = encode(8, "ns", "k2", &noise, 3, 0, 10, 99, None, None);
        let h = parse_header(&f).unwrap();
        assert_eq!(
            (h.flags, h.expires, h.key.as_str(), h.owner),
            (0, 99, "k2", None)
        );
        assert_eq!(decode(&f, 8, h.checksum).unwrap(), noise);
    }

    #[test]
    fn a_batch_record_carries_its_batch_and_decodes_to_the_value() {
        let b = Batch {
            first: 40,
            count: 3,
        };
        let text = b"batched text ".repeat(300);
        for value in [&text[..], &b"short raw value"[..]] {
            let (f, sum) = encode(41, "ns", "k", value, 3, 0, 10, 0, Some(5), Some(b));
            let h = parse_header(&f).unwrap();
            assert_eq!(u16_at(&f, 4), VERSION_BATCH);
            assert_eq!(h.stored_len(), f.len() as u64);
            let payload = &f[h.header_len..];
            assert_eq!(batch_of(&h, payload).unwrap(), Some(b));
            assert_eq!(decode(&f, 41, sum).unwrap(), value);
            let parts = decode_parts(&f[..h.header_len], payload.to_vec(), 41, sum).unwrap();
            assert_eq!(parts, value);
            // A record of its own is still written as version 2, without a trailer.
            let (g, _) = encode(41, "ns", "k", value, 3, 0, 10, 0, Some(5), None);
            assert_eq!((u16_at(&g, 4), g.len() + TRAILER_LEN), (VERSION, f.len()));
            let hg = parse_header(&g).unwrap();
            assert_eq!(batch_of(&hg, &g[hg.header_len..]).unwrap(), None);
        }
        // A trailer copied from another record of the batch does not check.
        let (f, _) = encode(41, "ns", "k", b"v", 3, 0, 1, 0, None, Some(b));
        let (g, _) = encode(42, "ns", "k", b"v", 3, 0, 1, 0, None, Some(b));
        let mut h = f.clone();
        let n = h.len();
        h[n - TRAILER_LEN..].copy_from_slice(&g[n - TRAILER_LEN..]);
        let hh = parse_header(&h).unwrap();
        assert!(batch_of(&hh, &h[hh.header_len..]).is_err());
        // A record outside the batch it names is refused when encoded by hand.
        let (f, _) = encode(45, "ns", "k", b"v", 3, 0, 1, 0, None, Some(b));
        let hf = parse_header(&f).unwrap();
        assert!(batch_of(&hf, &f[hf.header_len..]).is_err());
    }

    #[test]
    fn any_flipped_byte_of_a_batch_record_is_detected() {
        let b = Batch { first: 1, count: 2 };
        let text = b"some text to compress ".repeat(40);
        let (f, sum) = encode(2, "ns", "key", &text, 3, 0, 1, 0, Some(0), Some(b));
        let hl = parse_header(&f).unwrap().header_len;
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x20;
            assert!(decode(&g, 2, sum).is_err(), "flip at {i} went unnoticed");
            let parts = decode_parts(&g[..hl], g[hl..].to_vec(), 2, sum);
            assert!(parts.is_err(), "flip at {i} went unnoticed by decode_parts");
        }
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let text = b"some text to compress ".repeat(40);
        let (f, _) = encode(1, "ns", "key", &text, 3, 0, 1, 0, Some(0), None);
        let sum = parse_header(&f).unwrap().checksum;
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x20;
            assert!(decode(&g, 1, sum).is_err(), "flip at {i} went unnoticed");
            let hl = parse_header(&f).unwrap().header_len;
            let parts = decode_parts(&g[..hl], g[hl..].to_vec(), 1, sum);
            assert!(parts.is_err(), "flip at {i} went unnoticed by decode_parts");
        }
    }
}
