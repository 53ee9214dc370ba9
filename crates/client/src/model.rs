//! The API's answers as types.

use std::fmt;

use serde::Deserialize;
use zeroize::Zeroizing;

/// A data key handed out by RKMS. The key bytes are zeroized when the last copy is dropped,
/// and never shown by `Debug`.
#[derive(Clone)]
pub struct Key {
    /// The key id.
    pub id: String,
    /// The key's version.
    pub version: u32,
    pub(crate) bytes: std::sync::Arc<Zeroizing<Vec<u8>>>,
}

impl Key {
    /// The key bytes.
    pub fn expose_secret(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A key id's lifecycle state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyState {
    /// Keys are handed out.
    Active,
    /// Deletion is scheduled; no key is handed out until it is restored.
    PendingDeletion,
    /// Deleted for good.
    Deleted,
    /// The record could not be read (listings only).
    Unreadable,
}

/// One version of a key id, as `info` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VersionInfo {
    /// Its number, from 1.
    pub version: u32,
    /// When it was made (RFC 3339), if recorded.
    pub created_at: Option<String>,
    /// Regions that hold a copy.
    pub regions: Vec<String>,
    /// Configured regions still without a copy.
    pub missing: Vec<String>,
}

/// A key id's state and versions: never key material.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KeyInfo {
    /// The key id.
    pub id: String,
    /// Its state.
    pub state: KeyState,
    /// The version `get_key` hands out.
    pub current_version: u32,
    /// Every version, oldest first.
    pub versions: Vec<VersionInfo>,
    /// When a scheduled deletion takes effect (RFC 3339).
    pub deletion_time: Option<String>,
    /// When the id was deleted (RFC 3339).
    pub deleted_at: Option<String>,
}

/// An id and its state, in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ListedKey {
    /// The key id.
    pub id: String,
    /// Its state.
    pub state: KeyState,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KeyListing {
    /// The ids on this page, in order.
    pub keys: Vec<ListedKey>,
    /// Where the next page starts (pass it as `after`), or `None` at the end.
    pub next: Option<String>,
}

/// The answer of the key routes that change a state: rotate, delete, restore.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct StateAnswer {
    pub(crate) state: KeyState,
    pub(crate) version: Option<u32>,
}

/// The answer of `GET key`; `answer_of` wipes the key's text once decoded.
#[derive(Deserialize)]
pub(crate) struct KeyAnswer {
    pub(crate) id: String,
    pub(crate) key: String,
    pub(crate) version: Option<u32>,
}
