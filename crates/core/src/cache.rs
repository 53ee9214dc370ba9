//! `KeyCache`: plaintext data keys kept briefly in memory. The whole cache policy lives here,
//! behind one call, [`KeyCache::get`]:
//!
//! - **Fresh** (younger than `ttl`): served from memory after one lookup. A key asked for in the
//!   last tenth of its TTL is also refreshed once in the background, so that a hot key never
//!   expires under load and no request pays its miss.
//! - **Missing or expired**: fetched. Concurrent callers for one id share one fetch, which runs
//!   as a task of its own, so a caller that gives up does not cancel it for the others.
//! - **Stale** (past `ttl`, within `ttl + stale_grace`): served, marked stale, only when the
//!   fetch failed because the regions or the store are unavailable; never after a refusal.
//!
//! A fetched key that differs from the key cached for its id and version, or is of an older
//! version than the cached one, is refused (a version's key never changes and versions only
//! grow: the record was replaced) and the cached one kept. A newer version replaces the entry:
//! the id was rotated.
//!
//! A lifecycle change made through this process ([`KeyCache::forget`]) drops the id's entry at
//! once, and no fetch that started before it fills the cache; other processes see the change
//! when their entry expires.
//!
//! Entries leave memory by the size bound, or at `ttl + stale_grace` (at least two TTLs, for
//! that comparison), found by a sweep every tenth of that age; a dropped entry's `DataKey`
//! wipes its bytes. Ages are measured on the real clock (`std::time::Instant`), so that the
//! policy holds in production and not only under a test's paused clock.
//!
//! The entries live in a `quick_cache` table (S3-FIFO eviction): the server's resident memory
//! grows by some 240-270 bytes a cached key in all (id, key, region name, table slot), where
//! moka's deques, timestamps and separate allocations took some 650 more (BENCHMARKS.md,
//! "Memory per cached key").

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt as _, Shared};

use crate::{DataKey, KeyId, ServiceError};

/// Settings of the plaintext key cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheOptions {
    /// Whether keys are cached at all (default true).
    pub enabled: bool,
    /// How long a cached key is served without asking KMS again (default 300 s).
    pub ttl: Duration,
    /// Most keys held at once (default 100 000).
    pub max_entries: u64,
    /// Opt-in: how long past `ttl` a cached key may still be served while no region or the
    /// store cannot serve it (default `None`, off).
    pub stale_grace: Option<Duration>,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: Duration::from_secs(300),
            max_entries: 100_000,
            stale_grace: None,
        }
    }
}

/// Which fetch a miss runs: readers never create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Fetch {
    /// Read the record, or create it when there is none.
    GetOrCreate,
    /// Read the record; `None` when there is none.
    Existing,
}

/// A cached key with where and when it came from.
#[derive(Debug)]
pub(crate) struct CachedKey {
    pub(crate) key: DataKey,
    /// The key's version, the id's current one when it was read.
    pub(crate) version: u32,
    pub(crate) region: String,
    /// Whether the call that filled the entry created the record.
    pub(crate) created: bool,
    fetched: Instant,
    /// Set by the first lookup that starts this entry's refresh-ahead.
    refresh_started: AtomicBool,
}

impl CachedKey {
    pub(crate) fn new(key: DataKey, version: u32, region: String, created: bool) -> Self {
        Self {
            key,
            version,
            region,
            created,
            fetched: Instant::now(),
            refresh_started: AtomicBool::new(false),
        }
    }
}

/// What a fetch yields: the key, or `None` when an [`Fetch::Existing`] fetch found no record.
type Fetched = Result<Option<Arc<CachedKey>>, Arc<ServiceError>>;

/// A fetch that concurrent callers await together.
type SharedFetch = Shared<BoxFuture<'static, Fetched>>;

/// The fetches under way, by id and mode, with the [`KeyCache::forget`] count they started at.
type InFlightMap = HashMap<(KeyId, Fetch), (u64, SharedFetch)>;

/// What [`KeyCache::get`] found.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// A fresh entry.
    Hit(Arc<CachedKey>),
    /// Fetched now; `coalesced` when this caller waited on another's fetch.
    Fetched {
        entry: Arc<CachedKey>,
        coalesced: bool,
    },
    /// An [`Fetch::Existing`] fetch found no record.
    Absent,
    /// The fetch failed with this unavailability; the expired entry is within the grace.
    Stale(Arc<CachedKey>, Arc<ServiceError>),
}

/// The cached keys by id.
type Entries = quick_cache::sync::Cache<KeyId, Arc<CachedKey>>;

/// The cache. See the module documentation.
pub(crate) struct KeyCache {
    entries: Arc<Entries>,
    /// Age at which the sweep drops an entry.
    keep_for: Duration,
    /// Started with the first lookup.
    sweeping: Once,
    in_flight: Arc<Mutex<InFlightMap>>,
    /// Counts [`KeyCache::forget`] calls (and refusals that forget): a fetch that started
    /// before one neither fills the cache nor is joined by later callers, as it may have read
    /// the record before the change.
    forgotten: Arc<AtomicU64>,
    options: CacheOptions,
    /// Age from which a lookup starts a refresh-ahead.
    refresh_after: Duration,
    /// Age up to which an entry may be served stale.
    stale_until: Duration,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("entries", &self.entries.len())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    /// A cache as `options` say, or `None` when caching is off. Its first lookup starts the
    /// sweep that drops entries past their age (a lookup runs in a Tokio runtime; building the
    /// cache need not), which ends with the cache.
    pub(crate) fn new(options: CacheOptions) -> Option<Self> {
        if !options.enabled {
            return None;
        }
        let stale_until = options.ttl + options.stale_grace.unwrap_or_default();
        let capacity = usize::try_from(options.max_entries).unwrap_or(usize::MAX);
        let entries = Arc::new(Entries::new(capacity));
        // An expired entry stays for at least one more TTL, so that the next fetch can compare
        // its key with the one read (see `settle`).
        let keep_for = stale_until.max(options.ttl * 2);
        Some(Self {
            entries,
            keep_for,
            sweeping: Once::new(),
            in_flight: Arc::default(),
            forgotten: Arc::default(),
            options,
            refresh_after: options.ttl.mul_f64(0.9),
            stale_until,
        })
    }

    /// The key for `id`: fresh from memory, or fetched by `fetch(mode)` (shared with concurrent
    /// callers), or stale within the grace when that fetch finds the dependencies unavailable.
    /// `fetch` is called only on a miss or to refresh ahead (with [`Fetch::Existing`]).
    pub(crate) async fn get<F>(
        &self,
        id: &KeyId,
        mode: Fetch,
        fetch: impl FnOnce(Fetch) -> F,
    ) -> Result<Lookup, Arc<ServiceError>>
    where
        F: Future<Output = Result<Option<Arc<CachedKey>>, ServiceError>> + Send + 'static,
    {
        self.sweeping.call_once(|| {
            tokio::spawn(sweep(Arc::downgrade(&self.entries), self.keep_for));
        });
        let cached = self.entries.get(id);
        if let Some(entry) = cached {
            let age = entry.fetched.elapsed();
            if age < self.options.ttl {
                if age >= self.refresh_after && !entry.refresh_started.swap(true, Ordering::Relaxed)
                {
                    metrics::counter!(crate::telemetry::CACHE_REFRESHES).increment(1);
                    // The fetch runs as a task of its own; nobody waits for it.
                    drop(self.join_or_start(id, Fetch::Existing, fetch));
                }
                return Ok(Lookup::Hit(entry));
            }
            return self.fetch(id, mode, fetch, Some(entry)).await;
        }
        self.fetch(id, mode, fetch, None).await
    }

    async fn fetch<F>(
        &self,
        id: &KeyId,
        mode: Fetch,
        fetch: impl FnOnce(Fetch) -> F,
        expired: Option<Arc<CachedKey>>,
    ) -> Result<Lookup, Arc<ServiceError>>
    where
        F: Future<Output = Result<Option<Arc<CachedKey>>, ServiceError>> + Send + 'static,
    {
        let (shared, started) = self.join_or_start(id, mode, fetch);
        match shared.await {
            Ok(Some(entry)) => Ok(Lookup::Fetched {
                entry,
                coalesced: !started,
            }),
            Ok(None) => Ok(Lookup::Absent),
            Err(error) => match expired {
                Some(entry)
                    if error.is_unavailable() && entry.fetched.elapsed() < self.stale_until =>
                {
                    Ok(Lookup::Stale(entry, error))
                }
                _ => Err(error),
            },
        }
    }

    /// Joins the fetch of `(id, mode)` under way, or starts one as a task that fills the cache
    /// and then leaves the in-flight map. Returns the fetch and whether this call started it.
    fn join_or_start<F>(
        &self,
        id: &KeyId,
        mode: Fetch,
        fetch: impl FnOnce(Fetch) -> F,
    ) -> (SharedFetch, bool)
    where
        F: Future<Output = Result<Option<Arc<CachedKey>>, ServiceError>> + Send + 'static,
    {
        let key = (id.clone(), mode);
        let mut in_flight = lock(&self.in_flight);
        let started_at = self.forgotten.load(Ordering::SeqCst);
        // A fetch that started before a change may have read the record before it: later
        // callers start their own.
        if let Some((_, running)) = in_flight
            .get(&key)
            .filter(|(epoch, _)| *epoch == started_at)
        {
            return (running.clone(), false);
        }
        let entries = Arc::clone(&self.entries);
        let forgotten = Arc::clone(&self.forgotten);
        let leave = LeaveOnDrop {
            map: Arc::clone(&self.in_flight),
            key: key.clone(),
            epoch: started_at,
        };
        let future = fetch(mode);
        // The map's lock is held until the fetch is in it, so the task cannot leave it first.
        let task = tokio::spawn(async move {
            let result = future.await;
            let result = settle(&entries, &leave.key.0, result, &forgotten, started_at).await;
            drop(leave);
            result
        });
        let shared = async move {
            match task.await {
                Ok(result) => result,
                Err(failed) => match failed.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    // Tasks are cancelled only when the runtime shuts down.
                    Err(_) => Err(Arc::new(ServiceError::DeadlineExceeded(Duration::ZERO))),
                },
            }
        }
        .boxed()
        .shared();
        in_flight.insert(key, (started_at, shared.clone()));
        (shared, true)
    }

    /// Drops the entry for `id` after its record changed, and keeps fetches under way from
    /// putting back what they read before.
    pub(crate) async fn forget(&self, id: &KeyId) {
        self.forgotten.fetch_add(1, Ordering::SeqCst);
        self.entries.remove(id);
    }

    /// Drops the entry for `id` unless it holds `version`, the id's current one.
    pub(crate) async fn keep_only_version(&self, id: &KeyId, version: u32) {
        if self
            .entries
            .peek(id)
            .is_some_and(|entry| entry.version != version)
        {
            self.forget(id).await;
        }
    }
}

/// Takes a fetch's result into the cache. A key read is cached, unless a
/// [`KeyCache::forget`] came since the fetch started (`started_at`; checked again after the
/// insert, which a forget may overtake), or the key differs from the key cached for the id
/// and version, or is of an older version: a version's key never changes and versions only
/// grow, so the record was replaced (by whoever can write the store), and the key read is
/// refused as an integrity failure, the cached key kept. A failure that is not an outage (an
/// integrity failure, an unreadable record, an id pending deletion or deleted) forgets the id
/// as a change does, so that neither a later outage nor a fetch that read the record before
/// can answer with its key.
async fn settle(
    entries: &Entries,
    id: &KeyId,
    result: Result<Option<Arc<CachedKey>>, ServiceError>,
    forgotten: &AtomicU64,
    started_at: u64,
) -> Fetched {
    let current = || forgotten.load(Ordering::SeqCst) == started_at;
    match result {
        Ok(Some(entry)) => {
            if entries.peek(id).is_some_and(|old| {
                entry.version < old.version
                    || (entry.version == old.version && old.key != entry.key)
            }) {
                tracing::error!(%id, "the key read for this id differs from the key it had: its record was replaced");
                metrics::counter!(crate::telemetry::INTEGRITY_FAILURES).increment(1);
                return Err(Arc::new(ServiceError::KeyChanged { id: id.clone() }));
            }
            if current() {
                entries.insert(id.clone(), Arc::clone(&entry));
                if !current() {
                    entries.remove(id);
                }
            }
            Ok(Some(entry))
        }
        Ok(None) => Ok(None),
        Err(error) => {
            if !error.is_unavailable() {
                forgotten.fetch_add(1, Ordering::SeqCst);
                entries.remove(id);
            }
            Err(Arc::new(error))
        }
    }
}

/// Drops the entries older than `keep_for`, every tenth of it, until the cache is gone: a key
/// leaves memory at its age even when its id is never asked for again.
async fn sweep(entries: Weak<Entries>, keep_for: Duration) {
    let mut ticks = tokio::time::interval((keep_for / 10).max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(entries) = entries.upgrade() else {
            return;
        };
        // A pass over 100,000 entries takes each shard's lock in turn for some milliseconds:
        // off the async workers.
        let swept = tokio::task::spawn_blocking(move || {
            entries.retain(|_, entry| entry.fetched.elapsed() < keep_for);
        });
        if swept.await.is_err() {
            return;
        }
    }
}

/// Removes a fetch from the in-flight map when its task ends, however it ends (a panicking
/// store included), so that no id is left joined to a fetch that is gone.
struct LeaveOnDrop {
    map: Arc<Mutex<InFlightMap>>,
    key: (KeyId, Fetch),
    /// The forget count the fetch started at: a later fetch of the same id and mode may have
    /// taken its place in the map, and stays.
    epoch: u64,
}

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        let mut map = lock(&self.map);
        if map
            .get(&self.key)
            .is_some_and(|(epoch, _)| *epoch == self.epoch)
        {
            map.remove(&self.key);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every change under this lock is a single insert or remove.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn id(s: &str) -> KeyId {
        KeyId::parse(s).unwrap()
    }

    fn entry(byte: u8) -> Arc<CachedKey> {
        Arc::new(CachedKey::new(
            DataKey::new(vec![byte; 32]),
            1,
            "r1".into(),
            false,
        ))
    }

    fn fill(
        byte: u8,
    ) -> impl FnOnce(Fetch) -> BoxFuture<'static, Result<Option<Arc<CachedKey>>, ServiceError>>
    {
        move |_| async move { Ok(Some(entry(byte))) }.boxed()
    }

    /// Caches `entry(byte)` for `name`; returns a watch on it, empty once the cache let it go.
    async fn cached_and_watched(cache: &KeyCache, name: &str, byte: u8) -> Weak<CachedKey> {
        let cached = entry(byte);
        let watch = Arc::downgrade(&cached);
        cache
            .get(&id(name), Fetch::GetOrCreate, move |_| async move {
                Ok(Some(cached))
            })
            .await
            .unwrap();
        watch
    }

    #[tokio::test]
    async fn evicted_keys_are_dropped_and_so_zeroized() {
        let cache = KeyCache::new(CacheOptions {
            max_entries: 1,
            ..CacheOptions::default()
        })
        .unwrap();
        let watch = cached_and_watched(&cache, "a", 7).await;
        for (i, name) in ["b", "c", "d"].iter().enumerate() {
            let byte = u8::try_from(i).unwrap();
            cache
                .get(&id(name), Fetch::GetOrCreate, fill(byte))
                .await
                .unwrap();
        }
        // The last reference is gone: `DataKey` (zeroize's `Zeroizing`) wiped the bytes on drop.
        assert!(
            watch.upgrade().is_none(),
            "the evicted key is no longer held anywhere"
        );
    }

    #[tokio::test]
    async fn keys_past_their_age_leave_memory_unasked() {
        let cache = KeyCache::new(CacheOptions {
            ttl: Duration::from_millis(250),
            ..CacheOptions::default()
        })
        .unwrap();
        let watch = cached_and_watched(&cache, "a", 5).await;
        // Kept past the TTL, for the comparison with the next fetch (two TTLs here).
        tokio::time::sleep(Duration::from_millis(260)).await;
        assert!(watch.upgrade().is_some(), "gone before its age");
        let started = Instant::now();
        while watch.upgrade().is_some() && started.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            watch.upgrade().is_none(),
            "a key nobody asked for again is still held 5 s after its age"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_misses_share_one_fetch() {
        let cache = Arc::new(KeyCache::new(CacheOptions::default()).unwrap());
        let fetches = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (cache, fetches) = (Arc::clone(&cache), Arc::clone(&fetches));
                tokio::spawn(async move {
                    let lookup = cache
                        .get(&id("a"), Fetch::GetOrCreate, |_| async move {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok(Some(entry(9)))
                        })
                        .await
                        .unwrap();
                    match lookup {
                        Lookup::Fetched { entry, coalesced } => {
                            (entry.key.expose_secret()[0], coalesced)
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                })
            })
            .collect();
        let mut waited = 0;
        for task in tasks {
            let (byte, coalesced) = task.await.unwrap();
            assert_eq!(byte, 9);
            waited += usize::from(coalesced);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(waited, 31);
    }

    #[tokio::test]
    async fn a_fetch_outlives_the_caller_that_gave_up() {
        let cache = KeyCache::new(CacheOptions::default()).unwrap();
        let gave_up = tokio::time::timeout(
            Duration::from_millis(10),
            cache.get(&id("a"), Fetch::GetOrCreate, |_| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(Some(entry(3)))
            }),
        )
        .await;
        assert!(gave_up.is_err());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let lookup = cache
            .get(&id("a"), Fetch::GetOrCreate, fill(4))
            .await
            .unwrap();
        assert!(
            matches!(&lookup, Lookup::Hit(e) if e.key.expose_secret()[0] == 3),
            "the first fetch filled the cache: {lookup:?}"
        );
    }
}
