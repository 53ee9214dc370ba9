//! SQLite's native errors, normalised into the core's `StoreError`.

use rkms_core::StoreError;

pub(crate) const STORE: &str = "sqlite";

/// SQLITE_BUSY: another connection holds the lock past the busy timeout.
const SQLITE_BUSY: &str = "5";
/// SQLITE_LOCKED: a conflicting lock within the same connection's shared cache.
const SQLITE_LOCKED: &str = "6";

/// Whether another connection's lock refused `error`'s operation: worth trying again.
pub(crate) fn is_busy(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    let code = db.code();
    let code = code.as_deref().unwrap_or_default();
    // Extended result codes keep the primary code in the low byte.
    let primary = code
        .parse::<u32>()
        .map(|c| (c & 0xff).to_string())
        .unwrap_or_default();
    primary == SQLITE_BUSY || primary == SQLITE_LOCKED
}

pub(crate) fn from_sqlx(error: sqlx::Error) -> StoreError {
    let unavailable = match &error {
        sqlx::Error::Database(_) => is_busy(&error),
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    };
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
