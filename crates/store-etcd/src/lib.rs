//! RKMS store on etcd.
//!
//! Each record is one key, `<prefix><id>`, whose value is the record bytes; its version is the
//! key's `mod_revision`, which etcd never reuses, even after a delete.
//!
//! 1. Create is a transaction: if `create_revision(key) == 0` (no such key) put the value, else
//!    get the existing one. First write wins; the loser gets the winner's record.
//! 2. Compare-and-set is a transaction: if `mod_revision(key) == expected` put the value.
//! 3. Listing is a range read over the prefix, sorted by key.
//!
//! The client balances over several endpoints and reconnects on its own; every call is bounded
//! by `operation_timeout`.

mod config;
mod error;
mod store;

pub use config::EtcdConfig;
pub use store::EtcdStore;
