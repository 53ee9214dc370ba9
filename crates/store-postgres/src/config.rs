//! Settings of the PostgreSQL store.

use std::fmt;
use std::time::Duration;

use rkms_core::redact_url_password;

/// Settings of a [`crate::PostgresStore`].
#[derive(Clone)]
pub struct PostgresConfig {
    /// Connection URL, `postgres://user:password@host:port/database?sslmode=...`.
    pub url: String,
    /// Schema holding the table (default `public`); lower-case letters, digits and `_`.
    pub schema: String,
    /// Connections in this process's pool (default 10).
    pub max_connections: u32,
    /// Longest one store call may take, waiting for a connection included (default 2 s).
    pub operation_timeout: Duration,
}

impl PostgresConfig {
    /// Defaults for the database at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "public".into(),
            max_connections: 10,
            operation_timeout: Duration::from_secs(2),
        }
    }
}

/// Prints the URL without its password.
impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_url_password(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("operation_timeout", &self.operation_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let config = PostgresConfig::new("postgres://rkms:hunter2@db:5432/keys");
        let printed = format!("{config:?}");
        assert!(printed.contains("rkms:***@db:5432/keys"), "{printed}");
        assert!(!printed.contains("hunter2"));
    }
}
