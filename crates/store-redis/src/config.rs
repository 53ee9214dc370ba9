//! Settings of the Redis store.

use std::fmt;
use std::time::Duration;

use rkms_core::redact_url_password;

/// Settings of a [`crate::RedisStore`].
#[derive(Clone)]
pub struct RedisConfig {
    /// Connection URL, `redis://[:password@]host:port[/db]` or `rediss://` for TLS.
    pub url: String,
    /// Prefix of every key this store writes (default `rkms:`), so several deployments or
    /// applications can share one Redis.
    pub prefix: String,
    /// Longest one store call may take, connecting included (default 2 s).
    pub operation_timeout: Duration,
}

impl RedisConfig {
    /// Defaults for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "rkms:".into(),
            operation_timeout: Duration::from_secs(2),
        }
    }
}

/// Prints the URL without its password.
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url_password(&self.url))
            .field("prefix", &self.prefix)
            .field("operation_timeout", &self.operation_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let printed = format!("{:?}", RedisConfig::new("redis://:hunter2@cache:6379/0"));
        assert!(printed.contains("redis://:***@cache:6379/0"), "{printed}");
        assert!(!printed.contains("hunter2"));
    }
}
