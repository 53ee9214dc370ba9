//! RKMS store on PostgreSQL.
//!
//! Records live in `<schema>.rkms_keys (id TEXT COLLATE "C" PRIMARY KEY, record BYTEA, version
//! BIGINT)`:
//!
//! 1. Create is `INSERT .. ON CONFLICT (id) DO NOTHING RETURNING version`; no row back means
//!    another writer won, and its record is read and returned.
//! 2. Compare-and-set is `UPDATE .. SET version = version + 1 WHERE id = $1 AND version = $2`.
//! 3. A new record starts at a random version, so a deleted and re-created id never repeats a
//!    version that a stale writer might still hold.
//!
//! The schema is migrated at [`PostgresStore::open`] inside one transaction holding an advisory
//! lock, so several servers starting at once apply each migration exactly once. Every call is
//! bounded by `operation_timeout`; connection failures and timeouts are
//! `StoreError::Unavailable`.

mod config;
mod error;
mod schema;
mod store;

pub use config::PostgresConfig;
pub use store::PostgresStore;
