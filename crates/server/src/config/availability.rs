//! The availability settings: `[kms] min_regions`, `[kms.hedge]`, `[kms.breaker]`, `[cache]`
//! and `[repair]`.

use rkms_core::{BreakerOptions, CacheOptions, HedgeOptions, RepairOptions, ServiceOptions};
use serde::Deserialize;

use super::{invalid, optional_seconds, positive_ms, positive_seconds, ConfigError};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HedgeSection {
    delay_ms: Option<u64>,
    factor: Option<u32>,
    floor_ms: Option<u64>,
    cap_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BreakerSection {
    failure_threshold: Option<u32>,
    open_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CacheSection {
    enabled: Option<bool>,
    ttl_seconds: Option<u64>,
    max_entries: Option<u64>,
    stale_grace_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RepairSection {
    interval_seconds: Option<u64>,
    sweep_interval_seconds: Option<u64>,
    max_pending: Option<usize>,
    kms_calls_per_second: Option<u32>,
    concurrency: Option<usize>,
}

fn nonzero<T: Default + PartialEq>(
    key: &'static str,
    value: Option<T>,
    default: T,
) -> Result<T, ConfigError> {
    match value {
        Some(v) if v == T::default() => Err(invalid(key, "must be greater than zero")),
        other => Ok(other.unwrap_or(default)),
    }
}

/// Fills the availability part of `service` from the file's sections; `regions` is the count.
pub(super) fn apply(
    service: &mut ServiceOptions,
    regions: usize,
    min_regions: Option<usize>,
    hedge: HedgeSection,
    breaker: BreakerSection,
    cache: CacheSection,
    repair: RepairSection,
) -> Result<(), ConfigError> {
    let defaults = ServiceOptions::default();
    service.min_regions = match min_regions {
        None => defaults.min_regions.min(regions),
        Some(n) if (1..=regions).contains(&n) => n,
        Some(n) => {
            return Err(invalid(
                "kms.min_regions",
                format!("{n} must be between 1 and the {regions} configured region(s)"),
            ));
        }
    };

    let hedge_defaults = HedgeOptions::default();
    let floor = positive_ms("kms.hedge.floor_ms", hedge.floor_ms, hedge_defaults.floor)?;
    let cap = positive_ms("kms.hedge.cap_ms", hedge.cap_ms, hedge_defaults.cap)?;
    if floor > cap {
        return Err(invalid(
            "kms.hedge.floor_ms",
            "must not exceed kms.hedge.cap_ms",
        ));
    }
    service.hedge = HedgeOptions {
        fixed: hedge
            .delay_ms
            .map(|ms| positive_ms("kms.hedge.delay_ms", Some(ms), cap))
            .transpose()?,
        factor: match hedge.factor {
            Some(0) => return Err(invalid("kms.hedge.factor", "must be greater than zero")),
            other => other.unwrap_or(hedge_defaults.factor),
        },
        floor,
        cap,
    };

    let breaker_defaults = BreakerOptions::default();
    service.breaker = BreakerOptions {
        failure_threshold: match breaker.failure_threshold {
            Some(0) => {
                return Err(invalid(
                    "kms.breaker.failure_threshold",
                    "must be greater than zero",
                ))
            }
            other => other.unwrap_or(breaker_defaults.failure_threshold),
        },
        open_for: positive_ms(
            "kms.breaker.open_ms",
            breaker.open_ms,
            breaker_defaults.open_for,
        )?,
    };

    let cache_defaults = CacheOptions::default();
    service.cache = CacheOptions {
        enabled: cache.enabled.unwrap_or(cache_defaults.enabled),
        ttl: positive_seconds("cache.ttl_seconds", cache.ttl_seconds, cache_defaults.ttl)?,
        max_entries: match cache.max_entries {
            Some(0) => return Err(invalid("cache.max_entries", "must be greater than zero")),
            other => other.unwrap_or(cache_defaults.max_entries),
        },
        stale_grace: optional_seconds(
            "cache.stale_grace_seconds",
            cache.stale_grace_seconds,
            None,
        )?,
    };

    let repair_defaults = RepairOptions::default();
    service.repair = RepairOptions {
        interval: positive_seconds(
            "repair.interval_seconds",
            repair.interval_seconds,
            repair_defaults.interval,
        )?,
        sweep_interval: optional_seconds(
            "repair.sweep_interval_seconds",
            repair.sweep_interval_seconds,
            repair_defaults.sweep_interval,
        )?,
        max_pending: nonzero(
            "repair.max_pending",
            repair.max_pending,
            repair_defaults.max_pending,
        )?,
        kms_calls_per_second: nonzero(
            "repair.kms_calls_per_second",
            repair.kms_calls_per_second,
            repair_defaults.kms_calls_per_second,
        )?,
        concurrency: nonzero(
            "repair.concurrency",
            repair.concurrency,
            repair_defaults.concurrency,
        )?,
    };
    Ok(())
}
