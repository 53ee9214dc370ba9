//! Availability: breakers, hedging, coalescing, quorum create and repair, cache expiry and
//! stale serving. Deterministic: a fault-injecting KMS and, where time matters, paused time.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rkms_core::{
    BreakerState, CacheOptions, EncryptionContext, KeyId, KeyService, Kms as _, ListCursor,
    ListPage, MemoryStore, PutOutcome, Record, RepairOutcome, ServiceError, ServiceOptions, Store,
    StoreError, Stored, Version,
};
use support::wrapped::{StoreWrapper, Wrapped};
use support::{Mode, Regions};

fn id(s: &str) -> KeyId {
    KeyId::parse(s).unwrap()
}

fn cached(ttl: Duration, stale_grace: Option<Duration>) -> ServiceOptions {
    ServiceOptions {
        cache: CacheOptions {
            enabled: true,
            ttl,
            stale_grace,
            ..CacheOptions::default()
        },
        ..Regions::options()
    }
}

/// Writes `bytes` over `key_id`'s record, as whoever can write the store could.
async fn overwrite(store: &MemoryStore, key_id: &str, bytes: Vec<u8>) {
    let current = store.get(&id(key_id)).await.unwrap().unwrap();
    store
        .compare_and_swap(&id(key_id), current.version, bytes)
        .await
        .unwrap();
}

async fn record(store: &dyn Store, key_id: &str) -> Record {
    Record::decode(&store.get(&id(key_id)).await.unwrap().unwrap().bytes).unwrap()
}

/// Counts reads, to show that concurrent misses share one.
#[derive(Debug, Default)]
struct CountingStore {
    inner: MemoryStore,
    gets: AtomicUsize,
}

#[async_trait]
impl StoreWrapper for CountingStore {
    fn inner(&self) -> &MemoryStore {
        &self.inner
    }

    async fn get(&self, id: &KeyId) -> Result<Option<Stored>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(id).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_region_trips_its_breaker_is_skipped_then_probed_and_closed() {
    let regions = Regions::new();
    let service = regions.service(Arc::new(MemoryStore::new()));
    let created = service.get_or_create(&id("a")).await.unwrap();
    regions.0[0].set(Mode::Failing);
    for _ in 0..3 {
        assert_eq!(service.get_or_create(&id("a")).await.unwrap().region, "r2");
    }
    assert_eq!(service.region_status()[0].breaker, BreakerState::Open);
    let calls = regions.0[0].calls();
    service.get_or_create(&id("a")).await.unwrap();
    assert_eq!(
        regions.0[0].calls(),
        calls,
        "an open breaker skips the region"
    );

    regions.0[0].set(Mode::Healthy);
    tokio::time::advance(service.options().breaker.open_for).await;
    assert_eq!(service.region_status()[0].breaker, BreakerState::HalfOpen);
    let probed = service.get_or_create(&id("a")).await.unwrap();
    assert_eq!(probed.key, created.key);
    assert_eq!(
        service.region_status()[0].breaker,
        BreakerState::Closed,
        "a successful probe closes it"
    );
}

/// One caller's burst that spends a region's request quota must not shut the region for
/// everyone: throttling falls back to another region but never opens the breaker.
#[tokio::test(start_paused = true)]
async fn a_throttling_region_falls_back_but_never_opens_its_breaker() {
    let regions = Regions::new();
    let service = regions.service(Arc::new(MemoryStore::new()));
    service.get_or_create(&id("a")).await.unwrap();
    regions.0[0].set(Mode::Throttling);
    for n in 0..10 {
        let fetched = service.get_existing(&id("a")).await.unwrap().unwrap();
        assert_eq!(fetched.region, "r2", "request {n} falls back");
        service
            .get_or_create(&id(&format!("new-{n}")))
            .await
            .unwrap();
    }
    assert_eq!(
        service.region_status()[0].breaker,
        BreakerState::Closed,
        "throttling is an answer, not an outage"
    );
    regions.0[0].set(Mode::Healthy);
    assert_eq!(
        service
            .get_existing(&id("a"))
            .await
            .unwrap()
            .unwrap()
            .region,
        "r1",
        "the region serves again as soon as it stops throttling"
    );
}

#[tokio::test(start_paused = true)]
async fn hedging_takes_the_fast_region_and_cancels_the_slow_one() {
    let regions = Regions::new();
    let service = regions.service(Arc::new(MemoryStore::new()));
    let created = service.get_or_create(&id("a")).await.unwrap();
    regions.0[0].set(Mode::Slow(Duration::from_secs(1)));
    let started = tokio::time::Instant::now();
    let read = service.get_or_create(&id("a")).await.unwrap();
    assert_eq!((read.region.as_str(), &read.key), ("r2", &created.key));
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        regions.0[0].cancelled.load(Ordering::SeqCst),
        1,
        "the slow call was cancelled"
    );
    assert_eq!(
        regions.0[2].calls(),
        1,
        "r3 only wrapped at create: two decrypts sufficed"
    );
}

#[tokio::test]
async fn a_cache_miss_costs_one_kms_call_when_regions_are_healthy() {
    let regions = Regions::new();
    let service = regions.service(Arc::new(MemoryStore::new()));
    service.get_or_create(&id("a")).await.unwrap();
    let before = regions.total_calls();
    for _ in 0..20 {
        service.get_or_create(&id("a")).await.unwrap();
    }
    assert_eq!(regions.total_calls() - before, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_share_one_store_read_and_one_kms_call() {
    let regions = Regions::new();
    let store = Arc::new(Wrapped(CountingStore::default()));
    regions
        .service(store.clone())
        .get_or_create(&id("a"))
        .await
        .unwrap();
    for kms in &regions.0 {
        kms.set(Mode::Slow(Duration::from_millis(50)));
    }
    let service = regions.service_with(store.clone(), cached(Duration::from_secs(300), None));
    let (gets, calls) = (store.gets.load(Ordering::SeqCst), regions.total_calls());
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { service.get_or_create(&id("a")).await.unwrap() })
        })
        .collect();
    let mut from_cache = 0;
    for task in tasks {
        from_cache += usize::from(task.await.unwrap().from_cache);
    }
    assert_eq!(
        store.gets.load(Ordering::SeqCst) - gets,
        1,
        "one store read"
    );
    assert_eq!(regions.total_calls() - calls, 1, "one KMS call");
    assert_eq!(from_cache, 31);
}

// The cache's clock is the real one (moka expires entries by it), so these tests sleep for
// real: a paused tokio clock once let a stale-serving test pass while production never served
// a stale key.

#[tokio::test]
async fn cached_keys_expire_after_the_ttl() {
    let regions = Regions::new();
    let service = regions.service_with(
        Arc::new(MemoryStore::new()),
        cached(Duration::from_millis(300), None),
    );
    let created = service.get_or_create(&id("a")).await.unwrap();
    let calls = regions.total_calls();
    let hit = service.get_or_create(&id("a")).await.unwrap();
    assert!(hit.from_cache);
    assert_eq!(regions.total_calls(), calls);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let refreshed = service.get_or_create(&id("a")).await.unwrap();
    assert!(!refreshed.from_cache);
    assert_eq!(refreshed.key, created.key);
    assert_eq!(regions.total_calls(), calls + 1);
}

#[tokio::test]
async fn stale_keys_are_served_only_within_the_grace_while_every_region_is_down() {
    let regions = Regions::new();
    let service = regions.service_with(
        Arc::new(MemoryStore::new()),
        cached(Duration::from_millis(200), Some(Duration::from_millis(600))),
    );
    let created = service.get_or_create(&id("a")).await.unwrap();
    for kms in &regions.0 {
        kms.set(Mode::Failing);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let stale = service.get_or_create(&id("a")).await.unwrap();
        assert!(
            stale.stale && stale.from_cache,
            "served stale, request after request"
        );
        assert_eq!(stale.key, created.key);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let err = service.get_or_create(&id("a")).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}

/// A store that can be switched off: every call then fails as unavailable.
#[derive(Debug, Default)]
struct SwitchableStore {
    inner: MemoryStore,
    down: std::sync::atomic::AtomicBool,
}

impl SwitchableStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable {
                store: "switchable",
                source: "switched off".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl StoreWrapper for SwitchableStore {
    fn inner(&self) -> &MemoryStore {
        &self.inner
    }

    async fn get(&self, id: &KeyId) -> Result<Option<Stored>, StoreError> {
        self.check()?;
        self.inner.get(id).await
    }

    async fn put_if_absent(&self, id: &KeyId, bytes: Vec<u8>) -> Result<PutOutcome, StoreError> {
        self.check()?;
        self.inner.put_if_absent(id, bytes).await
    }

    async fn compare_and_swap(
        &self,
        id: &KeyId,
        expected: Version,
        bytes: Vec<u8>,
    ) -> Result<Version, StoreError> {
        self.check()?;
        self.inner.compare_and_swap(id, expected, bytes).await
    }

    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.delete(id).await
    }

    async fn list(
        &self,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        self.check()?;
        self.inner.list(cursor, limit).await
    }
}

#[tokio::test]
async fn stale_keys_are_served_while_the_store_is_down() {
    let regions = Regions::new();
    let store = Arc::new(Wrapped(SwitchableStore::default()));
    let service = regions.service_with(
        store.clone(),
        cached(Duration::from_millis(200), Some(Duration::from_secs(5))),
    );
    let created = service.get_or_create(&id("a")).await.unwrap();
    store.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stale = service.get_existing(&id("a")).await.unwrap().unwrap();
    assert!(stale.stale);
    assert_eq!(stale.key, created.key);
    let stale = service.get_or_create(&id("a")).await.unwrap();
    assert!(stale.stale);
    assert!(
        service.get_or_create(&id("never-cached")).await.is_err(),
        "only cached keys can be served stale"
    );
}

#[tokio::test]
async fn a_tampered_record_is_never_served_stale() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service_with(
        store.clone(),
        cached(Duration::from_millis(200), Some(Duration::from_secs(5))),
    );
    service.get_or_create(&id("a")).await.unwrap();
    regions
        .service(store.clone())
        .get_or_create(&id("b"))
        .await
        .unwrap();
    let b = store.get(&id("b")).await.unwrap().unwrap().bytes;
    overwrite(&store, "a", b).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = service.get_or_create(&id("a")).await.unwrap_err();
    assert!(
        matches!(err.root(), ServiceError::IntegrityFailure { .. }),
        "{err}"
    );
    // An outage right after must not bring the key back stale either.
    regions.0[0].set(Mode::Failing);
    let err = service.get_or_create(&id("a")).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}

#[tokio::test]
async fn a_record_replaced_with_another_key_is_refused_while_the_old_key_is_cached() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service_with(store.clone(), cached(Duration::from_millis(200), None));
    let original = service.get_or_create(&id("a")).await.unwrap();
    // A record for the same id, properly bound but holding another key, written over it.
    let elsewhere = Arc::new(MemoryStore::new());
    regions
        .service(elsewhere.clone())
        .get_or_create(&id("a"))
        .await
        .unwrap();
    let replacement = elsewhere.get(&id("a")).await.unwrap().unwrap().bytes;
    overwrite(&store, "a", replacement).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let err = service.get_or_create(&id("a")).await.unwrap_err();
    assert!(
        matches!(err.root(), ServiceError::KeyChanged { .. }),
        "{err}"
    );
    assert!(!err.is_unavailable());
    let again = service.get_or_create(&id("a")).await.unwrap_err();
    assert!(
        matches!(again.root(), ServiceError::KeyChanged { .. }),
        "still refused: {again}"
    );
    drop(original);
}

#[tokio::test]
async fn a_stale_key_answers_when_the_fetch_runs_out_of_its_deadline() {
    let regions = Regions::new();
    let mut options = cached(Duration::from_millis(100), Some(Duration::from_secs(5)));
    options.request_deadline = Duration::from_millis(300);
    options.kms_timeout = Duration::from_secs(2);
    let service = regions.service_with(Arc::new(MemoryStore::new()), options);
    let created = service.get_or_create(&id("a")).await.unwrap();
    for kms in &regions.0 {
        kms.set(Mode::Hanging);
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stale = service.get_or_create(&id("a")).await.unwrap();
    assert!(stale.stale);
    assert_eq!(stale.key, created.key);
}

/// Panics on its first read: a store with a bug.
#[derive(Debug, Default)]
struct PanickingOnceStore {
    inner: MemoryStore,
    panicked: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl StoreWrapper for PanickingOnceStore {
    fn inner(&self) -> &MemoryStore {
        &self.inner
    }

    async fn get(&self, id: &KeyId) -> Result<Option<Stored>, StoreError> {
        assert!(
            self.panicked.swap(true, Ordering::SeqCst),
            "a store bug on the first read"
        );
        self.inner.get(id).await
    }
}

#[tokio::test]
async fn a_fetch_that_panics_does_not_leave_its_id_stuck() {
    let regions = Regions::new();
    let service = regions.service_with(
        Arc::new(Wrapped(PanickingOnceStore::default())),
        cached(Duration::from_secs(300), None),
    );
    let first = tokio::spawn({
        let service = service.clone();
        async move { service.get_or_create(&id("a")).await.map(drop) }
    })
    .await;
    assert!(
        first.unwrap_err().is_panic(),
        "the store's panic reaches the caller"
    );
    service
        .get_or_create(&id("a"))
        .await
        .expect("the next request fetches anew");
}

#[tokio::test]
async fn a_key_asked_for_near_the_end_of_its_ttl_is_refreshed_ahead_once() {
    let regions = Regions::new();
    let service = regions.service_with(
        Arc::new(MemoryStore::new()),
        cached(Duration::from_millis(1000), None),
    );
    service.get_or_create(&id("a")).await.unwrap();
    let calls = regions.total_calls();
    tokio::time::sleep(Duration::from_millis(920)).await;
    for _ in 0..5 {
        assert!(service.get_or_create(&id("a")).await.unwrap().from_cache);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        regions.total_calls(),
        calls + 1,
        "one background refresh for five requests in the last tenth"
    );
    // Past the first fetch's TTL, the refreshed entry still answers: no request pays a miss.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hit = service.get_or_create(&id("a")).await.unwrap();
    assert!(hit.from_cache, "the refreshed key answers from the cache");
    assert_eq!(regions.total_calls(), calls + 1);
}

#[tokio::test]
async fn without_stale_grace_an_expired_key_is_not_served_while_regions_are_down() {
    let regions = Regions::new();
    let service = regions.service_with(
        Arc::new(MemoryStore::new()),
        cached(Duration::from_millis(50), None),
    );
    service.get_or_create(&id("a")).await.unwrap();
    for kms in &regions.0 {
        kms.set(Mode::Failing);
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(matches!(
        service.get_or_create(&id("a")).await.unwrap_err().root(),
        ServiceError::RegionsUnavailable { .. }
    ));
}

#[tokio::test]
async fn a_create_with_a_region_down_succeeds_with_a_quorum_and_is_repaired_when_it_returns() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let mut options = Regions::options();
    options.repair.interval = Duration::from_millis(20);
    let service = regions.service_with(store.clone(), options);
    regions.0[2].set(Mode::Failing);
    let created = service.get_or_create(&id("a")).await.unwrap();
    assert!(created.created);
    let partial = record(&*store, "a").await;
    assert_eq!(
        partial.current().copies.keys().collect::<Vec<_>>(),
        ["r1", "r2"]
    );
    assert_eq!(partial.current().missing, ["r3"]);
    assert_eq!(service.pending_repairs(), [id("a")]);

    assert_eq!(
        service.repair_pending().await,
        1,
        "still down: still pending"
    );
    regions.0[2].set(Mode::Healthy);
    assert_eq!(
        service.repair_pending().await,
        1,
        "a failed repair waits for its backoff"
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(service.repair_pending().await, 0);
    let repaired = record(&*store, "a").await;
    assert!(repaired.current().missing.is_empty());
    let context = EncryptionContext::for_id(&id("a"));
    let unwrapped = regions.0[2]
        .inner
        .decrypt(&repaired.current().copies["r3"].ciphertext, &context)
        .await
        .unwrap();
    assert_eq!(unwrapped, created.key, "the added copy holds the same key");
}

#[tokio::test]
async fn a_create_with_a_blackholed_region_does_not_wait_for_it() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service(store.clone());
    service.get_or_create(&id("warm-up")).await.unwrap();
    regions.0[2].set(Mode::Hanging);
    let started = std::time::Instant::now();
    service.get_or_create(&id("a")).await.unwrap();
    assert!(
        started.elapsed() < service.options().kms_timeout,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(record(&*store, "a").await.current().missing, ["r3"]);
}

#[tokio::test]
async fn reading_a_record_that_lacks_a_copy_repairs_it_in_the_background() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service(store.clone());
    regions.0[1].set(Mode::Failing);
    service.get_or_create(&id("a")).await.unwrap();
    regions.0[1].set(Mode::Healthy);
    let reader = regions.service(store.clone());
    reader.get_or_create(&id("a")).await.unwrap();
    for _ in 0..100 {
        if record(&*store, "a").await.current().missing.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the read did not repair the record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_repairs_converge_without_clobbering() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    regions.0[2].set(Mode::Failing);
    let created = regions
        .service(store.clone())
        .get_or_create(&id("a"))
        .await
        .unwrap();
    regions.0[2].set(Mode::Slow(Duration::from_millis(20)));
    let repairers: Vec<KeyService> = (0..4).map(|_| regions.service(store.clone())).collect();
    let target = id("a");
    let outcomes = futures::future::join_all(repairers.iter().map(|s| s.repair(&target))).await;
    let repaired = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(RepairOutcome::Repaired { .. })))
        .count();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert!(repaired >= 1, "{outcomes:?}");
    let done = record(&*store, "a").await;
    assert_eq!(done.current().copies.len(), 3);
    assert!(done.current().missing.is_empty());
    for s in &repairers {
        assert_eq!(s.get_or_create(&id("a")).await.unwrap().key, created.key);
    }
}

#[tokio::test]
async fn a_repair_that_loses_a_race_rereads_and_keeps_the_other_writers_change() {
    /// Before its first compare-and-set goes through, another writer changes the record.
    #[derive(Debug)]
    struct Interfering {
        inner: MemoryStore,
        interfered: std::sync::atomic::AtomicBool,
    }
    #[async_trait]
    impl StoreWrapper for Interfering {
        fn inner(&self) -> &MemoryStore {
            &self.inner
        }

        async fn compare_and_swap(
            &self,
            id: &KeyId,
            expected: Version,
            bytes: Vec<u8>,
        ) -> Result<Version, StoreError> {
            if !self.interfered.swap(true, Ordering::SeqCst) {
                let current = self.inner.get(id).await?.unwrap();
                let mut other = Record::decode(&current.bytes).unwrap();
                other.versions[0].created_at += 1;
                self.inner
                    .compare_and_swap(id, current.version, other.encode())
                    .await?;
            }
            self.inner.compare_and_swap(id, expected, bytes).await
        }
    }
    let regions = Regions::new();
    let store = Arc::new(Wrapped(Interfering {
        inner: MemoryStore::new(),
        interfered: Default::default(),
    }));
    regions.0[2].set(Mode::Failing);
    let service = regions.service(store.clone());
    service.get_or_create(&id("a")).await.unwrap();
    let created_at = record(&*store, "a").await.current().created_at;
    regions.0[2].set(Mode::Healthy);
    assert!(matches!(
        service.repair(&id("a")).await.unwrap(),
        RepairOutcome::Repaired { .. }
    ));
    let done = record(&*store, "a").await;
    assert_eq!(
        done.current().created_at,
        created_at + 1,
        "the other writer's change survived"
    );
    assert!(done.current().missing.is_empty() && done.current().copies.len() == 3);
}

#[tokio::test]
async fn a_sweep_finds_and_repairs_records_no_process_remembers() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    regions.0[0].set(Mode::FailingGenerate);
    regions.0[2].set(Mode::Failing);
    let creator = regions.service(store.clone());
    for name in ["a", "b", "c"] {
        creator.get_or_create(&id(name)).await.unwrap();
    }
    regions.0[0].set(Mode::Healthy);
    regions.0[2].set(Mode::Healthy);
    let fresh = regions.service(store.clone());
    assert!(fresh.pending_repairs().is_empty());
    let sweep = fresh.repair_sweep().await.unwrap();
    assert_eq!(
        (sweep.scanned, sweep.repaired, sweep.pending, sweep.errors),
        (3, 3, 0, 0)
    );
    for name in ["a", "b", "c"] {
        assert!(record(&*store, name).await.current().missing.is_empty());
    }
}

#[tokio::test]
async fn repair_skips_unreachable_regions_and_keeps_to_its_kms_budget() {
    const RECORDS: usize = 2000;
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let mut options = Regions::options();
    options.breaker.open_for = Duration::from_millis(300);
    options.repair.interval = Duration::from_millis(1);
    let service = regions.service_with(store.clone(), options);
    regions.0[2].set(Mode::Failing);
    for i in 0..RECORDS {
        service.get_or_create(&id(&format!("k{i}"))).await.unwrap();
    }
    assert_eq!(service.pending_repairs().len(), RECORDS);
    // Open, or half-open when the creates took longer than `open_for` on a loaded machine
    // (the next call is then its one probe, which the count below allows).
    assert_ne!(service.region_status()[2].breaker, BreakerState::Closed);

    // Blackholed, behind an open breaker: repair calls no region at all.
    regions.0[2].set(Mode::Hanging);
    let calls = regions.total_calls();
    service.repair_pending().await;
    let blackholed = regions.total_calls() - calls;
    assert!(
        blackholed <= 2,
        "{blackholed} KMS calls: none for a repair that cannot wrap anywhere, but one breaker probe"
    );

    // Back and healthy: repair paces itself to its budget while serving goes on unhindered.
    regions.0[2].set(Mode::Healthy);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let budget = service.options().repair.kms_calls_per_second as usize;
    let calls = regions.total_calls();
    let repairing = tokio::spawn({
        let service = service.clone();
        async move { while service.repair_pending().await > 0 {} }
    });
    let reader = regions.service(store.clone());
    let mut latencies = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let asked = std::time::Instant::now();
        reader.get_or_create(&id("k0")).await.unwrap();
        latencies.push(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    repairing.abort();
    let repair_calls = regions.total_calls() - calls - latencies.len();
    let allowed = (budget as f64 * elapsed.as_secs_f64()).ceil() as usize + 5;
    assert!(
        repair_calls <= allowed,
        "{repair_calls} repair KMS calls in {elapsed:?}; the budget allows {allowed}"
    );
    assert!(repair_calls > 0, "repair made progress");
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    assert!(
        p99 < Duration::from_millis(100),
        "serving p99 {p99:?} while repair runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_many_incomplete_records_start_a_bounded_number_of_repairs() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    regions.0[2].set(Mode::Failing);
    let creator = regions.service(store.clone());
    for i in 0..300 {
        creator.get_or_create(&id(&format!("k{i}"))).await.unwrap();
    }
    regions.0[2].set(Mode::Healthy);
    let mut options = Regions::options();
    options.repair.kms_calls_per_second = 1;
    let reader = regions.service_with(store.clone(), options);
    let tasks_before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    for i in 0..300 {
        reader.get_or_create(&id(&format!("k{i}"))).await.unwrap();
    }
    let started = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
        - tasks_before;
    assert!(
        started <= reader.options().repair.concurrency,
        "{started} background repairs wait for the KMS budget"
    );
    assert_eq!(
        reader.pending_repairs().len(),
        300,
        "the rest wait for the repairer"
    );
}

#[tokio::test]
async fn a_sweep_leaves_records_backing_off_to_the_repairer() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service(store.clone());
    regions.0[2].set(Mode::Failing);
    service.get_or_create(&id("a")).await.unwrap();
    assert!(matches!(
        service.repair(&id("a")).await.unwrap(),
        RepairOutcome::StillMissing(_)
    ));
    let calls = regions.total_calls();
    let sweep = service.repair_sweep().await.unwrap();
    assert_eq!((sweep.scanned, sweep.pending), (1, 1));
    assert_eq!(
        regions.total_calls(),
        calls,
        "no KMS call for a record whose repair failed a moment ago"
    );
}
