//! The engine's error type: one variant per thing a caller can act on. The D-Bus adapter maps
//! each variant once to `org.opdbus.NumaCache.Error.*` (PermissionDenied to AccessDenied).

/// What went wrong in a cache operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The namespace has no such key (or it expired).
    #[error("no entry {key:?} in namespace {namespace:?}")]
    NotFound {
        /// The namespace asked for.
        namespace: String,
        /// The key asked for.
        key: String,
    },
    /// A namespace, key, option or name broke the rules; the message says which and why.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The value is larger than the configured limit.
    #[error("value of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The value's size in bytes.
        size: u64,
        /// The limit in bytes (`max_value_bytes`, or the disk bound when that is smaller).
        limit: u64,
    },
    /// The filesystem is full (ENOSPC) or a quota is exhausted (EDQUOT).
    #[error("no space left for the cache: {0}")]
    NoSpace(String),
    /// Stored bytes failed their checksum or header check; the entry was dropped.
    #[error("corrupted entry: {0}")]
    Corrupted(String),
    /// The engine cannot do its work right now (I/O error, index failure, shutting down).
    #[error("cache unavailable: {0}")]
    Unavailable(String),
    /// The namespace belongs to another user.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
}

impl StoreError {
    /// Map an I/O error from `what` (a phrase naming the operation and path) to the variant a
    /// caller can act on: ENOSPC/EDQUOT become NoSpace, everything else Unavailable.
    pub(crate) fn io(what: impl std::fmt::Display, e: std::io::Error) -> StoreError {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::NoSpace(format!(
                "{what}: {e}; raise the filesystem or quota size, or lower OPDBUS_CACHE_MAX_BYTES"
            )),
            _ => StoreError::Unavailable(format!("{what}: {e}")),
        }
    }

    /// Map an SQLite error from `what` to NoSpace (SQLITE_FULL) or Unavailable.
    pub(crate) fn sql(what: impl std::fmt::Display, e: rusqlite::Error) -> StoreError {
        if let rusqlite::Error::SqliteFailure(f, _) = &e
            && f.code == rusqlite::ErrorCode::DiskFull
        {
            return StoreError::NoSpace(format!("{what}: {e}; the index could not grow"));
        }
        StoreError::Unavailable(format!("index {what}: {e}"))
    }
}
