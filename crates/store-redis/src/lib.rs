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
//! by `operation_timeout`. **Redis must run with AOF persistence (`appendonly yes`,
//! `appendfsync everysec` or `always`) to be a safe key store**: without it, a restart loses
//! records whose keys were already handed out, and those ids would get new keys.

mod config;
mod error;
mod store;

pub use config::RedisConfig;
pub use store::RedisStore;
