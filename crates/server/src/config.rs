//! The configuration file (TOML) and the settings resolved from it.
//!
//! The original Go RKMS's `config.toml` keeps its meaning: `[server] port, api_version`,
//! `[logger] level`, `[kms] regions, key_ids, data_key_size_in_bytes`, `[dynamodb] region,
//! table_name`. New keys choose the store (`[store]`), the KMS provider and timeouts. Unknown
//! keys and invalid values are refused with a message that names them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rkms_core::{ServiceOptions, MAX_DATA_KEY_LEN};
use serde::Deserialize;

/// Regions of the embedded development default.
pub const DEVELOPMENT_REGIONS: [&str; 3] = ["local-1", "local-2", "local-3"];
/// Default address when no configuration file is given.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
/// SQLite file name under the data directory.
pub const SQLITE_FILE: &str = "rkms.sqlite3";
/// Keyring file name under the data directory.
pub const KEYRING_FILE: &str = "keyring.json";

/// A configuration the server refuses, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has unknown keys or wrongly typed values.
    #[error("configuration {section}: {message}")]
    Parse {
        /// Where (file or section).
        section: String,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("configuration key {key}: {message}")]
    Invalid {
        /// The dotted key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    logger: LoggerSection,
    kms: Option<KmsSection>,
    store: Option<toml::Table>,
    /// The original's DynamoDB store; refused until that store exists.
    dynamodb: Option<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    /// The original wrote the port as a string ("8080"); both forms are accepted.
    port: Option<Port>,
    host: Option<IpAddr>,
    api_version: Option<String>,
    request_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Port {
    Number(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoggerSection {
    level: Option<String>,
    format: Option<LogFormat>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable `key=value` lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KmsSection {
    provider: Option<String>,
    regions: Vec<String>,
    #[serde(default)]
    key_ids: BTreeMap<String, String>,
    data_key_size_in_bytes: Option<usize>,
    keyring_path: Option<PathBuf>,
    timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    #[serde(default)]
    endpoints: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqliteSection {
    path: Option<PathBuf>,
    busy_timeout_ms: Option<u64>,
    max_connections: Option<u32>,
}

/// Everything the server needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Path of the key endpoint, `/api/<api_version>/key`.
    pub key_path: String,
    /// Log filter directive (`info`, `debug`, ...).
    pub log_level: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// The store.
    pub store: StoreSettings,
    /// The KMS provider.
    pub kms: KmsSettings,
    /// Regions in order of preference, each with its master key.
    pub regions: Vec<RegionSettings>,
    /// Protocol tunables.
    pub service: ServiceOptions,
    /// True for the embedded default started without a configuration file.
    pub development_mode: bool,
}

/// Which store to open.
#[derive(Debug, Clone)]
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
}

/// Which KMS provider serves the regions.
#[derive(Debug, Clone)]
pub enum KmsSettings {
    /// Software master keys in a keyring file.
    Local {
        /// The keyring file.
        keyring_path: PathBuf,
    },
    /// AWS KMS through aws-sdk-kms.
    Aws {
        /// Longest wait to connect to a region's endpoint.
        connect_timeout: Duration,
        /// Longest one call may take, retries included (also the core's KMS timeout).
        operation_timeout: Duration,
        /// Attempts per call, the first included.
        max_attempts: u32,
    },
}

/// One region and its master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionSettings {
    /// The region's name.
    pub name: String,
    /// Its master key (key id, ARN, alias, or a keyring name for the local provider).
    pub key_id: String,
    /// An endpoint URL instead of the region's default (AWS provider only).
    pub endpoint: Option<String>,
}

impl fmt::Display for RegionSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.key_id)?;
        match &self.endpoint {
            Some(endpoint) => write!(f, " at {endpoint}"),
            None => Ok(()),
        }
    }
}

impl Settings {
    /// The embedded default: SQLite and three local regions under `data_dir`.
    pub fn development(data_dir: &Path) -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            key_path: key_path("v1"),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            store: sqlite_defaults(data_dir),
            kms: KmsSettings::Local {
                keyring_path: data_dir.join(KEYRING_FILE),
            },
            regions: DEVELOPMENT_REGIONS
                .iter()
                .map(|r| RegionSettings {
                    name: (*r).into(),
                    key_id: default_local_key(r),
                    endpoint: None,
                })
                .collect(),
            service: ServiceOptions::default(),
            development_mode: true,
        }
    }

    /// Reads and checks the configuration file at `path`; relative defaults go under `data_dir`.
    pub fn from_file(path: &Path, data_dir: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, data_dir).map_err(|e| match e {
            ConfigError::Parse { section, message } if section == "file" => ConfigError::Parse {
                section: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses and checks configuration text.
    pub fn from_toml(text: &str, data_dir: &Path) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            section: "file".into(),
            message: e.to_string(),
        })?;
        let development = Self::development(data_dir);

        let port = match file.server.port {
            None => DEFAULT_LISTEN.port(),
            Some(Port::Number(n)) => {
                u16::try_from(n).ok().filter(|p| *p != 0).ok_or_else(|| {
                    invalid("server.port", format!("{n} is not a port number (1-65535)"))
                })?
            }
            Some(Port::Text(text)) => {
                text.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        invalid(
                            "server.port",
                            format!("{text:?} is not a port number (1-65535)"),
                        )
                    })?
            }
        };
        // The original bound every interface; keep that meaning unless `host` says otherwise.
        let host = file
            .server
            .host
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let api_version = file.server.api_version.unwrap_or_else(|| "v1".into());
        if api_version.is_empty()
            || !api_version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(invalid(
                "server.api_version",
                format!("{api_version:?} must be letters, digits, '.', '_' or '-'"),
            ));
        }

        let log_level = normalize_level(file.logger.level.as_deref().unwrap_or("info"))?;

        let kms = file.kms.ok_or_else(|| {
            invalid(
                "kms",
                "the [kms] section is required (regions, key_ids, provider)",
            )
        })?;
        let regions = resolve_regions(&kms)?;
        let data_key_len = kms.data_key_size_in_bytes.unwrap_or(32);
        if !(1..=MAX_DATA_KEY_LEN).contains(&data_key_len) {
            return Err(invalid(
                "kms.data_key_size_in_bytes",
                format!("{data_key_len} is out of range 1..={MAX_DATA_KEY_LEN}"),
            ));
        }
        let kms_timeout = positive_ms(
            "kms.timeout_ms",
            kms.timeout_ms,
            ServiceOptions::default().kms_timeout,
        )?;
        let kms_settings = resolve_provider(&kms, kms_timeout, data_dir)?;
        let store = match (file.store, file.dynamodb) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "store",
                    "[store] and [dynamodb] both choose a store; keep one",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "dynamodb",
                    "the DynamoDB store is not supported by this version of rkms-server yet",
                ));
            }
            (None, None) => sqlite_defaults(data_dir),
            (Some(table), None) => resolve_store(table, data_dir)?,
        };

        let mut service = development.service.clone();
        service.data_key_len = data_key_len;
        service.kms_timeout = kms_timeout;
        service.request_deadline = positive_ms(
            "server.request_timeout_ms",
            file.server.request_timeout_ms,
            service.request_deadline,
        )?;

        Ok(Self {
            listen: SocketAddr::new(host, port),
            key_path: key_path(&api_version),
            log_level,
            log_format: file.logger.format.unwrap_or_default(),
            store,
            kms: kms_settings,
            regions,
            service,
            development_mode: false,
        })
    }
}

fn key_path(api_version: &str) -> String {
    format!("/api/{api_version}/key")
}

fn default_local_key(region: &str) -> String {
    format!("rkms-{region}")
}

fn sqlite_defaults(data_dir: &Path) -> StoreSettings {
    StoreSettings::Sqlite {
        path: data_dir.join(SQLITE_FILE),
        busy_timeout: Duration::from_secs(5),
        max_connections: 4,
    }
}

fn positive_ms(
    key: &'static str,
    value: Option<u64>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(0) => Err(invalid(key, "must be greater than zero")),
        Some(ms) => Ok(Duration::from_millis(ms)),
    }
}

/// Accepts the levels of `tracing` and those the original's logrus knew.
fn normalize_level(level: &str) -> Result<String, ConfigError> {
    let normalized = match level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "fatal" | "panic" => "error",
        _ => {
            return Err(invalid(
                "logger.level",
                format!("{level:?} is not one of trace, debug, info, warn, error"),
            ));
        }
    };
    Ok(normalized.to_owned())
}

fn resolve_regions(kms: &KmsSection) -> Result<Vec<RegionSettings>, ConfigError> {
    if kms.regions.is_empty() {
        return Err(invalid("kms.regions", "at least one region is required"));
    }
    let mut seen = BTreeSet::new();
    for region in &kms.regions {
        let valid = !region.is_empty()
            && region.len() <= 64
            && region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid {
            return Err(invalid(
                "kms.regions",
                format!("{region:?} is not a region name (1-64 letters, digits, '-', '_', '.')"),
            ));
        }
        if !seen.insert(region.as_str()) {
            return Err(invalid(
                "kms.regions",
                format!("region {region:?} is listed twice"),
            ));
        }
    }
    let local = kms.provider.as_deref() == Some("local");
    if !(local && kms.key_ids.is_empty()) {
        // The original's rule: every region has exactly one key id, and none is left over.
        if let Some(region) = kms
            .regions
            .iter()
            .find(|r| kms.key_ids.get(*r).is_none_or(String::is_empty))
        {
            return Err(invalid(
                "kms.key_ids",
                format!("region {region:?} is in kms.regions but has no key id"),
            ));
        }
        if let Some(extra) = kms.key_ids.keys().find(|k| !seen.contains(k.as_str())) {
            return Err(invalid(
                "kms.key_ids",
                format!("{extra:?} has a key id but is not in kms.regions"),
            ));
        }
    }
    for (region, endpoint) in &kms.endpoints {
        if !seen.contains(region.as_str()) {
            return Err(invalid(
                "kms.endpoints",
                format!("{region:?} has an endpoint but is not in kms.regions"),
            ));
        }
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(invalid(
                "kms.endpoints",
                format!("the endpoint of {region:?} must be an http:// or https:// URL"),
            ));
        }
    }
    Ok(kms
        .regions
        .iter()
        .map(|r| RegionSettings {
            name: r.clone(),
            key_id: kms
                .key_ids
                .get(r)
                .cloned()
                .unwrap_or_else(|| default_local_key(r)),
            endpoint: kms.endpoints.get(r).cloned(),
        })
        .collect())
}

/// Reads the provider and refuses keys that belong to the other one.
fn resolve_provider(
    kms: &KmsSection,
    operation_timeout: Duration,
    data_dir: &Path,
) -> Result<KmsSettings, ConfigError> {
    let only_for = |key: &'static str, set: bool, provider: &str| {
        if set {
            Err(invalid(
                key,
                format!("applies to provider = \"{provider}\" only"),
            ))
        } else {
            Ok(())
        }
    };
    match kms.provider.as_deref().unwrap_or("aws") {
        "aws" => {
            only_for("kms.keyring_path", kms.keyring_path.is_some(), "local")?;
            let max_attempts = kms.max_attempts.unwrap_or(2);
            if !(1..=5).contains(&max_attempts) {
                return Err(invalid(
                    "kms.max_attempts",
                    format!("{max_attempts} is out of range 1..=5"),
                ));
            }
            Ok(KmsSettings::Aws {
                connect_timeout: positive_ms(
                    "kms.connect_timeout_ms",
                    kms.connect_timeout_ms,
                    Duration::from_secs(1),
                )?,
                operation_timeout,
                max_attempts,
            })
        }
        "local" => {
            only_for("kms.endpoints", !kms.endpoints.is_empty(), "aws")?;
            only_for(
                "kms.connect_timeout_ms",
                kms.connect_timeout_ms.is_some(),
                "aws",
            )?;
            only_for("kms.max_attempts", kms.max_attempts.is_some(), "aws")?;
            Ok(KmsSettings::Local {
                keyring_path: kms
                    .keyring_path
                    .clone()
                    .unwrap_or_else(|| data_dir.join(KEYRING_FILE)),
            })
        }
        other => Err(invalid(
            "kms.provider",
            format!("unknown provider {other:?}; expected \"aws\" or \"local\""),
        )),
    }
}

fn resolve_store(mut table: toml::Table, data_dir: &Path) -> Result<StoreSettings, ConfigError> {
    let backend = match table.remove("backend") {
        Some(toml::Value::String(name)) => name,
        Some(_) => return Err(invalid("store.backend", "must be a string")),
        None => return Err(invalid("store.backend", "is required (\"sqlite\")")),
    };
    let parse_error = |e: toml::de::Error| ConfigError::Parse {
        section: "[store]".into(),
        message: e.message().to_owned(),
    };
    match backend.as_str() {
        "sqlite" => {
            let section: SqliteSection = table.try_into().map_err(parse_error)?;
            let StoreSettings::Sqlite { path, busy_timeout, max_connections } = sqlite_defaults(data_dir);
            if section.max_connections == Some(0) {
                return Err(invalid("store.max_connections", "must be greater than zero"));
            }
            Ok(StoreSettings::Sqlite {
                path: section.path.unwrap_or(path),
                busy_timeout: positive_ms("store.busy_timeout_ms", section.busy_timeout_ms, busy_timeout)?,
                max_connections: section.max_connections.unwrap_or(max_connections),
            })
        }
        "postgres" | "redis" | "etcd" | "dynamodb" => Err(invalid(
            "store.backend",
            format!("{backend:?} is not supported by this version of rkms-server yet; supported: \"sqlite\""),
        )),
        other => Err(invalid("store.backend", format!("unknown backend {other:?}; supported: \"sqlite\""))),
    }
}
