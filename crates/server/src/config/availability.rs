//! The availability settings: `[kms] min_regions` and `straggler_wait_ms`, `[kms.hedge]`,
//! `[kms.breaker]`, `[cache]` and `[repair]`.

use std::time::Duration;

use rkms_core::{BreakerOptions, CacheOptions, HedgeOptions, RepairOptions, ServiceOptions};
use serde::Deserialize;

use super::{
    count, in_range, invalid, optional_seconds, positive_ms, positive_seconds, ConfigError,
};

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
    first_sweep_after_seconds: Option<u64>,
    max_pending: Option<usize>,
    kms_calls_per_second: Option<u32>,
    concurrency: Option<usize>,
}

/// Largest hedge factor: the delay is capped by `cap_ms` long before.
const MAX_HEDGE_FACTOR: u32 = 1000;
/// Most failures in a row a breaker may wait for.
const MAX_FAILURE_THRESHOLD: u32 = 1000;
/// Most cached keys (each up to 1 KiB of key and its id in memory).
const MAX_CACHE_ENTRIES: u64 = 10_000_000;
/// Most ids remembered as lacking copies.
const MAX_PENDING_REPAIRS: usize = 10_000_000;
/// Fastest repair pace, in KMS calls per second.
const MAX_REPAIR_CALLS_PER_SECOND: u32 = 100_000;
/// Most records repaired at once.
const MAX_REPAIR_CONCURRENCY: usize = 1000;

/// `[kms] straggler_wait_ms`: at most the KMS timeout, after which a straggler has failed.
pub(super) fn straggler_wait(
    value: Option<u64>,
    kms_timeout: Duration,
) -> Result<Option<Duration>, ConfigError> {
    let longest = u64::try_from(kms_timeout.as_millis()).unwrap_or(u64::MAX);
    value
        .map(|ms| {
            in_range(ms, &(0..=longest))
                .map(Duration::from_millis)
                .map_err(|message| invalid("kms.straggler_wait_ms", message))
        })
        .transpose()
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
        factor: count(
            "kms.hedge.factor",
            hedge.factor,
            hedge_defaults.factor,
            1..=MAX_HEDGE_FACTOR,
        )?,
        floor,
        cap,
    };

    let breaker_defaults = BreakerOptions::default();
    service.breaker = BreakerOptions {
        failure_threshold: count(
            "kms.breaker.failure_threshold",
            breaker.failure_threshold,
            breaker_defaults.failure_threshold,
            1..=MAX_FAILURE_THRESHOLD,
        )?,
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
        max_entries: count(
            "cache.max_entries",
            cache.max_entries,
            cache_defaults.max_entries,
            1..=MAX_CACHE_ENTRIES,
        )?,
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
        first_sweep_after: optional_seconds(
            "repair.first_sweep_after_seconds",
            repair.first_sweep_after_seconds,
            repair_defaults.first_sweep_after,
        )?,
        max_pending: count(
            "repair.max_pending",
            repair.max_pending,
            repair_defaults.max_pending,
            1..=MAX_PENDING_REPAIRS,
        )?,
        kms_calls_per_second: count(
            "repair.kms_calls_per_second",
            repair.kms_calls_per_second,
            repair_defaults.kms_calls_per_second,
            1..=MAX_REPAIR_CALLS_PER_SECOND,
        )?,
        concurrency: count(
            "repair.concurrency",
            repair.concurrency,
            repair_defaults.concurrency,
            1..=MAX_REPAIR_CONCURRENCY,
        )?,
    };
    Ok(())
}
