//! RKMS store on Redis.
//!
//! Each record is one string key, `<prefix>key:<id>`, holding an 8-byte big-endian version
//! followed by the record bytes; a sorted set `<prefix>ids` indexes the ids for listing.
//!
//! 1. Create runs `SET key value NX` and, only if it set the key, `ZADD` to the index, in one
//!    Lua script; if the key existed, the script returns its value: first write wins.
//! 2. Compare-and-set is a Lua script that replaces the value only if its first eight bytes are
//!    the expected version.
//! 3. A new record starts at a random version, so a deleted and re-created id never repeats one.
//!
//! The connection is a `ConnectionManager`, which reconnects on its own; every call is bounded
//! by `operation_timeout`.
//!
//! # Durability
//!
//! A create that Redis acknowledged and then forgot is the worst failure a key store can have:
//! the key was handed out, and the next request for the id creates a second one, so data
//! encrypted under the first is lost. What each server setting can lose on a crash:
//!
//! | `appendonly` | `appendfsync` | acknowledged writes a crash can lose |
//! | --- | --- | --- |
//! | `yes` | `always` | none: each write is on disk before Redis answers (with `no-appendfsync-on-rewrite no`, the default; `yes` skips the fsync while the AOF is rewritten, losing as `no` below meanwhile) |
//! | `yes` | `everysec` | up to about a second of them (two if the disk stalls), on a crash of the machine |
//! | `yes` | `no` | whatever the OS had not flushed (up to about 30 s on Linux), on a crash of the machine |
//! | `no` | | every write since the last RDB snapshot (all of them without `save`), on any restart |
//!
//! So [`RedisStore::open`] reads the three settings with `CONFIG GET` and refuses a server that
//! is not `appendonly yes`, `appendfsync always`, `no-appendfsync-on-rewrite no`, saying what
//! it would lose. A server that refuses
//! `CONFIG` (managed services often do) is refused too. [`Durability::Relaxed`] opens either,
//! logging a warning with what can be lost: for an operator who has checked persistence
//! another way, or accepts the loss.
//!
//! Replication is asynchronous: a failover to a replica loses the writes it had not received,
//! whatever the primary's AOF. With `replicas = N`, every write is followed by `WAIT N`, in
//! the same pipeline on the same connection, and fails as unavailable (the key is not handed
//! out) unless N replicas acknowledged it within half the operation timeout. A failover then
//! loses nothing acknowledged as long as it promotes one of those replicas and the replicas
//! run AOF `always` too; `WAIT` covers this connection's writes, so a record read back (a lost
//! race) is as safe as its creator's own wait made it.

mod config;
mod error;
mod store;

pub use config::{Durability, RedisConfig};
pub use store::RedisStore;
