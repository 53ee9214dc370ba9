//! Settings of the Redis store, and what each persistence setting of the server loses.

use std::fmt;
use std::time::Duration;

use redis::aio::ConnectionLike;
use rkms_core::{redact_url_password, StoreError};

use crate::error::{from_redis, STORE};

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
    /// What the server's persistence must be for the store to open (default strict).
    pub durability: Durability,
    /// Replicas that must acknowledge every write (`WAIT`) before it counts as done (default 0).
    /// They get half the operation timeout.
    pub replicas: u32,
}

impl RedisConfig {
    /// Defaults for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "rkms:".into(),
            operation_timeout: Duration::from_secs(2),
            durability: Durability::Strict,
            replicas: 0,
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
            .field("durability", &self.durability)
            .field("replicas", &self.replicas)
            .finish()
    }
}

/// What the store demands of the server's persistence when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Open only if `CONFIG GET` shows `appendonly yes` and `appendfsync always`: no
    /// acknowledged write can be lost to a crash, so no id can get a second key.
    #[default]
    Strict,
    /// Open whatever the server says (or if it refuses `CONFIG`, as managed services do), with
    /// a warning naming what a crash can lose: the operator has checked persistence another
    /// way, or accepts that an id may get a second key after a crash.
    Relaxed,
}

/// The persistence settings checked, each with the value that loses no acknowledged write.
const SETTINGS: [(&str, &str); 3] = [
    ("appendonly", "yes"),
    ("appendfsync", "always"),
    ("no-appendfsync-on-rewrite", "no"),
];

/// The values of [`SETTINGS`] as `CONFIG GET` reported them, or why the server would not.
type Persistence = Result<[String; 3], String>;

impl Durability {
    /// Reads the server's persistence and refuses it unless this setting admits it; a relaxed
    /// admission is logged as a warning saying what a crash can lose.
    pub(crate) async fn check(
        self,
        connection: &mut impl ConnectionLike,
    ) -> Result<(), StoreError> {
        let persistence = match read_persistence(connection).await {
            Ok(values) => Ok(values),
            // An unreachable server is no answer; a refused CONFIG (a managed service, an ACL) is.
            Err(e) if e.is_retryable() => return Err(e),
            Err(refused) => Err(refused.to_string()),
        };
        match self.decide(&persistence) {
            Ok(warning) => {
                if let Some(warning) = warning {
                    tracing::warn!("{warning}");
                }
                Ok(())
            }
            Err(refusal) => Err(StoreError::Other {
                store: STORE,
                source: refusal.into(),
            }),
        }
    }

    fn decide(self, persistence: &Persistence) -> Result<Option<String>, String> {
        let values = match persistence {
            Ok(values) => values,
            Err(refused) if self == Self::Strict => {
                return Err(format!(
                    "Redis refused CONFIG GET ({refused}), so RKMS cannot check that it keeps \
                     every acknowledged write (managed Redis services often refuse CONFIG). If \
                     you have checked it yourself (AOF with appendfsync always, or the \
                     service's equivalent), set [store] durability = \"relaxed\""
                ))
            }
            Err(refused) => {
                return Ok(Some(format!(
                    "durability = \"relaxed\": Redis refused CONFIG GET ({refused}); RKMS relies \
                     on the operator's check that it keeps every acknowledged write"
                )))
            }
        };
        if SETTINGS
            .iter()
            .zip(values)
            .all(|((_, durable), v)| v == durable)
        {
            return Ok(None);
        }
        let settings: Vec<String> = SETTINGS
            .iter()
            .zip(values)
            .map(|((name, _), value)| format!("{name} {value}"))
            .collect();
        let (settings, loses) = (settings.join(", "), loss(values));
        let consequence = "an id whose create was lost gets a second key, and data encrypted \
                           under the first is lost";
        match self {
            Self::Strict => Err(format!(
                "Redis runs with {settings}: {loses}; {consequence}. Run it with appendonly yes, \
                 appendfsync always and no-appendfsync-on-rewrite no, or set [store] durability \
                 = \"relaxed\" to accept the risk"
            )),
            Self::Relaxed => Ok(Some(format!(
                "durability = \"relaxed\": Redis runs with {settings}: {loses}; {consequence}"
            ))),
        }
    }
}

/// The values of [`SETTINGS`], by `CONFIG GET`.
async fn read_persistence(connection: &mut impl ConnectionLike) -> Result<[String; 3], StoreError> {
    let mut values: [String; 3] = Default::default();
    for (slot, (name, _)) in values.iter_mut().zip(SETTINGS) {
        let (_, value): (String, String) = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(&mut *connection)
            .await
            .map_err(from_redis)?;
        *slot = value;
    }
    Ok(values)
}

/// What a crash can lose under these persistence settings.
fn loss([appendonly, appendfsync, _]: &[String; 3]) -> &'static str {
    match (appendonly.as_str(), appendfsync.as_str()) {
        ("yes", "always") => {
            "while Redis rewrites its AOF (no-appendfsync-on-rewrite yes) it skips the fsync, so \
             a crash of the machine then loses the acknowledged writes the operating system had \
             not yet flushed (up to about 30 seconds on Linux)"
        }
        ("yes", "everysec") => {
            "a crash of the machine loses up to about a second of acknowledged writes (two if \
             the disk stalls)"
        }
        ("yes", _) => {
            "a crash of the machine loses the acknowledged writes the operating system had not \
             yet flushed (up to about 30 seconds on Linux)"
        }
        _ => {
            "without AOF, a restart loses every write since the last RDB snapshot, or all of \
             them without snapshots"
        }
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

    #[test]
    fn only_aof_always_opens_strictly_and_relaxed_opens_with_a_warning() {
        let server = |values: [&str; 3]| Ok(values.map(str::to_owned));
        let durable = server(["yes", "always", "no"]);
        assert_eq!(Durability::Strict.decide(&durable), Ok(None));
        assert_eq!(Durability::Relaxed.decide(&durable), Ok(None));
        for (values, loses) in [
            (["yes", "everysec", "no"], "about a second"),
            (["yes", "no", "no"], "not yet flushed"),
            (["yes", "always", "yes"], "rewrites its AOF"),
            (["no", "always", "no"], "without AOF"),
        ] {
            let refused = Durability::Strict.decide(&server(values)).unwrap_err();
            assert!(refused.contains(loses), "{refused}");
            assert!(refused.contains("durability = \"relaxed\""), "{refused}");
            let warning = Durability::Relaxed.decide(&server(values)).unwrap();
            assert!(warning.is_some_and(|w| w.contains(loses)));
        }
        let unknown = Err("NOPERM".to_owned());
        let refused = Durability::Strict.decide(&unknown).unwrap_err();
        assert!(refused.contains("durability = \"relaxed\""), "{refused}");
        assert!(Durability::Relaxed.decide(&unknown).unwrap().is_some());
    }
}
