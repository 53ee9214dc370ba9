//! Redis's native errors, normalised into the core's `StoreError`.

use redis::RedisError;
use rkms_core::StoreError;

pub(crate) const STORE: &str = "redis";

/// Server error codes meaning "cannot serve right now": retry later.
const SERVER_BUSY_CODES: [&str; 5] = ["LOADING", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "BUSY"];

pub(crate) fn from_redis(error: RedisError) -> StoreError {
    let unavailable = error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error
            .code()
            .is_some_and(|code| SERVER_BUSY_CODES.contains(&code));
    if unavailable {
        StoreError::Unavailable {
            store: STORE,
            source: Box::new(error),
        }
    } else {
        StoreError::Other {
            store: STORE,
            source: Box::new(error),
        }
    }
}
