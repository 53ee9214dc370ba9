//! The `[kms]` section: provider, regions and their master keys.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::Uri;
use serde::Deserialize;

use super::{invalid, positive_ms, ConfigError, KEYRING_FILE};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KmsSection {
    pub(super) provider: Option<String>,
    pub(super) regions: Vec<String>,
    #[serde(default)]
    key_ids: BTreeMap<String, String>,
    /// Per region, master keys it wrapped under before its `key_ids` entry and may still
    /// decrypt under, until repair has wrapped every copy again.
    #[serde(default)]
    previous_key_ids: BTreeMap<String, Vec<String>>,
    /// Regions taken out of `regions` whose copies repair drops (where a quorum remains).
    #[serde(default)]
    pub(super) removed_regions: Vec<String>,
    pub(super) data_key_size_in_bytes: Option<usize>,
    keyring_path: Option<PathBuf>,
    pub(super) timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    #[serde(default)]
    endpoints: BTreeMap<String, String>,
    allow_insecure_endpoints: Option<bool>,
    pub(super) min_regions: Option<usize>,
    pub(super) straggler_wait_ms: Option<u64>,
    #[serde(default)]
    pub(super) hedge: super::availability::HedgeSection,
    #[serde(default)]
    pub(super) breaker: super::availability::BreakerSection,
}

/// Which KMS provider serves the regions.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Master keys it wrapped under before `key_id`, for decrypting old copies only.
    pub previous_key_ids: Vec<String>,
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

/// Most previous master keys a region may name: each is tried in turn for a copy under it,
/// and a rewrap leaves none in use.
const MAX_PREVIOUS_KEYS: usize = 16;
/// Longest key id: AWS KMS's limit for a key id, ARN or alias.
const MAX_KEY_ID_LEN: usize = 2048;

pub(super) fn default_local_key(region: &str) -> String {
    format!("rkms-{region}")
}

pub(super) fn resolve_regions(kms: &KmsSection) -> Result<Vec<RegionSettings>, ConfigError> {
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
    let settings: Vec<RegionSettings> = kms
        .regions
        .iter()
        .map(|r| RegionSettings {
            name: r.clone(),
            key_id: kms
                .key_ids
                .get(r)
                .cloned()
                .unwrap_or_else(|| default_local_key(r)),
            previous_key_ids: kms.previous_key_ids.get(r).cloned().unwrap_or_default(),
            endpoint: kms.endpoints.get(r).cloned(),
        })
        .collect();
    if let Some(region) = kms
        .previous_key_ids
        .keys()
        .find(|k| !seen.contains(k.as_str()))
    {
        return Err(invalid(
            "kms.previous_key_ids",
            format!("{region:?} has previous key ids but is not in kms.regions"),
        ));
    }
    for region in &settings {
        if region.previous_key_ids.len() > MAX_PREVIOUS_KEYS
            || region
                .previous_key_ids
                .iter()
                .chain([&region.key_id])
                .any(|k| k.len() > MAX_KEY_ID_LEN)
        {
            return Err(invalid(
                "kms.previous_key_ids",
                format!(
                    "{:?} may name at most {MAX_PREVIOUS_KEYS} previous keys, and a key id at \
                     most {MAX_KEY_ID_LEN} bytes (a rewrap retires old keys; see README)",
                    region.name
                ),
            ));
        }
        let mut names = HashSet::new();
        for previous in &region.previous_key_ids {
            if previous.is_empty() || *previous == region.key_id || !names.insert(previous) {
                return Err(invalid(
                    "kms.previous_key_ids",
                    format!(
                        "the previous keys of {:?} must be distinct, not empty, and not its current key",
                        region.name
                    ),
                ));
            }
        }
    }
    Ok(settings)
}

/// Reads the provider and refuses keys that belong to the other one.
pub(super) fn resolve_provider(
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
                "kms.allow_insecure_endpoints",
                kms.allow_insecure_endpoints.is_some(),
                "aws",
            )?;
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

/// Refuses a plain `http://` endpoint to a host beyond loopback: data keys travel in KMS
/// answers and requests, and would cross the network in the clear. With
/// `allow_insecure_endpoints = true` each such endpoint is a warning instead.
pub(super) fn check_endpoint_transport(kms: &KmsSection) -> Result<Vec<String>, ConfigError> {
    let allowed = kms.allow_insecure_endpoints.unwrap_or(false);
    let mut warnings = Vec::new();
    for (region, endpoint) in &kms.endpoints {
        let uri: Uri = endpoint.parse().map_err(|e| {
            invalid(
                "kms.endpoints",
                format!("the endpoint of {region:?} is not a URL: {e}"),
            )
        })?;
        if uri.scheme_str() != Some("http") || uri.host().is_some_and(is_loopback) {
            continue;
        }
        if !allowed {
            return Err(invalid(
                "kms.endpoints",
                format!(
                    "the endpoint of {region:?}, {endpoint}, is plain HTTP to a host that is not \
                     loopback: data keys would cross the network unencrypted. Use https://, or set \
                     [kms] allow_insecure_endpoints = true if that path is protected otherwise"
                ),
            ));
        }
        warnings.push(format!(
            "KMS region {region:?} is reached over plain HTTP at {endpoint} \
             (allow_insecure_endpoints = true): data keys cross the network unencrypted"
        ));
    }
    Ok(warnings)
}

/// `localhost` or a loopback address (IPv6 in brackets, as URLs write it).
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
