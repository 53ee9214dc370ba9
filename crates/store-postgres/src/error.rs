//! PostgreSQL's native errors, normalised into the core's `StoreError`.

use rkms_core::StoreError;

pub(crate) const STORE: &str = "postgres";

/// SQLSTATE codes meaning "the server cannot serve right now": retry later.
const UNAVAILABLE_SQLSTATES: [&str; 6] = [
    "57P01", // admin_shutdown
    "57P02", // crash_shutdown
    "57P03", // cannot_connect_now
    "53300", // too_many_connections
    "40001", // serialization_failure
    "40P01", // deadlock_detected
];

/// SQLSTATE class 08: connection exceptions.
const CONNECTION_EXCEPTION_CLASS: &str = "08";

pub(crate) fn from_sqlx(error: sqlx::Error) -> StoreError {
    let unavailable = match &error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with(CONNECTION_EXCEPTION_CLASS)
                || UNAVAILABLE_SQLSTATES.contains(&code.as_ref())
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
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
