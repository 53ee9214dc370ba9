//! The configuration file (TOML) and the settings resolved from it.
//!
//! The original Go RKMS's `config.toml` keeps its meaning: `[server] port, api_version`,
//! `[logger] level`, `[kms] regions, key_ids, data_key_size_in_bytes`, `[dynamodb] region,
//! table_name`. New keys choose the store (`[store]`), the KMS provider and timeouts. Unknown
//! keys and invalid values are refused with a message that names them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rkms_core::{ServiceOptions, MAX_DATA_KEY_LEN};

use crate::audit::{AuditSync, AuditTarget, Checkpoints};
use crate::auth::{AllowedHosts, PrincipalSpec};
use crate::limits::Limits;
use crate::tls::TlsSettings;
use serde::Deserialize;

mod access;
mod availability;
mod generated_tokens;
mod kms;
mod lifecycle;
mod store;

pub use generated_tokens::{GeneratedToken, NewToken};
pub use kms::{KmsSettings, RegionSettings};
pub use store::{ConnectionUrl, LegacyRecords, StoreSettings};

use kms::{
    check_endpoint_transport, default_local_key, resolve_provider, resolve_regions, KmsSection,
};
use store::{resolve_original_dynamodb, resolve_store, sqlite_defaults};

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
    /// The original's section, which alone selects the DynamoDB store.
    dynamodb: Option<toml::Table>,
    #[serde(default)]
    cache: availability::CacheSection,
    #[serde(default)]
    repair: availability::RepairSection,
    #[serde(default)]
    lifecycle: lifecycle::LifecycleSection,
    #[serde(default)]
    audit: AuditSection,
    #[serde(default)]
    limits: access::LimitsSection,
    #[serde(default)]
    principals: Vec<access::PrincipalSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditSection {
    /// The audit log file, or "-" for standard output; default `<data-dir>/audit.log`.
    path: Option<PathBuf>,
    /// `os` (default) or `always` (fsync before a key is handed out).
    sync: Option<AuditSync>,
    /// PEM Ed25519 private key (mode 0600) that signs checkpoints; none by default.
    signing_key: Option<PathBuf>,
    checkpoint_lines: Option<u64>,
    checkpoint_interval_seconds: Option<u64>,
}

/// The signing key and how often it checkpoints; the frequencies only with a key.
fn audit_checkpoints(
    section: &AuditSection,
) -> Result<(Option<PathBuf>, Checkpoints), ConfigError> {
    let default = Checkpoints::default();
    if section.signing_key.is_none() {
        for (key, set) in [
            ("audit.checkpoint_lines", section.checkpoint_lines.is_some()),
            (
                "audit.checkpoint_interval_seconds",
                section.checkpoint_interval_seconds.is_some(),
            ),
        ] {
            if set {
                return Err(invalid(
                    key,
                    "checkpoints are written only with audit.signing_key; set it or remove this",
                ));
            }
        }
    }
    let every_lines = count(
        "audit.checkpoint_lines",
        section.checkpoint_lines,
        default.every_lines,
        1..=MAX_CHECKPOINT_LINES,
    )?;
    let interval = positive_seconds(
        "audit.checkpoint_interval_seconds",
        section.checkpoint_interval_seconds,
        default.interval,
    )?;
    Ok((
        section.signing_key.clone(),
        Checkpoints {
            every_lines,
            interval,
        },
    ))
}

/// Audit log file name under the data directory.
pub const AUDIT_FILE: &str = "audit.log";

fn audit_target(path: Option<PathBuf>, data_dir: &Path) -> AuditTarget {
    match path {
        Some(path) if path.as_os_str() == "-" => AuditTarget::Stdout,
        Some(path) => AuditTarget::File(path),
        None => AuditTarget::File(data_dir.join(AUDIT_FILE)),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    /// The original wrote the port as a string ("8080"); both forms are accepted.
    port: Option<Port>,
    health_port: Option<Port>,
    host: Option<IpAddr>,
    api_version: Option<String>,
    request_timeout_ms: Option<u64>,
    allow_insecure_http: Option<bool>,
    allowed_hosts: Option<Vec<String>>,
    tls: Option<access::TlsSection>,
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

/// Everything the server needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Where `/healthz` and `/readyz` are also served, alone, over plain HTTP: a listener no
    /// key client can fill. `None`: the probes are on the main port only.
    pub health_listen: Option<SocketAddr>,
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
    /// Things about the configuration worth a line in the log at start.
    pub notices: Vec<String>,
    /// Where key operations are recorded.
    pub audit: AuditTarget,
    /// Whether an audit line is fsynced before its key is handed out.
    pub audit_sync: AuditSync,
    /// The private key that signs audit checkpoints; `None` writes none.
    pub audit_signing_key: Option<PathBuf>,
    /// How often audit checkpoints are written, with a signing key.
    pub audit_checkpoints: Checkpoints,
    /// Server TLS; `None` serves plain HTTP.
    pub tls: Option<TlsSettings>,
    /// Plain HTTP on a non-loopback address was asked for explicitly.
    pub allow_insecure_http: bool,
    /// Request size, time and connection limits.
    pub limits: Limits,
    /// Who may call, and what each may do.
    pub principals: Vec<PrincipalSpec>,
    /// Principals whose token the server makes and keeps the hash of; see
    /// [`Settings::load_generated_tokens`].
    pub generated_tokens: Vec<GeneratedToken>,
    /// Failed authentications each client address may make a minute (`None`: unlimited).
    pub failed_auth_per_minute: Option<NonZeroU32>,
    /// Hosts besides loopback that anonymous requests may be addressed to.
    pub allowed_hosts: AllowedHosts,
}

impl Settings {
    /// The embedded default: SQLite and three local regions under `data_dir`.
    pub fn development(data_dir: &Path) -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            health_listen: None,
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
                    previous_key_ids: Vec::new(),
                    endpoint: None,
                })
                .collect(),
            service: ServiceOptions::default(),
            development_mode: true,
            notices: Vec::new(),
            audit: audit_target(None, data_dir),
            audit_sync: AuditSync::default(),
            audit_signing_key: None,
            audit_checkpoints: Checkpoints::default(),
            tls: None,
            allow_insecure_http: false,
            limits: Limits::default(),
            principals: vec![access::development_principal()],
            generated_tokens: Vec::new(),
            failed_auth_per_minute: NonZeroU32::new(access::DEFAULT_FAILED_AUTH_PER_MINUTE),
            allowed_hosts: AllowedHosts::default(),
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

        let port = port_number("server.port", file.server.port)?.unwrap_or(DEFAULT_LISTEN.port());
        let health_port = port_number("server.health_port", file.server.health_port)?;
        if health_port == Some(port) {
            return Err(invalid(
                "server.health_port",
                "must differ from server.port: the health port is a listener of its own",
            ));
        }
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
        let mut notices = check_endpoint_transport(&kms)?;
        let store = match (file.store, file.dynamodb) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "store",
                    "[store] and [dynamodb] both choose a store; keep one",
                ));
            }
            (None, Some(table)) => {
                let (store, notice) = resolve_original_dynamodb(table)?;
                notices.extend(notice);
                store
            }
            (None, None) => sqlite_defaults(data_dir),
            (Some(table), None) => resolve_store(table, data_dir)?,
        };

        let mut service = development.service.clone();
        service.data_key_len = data_key_len;
        service.kms_timeout = kms_timeout;
        if let Some(timeout) = store.timeout() {
            service.store_timeout = timeout;
        }
        service.request_deadline = positive_ms(
            "server.request_timeout_ms",
            file.server.request_timeout_ms,
            service.request_deadline,
        )?;
        service.straggler_wait = availability::straggler_wait(kms.straggler_wait_ms, kms_timeout)?;
        if let Some(region) = kms
            .removed_regions
            .iter()
            .find(|r| r.is_empty() || kms.regions.contains(r))
        {
            return Err(invalid(
                "kms.removed_regions",
                format!(
                    "{region:?} is still in kms.regions (or empty): name only regions taken out"
                ),
            ));
        }
        service.removed_regions = kms.removed_regions.clone();
        availability::apply(
            &mut service,
            regions.len(),
            kms.min_regions,
            kms.hedge,
            kms.breaker,
            file.cache,
            file.repair,
        )?;
        notices.extend(lifecycle::apply(&mut service, file.lifecycle)?);

        let (audit_signing_key, audit_checkpoints) = audit_checkpoints(&file.audit)?;
        let audit = audit_target(file.audit.path, data_dir);
        let audit_sync = file.audit.sync.unwrap_or_default();
        if audit == AuditTarget::Stdout && audit_sync == AuditSync::Always {
            return Err(invalid(
                "audit.sync",
                "\"always\" needs an audit file: standard output cannot be fsynced; set [audit] path",
            ));
        }

        let tls = access::resolve_tls(file.server.tls)?;
        let failed_auth_per_minute = access::failed_auth_budget(&file.limits);
        let (limits, default_rate) = access::resolve_limits(file.limits)?;
        let client_ca = tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        let (principals, generated_tokens) =
            access::resolve_principals(file.principals, default_rate, client_ca)?;
        let allowed_hosts =
            AllowedHosts::parse(file.server.allowed_hosts.as_deref().unwrap_or_default())
                .map_err(|e| invalid("server.allowed_hosts", e))?;

        Ok(Self {
            listen: SocketAddr::new(host, port),
            health_listen: health_port.map(|p| SocketAddr::new(host, p)),
            key_path: key_path(&api_version),
            log_level,
            log_format: file.logger.format.unwrap_or_default(),
            store,
            kms: kms_settings,
            regions,
            service,
            development_mode: false,
            notices,
            audit,
            audit_sync,
            audit_signing_key,
            audit_checkpoints,
            tls,
            allow_insecure_http: file.server.allow_insecure_http.unwrap_or(false),
            limits,
            principals,
            generated_tokens,
            failed_auth_per_minute,
            allowed_hosts,
        })
    }

    /// Checks that the address to listen on (after any `--listen`) is safe to serve: plain HTTP
    /// beyond loopback only with `allow_insecure_http`, the development default only on
    /// loopback. Returns warnings worth logging.
    pub fn check_exposure(&self) -> Result<Vec<String>, ConfigError> {
        let addr = self.listen;
        if addr.ip().is_loopback() {
            return Ok(Vec::new());
        }
        if self.development_mode {
            return Err(invalid(
                "server.host",
                format!(
                    "the development default serves anonymous callers on loopback only; to listen \
                     on {addr}, write a configuration file with [[principals]] and [server.tls]"
                ),
            ));
        }
        let mut warnings = Vec::new();
        if self.tls.is_none() {
            if !self.allow_insecure_http {
                return Err(invalid(
                    "server.allow_insecure_http",
                    format!(
                        "refusing to serve keys over plain HTTP on {addr}, which is not a loopback \
                         address: configure [server.tls], or set allow_insecure_http = true when a \
                         TLS-terminating proxy in front of this server is the only way in"
                    ),
                ));
            }
            warnings.push(format!(
                "serving plain HTTP on {addr} (allow_insecure_http = true): keys and tokens cross \
                 the network unencrypted up to the next TLS hop"
            ));
        }
        if let Some(anonymous) = self.principals.iter().find(|p| p.anonymous) {
            warnings.push(format!(
                "anonymous callers on {addr} act as principal {:?}, for requests addressed to \
                 loopback or a host in [server] allowed_hosts",
                anonymous.name
            ));
        }
        Ok(warnings)
    }
}

fn key_path(api_version: &str) -> String {
    format!("/api/{api_version}/key")
}

/// A duration given in milliseconds: zero refused, and at most [`MAX_DURATION`].
fn positive_ms(
    key: &'static str,
    value: Option<u64>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(0) => Err(invalid(key, "must be greater than zero")),
        Some(ms) => at_most_max(key, Duration::from_millis(ms)),
    }
}

/// The longest any duration setting may be: far beyond every sensible value, and short enough
/// that adding it to a clock reading never overflows (a header timeout of `u64::MAX` seconds
/// once panicked every connection).
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// [`positive_ms`] for a duration given in seconds.
fn positive_seconds(
    key: &'static str,
    value: Option<u64>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    positive_ms(key, value.map(|s| s.saturating_mul(1000)), default)
}

/// A duration in seconds where zero means "off".
fn optional_seconds(
    key: &'static str,
    value: Option<u64>,
    default: Option<Duration>,
) -> Result<Option<Duration>, ConfigError> {
    match value {
        None => Ok(default),
        Some(0) => Ok(None),
        Some(s) => at_most_max(key, Duration::from_secs(s)).map(Some),
    }
}

fn at_most_max(key: &'static str, duration: Duration) -> Result<Duration, ConfigError> {
    if duration > MAX_DURATION {
        return Err(invalid(
            key,
            format!("must be at most {} days", MAX_DURATION.as_secs() / 86_400),
        ));
    }
    Ok(duration)
}

/// A count or size: `default` when unset, else within `range`, whose end is far beyond every
/// sensible value, so that nothing a setting sizes can overflow or allocate absurdly.
/// A port number (1-65535) from the file, in either of the original's forms.
fn port_number(key: &'static str, port: Option<Port>) -> Result<Option<u16>, ConfigError> {
    let Some(port) = port else {
        return Ok(None);
    };
    let number = match &port {
        Port::Number(n) => u16::try_from(*n).ok(),
        Port::Text(text) => text.parse::<u16>().ok(),
    };
    let shown = match port {
        Port::Number(n) => n.to_string(),
        Port::Text(text) => format!("{text:?}"),
    };
    number
        .filter(|p| *p != 0)
        .map(Some)
        .ok_or_else(|| invalid(key, format!("{shown} is not a port number (1-65535)")))
}

/// Lines between checkpoints at most: past a million, checkpoints come by time alone.
const MAX_CHECKPOINT_LINES: u64 = 1_000_000;

fn count<T>(
    key: &'static str,
    value: Option<T>,
    default: T,
    range: RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: Copy + PartialOrd + fmt::Display + From<u8>,
{
    value.map_or(Ok(default), |value| {
        in_range(value, &range).map_err(|message| invalid(key, message))
    })
}

/// `value` if `range` holds it, else why not; for keys [`count`] cannot name on its own.
fn in_range<T>(value: T, range: &RangeInclusive<T>) -> Result<T, String>
where
    T: Copy + PartialOrd + fmt::Display + From<u8>,
{
    if range.contains(&value) {
        Ok(value)
    } else if value == T::from(0) {
        Err("must be greater than zero".into())
    } else {
        Err(format!("must be at most {} (not {value})", range.end()))
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
