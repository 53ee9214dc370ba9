//! The `[store]` section, and the original's `[dynamodb]` section.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rkms_core::{redact_url_password, CacheOptions};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{count, invalid, positive_ms, ConfigError, SQLITE_FILE};

/// Default bound on one store call.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest connection pool, each connection a file descriptor (and a server process for
/// PostgreSQL).
const MAX_POOL: u32 = 1000;
/// Most Redis replicas a write may wait for.
const MAX_REPLICAS: u32 = 100;

/// A connection URL that may hold a password: `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionUrl(String);

impl ConnectionUrl {
    /// The URL itself, for the one place that connects.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ConnectionUrl {
    fn from(url: &str) -> Self {
        Self(url.to_owned())
    }
}

impl fmt::Debug for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url_password(&self.0), f)
    }
}

/// Which store to open, with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSettings {
    /// One SQLite file.
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// Wait for another process's lock.
        busy_timeout: Duration,
        /// Pool size.
        max_connections: u32,
    },
    /// PostgreSQL.
    Postgres {
        /// Connection URL.
        url: ConnectionUrl,
        /// Schema holding the table.
        schema: String,
        /// Pool size.
        max_connections: u32,
        /// Bound on one call.
        timeout: Duration,
    },
    /// Redis (with AOF persistence).
    Redis {
        /// Connection URL.
        url: ConnectionUrl,
        /// Key prefix.
        prefix: String,
        /// Bound on one call.
        timeout: Duration,
        /// `durability = "relaxed"`: open even if Redis can lose acknowledged writes.
        relaxed_durability: bool,
        /// Replicas that must acknowledge each write.
        replicas: u32,
    },
    /// etcd.
    Etcd {
        /// Client endpoints.
        endpoints: Vec<String>,
        /// Key prefix.
        prefix: String,
        /// Bound on one call.
        timeout: Duration,
    },
    /// DynamoDB.
    DynamoDb {
        /// The table.
        table_name: String,
        /// The table's AWS region.
        region: String,
        /// An endpoint URL instead of the region's.
        endpoint: Option<String>,
        /// Create the table if missing (development).
        create_table: bool,
        /// Bound on one call.
        timeout: Duration,
        /// Items of the original Go RKMS: served or refused.
        legacy_records: LegacyRecords,
    },
}

/// `legacy_records` of a DynamoDB store: what to do with items of the original Go RKMS,
/// wrapped without encryption context. Serve them until `rkms-server legacy upgrade` has run,
/// then refuse them, so that nobody who can write the table can move one id's copies under
/// another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LegacyRecords {
    /// Serve them (the default, so that an existing table keeps working).
    #[default]
    Serve,
    /// Refuse them as unreadable.
    Refuse,
}

impl StoreSettings {
    /// Connections the store's pool may hold open: files the open-file limit must leave room
    /// for beside the client connections.
    pub fn pool_size(&self) -> u32 {
        match self {
            Self::Sqlite {
                max_connections, ..
            }
            | Self::Postgres {
                max_connections, ..
            } => *max_connections,
            _ => 0,
        }
    }

    /// The cargo feature that compiles this store into the server.
    pub fn feature(&self) -> &'static str {
        match self {
            Self::Sqlite { .. } => "sqlite",
            Self::Postgres { .. } => "postgres",
            Self::Redis { .. } => "redis",
            Self::Etcd { .. } => "etcd",
            Self::DynamoDb { .. } => "dynamodb",
        }
    }

    /// The store's own bound on one call, which the protocol's store timeout follows.
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            Self::Sqlite { .. } => None,
            Self::Postgres { timeout, .. }
            | Self::Redis { timeout, .. }
            | Self::Etcd { timeout, .. }
            | Self::DynamoDb { timeout, .. } => Some(*timeout),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqliteSection {
    path: Option<PathBuf>,
    busy_timeout_ms: Option<u64>,
    max_connections: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresSection {
    url: String,
    schema: Option<String>,
    max_connections: Option<u32>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisSection {
    url: String,
    prefix: Option<String>,
    timeout_ms: Option<u64>,
    durability: Option<String>,
    replicas: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EtcdSection {
    endpoints: Vec<String>,
    prefix: Option<String>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DynamoDbSection {
    table_name: String,
    region: String,
    endpoint: Option<String>,
    create_table: Option<bool>,
    timeout_ms: Option<u64>,
    legacy_records: Option<String>,
}

/// The original Go RKMS's `[dynamodb]` section, which alone selects the DynamoDB store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OriginalDynamoDbSection {
    region: String,
    table_name: String,
    /// The original's in-process cache settings; read and reported, see `resolve_original_dynamodb`.
    cache_expiration_in_minutes: Option<u64>,
    cache_cleanup_internal_in_minutes: Option<u64>,
    /// Not in the original's files; accepted here so a migrated file can refuse its items.
    legacy_records: Option<String>,
}

/// How long a SQLite writer waits for another process's lock by default.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// SQLite pool size by default.
const SQLITE_MAX_CONNECTIONS: u32 = 4;

pub(super) fn sqlite_defaults(data_dir: &Path) -> StoreSettings {
    StoreSettings::Sqlite {
        path: data_dir.join(SQLITE_FILE),
        busy_timeout: SQLITE_BUSY_TIMEOUT,
        max_connections: SQLITE_MAX_CONNECTIONS,
    }
}

fn section<T: DeserializeOwned>(table: toml::Table, name: &str) -> Result<T, ConfigError> {
    table
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            section: name.to_owned(),
            // The message, then "in `key`" for a value of the wrong type or size.
            message: e.to_string().trim_end().replace('\n', " "),
        })
}

fn legacy_records(key: &'static str, value: Option<String>) -> Result<LegacyRecords, ConfigError> {
    match value.as_deref() {
        None | Some("serve") => Ok(LegacyRecords::Serve),
        Some("refuse") => Ok(LegacyRecords::Refuse),
        Some(other) => Err(invalid(
            key,
            format!("{other:?} is neither \"serve\" nor \"refuse\""),
        )),
    }
}

fn prefix(key: &'static str, value: Option<String>, default: &str) -> Result<String, ConfigError> {
    let prefix = value.unwrap_or_else(|| default.to_owned());
    if prefix.is_empty() || !prefix.is_ascii() {
        return Err(invalid(key, "must be non-empty ASCII"));
    }
    Ok(prefix)
}

pub(super) fn resolve_store(
    mut table: toml::Table,
    data_dir: &Path,
) -> Result<StoreSettings, ConfigError> {
    const SUPPORTED: &str = "\"sqlite\", \"postgres\", \"redis\", \"etcd\" or \"dynamodb\"";
    let backend = match table.remove("backend") {
        Some(toml::Value::String(name)) => name,
        Some(_) => return Err(invalid("store.backend", "must be a string")),
        None => {
            return Err(invalid(
                "store.backend",
                format!("is required: {SUPPORTED}"),
            ))
        }
    };
    let timeout = |ms| positive_ms("store.timeout_ms", ms, DEFAULT_TIMEOUT);
    match backend.as_str() {
        "sqlite" => {
            let s: SqliteSection = section(table, "[store]")?;
            Ok(StoreSettings::Sqlite {
                path: s.path.unwrap_or_else(|| data_dir.join(SQLITE_FILE)),
                busy_timeout: positive_ms(
                    "store.busy_timeout_ms",
                    s.busy_timeout_ms,
                    SQLITE_BUSY_TIMEOUT,
                )?,
                max_connections: count(
                    "store.max_connections",
                    s.max_connections,
                    SQLITE_MAX_CONNECTIONS,
                    1..=MAX_POOL,
                )?,
            })
        }
        "postgres" => {
            let s: PostgresSection = section(table, "[store]")?;
            Ok(StoreSettings::Postgres {
                url: ConnectionUrl(s.url),
                schema: s.schema.unwrap_or_else(|| "public".into()),
                max_connections: count(
                    "store.max_connections",
                    s.max_connections,
                    10,
                    1..=MAX_POOL,
                )?,
                timeout: timeout(s.timeout_ms)?,
            })
        }
        "redis" => {
            let s: RedisSection = section(table, "[store]")?;
            let relaxed_durability = match s.durability.as_deref() {
                None | Some("strict") => false,
                Some("relaxed") => true,
                Some(other) => {
                    return Err(invalid(
                        "store.durability",
                        format!("{other:?} is not \"strict\" or \"relaxed\""),
                    ))
                }
            };
            Ok(StoreSettings::Redis {
                url: ConnectionUrl(s.url),
                prefix: prefix("store.prefix", s.prefix, "rkms:")?,
                timeout: timeout(s.timeout_ms)?,
                relaxed_durability,
                replicas: count("store.replicas", s.replicas, 0, 0..=MAX_REPLICAS)?,
            })
        }
        "etcd" => {
            let s: EtcdSection = section(table, "[store]")?;
            if s.endpoints.is_empty() {
                return Err(invalid(
                    "store.endpoints",
                    "at least one endpoint is required",
                ));
            }
            Ok(StoreSettings::Etcd {
                endpoints: s.endpoints,
                prefix: prefix("store.prefix", s.prefix, "rkms/")?,
                timeout: timeout(s.timeout_ms)?,
            })
        }
        "dynamodb" => {
            let s: DynamoDbSection = section(table, "[store]")?;
            Ok(StoreSettings::DynamoDb {
                table_name: s.table_name,
                region: s.region,
                endpoint: s.endpoint,
                create_table: s.create_table.unwrap_or(false),
                timeout: timeout(s.timeout_ms)?,
                legacy_records: legacy_records("store.legacy_records", s.legacy_records)?,
            })
        }
        other => Err(invalid(
            "store.backend",
            format!("unknown backend {other:?}; expected {SUPPORTED}"),
        )),
    }
}

/// Reads the original's `[dynamodb]` section. Returns the settings and a notice about its cache
/// keys, which RKMS reads but does not act on: its own key cache is configured by `[cache]`.
pub(super) fn resolve_original_dynamodb(
    table: toml::Table,
) -> Result<(StoreSettings, Option<String>), ConfigError> {
    let s: OriginalDynamoDbSection = section(table, "[dynamodb]")?;
    let cache = CacheOptions::default();
    let notice = (s.cache_expiration_in_minutes.is_some() || s.cache_cleanup_internal_in_minutes.is_some()).then(|| {
        format!(
            "[dynamodb] cache_expiration_in_minutes and cache_cleanup_internal_in_minutes are accepted \
             for compatibility and have no effect. RKMS keeps unwrapped data keys in an in-memory \
             cache configured by [cache]: ttl_seconds (default {}), max_entries (default {}), \
             stale_grace_seconds (default off), enabled = false to turn it off",
            cache.ttl.as_secs(),
            cache.max_entries,
        )
    });
    let settings = StoreSettings::DynamoDb {
        table_name: s.table_name,
        region: s.region,
        endpoint: None,
        create_table: false,
        timeout: DEFAULT_TIMEOUT,
        legacy_records: legacy_records("dynamodb.legacy_records", s.legacy_records)?,
    };
    Ok((settings, notice))
}
