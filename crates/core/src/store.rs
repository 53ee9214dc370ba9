//! The `Store` trait: where wrapped records live, with first-write-wins and compare-and-set.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;

use crate::list::{ListCursor, ListPage};
use crate::KeyId;

/// Opaque version of a stored record, returned by every write.
///
/// Compare versions only for equality: each backend chooses how it counts. A backend must never
/// hand out the same version for two different contents of one id, including across a delete
/// and re-create, or a stale compare-and-set could succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version(u64);

impl Version {
    /// Wraps a backend's native version number.
    pub fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The backend's native version number.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A record's bytes with the version they were read at.
#[derive(Clone, PartialEq, Eq)]
pub struct Stored {
    /// The encoded record; stores never interpret it.
    pub bytes: Vec<u8>,
    /// The version to pass to [`Store::compare_and_swap`].
    pub version: Version,
    /// True only when the store translated an item of the original Go RKMS, whose copies were
    /// wrapped with no encryption context. It travels beside the bytes, never in them: whoever
    /// can write the store can write any bytes, so nothing in them may lift the id binding.
    pub legacy: bool,
}

impl Stored {
    /// Bytes written by RKMS, read back at `version`.
    pub fn new(bytes: Vec<u8>, version: Version) -> Self {
        Self {
            bytes,
            version,
            legacy: false,
        }
    }
}

impl fmt::Debug for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stored")
            .field("bytes", &format_args!("[{} bytes]", self.bytes.len()))
            .field("version", &self.version)
            .field("legacy", &self.legacy)
            .finish()
    }
}

/// What [`Store::put_if_absent`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// This write created the record.
    Created(Version),
    /// A record already existed; it is returned untouched and the new bytes were discarded.
    Exists(Stored),
}

impl Version {
    /// A backend's signed native version (an SQL `BIGINT`, an etcd revision); a negative one
    /// means the stored data is damaged.
    pub fn from_signed(store: &'static str, raw: i64) -> Result<Self, StoreError> {
        u64::try_from(raw)
            .map(Self)
            .map_err(|_| StoreError::corrupt(store, format!("negative version {raw}")))
    }
}

/// Runs one backend call under `limit`; a call still running then is
/// [`StoreError::timed_out`], so that a store that stops answering cannot hang its caller.
pub async fn within_limit<T>(
    store: &'static str,
    limit: Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| Err(StoreError::timed_out(store, limit)))
}

/// Errors from a store, normalised from each backend's native errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend could not be reached or did not answer in time. Worth retrying.
    #[error("store {store} is unavailable: {source}")]
    Unavailable {
        /// Which backend.
        store: &'static str,
        /// The native error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A compare-and-set found no record, or a record at another version.
    #[error("the record changed or is gone (expected version {expected:?})")]
    PreconditionFailed {
        /// The version the caller expected.
        expected: Version,
    },
    /// The backend holds data it cannot read back as a record.
    #[error("store {store} holds unreadable data: {message}")]
    Corrupt {
        /// Which backend.
        store: &'static str,
        /// What is wrong, without the data itself.
        message: String,
    },
    /// A list cursor this store did not issue, or one damaged on its way back. The caller's
    /// mistake; not worth retrying.
    #[error("store {store} cannot continue from this list cursor: {message}")]
    InvalidCursor {
        /// Which backend.
        store: &'static str,
        /// What is wrong with the cursor.
        message: String,
    },
    /// Anything else; not worth retrying.
    #[error("store {store} failed: {source}")]
    Other {
        /// Which backend.
        store: &'static str,
        /// The native error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// A call that got no answer within `limit`: the backend is unavailable.
    pub fn timed_out(store: &'static str, limit: Duration) -> Self {
        Self::Unavailable {
            store,
            source: format!("no answer within {limit:?}").into(),
        }
    }

    /// Stored data that cannot be read back; `message` must describe it without quoting it.
    pub fn corrupt(store: &'static str, message: impl Into<String>) -> Self {
        Self::Corrupt {
            store,
            message: message.into(),
        }
    }

    /// A cursor `store` cannot continue from; `message` says why.
    pub fn invalid_cursor(store: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidCursor {
            store,
            message: message.into(),
        }
    }

    /// True when the same call may succeed later (the backend was down or slow).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// A key/value store for encoded records, one per id.
///
/// Every backend maps these operations onto its own atomic primitives; the conformance suite
/// holds them all to the same behaviour.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Reads the record for `id`.
    ///
    /// # Behavior
    /// Returns `Ok(None)` when there is none. Reads are strongly consistent: a record written by
    /// any process before this call started is seen.
    async fn get(&self, id: &KeyId) -> Result<Option<Stored>, StoreError>;

    /// Creates the record for `id` unless one exists: the first write wins.
    ///
    /// # Behavior
    /// Exactly one of any number of concurrent callers, through any connection or process, gets
    /// [`PutOutcome::Created`]; every other gets [`PutOutcome::Exists`] with the winner's bytes.
    async fn put_if_absent(&self, id: &KeyId, bytes: Vec<u8>) -> Result<PutOutcome, StoreError>;

    /// Replaces the record for `id` if it is still at `expected`.
    ///
    /// # Behavior
    /// Returns the new version. A missing record or another version is
    /// [`StoreError::PreconditionFailed`] and changes nothing.
    async fn compare_and_swap(
        &self,
        id: &KeyId,
        expected: Version,
        bytes: Vec<u8>,
    ) -> Result<Version, StoreError>;

    /// Deletes the record for `id`.
    ///
    /// # Behavior
    /// Returns whether a record existed. Administrative: the protocol itself never deletes.
    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError>;

    /// Lists up to `limit` ids, continuing from `cursor` (`None`: from the start).
    ///
    /// # Behavior
    /// A walk from `None`, following each page's `next` until it is `None`, lists every id that
    /// exists for the whole walk exactly once, and ends; an id created or deleted during the walk
    /// is listed at most once. The order is the backend's own (byte order for most, hash order on
    /// DynamoDB): a page costs the backend about one page of reading, whatever the store's size.
    /// A page may hold fewer than `limit` ids (even none) while `next` is set. `limit` of zero
    /// returns an empty page. Stored ids that fail the id rules are skipped
    /// ([`crate::listed_id`]). A cursor this store cannot read is [`StoreError::InvalidCursor`].
    async fn list(&self, cursor: Option<&ListCursor>, limit: usize)
        -> Result<ListPage, StoreError>;
}
