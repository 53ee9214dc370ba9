//! Metric names. The core records through the `metrics` facade; the server exports them as
//! Prometheus text, and an embedding application can install any recorder it likes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::thread::LocalKey;

/// KMS calls, by `region`, `op` (generate, encrypt, decrypt) and `outcome` (ok, refused,
/// unavailable, cancelled).
pub const KMS_CALLS: &str = "rkms_kms_calls_total";
/// Latency of KMS calls that completed, by `region` and `op`, in seconds.
pub const KMS_CALL_SECONDS: &str = "rkms_kms_call_seconds";
/// Breaker state by `region`: 0 closed, 1 half-open, 2 open.
pub const REGION_BREAKER_STATE: &str = "rkms_region_breaker_state";
/// Cache lookups by `result`: hit, miss, coalesced (waited for another caller's fetch), stale
/// (served past its TTL because no region or the store could serve).
pub const CACHE_REQUESTS: &str = "rkms_cache_requests_total";
/// Background refreshes of cached keys asked for in the last tenth of their TTL.
pub const CACHE_REFRESHES: &str = "rkms_cache_refreshes_total";
/// Records whose copies every answering region refused (tampering, a foreign master key,
/// damaged ciphertext): integrity failures, never retried as outages.
pub const INTEGRITY_FAILURES: &str = "rkms_integrity_failures_total";
/// Store calls by `op` and `outcome` (ok, error, timeout).
pub const STORE_CALLS: &str = "rkms_store_calls_total";
/// Latency of store calls, by `op`, in seconds.
pub const STORE_CALL_SECONDS: &str = "rkms_store_call_seconds";
/// Stored ids that fail the id rules, skipped by a listing, by `store`: counted every time a
/// listing passes one, so a rate above zero means such ids are still there.
pub const STORE_UNDECODABLE_IDS: &str = "rkms_store_undecodable_ids_total";
/// Repairs by `outcome`: repaired (copies added), pending (a region still missing), lost_race
/// (another writer changed the record; retried).
pub const REPAIRS: &str = "rkms_repairs_total";
/// Ids this process knows to lack copies, waiting for the repairer.
pub const REPAIRS_PENDING: &str = "rkms_repairs_pending";
/// Pending repairs dropped because the pending set was full (the oldest go first; the sweep
/// finds them again).
pub const REPAIRS_DROPPED: &str = "rkms_repairs_dropped_total";
/// Keys created with fewer copies than regions (quorum creates).
pub const QUORUM_CREATES: &str = "rkms_quorum_creates_total";
/// Lifecycle changes written to the store, by `change`: rotate, schedule_deletion, restore,
/// complete_deletion.
pub const LIFECYCLE_CHANGES: &str = "rkms_lifecycle_changes_total";
/// Copies wrapped again under their region's current master key (its `key_ids` changed),
/// each replacing a copy under the old key.
pub const REWRAPS: &str = "rkms_rewraps_total";
/// Copies added to records by repair, by `region`: a region missed by a quorum create, or a
/// region added to the configuration.
pub const COPIES_ADDED: &str = "rkms_copies_added_total";
/// Copies dropped from records because their region is no longer configured (only where
/// `min_regions` current copies remain in configured regions).
pub const COPIES_DROPPED: &str = "rkms_copies_dropped_total";

/// Exports the series that alerts and dashboards watch before anything has happened: each
/// region's breaker (closed), the repair backlog, and the counters of rare events at zero, so
/// that the first event is an increase and no series is missing. Values already recorded (a
/// service built again by a reload) are kept.
pub fn export_from_start<'a>(regions: impl Iterator<Item = &'a str>) {
    for region in regions {
        metrics::gauge!(REGION_BREAKER_STATE, "region" => region.to_owned()).increment(0.0);
    }
    metrics::gauge!(REPAIRS_PENDING).increment(0.0);
    metrics::counter!(REPAIRS_DROPPED).increment(0);
    metrics::counter!(INTEGRITY_FAILURES).increment(0);
    for outcome in ["pending", "repaired", "lost_race"] {
        metrics::counter!(REPAIRS, "outcome" => outcome).increment(0);
    }
    for result in ["hit", "miss", "coalesced", "stale"] {
        metrics::counter!(CACHE_REQUESTS, "result" => result).increment(0);
    }
}

/// Records `region`'s breaker state in [`REGION_BREAKER_STATE`]: after each call of the
/// region, and by the server's readiness check once a second, so that the gauge also follows
/// the breaker's timer (open turning half-open) while no call goes to the region.
pub fn record_breaker_state(region: &str, state: crate::BreakerState) {
    let value = match state {
        crate::BreakerState::Closed => 0.0,
        crate::BreakerState::HalfOpen => 1.0,
        crate::BreakerState::Open => 2.0,
    };
    metrics::gauge!(REGION_BREAKER_STATE, "region" => region.to_owned()).set(value);
}

/// Handles of labelled series, kept per thread by [`with_series`].
pub type SeriesCache<K, H> = RefCell<HashMap<K, H>>;

/// Runs `record` on the handle of the series `labels` names, registered by `register` the
/// first time this thread meets them. For the series every request records: registering one
/// (building its key, hashing it, finding it in the recorder's registry) costs several times
/// the update itself, and a thread's own cache is read without a lock or a shared counter.
/// `labels` must come from a small fixed set (each is kept for the thread's life), and the
/// recorder must be installed before the first request, as the server does at start.
pub fn with_series<K, H>(
    cache: &'static LocalKey<SeriesCache<K, H>>,
    labels: K,
    register: impl FnOnce() -> H,
    record: impl FnOnce(&H),
) where
    K: Eq + Hash + 'static,
    H: 'static,
{
    cache.with_borrow_mut(|handles| record(handles.entry(labels).or_insert_with(register)));
}
