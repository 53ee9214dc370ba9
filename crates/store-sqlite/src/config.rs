//! Settings of the SQLite store.

use std::path::PathBuf;
use std::time::Duration;

/// Settings of a [`crate::SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The database file; created with its directory if missing.
    pub path: PathBuf,
    /// How long a writer waits for another process's lock before giving up (default 5 s).
    pub busy_timeout: Duration,
    /// Connections in this process's pool (default 4).
    pub max_connections: u32,
}

impl SqliteConfig {
    /// Defaults for the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            busy_timeout: Duration::from_secs(5),
            max_connections: 4,
        }
    }
}
