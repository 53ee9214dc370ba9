//! `KeyCache`: plaintext data keys kept briefly in memory, with coalesced misses.
//!
//! An entry is fresh for `ttl`. With `stale_grace` set, an entry older than `ttl` but within
//! the grace window may still be served when every region is down (stale-while-unavailable).
//! Entries are dropped by age and by a size bound; a dropped entry's `DataKey` wipes its bytes.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use tokio::time::Instant;

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
    /// Opt-in: how long past `ttl` a cached key may still be served while no region can
    /// decrypt (default `None`, off).
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

/// A cached key with where and when it came from.
#[derive(Debug)]
pub(crate) struct CachedKey {
    pub(crate) key: DataKey,
    pub(crate) region: String,
    /// Whether the call that filled the entry created the record.
    pub(crate) created: bool,
    fetched: Instant,
}

impl CachedKey {
    pub(crate) fn new(key: DataKey, region: String, created: bool) -> Self {
        Self {
            key,
            region,
            created,
            fetched: Instant::now(),
        }
    }
}

/// The cache. See the module documentation.
#[derive(Debug)]
pub(crate) struct KeyCache {
    /// Keys younger than the TTL (older ones are moved out on lookup).
    entries: Cache<KeyId, Arc<CachedKey>>,
    /// With a stale grace: keys past the TTL, kept until the grace ends, to be served only
    /// while no region can serve a fresh one.
    expired: Option<Cache<KeyId, Arc<CachedKey>>>,
    options: CacheOptions,
}

impl KeyCache {
    /// A cache as `options` say, or `None` when caching is off.
    pub(crate) fn new(options: CacheOptions) -> Option<Self> {
        let cache = |ttl| {
            Cache::builder()
                .max_capacity(options.max_entries)
                .time_to_live(ttl)
                .build()
        };
        options.enabled.then(|| Self {
            entries: cache(options.ttl),
            expired: options.stale_grace.map(|grace| cache(options.ttl + grace)),
            options,
        })
    }

    /// A key younger than the TTL, if the cache holds one. An older one is moved to the
    /// expired set (with a stale grace) or dropped.
    pub(crate) async fn fresh(&self, id: &KeyId) -> Option<Arc<CachedKey>> {
        let entry = self.entries.get(id).await?;
        if entry.fetched.elapsed() < self.options.ttl {
            return Some(entry);
        }
        self.entries.invalidate(id).await;
        if let Some(expired) = &self.expired {
            expired.insert(id.clone(), entry).await;
        }
        None
    }

    /// A key past the TTL but within the stale grace, for when no region can serve.
    pub(crate) async fn stale(&self, id: &KeyId) -> Option<Arc<CachedKey>> {
        let (expired, grace) = (self.expired.as_ref()?, self.options.stale_grace?);
        let entry = expired.get(id).await?;
        (entry.fetched.elapsed() < self.options.ttl + grace).then_some(entry)
    }

    /// Returns the entry for `id`, running `fetch` to fill it unless a concurrent caller is
    /// already doing so, in which case this call waits for that one's result. The flag says
    /// whether this call waited on another's fetch.
    pub(crate) async fn get_or_fetch(
        &self,
        id: &KeyId,
        fetch: impl Future<Output = Result<Arc<CachedKey>, ServiceError>>,
    ) -> (Result<Arc<CachedKey>, Arc<ServiceError>>, bool) {
        let ran = AtomicBool::new(false);
        let result = self
            .entries
            .try_get_with(id.clone(), async {
                ran.store(true, Ordering::Relaxed);
                fetch.await
            })
            .await;
        if let (Ok(_), Some(expired)) = (&result, &self.expired) {
            expired.invalidate(id).await;
        }
        (result, !ran.load(Ordering::Relaxed))
    }

    /// Runs the cache's pending evictions now (tests).
    #[cfg(test)]
    async fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> KeyId {
        KeyId::parse(s).unwrap()
    }

    fn entry(byte: u8) -> Arc<CachedKey> {
        Arc::new(CachedKey::new(
            DataKey::new(vec![byte; 32]),
            "r1".into(),
            false,
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_the_ttl_and_stale_ones_only_within_the_grace() {
        let options = CacheOptions {
            ttl: Duration::from_secs(300),
            stale_grace: Some(Duration::from_secs(60)),
            ..CacheOptions::default()
        };
        let cache = KeyCache::new(options).unwrap();
        let (filled, _) = cache.get_or_fetch(&id("a"), async { Ok(entry(1)) }).await;
        filled.unwrap();
        assert!(cache.fresh(&id("a")).await.is_some());
        assert!(
            cache.stale(&id("a")).await.is_none(),
            "a fresh key is not stale"
        );
        tokio::time::advance(Duration::from_secs(301)).await;
        assert!(
            cache.fresh(&id("a")).await.is_none(),
            "past the TTL it is not fresh"
        );
        assert!(
            cache.stale(&id("a")).await.is_some(),
            "within the grace, for every caller"
        );
        assert!(cache.stale(&id("a")).await.is_some());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(
            cache.stale(&id("a")).await.is_none(),
            "past the grace it is not served"
        );

        let no_grace = KeyCache::new(CacheOptions {
            stale_grace: None,
            ..options
        })
        .unwrap();
        no_grace
            .get_or_fetch(&id("b"), async { Ok(entry(2)) })
            .await
            .0
            .unwrap();
        tokio::time::advance(Duration::from_secs(301)).await;
        assert!(no_grace.fresh(&id("b")).await.is_none());
        assert!(
            no_grace.stale(&id("b")).await.is_none(),
            "no grace, no stale keys"
        );
    }

    #[tokio::test]
    async fn evicted_keys_are_dropped_and_so_zeroized() {
        let cache = KeyCache::new(CacheOptions {
            max_entries: 1,
            ..CacheOptions::default()
        })
        .unwrap();
        let first = entry(7);
        let watch = Arc::downgrade(&first);
        cache
            .get_or_fetch(&id("a"), async { Ok(first) })
            .await
            .0
            .unwrap();
        for (i, name) in ["b", "c", "d"].iter().enumerate() {
            let byte = u8::try_from(i).unwrap();
            cache
                .get_or_fetch(&id(name), async move { Ok(entry(byte)) })
                .await
                .0
                .unwrap();
            cache.run_pending_tasks().await;
        }
        // The last reference is gone: `DataKey` (zeroize's `Zeroizing`) wiped the bytes on drop.
        assert!(
            watch.upgrade().is_none(),
            "the evicted key is no longer held anywhere"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_misses_share_one_fetch() {
        let cache = Arc::new(KeyCache::new(CacheOptions::default()).unwrap());
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (cache, fetches) = (Arc::clone(&cache), Arc::clone(&fetches));
                tokio::spawn(async move {
                    let (result, coalesced) = cache
                        .get_or_fetch(&id("a"), async {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok(entry(9))
                        })
                        .await;
                    (result.unwrap().key.expose_secret()[0], coalesced)
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
}
