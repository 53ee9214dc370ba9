//! Who may reach the server and how: `[server.tls]`, `[limits]` and `[[principals]]`.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::generated_tokens::GeneratedToken;
use super::{count, in_range, invalid, positive_seconds, ConfigError};
use crate::auth::{
    IdPattern, Operations, Policy, PrincipalSpec, RateLimit, Rule, TokenHash, LOCAL_ADMIN,
};
use crate::limits::Limits;
use crate::tls::{CertificateName, TlsSettings};

/// Default per-principal rate limit of a configuration file, per server process.
const DEFAULT_RATE_PER_SECOND: u32 = 1000;
/// Most requests per second, and the largest burst, a rate limit may allow.
const MAX_RATE: u32 = 1_000_000;
/// Longest path and query string that may be allowed.
const MAX_URI_BYTES: usize = 64 * 1024;
/// Most header bytes that may be allowed.
const MAX_HEADER_BYTES: usize = 1024 * 1024;
/// Most connections that may be allowed at once.
const MAX_CONNECTIONS: usize = 100_000;

/// Default failed authentications per client address and minute, per server process: plenty
/// for a client with a wrong token to show up in the log, little for guessing.
pub(super) const DEFAULT_FAILED_AUTH_PER_MINUTE: u32 = 60;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsSection {
    certificate: PathBuf,
    private_key: PathBuf,
    client_ca: Option<PathBuf>,
    reload_interval_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsSection {
    max_uri_bytes: Option<usize>,
    max_header_bytes: Option<usize>,
    header_read_timeout_seconds: Option<u64>,
    write_timeout_seconds: Option<u64>,
    max_connection_age_seconds: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    rate_limit_per_second: Option<u32>,
    rate_limit_burst: Option<u32>,
    failed_auth_per_minute: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PrincipalSection {
    name: String,
    #[serde(default)]
    token_sha256: Vec<String>,
    generated_token_file: Option<PathBuf>,
    #[serde(default)]
    client_certificate_names: Vec<String>,
    #[serde(default)]
    anonymous: bool,
    #[serde(default)]
    metrics: bool,
    rate_limit_per_second: Option<u32>,
    rate_limit_burst: Option<u32>,
    create_rate_per_second: Option<u32>,
    create_rate_burst: Option<u32>,
    #[serde(default)]
    allow: Vec<AllowSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowSection {
    ids: Vec<String>,
    operations: Vec<String>,
}

pub(super) fn resolve_tls(section: Option<TlsSection>) -> Result<Option<TlsSettings>, ConfigError> {
    let Some(tls) = section else {
        return Ok(None);
    };
    let reload_interval = positive_seconds(
        "server.tls.reload_interval_seconds",
        tls.reload_interval_seconds,
        Duration::from_secs(30),
    )?;
    Ok(Some(TlsSettings {
        certificate: tls.certificate,
        private_key: tls.private_key,
        client_ca: tls.client_ca,
        reload_interval,
    }))
}

/// Failed authentications each client address may make a minute (`None`: unlimited).
pub(super) fn failed_auth_budget(section: &LimitsSection) -> Option<NonZeroU32> {
    NonZeroU32::new(
        section
            .failed_auth_per_minute
            .unwrap_or(DEFAULT_FAILED_AUTH_PER_MINUTE),
    )
}

/// The limits, and the default rate limit of principals that set none (`None`: unlimited).
pub(super) fn resolve_limits(
    section: LimitsSection,
) -> Result<(Limits, Option<RateLimit>), ConfigError> {
    let defaults = Limits::default();
    let max_connections = count(
        "limits.max_connections",
        section.max_connections,
        defaults.max_connections,
        1..=MAX_CONNECTIONS,
    )?;
    let limits = Limits {
        max_uri_bytes: count(
            "limits.max_uri_bytes",
            section.max_uri_bytes,
            defaults.max_uri_bytes,
            1..=MAX_URI_BYTES,
        )?,
        max_header_bytes: count(
            "limits.max_header_bytes",
            section.max_header_bytes,
            defaults.max_header_bytes,
            1..=MAX_HEADER_BYTES,
        )?,
        header_read_timeout: positive_seconds(
            "limits.header_read_timeout_seconds",
            section.header_read_timeout_seconds,
            defaults.header_read_timeout,
        )?,
        write_timeout: positive_seconds(
            "limits.write_timeout_seconds",
            section.write_timeout_seconds,
            defaults.write_timeout,
        )?,
        max_connection_age: positive_seconds(
            "limits.max_connection_age_seconds",
            section.max_connection_age_seconds,
            defaults.max_connection_age,
        )?,
        max_connections,
        max_connections_per_address: count(
            "limits.max_connections_per_address",
            section.max_connections_per_address,
            Limits::default_per_address(max_connections),
            0..=MAX_CONNECTIONS,
        )?,
    };
    let per_second = count(
        "limits.rate_limit_per_second",
        section.rate_limit_per_second,
        DEFAULT_RATE_PER_SECOND,
        0..=MAX_RATE,
    )?;
    let burst = section
        .rate_limit_burst
        .map(|burst| count("limits.rate_limit_burst", Some(burst), 1, 1..=MAX_RATE))
        .transpose()?;
    Ok((limits, rate_limit(per_second, burst)))
}

/// `per_second = 0` turns the limit off; the burst defaults to twice the rate.
fn rate_limit(per_second: u32, burst: Option<u32>) -> Option<RateLimit> {
    let per_second = NonZeroU32::new(per_second)?;
    let burst = burst
        .and_then(NonZeroU32::new)
        .or_else(|| NonZeroU32::new(per_second.get().saturating_mul(2)))
        .unwrap_or(per_second);
    Some(RateLimit { per_second, burst })
}

pub(super) fn principal_error(name: &str, message: impl std::fmt::Display) -> ConfigError {
    invalid("principals", format!("principal {name:?}: {message}"))
}

/// Checks every principal and their relations: unique names, tokens, token files and
/// certificate names, at most one anonymous principal, certificate names only with a client
/// CA. Returns the principals and the tokens to read or make from files.
pub(super) fn resolve_principals(
    sections: Vec<PrincipalSection>,
    default_rate: Option<RateLimit>,
    client_ca: bool,
) -> Result<(Vec<PrincipalSpec>, Vec<GeneratedToken>), ConfigError> {
    if sections.is_empty() {
        return Err(invalid(
            "principals",
            "no [[principals]] are configured, so every request would be refused; add one per \
             client (see README, Authentication)",
        ));
    }
    let mut names = HashSet::new();
    let mut tokens = HashSet::new();
    let mut certificate_names = HashSet::new();
    let mut token_files = HashSet::new();
    let mut generated = Vec::new();
    let mut anonymous = None;
    let mut specs = Vec::with_capacity(sections.len());
    for section in sections {
        let name = section.name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(principal_error(
                &name,
                "a name is 1 to 64 letters, digits, '.', '_' or '-'",
            ));
        }
        if name == LOCAL_ADMIN {
            return Err(principal_error(
                &name,
                "the name is reserved for `rkms-server key` commands run at the machine, so that \
                 their audit lines cannot be mistaken for a network caller's",
            ));
        }
        if !names.insert(name.clone()) {
            return Err(principal_error(&name, "the name is used twice"));
        }
        let hashes = section
            .token_sha256
            .iter()
            .map(|hex| TokenHash::parse_hex(hex).map_err(|e| principal_error(&name, e)))
            .collect::<Result<Vec<_>, _>>()?;
        for hash in &hashes {
            if !tokens.insert(hash.to_hex()) {
                return Err(principal_error(&name, "a token hash is configured twice"));
            }
        }
        if let Some(file) = &section.generated_token_file {
            if !token_files.insert(file.clone()) {
                return Err(principal_error(
                    &name,
                    format!("generated_token_file {} is used twice", file.display()),
                ));
            }
            generated.push(GeneratedToken {
                principal: name.clone(),
                file: file.clone(),
            });
        }
        let mut names_by_kind = Vec::with_capacity(section.client_certificate_names.len());
        for text in &section.client_certificate_names {
            if !client_ca {
                return Err(principal_error(
                    &name,
                    "client_certificate_names need [server.tls] client_ca to verify certificates",
                ));
            }
            let certificate_name =
                CertificateName::parse(text).map_err(|e| principal_error(&name, e))?;
            if !certificate_names.insert(certificate_name.clone()) {
                return Err(principal_error(
                    &name,
                    format!("client certificate name \"{certificate_name}\" is used twice"),
                ));
            }
            names_by_kind.push(certificate_name);
        }
        let has_credentials = !hashes.is_empty()
            || section.generated_token_file.is_some()
            || !names_by_kind.is_empty();
        if section.anonymous {
            if has_credentials {
                return Err(principal_error(
                    &name,
                    "an anonymous principal takes no tokens or certificate names",
                ));
            }
            if let Some(other) = anonymous.replace(name.clone()) {
                return Err(principal_error(
                    &name,
                    format!("{other:?} is already the anonymous principal"),
                ));
            }
        } else if !has_credentials {
            return Err(principal_error(
                &name,
                "needs token_sha256, generated_token_file, client_certificate_names, or \
                 anonymous = true",
            ));
        }
        let rules = section
            .allow
            .into_iter()
            .map(|allow| rule(&name, allow))
            .collect::<Result<Vec<_>, _>>()?;
        let policy = Policy::new(rules);
        if policy.is_empty() && !section.metrics {
            return Err(principal_error(
                &name,
                "is allowed nothing: add allow = [{ ids = [...], operations = [...] }] or metrics = true",
            ));
        }
        let checked = |field: &str, value: Option<u32>, range| {
            value
                .map(|value| in_range(value, &range))
                .transpose()
                .map_err(|message| principal_error(&name, format!("{field} {message}")))
        };
        // `{kind}_per_second` (0 turns the limit off) and `{kind}_burst`.
        let rate_pair = |kind: &str, per_second, burst| {
            Ok::<_, ConfigError>((
                checked(&format!("{kind}_per_second"), per_second, 0..=MAX_RATE)?,
                checked(&format!("{kind}_burst"), burst, 1..=MAX_RATE)?,
            ))
        };
        let (per_second, burst) = rate_pair(
            "rate_limit",
            section.rate_limit_per_second,
            section.rate_limit_burst,
        )?;
        let (create_per_second, create_burst) = rate_pair(
            "create_rate",
            section.create_rate_per_second,
            section.create_rate_burst,
        )?;
        let rate = match (per_second, burst) {
            (None, None) => default_rate,
            (per_second, burst) => rate_limit(
                per_second
                    .or(default_rate.map(|r| r.per_second.get()))
                    .unwrap_or(0),
                burst,
            ),
        };
        specs.push(PrincipalSpec {
            name,
            tokens: hashes,
            certificate_names: names_by_kind,
            anonymous: section.anonymous,
            metrics: section.metrics,
            policy,
            rate_limit: rate,
            create_rate: rate_limit(create_per_second.unwrap_or(0), create_burst),
        });
    }
    Ok((specs, generated))
}

fn rule(principal: &str, allow: AllowSection) -> Result<Rule, ConfigError> {
    if allow.ids.is_empty() || allow.operations.is_empty() {
        return Err(principal_error(
            principal,
            "each allow entry needs ids and operations",
        ));
    }
    let ids = allow
        .ids
        .iter()
        .map(|p| IdPattern::parse(p).map_err(|e| principal_error(principal, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut operations = Operations::default();
    for operation in &allow.operations {
        operations
            .add(operation)
            .map_err(|e| principal_error(principal, e))?;
    }
    Ok(Rule { ids, operations })
}

/// The development default's one principal: anonymous callers may do anything with any id
/// (a change sent by a web page is refused by the routes) and read metrics, without a rate
/// limit. Only ever served on loopback.
pub(super) fn development_principal() -> PrincipalSpec {
    PrincipalSpec {
        name: "anonymous".into(),
        tokens: Vec::new(),
        certificate_names: Vec::new(),
        anonymous: true,
        metrics: true,
        policy: Policy::new(vec![Rule {
            ids: vec![IdPattern::parse("*").expect("a valid pattern")],
            operations: Operations::all(),
        }]),
        rate_limit: None,
        create_rate: None,
    }
}
