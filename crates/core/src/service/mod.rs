//! `KeyService`: the get-or-create protocol over one store and several KMS regions.
//!
//! `mod.rs` holds the types and the top of the protocol (cache, then store, then create);
//! `calls.rs` times and records every KMS and store call; `hedged.rs` asks regions in turn
//! until one succeeds; `read.rs` unwraps a record with a hedged decrypt; `create.rs` makes a
//! new record with a quorum of copies; `lifecycle.rs` rotates, schedules, restores and
//! completes deletions, describes and lists ids; `repair.rs` adds the copies a record still
//! lacks (and rewraps, and drops a removed region's); `report.rs` counts how far that has got.

mod calls;
mod create;
mod hedged;
mod lifecycle;
mod options;
mod pending;
mod read;
mod repair;
mod report;

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::warn;

use crate::cache::{CachedKey, Fetch, KeyCache, Lookup};
use crate::health::{BreakerState, RegionHealth};
use crate::kms::{Kms, KmsError};
use crate::record::{KeyState, Record};
use crate::store::{Store, StoreError, Stored};
use crate::telemetry;
use crate::{DataKey, KeyId};

pub use lifecycle::{KeyInfo, KeyListing, ListedKey, VersionInfo};
pub use options::{Clock, HedgeOptions, LifecycleOptions, RepairOptions, ServiceOptions};
pub use repair::{RepairOutcome, RepairSweep, SweepSchedule};
pub use report::{CopiesReport, RegionCopies};

/// Largest data key a service hands out, in bytes (AWS KMS's `NumberOfBytes` limit).
pub const MAX_DATA_KEY_LEN: usize = 1024;

/// A data key handed out by [`KeyService::get_or_create`], with how it was obtained.
#[derive(Debug)]
pub struct IssuedKey {
    /// The plaintext data key.
    pub key: DataKey,
    /// Its version: 1 for the key made on first use, one more for each rotation.
    pub version: u32,
    /// The region that generated (on create) or unwrapped (on read) the key.
    pub region: String,
    /// True when this call created the record.
    pub created: bool,
    /// True when the key came from the in-memory cache (or from another caller's concurrent
    /// fetch) rather than from a KMS call made for this request.
    pub from_cache: bool,
    /// True when the key was served past its cache TTL because no region or the store could
    /// serve it (within [`crate::CacheOptions::stale_grace`]).
    pub stale: bool,
}

/// What the service was doing when every region failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsAction {
    /// Unwrapping an existing record.
    Decrypt,
    /// Generating a key for a new record.
    Generate,
    /// Wrapping a new key in the other regions.
    Wrap,
}

impl std::fmt::Display for KmsAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Decrypt => "decrypt",
            Self::Generate => "generate",
            Self::Wrap => "wrap",
        })
    }
}

/// Why a key could not be handed out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Not enough regions could do what was needed; nothing was written.
    #[error("no KMS region could {action} the data key for id {id:?}: {}", summarize(.failures))]
    RegionsUnavailable {
        /// The id asked for.
        id: KeyId,
        /// The step that failed.
        action: KmsAction,
        /// Each region's failure, in the order tried.
        failures: Vec<KmsError>,
    },
    /// Every region that answered refused the record's copies (a copy moved from another id,
    /// wrapped under a foreign master key, or damaged): the record fails its integrity check.
    /// Not an outage, so never retried as one and never answered with a stale key.
    #[error("the record for id {id:?} failed its integrity check: {}", summarize(.failures))]
    IntegrityFailure {
        /// The id asked for.
        id: KeyId,
        /// Each region's refusal, in the order tried.
        failures: Vec<KmsError>,
    },
    /// The key read for the id differs from the key this process had for it: keys never
    /// change, so the record was replaced. The key this process had is kept and the other
    /// refused, like an integrity failure.
    #[error("the key read for id {id:?} differs from the key it had: its record was replaced")]
    KeyChanged {
        /// The id asked for.
        id: KeyId,
    },
    /// There is no key for the id (for operations that never create one).
    #[error("no key exists for id {id:?}")]
    NotFound {
        /// The id asked for.
        id: KeyId,
    },
    /// The id exists but has no such version.
    #[error("id {id:?} has no version {version}")]
    VersionNotFound {
        /// The id asked for.
        id: KeyId,
        /// The version asked for.
        version: u32,
    },
    /// The id's deletion is scheduled: no key is handed out until it is restored.
    #[error("the key for id {id:?} is pending deletion at {deletion_time} (seconds since the Unix epoch)")]
    PendingDeletion {
        /// The id asked for.
        id: KeyId,
        /// When its deletion window ends, seconds since the Unix epoch.
        deletion_time: u64,
    },
    /// The id was deleted: its copies are destroyed (or are about to be), and it is never
    /// created again.
    #[error("the key for id {id:?} was deleted at {deleted_at} (seconds since the Unix epoch)")]
    Deleted {
        /// The id asked for.
        id: KeyId,
        /// When it was deleted, seconds since the Unix epoch.
        deleted_at: u64,
    },
    /// The change asked for conflicts with the id's record: another rotation won a race, or
    /// the id has [`crate::MAX_VERSIONS`] versions. Retrying may help in the first case.
    #[error("cannot change the key for id {id:?}: {reason}")]
    Conflict {
        /// The id asked for.
        id: KeyId,
        /// Why.
        reason: String,
    },
    /// The record has no copy for any configured region.
    #[error("the record for id {id:?} has copies only for regions {in_record:?}, none of which is configured")]
    NoCopyForConfiguredRegions {
        /// The id asked for.
        id: KeyId,
        /// The regions that hold a copy.
        in_record: Vec<String>,
    },
    /// The stored bytes are not a readable record.
    #[error("the record for id {id:?} is unreadable: {reason}")]
    CorruptRecord {
        /// The id asked for.
        id: KeyId,
        /// What is wrong.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store did not answer in time.
    #[error("the store did not answer within {0:?}")]
    StoreTimeout(Duration),
    /// The whole request took longer than its deadline.
    #[error("the request exceeded its deadline of {0:?}")]
    DeadlineExceeded(Duration),
    /// Another caller's concurrent fetch of the same id failed; this is its error.
    #[error(transparent)]
    Coalesced(Arc<ServiceError>),
}

impl ServiceError {
    /// The underlying error, looking through [`ServiceError::Coalesced`].
    pub fn root(&self) -> &ServiceError {
        match self {
            Self::Coalesced(inner) => inner.root(),
            other => other,
        }
    }

    /// True when the failure is a dependency being down or slow (an HTTP 503), not a fault.
    pub fn is_unavailable(&self) -> bool {
        match self.root() {
            Self::RegionsUnavailable { .. } | Self::StoreTimeout(_) | Self::DeadlineExceeded(_) => {
                true
            }
            Self::Store(e) => e.is_retryable(),
            _ => false,
        }
    }
}

fn summarize(failures: &[KmsError]) -> String {
    if failures.is_empty() {
        return "no region was tried".to_owned();
    }
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a [`KeyServiceBuilder`] refused its settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No region was added.
    #[error("at least one KMS region is required")]
    NoRegions,
    /// Two regions share a name.
    #[error("KMS region {0:?} is configured twice")]
    DuplicateRegion(String),
    /// A region is both configured and named in `removed_regions`.
    #[error("KMS region {0:?} is configured and also named as removed")]
    RemovedRegionConfigured(String),
    /// The data key length is out of range.
    #[error("data key length {0} is out of range 1..={MAX_DATA_KEY_LEN}")]
    DataKeyLength(usize),
    /// A timeout, interval or threshold is zero.
    #[error("{0} must be greater than zero")]
    MustBePositive(&'static str),
    /// The create quorum does not fit the regions.
    #[error("min_regions is {min_regions} but {regions} region(s) are configured; it must be between 1 and the region count")]
    MinRegions {
        /// The quorum asked for.
        min_regions: usize,
        /// The regions configured.
        regions: usize,
    },
}

/// Builds a [`KeyService`].
#[derive(Debug)]
pub struct KeyServiceBuilder {
    store: Arc<dyn Store>,
    regions: Vec<Arc<dyn Kms>>,
    options: ServiceOptions,
    predecessor: Option<KeyService>,
}

impl KeyServiceBuilder {
    /// Adds a region; regions are preferred in the order added.
    pub fn region(mut self, kms: Arc<dyn Kms>) -> Self {
        self.regions.push(kms);
        self
    }

    /// Replaces the options.
    pub fn options(mut self, options: ServiceOptions) -> Self {
        self.options = options;
        self
    }

    /// Builds the service as the successor of `previous`, over the same store, for a
    /// configuration reloaded while serving: it keeps what `previous` learnt that the new
    /// settings do not change. The cache is shared while `[cache]` is unchanged (no burst of
    /// KMS calls at a reload); a region keeps its breaker and latency while its name and the
    /// breaker settings are unchanged; the ids known to lack copies and the deletions to
    /// complete carry over, due at once. Requests in flight finish on `previous`.
    pub fn succeeding(mut self, previous: &KeyService) -> Self {
        self.predecessor = Some(previous.clone());
        self
    }

    /// Checks the settings and builds the service.
    pub fn build(self) -> Result<KeyService, BuildError> {
        if self.regions.is_empty() {
            return Err(BuildError::NoRegions);
        }
        for (i, kms) in self.regions.iter().enumerate() {
            if self.regions[..i]
                .iter()
                .any(|other| other.region() == kms.region())
            {
                return Err(BuildError::DuplicateRegion(kms.region().to_owned()));
            }
        }
        self.options.validate(self.regions.len())?;
        if let Some(kms) = self.regions.iter().find(|kms| {
            self.options
                .removed_regions
                .iter()
                .any(|r| r == kms.region())
        }) {
            return Err(BuildError::RemovedRegionConfigured(kms.region().to_owned()));
        }
        telemetry::export_from_start(self.regions.iter().map(|kms| kms.region()));
        let options = self.options;
        let before = self.predecessor.as_ref().map(|p| &*p.inner);
        let regions = self
            .regions
            .into_iter()
            .map(|kms| {
                let kept = before
                    .filter(|b| b.options.breaker == options.breaker)
                    .and_then(|b| b.regions.iter().find(|r| r.name() == kms.region()));
                Region {
                    health: kept.map_or_else(
                        || Arc::new(RegionHealth::new(options.breaker)),
                        |r| Arc::clone(&r.health),
                    ),
                    kms,
                }
            })
            .collect();
        let cache = match before {
            Some(b) if b.options.cache == options.cache => b.cache.clone(),
            _ => KeyCache::new(options.cache).map(Arc::new),
        };
        let mut pending = pending::PendingRepairs::new(options.repair.max_pending);
        let mut deletions = std::collections::BTreeMap::new();
        if let Some(b) = before {
            let carried = b.pending.lock().unwrap_or_else(|e| e.into_inner()).ids();
            for id in &carried {
                pending.insert(id);
            }
            deletions.clone_from(&b.deletions.lock().unwrap_or_else(|e| e.into_inner()));
        }
        Ok(KeyService {
            inner: Arc::new(Inner {
                store: self.store,
                regions,
                cache,
                deletions: Mutex::new(deletions),
                repairing: Mutex::default(),
                pending: Mutex::new(pending),
                repair_budget: repair::Budget::new(options.repair.kms_calls_per_second),
                recoveries_seen: AtomicU64::new(0),
                options,
            }),
        })
    }
}

/// One configured region and what the service has seen of it.
#[derive(Debug)]
struct Region {
    kms: Arc<dyn Kms>,
    /// Shared with the predecessor's region of the same name across a reload.
    health: Arc<RegionHealth>,
}

impl Region {
    fn name(&self) -> &str {
        self.kms.region()
    }
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    regions: Vec<Region>,
    /// Shared with the predecessor across a reload that leaves `[cache]` as it was.
    cache: Option<Arc<KeyCache>>,
    /// Ids with a repair under way in this process, so that no second one starts.
    repairing: Mutex<HashSet<KeyId>>,
    /// Deletions this process scheduled, by id, with the time their window ends: the
    /// repairer completes them then (sweeps complete everybody's).
    deletions: Mutex<std::collections::BTreeMap<KeyId, u64>>,
    /// Ids this process knows to lack copies, retried by the repairer.
    pending: Mutex<pending::PendingRepairs>,
    /// Paces repair's KMS calls, so that repair never takes KMS capacity from serving.
    repair_budget: repair::Budget,
    /// The regions' recoveries the repairer last saw; a change makes every pending id due.
    recoveries_seen: AtomicU64,
    options: ServiceOptions,
}

/// One region's state, for readiness and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionStatus {
    /// The region's name.
    pub name: String,
    /// The master key it wraps new copies under.
    pub master_key: String,
    /// Its circuit breaker.
    pub breaker: BreakerState,
    /// The average latency of its successful calls, once there has been one.
    pub latency: Option<Duration>,
    /// Since when the region has been failing: set when its breaker opens, cleared by its
    /// next successful call.
    pub unhealthy_since: Option<std::time::SystemTime>,
}

/// Hands out data keys: reads and unwraps existing records, creates missing ones, repairs
/// records that lack a region's copy.
///
/// Cheap to clone (the state is shared); holds no per-id state beyond its cache, so any number
/// of services in any number of processes can share one store. See the crate documentation.
#[derive(Debug, Clone)]
pub struct KeyService {
    inner: Arc<Inner>,
}

impl KeyService {
    /// Starts building a service over `store`.
    pub fn builder(store: Arc<dyn Store>) -> KeyServiceBuilder {
        KeyServiceBuilder {
            store,
            regions: Vec::new(),
            options: ServiceOptions::default(),
            predecessor: None,
        }
    }

    /// Seconds since the Unix epoch, on the service's clock.
    pub(super) fn now(&self) -> u64 {
        self.inner.options.clock.now()
    }

    /// The options in force.
    pub fn options(&self) -> &ServiceOptions {
        &self.inner.options
    }

    /// Every configured region's breaker state and latency, in configured order.
    pub fn region_status(&self) -> Vec<RegionStatus> {
        self.inner
            .regions
            .iter()
            .map(|r| RegionStatus {
                name: r.name().to_owned(),
                master_key: r.kms.master_key().to_owned(),
                breaker: r.health.state(),
                latency: r.health.latency(),
                unhealthy_since: r.health.unhealthy_since(),
            })
            .collect()
    }

    /// Checks that the store answers a read within the store timeout.
    pub async fn check_store(&self) -> Result<(), ServiceError> {
        let probe = KeyId::parse("rkms-readiness-probe").expect("a valid id");
        self.store_call("get", self.inner.store.get(&probe))
            .await
            .map(drop)
    }

    /// Returns the data key for `id`, creating it on first use. See the crate documentation.
    pub async fn get_or_create(&self, id: &KeyId) -> Result<IssuedKey, ServiceError> {
        let issued = self.get(id, Fetch::GetOrCreate).await?;
        Ok(issued.expect("a get-or-create fetch always yields a key"))
    }

    /// Returns the data key for `id` if its record exists, and never creates one: for callers
    /// allowed to read keys but not to make them. `Ok(None)` means no record exists.
    ///
    /// A miss runs a read-only fetch, never joined with a creating one, so that no path from
    /// here can reach [`Store::put_if_absent`], even when the record vanishes mid-call.
    pub async fn get_existing(&self, id: &KeyId) -> Result<Option<IssuedKey>, ServiceError> {
        self.get(id, Fetch::Existing).await
    }

    async fn within_deadline<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ServiceError> {
        let deadline = self.inner.options.request_deadline;
        tokio::time::timeout(deadline, call)
            .await
            .map_err(|_| ServiceError::DeadlineExceeded(deadline))?
    }

    /// The key for `id` through the cache (see `cache.rs` for its policy), or fetched directly
    /// when caching is off. Either way the fetch runs under the request deadline; a cached
    /// fetch carries it itself, so that running out of it still lets a stale key answer.
    async fn get(&self, id: &KeyId, mode: Fetch) -> Result<Option<IssuedKey>, ServiceError> {
        // The store and KMS calls behind a miss make a future of kilobytes; boxed, they leave
        // the cache hit's future small, which every await moves.
        let Some(cache) = &self.inner.cache else {
            let fetched = Box::pin(self.within_deadline(self.fetch(id, mode))).await?;
            return Ok(fetched.map(|entry| issued(&entry, false, false)));
        };
        if self.inner.options.lifecycle.check_state_on_hit {
            Box::pin(self.check_cached_state(cache, id)).await?;
        }
        let lookup = cache
            .get(id, mode, |mode| {
                let (service, id) = (self.clone(), id.clone());
                async move {
                    let fetched = service.within_deadline(service.fetch(&id, mode)).await?;
                    Ok(fetched.map(Arc::new))
                }
            })
            .await
            .map_err(ServiceError::Coalesced)?;
        let (result, issued) = match lookup {
            Lookup::Hit(entry) => ("hit", Some(issued(&entry, true, false))),
            Lookup::Fetched { entry, coalesced } => (
                if coalesced { "coalesced" } else { "miss" },
                Some(issued(&entry, coalesced, false)),
            ),
            Lookup::Absent => ("miss", None),
            Lookup::Stale(entry, error) => {
                warn!(%id, error = %error, "serving a stale cached key within the grace window: the regions or the store cannot serve");
                ("stale", Some(issued(&entry, true, true)))
            }
        };
        thread_local! {
            static CACHE_SERIES: telemetry::SeriesCache<&'static str, metrics::Counter> =
                RefCell::default();
        }
        telemetry::with_series(
            &CACHE_SERIES,
            result,
            || metrics::counter!(telemetry::CACHE_REQUESTS, "result" => result),
            |counter| counter.increment(1),
        );
        Ok(issued)
    }

    /// `[lifecycle] check_state_on_hit`: one store read before the cache is asked, so that a
    /// deletion or rotation made through any server shows at once. An id that is not active
    /// leaves the cache and is refused; a cached key of another version than the current one
    /// leaves it. When the store cannot answer, the cache answers as it would without the
    /// check.
    async fn check_cached_state(&self, cache: &KeyCache, id: &KeyId) -> Result<(), ServiceError> {
        let read = self
            .within_deadline(self.store_call("get", self.inner.store.get(id)))
            .await;
        let stored = match read {
            Ok(Some(stored)) => stored,
            Ok(None) => return Ok(()),
            Err(e) if e.is_unavailable() => return Ok(()),
            Err(e) => return Err(e),
        };
        let record = decode(id, &stored)?;
        if let Err(refused) = self.check_serving(id, &record) {
            cache.forget(id).await;
            return Err(refused);
        }
        cache.keep_only_version(id, record.current().number).await;
        Ok(())
    }

    /// Drops this process's cached key for `id`, after a change to its record.
    async fn forget_cached(&self, id: &KeyId) {
        if let Some(cache) = &self.inner.cache {
            cache.forget(id).await;
        }
    }

    /// Reads and unwraps the record for `id`, or creates it when `mode` allows; `None` when
    /// there is no record and `mode` is [`Fetch::Existing`].
    async fn fetch(&self, id: &KeyId, mode: Fetch) -> Result<Option<CachedKey>, ServiceError> {
        if let Some(stored) = self.store_call("get", self.inner.store.get(id)).await? {
            let record = decode(id, &stored)?;
            self.check_serving(id, &record)?;
            let current = record.current();
            let (key, region) = self.decrypt_version(id, &record, current).await?;
            if self.needs_repair(&record) {
                self.spawn_repair(id, &record);
            }
            return Ok(Some(CachedKey::new(key, current.number, region, false)));
        }
        match mode {
            Fetch::GetOrCreate => self.create(id).await.map(Some),
            Fetch::Existing => Ok(None),
        }
    }

    /// Version `version` of the key for `id`; never creates. Not cached: a version other than
    /// the current one is asked for rarely, to read data written before a rotation.
    pub async fn get_version(&self, id: &KeyId, version: u32) -> Result<IssuedKey, ServiceError> {
        self.within_deadline(async {
            let record = self.read_existing(id).await?;
            self.check_serving(id, &record)?;
            let wanted = record
                .version(version)
                .ok_or_else(|| ServiceError::VersionNotFound {
                    id: id.clone(),
                    version,
                })?;
            let (key, region) = self.decrypt_version(id, &record, wanted).await?;
            Ok(IssuedKey {
                key,
                version,
                region,
                created: false,
                from_cache: false,
                stale: false,
            })
        })
        .await
    }

    /// Refuses to hand out keys of an id that is not active, and completes in the background
    /// a deletion whose window has ended.
    fn check_serving(&self, id: &KeyId, record: &Record) -> Result<(), ServiceError> {
        match record.state.at(self.now()) {
            KeyState::Active => Ok(()),
            KeyState::PendingDeletion { deletion_time } => Err(ServiceError::PendingDeletion {
                id: id.clone(),
                deletion_time,
            }),
            KeyState::Deleted { deleted_at } => {
                if matches!(record.state, KeyState::PendingDeletion { .. }) {
                    self.spawn_purge(id);
                }
                Err(ServiceError::Deleted {
                    id: id.clone(),
                    deleted_at,
                })
            }
        }
    }
}

fn issued(entry: &CachedKey, from_cache: bool, stale: bool) -> IssuedKey {
    IssuedKey {
        key: entry.key.clone(),
        version: entry.version,
        region: entry.region.clone(),
        created: entry.created && !from_cache,
        from_cache,
        stale,
    }
}

/// Decodes a stored record. Only the store's out-of-band [`Stored::legacy`] marks it as the
/// original Go RKMS's, wrapped without context; such a record must at least name its own id.
fn decode(id: &KeyId, stored: &Stored) -> Result<Record, ServiceError> {
    let corrupt = |reason: String| {
        warn!(%id, error = %reason, "stored record is unreadable");
        ServiceError::CorruptRecord {
            id: id.clone(),
            reason,
        }
    };
    let mut record = Record::decode(&stored.bytes).map_err(|e| corrupt(e.to_string()))?;
    if stored.legacy && record.id != id.as_str() {
        return Err(corrupt("a legacy record names another id".into()));
    }
    record.wrapped_without_context = stored.legacy;
    Ok(record)
}
