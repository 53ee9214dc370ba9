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

/// Checks a `WAIT` answer. Fewer replicas than asked means the write, though on the primary,
/// could be lost with it, so it does not count as done; worth retrying once they catch up.
pub(crate) fn replicated(acked: u32, wanted: u32, waited_ms: u64) -> Result<(), StoreError> {
    if acked >= wanted {
        return Ok(());
    }
    Err(StoreError::Unavailable {
        store: STORE,
        source: format!(
            "the write reached the primary but only {acked} of {wanted} replicas acknowledged it \
             within {waited_ms} ms"
        )
        .into(),
    })
}
