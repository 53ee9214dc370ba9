//! RKMS's embedded default store: one SQLite file.
//!
//! Records live in one table, `rkms_keys (id TEXT PRIMARY KEY, record BLOB, version INTEGER)`:
//!
//! - create is `INSERT .. ON CONFLICT(id) DO NOTHING RETURNING version`; no row back means
//!   another writer won, and its record is read and returned;
//! - compare-and-set is `UPDATE .. SET version = version + 1 WHERE id = ? AND version = ?`;
//! - a new record starts at a random version, so a deleted and re-created id never repeats a
//!   version that a stale writer might still hold.
//!
//! The database runs in WAL mode with `synchronous = FULL` (a key handed out must survive a
//! power cut) and a busy timeout, so several server processes on one host can share the file.
//! Do not put it on a network file system: SQLite's locking is not reliable there.

mod config;
mod error;
mod store;

pub use config::SqliteConfig;
pub use store::SqliteStore;
