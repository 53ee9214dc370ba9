//! `ServiceOptions`: the protocol's timeouts, quorum, hedging, breakers and cache.

use std::sync::Arc;
use std::time::Duration;

use super::{BuildError, MAX_DATA_KEY_LEN};
use crate::cache::CacheOptions;
use crate::health::BreakerOptions;

/// When to ask the next region while the first has not answered (decrypt and generate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HedgeOptions {
    /// A fixed hedge delay; `None` (the default) derives it from the waited-on region's
    /// observed latency: `factor` times its average, within `floor..=cap`.
    pub fixed: Option<Duration>,
    /// Multiple of the observed average latency (default 3).
    pub factor: u32,
    /// Shortest derived delay (default 20 ms).
    pub floor: Duration,
    /// Longest derived delay, also used before a region has any latency history (default 250 ms).
    pub cap: Duration,
}

impl Default for HedgeOptions {
    fn default() -> Self {
        Self {
            fixed: None,
            factor: 3,
            floor: Duration::from_millis(20),
            cap: Duration::from_millis(250),
        }
    }
}

impl HedgeOptions {
    /// The delay before hedging a call to a region with average latency `latency`.
    pub fn delay(&self, latency: Option<Duration>) -> Duration {
        match (self.fixed, latency) {
            (Some(fixed), _) => fixed,
            (None, Some(latency)) => (latency * self.factor).clamp(self.floor, self.cap),
            (None, None) => self.cap,
        }
    }
}

/// How the background repairer works; see [`super::KeyService::run_repairer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairOptions {
    /// How often the repairer retries the records this process knows to lack a copy (default
    /// 60 s). A record that still cannot be completed waits longer each time, up to 64 times
    /// this interval.
    pub interval: Duration,
    /// How often it also reads the whole store for records nobody here knows about (default
    /// 6 h; `None` never). Every record is read, so mind the cost on a large store.
    pub sweep_interval: Option<Duration>,
    /// How soon after start the first sweep runs (default 60 s, spread over up to twice that
    /// so that servers started together do not sweep together; `None`: only after
    /// `sweep_interval`), so that a restart soon finds the records a previous process left
    /// incomplete and forgot.
    pub first_sweep_after: Option<Duration>,
    /// Most ids remembered as lacking copies (default 100 000); beyond it the oldest are
    /// dropped and left to the sweep.
    pub max_pending: usize,
    /// KMS calls per second that repair may make from this process (default 50, well below
    /// AWS KMS's shared request quotas), so that repair never takes capacity from serving.
    pub kms_calls_per_second: u32,
    /// Records repaired at once (default 4).
    pub concurrency: usize,
}

impl Default for RepairOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            sweep_interval: Some(Duration::from_secs(6 * 3600)),
            first_sweep_after: Some(Duration::from_secs(60)),
            max_pending: 100_000,
            kms_calls_per_second: 50,
            concurrency: 4,
        }
    }
}

/// The wall clock the lifecycle reads, in seconds since the Unix epoch: deletion windows and
/// creation times. The system clock by default; tests inject one they move.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The system's clock.
    pub fn system() -> Self {
        Self::from_fn(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
    }

    /// A clock that reads `now`.
    pub fn from_fn(now: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// Seconds since the Unix epoch.
    pub fn now(&self) -> u64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock(now = {})", self.now())
    }
}

/// The key lifecycle's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecycleOptions {
    /// How long after [`super::KeyService::schedule_deletion`] an id is deleted, unless
    /// restored (default 30 days).
    pub deletion_window: Duration,
    /// Reads the record's state from the store on every cache hit, so that a deletion or
    /// rotation made through another process shows at once rather than within the cache TTL;
    /// costs a store read per hit (default false).
    pub check_state_on_hit: bool,
}

impl Default for LifecycleOptions {
    fn default() -> Self {
        Self {
            deletion_window: Duration::from_secs(30 * 24 * 60 * 60),
            check_state_on_hit: false,
        }
    }
}

/// Tunables of a [`super::KeyService`].
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Length of generated data keys in bytes (default 32, AES-256).
    pub data_key_len: usize,
    /// Longest wait for one KMS call before it counts as failed (default 2 s).
    pub kms_timeout: Duration,
    /// Longest wait for one store call (default 2 s).
    pub store_timeout: Duration,
    /// Longest a whole `get_or_create` may take (default 10 s).
    pub request_deadline: Duration,
    /// Copies a new record needs before it is stored (default 2, or 1 with a single region);
    /// the rest are added later by repair.
    pub min_regions: usize,
    /// How long a create that already has its quorum waits for the remaining regions' copies
    /// before storing the record; copies still missing then are added later by repair. `None`
    /// (the default) waits the generating region's hedge delay: as long as a healthy call
    /// takes. Longer leaves fewer records incomplete while a region is slow, at that cost in
    /// create latency.
    pub straggler_wait: Option<Duration>,
    /// Hedged KMS calls.
    pub hedge: HedgeOptions,
    /// Every region's circuit breaker.
    pub breaker: BreakerOptions,
    /// The plaintext key cache.
    pub cache: CacheOptions,
    /// The background repairer.
    pub repair: RepairOptions,
    /// Rotation and deletion.
    pub lifecycle: LifecycleOptions,
    /// The wall clock.
    pub clock: Clock,
    /// Regions taken out of the configuration whose copies repair drops, where a version keeps
    /// `min_regions` current copies in configured regions. Copies of a region neither
    /// configured nor named here are left alone: during a rolling change another server may
    /// still have it configured, and the two would undo each other's work.
    pub removed_regions: Vec<String>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            data_key_len: 32,
            kms_timeout: Duration::from_secs(2),
            store_timeout: Duration::from_secs(2),
            request_deadline: Duration::from_secs(10),
            min_regions: 2,
            straggler_wait: None,
            hedge: HedgeOptions::default(),
            breaker: BreakerOptions::default(),
            cache: CacheOptions::default(),
            repair: RepairOptions::default(),
            lifecycle: LifecycleOptions::default(),
            clock: Clock::system(),
            removed_regions: Vec::new(),
        }
    }
}

impl ServiceOptions {
    /// Checks the options against the number of regions.
    pub(super) fn validate(&self, regions: usize) -> Result<(), BuildError> {
        if !(1..=MAX_DATA_KEY_LEN).contains(&self.data_key_len) {
            return Err(BuildError::DataKeyLength(self.data_key_len));
        }
        if !(1..=regions).contains(&self.min_regions) {
            return Err(BuildError::MinRegions {
                min_regions: self.min_regions,
                regions,
            });
        }
        for (name, value) in [
            ("kms_timeout", self.kms_timeout),
            ("store_timeout", self.store_timeout),
            ("request_deadline", self.request_deadline),
            ("repair.interval", self.repair.interval),
            ("breaker.open_for", self.breaker.open_for),
            ("cache.ttl", self.cache.ttl),
        ] {
            if value.is_zero() {
                return Err(BuildError::MustBePositive(name));
            }
        }
        for (name, value) in [
            (
                "breaker.failure_threshold",
                self.breaker.failure_threshold as usize,
            ),
            ("repair.max_pending", self.repair.max_pending),
            (
                "repair.kms_calls_per_second",
                self.repair.kms_calls_per_second as usize,
            ),
            ("repair.concurrency", self.repair.concurrency),
        ] {
            if value == 0 {
                return Err(BuildError::MustBePositive(name));
            }
        }
        Ok(())
    }

    /// These options with `min_regions` lowered to `regions` when there are fewer, for callers
    /// that use the defaults with a single region.
    pub fn fit_to(mut self, regions: usize) -> Self {
        self.min_regions = self.min_regions.min(regions.max(1));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hedge_delay_follows_latency_within_bounds() {
        let hedge = HedgeOptions::default();
        assert_eq!(hedge.delay(None), Duration::from_millis(250));
        assert_eq!(
            hedge.delay(Some(Duration::from_millis(1))),
            Duration::from_millis(20)
        );
        assert_eq!(
            hedge.delay(Some(Duration::from_millis(30))),
            Duration::from_millis(90)
        );
        assert_eq!(
            hedge.delay(Some(Duration::from_secs(1))),
            Duration::from_millis(250)
        );
        let fixed = HedgeOptions {
            fixed: Some(Duration::from_millis(7)),
            ..hedge
        };
        assert_eq!(
            fixed.delay(Some(Duration::from_secs(1))),
            Duration::from_millis(7)
        );
    }

    #[test]
    fn min_regions_is_validated_against_the_region_count() {
        let options = ServiceOptions::default();
        assert!(options.validate(3).is_ok());
        assert_eq!(
            options.validate(1),
            Err(BuildError::MinRegions {
                min_regions: 2,
                regions: 1
            })
        );
        assert!(options.clone().fit_to(1).validate(1).is_ok());
        let zero = ServiceOptions {
            min_regions: 0,
            ..ServiceOptions::default()
        };
        assert!(zero.validate(3).is_err());
    }
}
