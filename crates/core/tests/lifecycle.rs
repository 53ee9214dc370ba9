//! The key lifecycle through `KeyService`: rotation, scheduled deletion, restore, tombstones,
//! describe and list, and how caches, repair and races treat them.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rkms_core::{
    CacheOptions, Clock, EncryptionContext, KeyId, KeyService, KeyState, Kms, LifecycleOptions,
    MemoryStore, Record, RepairOptions, ServiceError, ServiceOptions, Store, StoreError, Stored,
};
use support::wrapped::{StoreWrapper, Wrapped};
use support::{Mode, Regions};

const WINDOW: u64 = 3600;

fn id(s: &str) -> KeyId {
    KeyId::parse(s).unwrap()
}

/// A clock a test moves by hand.
#[derive(Clone)]
struct TestClock(Arc<AtomicU64>);

impl TestClock {
    fn new() -> Self {
        Self(Arc::new(AtomicU64::new(1_800_000_000)))
    }

    fn advance(&self, seconds: u64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }

    fn clock(&self) -> Clock {
        let now = Arc::clone(&self.0);
        Clock::from_fn(move || now.load(Ordering::SeqCst))
    }
}

fn options(clock: &TestClock) -> ServiceOptions {
    ServiceOptions {
        lifecycle: LifecycleOptions {
            deletion_window: Duration::from_secs(WINDOW),
            ..LifecycleOptions::default()
        },
        clock: clock.clock(),
        ..Regions::options()
    }
}

fn cached(options: ServiceOptions, ttl: Duration) -> ServiceOptions {
    ServiceOptions {
        cache: CacheOptions {
            enabled: true,
            ttl,
            ..CacheOptions::default()
        },
        ..options
    }
}

/// True when `result` failed because the id is pending deletion (looking through a cache's
/// shared fetch).
fn pending<T>(result: &Result<T, ServiceError>) -> bool {
    matches!(
        result.as_ref().map_err(ServiceError::root),
        Err(ServiceError::PendingDeletion { .. })
    )
}

async fn record(store: &dyn Store, key_id: &str) -> Record {
    Record::decode(&store.get(&id(key_id)).await.unwrap().unwrap().bytes).unwrap()
}

#[tokio::test]
async fn rotation_makes_a_new_current_version_and_keeps_the_old_one_readable() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service_with(store.clone(), options(&TestClock::new()));
    let first = service.get_or_create(&id("a")).await.unwrap();
    assert_eq!(first.version, 1);

    assert_eq!(service.rotate(&id("a")).await.unwrap(), 2);
    let current = service.get_or_create(&id("a")).await.unwrap();
    assert_eq!(current.version, 2);
    assert!(!current.created);
    assert_ne!(current.key, first.key, "a rotation makes a new key");
    let old = service.get_version(&id("a"), 1).await.unwrap();
    assert_eq!((old.version, &old.key), (1, &first.key));
    assert_eq!(
        service.get_version(&id("a"), 2).await.unwrap().key,
        current.key
    );
    assert!(matches!(
        service.get_version(&id("a"), 3).await,
        Err(ServiceError::VersionNotFound { version: 3, .. })
    ));
    assert!(matches!(
        service.get_version(&id("never"), 1).await,
        Err(ServiceError::NotFound { .. })
    ));
    assert!(
        store.get(&id("never")).await.unwrap().is_none(),
        "a version read never creates"
    );
    let stored = record(&*store, "a").await;
    assert_eq!(stored.versions.len(), 2);
    assert_eq!(stored.current().copies.len(), 3, "wrapped in every region");
}

#[tokio::test]
async fn a_copy_moved_between_versions_does_not_decrypt() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service_with(store.clone(), options(&TestClock::new()));
    service.get_or_create(&id("a")).await.unwrap();
    service.rotate(&id("a")).await.unwrap();
    let stored = store.get(&id("a")).await.unwrap().unwrap();
    let mut swapped = Record::decode(&stored.bytes).unwrap();
    let second = swapped.versions[1].copies.clone();
    swapped.versions[0].copies = second;
    store
        .compare_and_swap(&id("a"), stored.version, swapped.encode())
        .await
        .unwrap();
    let err = service.get_version(&id("a"), 1).await.unwrap_err();
    assert!(
        matches!(err, ServiceError::IntegrityFailure { .. }),
        "version 2's copies are bound to version 2: {err}"
    );
    let contexts = regions.0[0].contexts.lock().unwrap().clone();
    assert!(contexts
        .iter()
        .any(|c| c.entries().get("rkms:version").map(String::as_str) == Some("2")));
}

#[tokio::test]
async fn a_scheduled_deletion_refuses_every_key_request_until_restored() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let clock = TestClock::new();
    let service = regions.service_with(store.clone(), options(&clock));
    let key = service.get_or_create(&id("a")).await.unwrap().key;

    let state = service.schedule_deletion(&id("a")).await.unwrap();
    let deletion_time = clock.0.load(Ordering::SeqCst) + WINDOW;
    assert_eq!(state, KeyState::PendingDeletion { deletion_time });
    assert_eq!(
        service.schedule_deletion(&id("a")).await.unwrap(),
        state,
        "scheduling again keeps the first time"
    );
    for result in [
        service.get_or_create(&id("a")).await.map(|_| ()),
        service.get_existing(&id("a")).await.map(|_| ()),
        service.get_version(&id("a"), 1).await.map(|_| ()),
        service.rotate(&id("a")).await.map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(ServiceError::PendingDeletion { deletion_time: t, .. }) if t == deletion_time),
            "{result:?}"
        );
    }
    let info = service.describe(&id("a")).await.unwrap();
    assert_eq!(info.state, state);
    assert_eq!(
        info.versions[0].regions.len(),
        3,
        "nothing is destroyed yet"
    );

    clock.advance(WINDOW - 1);
    assert_eq!(service.restore(&id("a")).await.unwrap(), KeyState::Active);
    assert_eq!(service.get_or_create(&id("a")).await.unwrap().key, key);
    assert_eq!(
        service.restore(&id("a")).await.unwrap(),
        KeyState::Active,
        "restoring an active id changes nothing"
    );
}

#[tokio::test]
async fn after_the_window_the_copies_are_destroyed_and_the_id_is_never_created_again() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let clock = TestClock::new();
    let service = regions.service_with(store.clone(), options(&clock));
    service.get_or_create(&id("a")).await.unwrap();
    service.rotate(&id("a")).await.unwrap();
    service.schedule_deletion(&id("a")).await.unwrap();
    let deleted_at = clock.0.load(Ordering::SeqCst) + WINDOW;
    clock.advance(WINDOW);

    // Deleted at the window's end, before any sweep has destroyed the copies.
    for result in [
        service.get_or_create(&id("a")).await.map(|_| ()),
        service.restore(&id("a")).await.map(|_| ()),
        service.schedule_deletion(&id("a")).await.map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(ServiceError::Deleted { deleted_at: t, .. }) if t == deleted_at),
            "{result:?}"
        );
    }
    assert!(service.complete_deletion(&id("a")).await.unwrap());
    assert!(!service.complete_deletion(&id("a")).await.unwrap(), "once");
    let tombstone = record(&*store, "a").await;
    assert_eq!(tombstone.state, KeyState::Deleted { deleted_at });
    assert_eq!(tombstone.versions.len(), 2, "the versions' history stays");
    assert!(tombstone.versions.iter().all(|v| v.copies.is_empty()));

    let calls = regions.total_calls();
    assert!(matches!(
        service.get_or_create(&id("a")).await,
        Err(ServiceError::Deleted { .. })
    ));
    assert_eq!(
        regions.total_calls(),
        calls,
        "no key is made for a tombstone"
    );
    let info = service.describe(&id("a")).await.unwrap();
    assert_eq!(info.state, KeyState::Deleted { deleted_at });
    assert!(info.versions.iter().all(|v| v.regions.is_empty()));
}

#[tokio::test]
async fn reads_sweeps_and_the_repairer_complete_deletions_whose_window_ended() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let clock = TestClock::new();
    let service = regions.service_with(store.clone(), options(&clock));
    for name in ["read", "swept", "scheduled"] {
        service.get_or_create(&id(name)).await.unwrap();
        service.schedule_deletion(&id(name)).await.unwrap();
    }
    clock.advance(WINDOW);
    let tombstone = |record: Record| {
        matches!(record.state, KeyState::Deleted { .. }) && record.versions[0].copies.is_empty()
    };

    // A read answers "deleted" and completes the deletion in the background.
    assert!(service.get_existing(&id("read")).await.is_err());
    for _ in 0..100 {
        if tombstone(record(&*store, "read").await) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(tombstone(record(&*store, "read").await));

    // A sweep by any server completes what it finds due.
    let other = regions.service_with(store.clone(), options(&clock));
    let sweep = other.repair_sweep().await.unwrap();
    assert_eq!(sweep.deleted, 2, "{sweep:?}");
    assert!(tombstone(record(&*store, "swept").await));

    // The server that scheduled a deletion completes it when due, without a sweep.
    service.get_or_create(&id("later")).await.unwrap();
    let repairing = regions.service_with(
        store.clone(),
        ServiceOptions {
            repair: RepairOptions {
                interval: Duration::from_millis(20),
                sweep_interval: None,
                ..RepairOptions::default()
            },
            ..options(&clock)
        },
    );
    repairing.schedule_deletion(&id("later")).await.unwrap();
    let task = tokio::spawn({
        let repairing = repairing.clone();
        async move { repairing.run_repairer().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !tombstone(record(&*store, "later").await),
        "not before the window ends"
    );
    clock.advance(WINDOW);
    for _ in 0..100 {
        if tombstone(record(&*store, "later").await) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    assert!(tombstone(record(&*store, "later").await));
}

#[tokio::test]
async fn the_server_that_changes_a_key_drops_its_cached_key_at_once() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let clock = TestClock::new();
    let ttl = Duration::from_secs(60);
    let service = regions.service_with(store.clone(), cached(options(&clock), ttl));
    let other = regions.service_with(store.clone(), cached(options(&clock), ttl));
    let checking = regions.service_with(
        store.clone(),
        ServiceOptions {
            lifecycle: LifecycleOptions {
                check_state_on_hit: true,
                deletion_window: Duration::from_secs(WINDOW),
            },
            ..cached(options(&clock), ttl)
        },
    );
    let first = service.get_or_create(&id("a")).await.unwrap();
    for s in [&other, &checking] {
        assert!(!s.get_or_create(&id("a")).await.unwrap().created);
        assert!(s.get_or_create(&id("a")).await.unwrap().from_cache);
    }

    service.rotate(&id("a")).await.unwrap();
    assert_eq!(service.get_or_create(&id("a")).await.unwrap().version, 2);
    assert_eq!(checking.get_or_create(&id("a")).await.unwrap().version, 2);
    let stale = other.get_or_create(&id("a")).await.unwrap();
    assert_eq!(
        (stale.version, stale.from_cache, &stale.key),
        (1, true, &first.key),
        "another server may serve the old version for up to its cache TTL"
    );

    service.schedule_deletion(&id("a")).await.unwrap();
    for s in [&service, &checking] {
        assert!(pending(&s.get_or_create(&id("a")).await));
    }
    assert!(
        other.get_or_create(&id("a")).await.is_ok(),
        "within its TTL"
    );
}

/// A store whose reads can be held back, to interleave a fetch with a change.
#[derive(Debug, Default)]
struct SlowReads {
    inner: MemoryStore,
    slow: AtomicBool,
    down: AtomicBool,
}

#[async_trait]
impl StoreWrapper for SlowReads {
    fn inner(&self) -> &MemoryStore {
        &self.inner
    }

    async fn get(&self, id: &KeyId) -> Result<Option<Stored>, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable {
                store: "test",
                source: "switched off".into(),
            });
        }
        let read = self.inner.get(id).await;
        if self.slow.swap(false, Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        read
    }
}

#[tokio::test]
async fn a_fetch_that_read_before_a_deletion_does_not_put_the_key_back_in_the_cache() {
    let regions = Regions::new();
    let store = Arc::new(Wrapped(SlowReads::default()));
    let clock = TestClock::new();
    let service = regions.service_with(
        store.clone(),
        cached(options(&clock), Duration::from_secs(60)),
    );
    let other = regions.service_with(store.clone(), options(&clock));
    other.get_or_create(&id("a")).await.unwrap();

    store.slow.store(true, Ordering::SeqCst);
    let fetch = tokio::spawn({
        let service = service.clone();
        async move { service.get_or_create(&id("a")).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    service.schedule_deletion(&id("a")).await.unwrap();
    assert!(fetch.await.unwrap().is_ok(), "it began before the deletion");
    assert!(
        pending(&service.get_or_create(&id("a")).await),
        "the server that deleted never serves the key again"
    );
}

#[tokio::test]
async fn a_request_after_a_deletion_never_joins_a_fetch_that_read_before_it() {
    let regions = Regions::new();
    let store = Arc::new(Wrapped(SlowReads::default()));
    let clock = TestClock::new();
    let service = regions.service_with(
        store.clone(),
        cached(options(&clock), Duration::from_secs(60)),
    );
    regions
        .service_with(store.clone(), options(&clock))
        .get_or_create(&id("a"))
        .await
        .unwrap();

    store.slow.store(true, Ordering::SeqCst);
    let early = tokio::spawn({
        let service = service.clone();
        async move { service.get_or_create(&id("a")).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    service.schedule_deletion(&id("a")).await.unwrap();
    let after = service.get_or_create(&id("a")).await;
    assert!(
        pending(&after),
        "a request made after the deletion answered is refused, got {after:?}"
    );
    assert!(early.await.unwrap().is_ok(), "it began before the deletion");
}

#[tokio::test]
async fn a_refusal_keeps_a_fetch_that_read_before_it_from_filling_the_cache() {
    let regions = Regions::new();
    let store = Arc::new(Wrapped(SlowReads::default()));
    let clock = TestClock::new();
    let service = regions.service_with(
        store.clone(),
        cached(options(&clock), Duration::from_secs(60)),
    );
    let other = regions.service_with(store.clone(), options(&clock));
    other.get_or_create(&id("a")).await.unwrap();

    // A reader's fetch reads the active record, then is slow.
    store.slow.store(true, Ordering::SeqCst);
    let reader = tokio::spawn({
        let service = service.clone();
        async move { service.get_existing(&id("a")).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    other.schedule_deletion(&id("a")).await.unwrap();
    assert!(pending(&service.get_or_create(&id("a")).await));
    assert!(reader.await.unwrap().is_ok(), "it read before the deletion");
    assert!(
        pending(&service.get_or_create(&id("a")).await),
        "the reader's fetch did not put the key back"
    );
}

#[tokio::test]
async fn a_stale_key_is_never_served_for_an_id_known_to_be_pending_deletion() {
    let regions = Regions::new();
    let store = Arc::new(Wrapped(SlowReads::default()));
    let clock = TestClock::new();
    let ttl = Duration::from_millis(200);
    let grace = ServiceOptions {
        cache: CacheOptions {
            enabled: true,
            ttl,
            stale_grace: Some(Duration::from_secs(60)),
            ..CacheOptions::default()
        },
        ..options(&clock)
    };
    let service = regions.service_with(store.clone(), grace);
    let other = regions.service_with(store.clone(), options(&clock));
    service.get_or_create(&id("a")).await.unwrap();
    other.schedule_deletion(&id("a")).await.unwrap();

    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let refused = service.get_or_create(&id("a")).await;
    assert!(pending(&refused), "{refused:?}");
    store.down.store(true, Ordering::SeqCst);
    let result = service.get_or_create(&id("a")).await;
    assert!(
        matches!(&result, Err(e) if e.is_unavailable()),
        "the store is down and the id is pending deletion: no stale key, got {result:?}"
    );
}

#[tokio::test]
async fn concurrent_rotations_never_make_one_version_twice() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let clock = TestClock::new();
    let services: Vec<KeyService> = (0..4)
        .map(|_| regions.service_with(store.clone(), options(&clock)))
        .collect();
    services[0].get_or_create(&id("a")).await.unwrap();
    let key_id = id("a");
    for _ in 0..5 {
        let results = futures::future::join_all(services.iter().map(|s| s.rotate(&key_id))).await;
        let mut made: Vec<u32> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        for result in &results {
            assert!(
                matches!(result, Ok(_) | Err(ServiceError::Conflict { .. })),
                "{result:?}"
            );
        }
        made.sort_unstable();
        let before = made.len();
        made.dedup();
        assert_eq!(made.len(), before, "one version made twice: {results:?}");
        assert!(!made.is_empty(), "some rotation wins");
    }
    let stored = record(&*store, "a").await;
    let numbers: Vec<u32> = stored.versions.iter().map(|v| v.number).collect();
    assert_eq!(numbers, (1..=numbers.len() as u32).collect::<Vec<_>>());
    for version in &stored.versions {
        let key = services[1]
            .get_version(&id("a"), version.number)
            .await
            .unwrap();
        assert_eq!(key.version, version.number);
    }
}

#[tokio::test]
async fn restore_racing_the_end_of_the_window_has_one_winner() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let clock = TestClock::new();
    let restorer = regions.service_with(store.clone(), options(&clock));
    // A server whose clock is past the window: it sees every deletion as due.
    let late = TestClock::new();
    late.advance(WINDOW + 1);
    let purger = regions.service_with(store.clone(), options(&late));
    let ids: Vec<KeyId> = (0..20).map(|i| id(&format!("k{i}"))).collect();
    for id in &ids {
        restorer.get_or_create(id).await.unwrap();
        restorer.schedule_deletion(id).await.unwrap();
    }
    let races = futures::future::join_all(
        ids.iter()
            .map(|id| async { tokio::join!(restorer.restore(id), purger.complete_deletion(id)) }),
    )
    .await;
    for (id, (restored, purged)) in ids.iter().zip(races) {
        let state = record(&*store, id.as_str()).await.state;
        match (restored, purged) {
            (Ok(KeyState::Active), Ok(false)) => assert_eq!(state, KeyState::Active),
            (Err(ServiceError::Deleted { .. }), Ok(true)) => {
                assert!(matches!(state, KeyState::Deleted { .. }));
            }
            other => panic!("{id}: both or neither won: {other:?}, state {state:?}"),
        }
    }
}

#[tokio::test]
async fn a_deletion_racing_first_use_never_leaves_a_pending_id_with_a_new_key() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let clock = TestClock::new();
    let a = regions.service_with(store.clone(), options(&clock));
    let b = regions.service_with(store.clone(), options(&clock));
    for i in 0..20 {
        let key_id = id(&format!("k{i}"));
        let (got, deleted) = tokio::join!(a.get_or_create(&key_id), b.schedule_deletion(&key_id));
        let state = record(&*store, key_id.as_str()).await.state;
        match deleted {
            // The deletion came first and found nothing; the key was made after it.
            Err(ServiceError::NotFound { .. }) => {
                assert!(got.unwrap().created);
                assert_eq!(state, KeyState::Active);
            }
            // The key was made first (and handed out), then its deletion scheduled.
            Ok(pending) => {
                assert!(got.is_ok(), "{got:?}");
                assert_eq!(state, pending);
                assert!(matches!(
                    a.get_or_create(&key_id).await,
                    Err(ServiceError::PendingDeletion { .. })
                ));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn repair_adds_the_missing_copies_of_every_version() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service_with(store.clone(), options(&TestClock::new()));
    regions.0[2].set(Mode::Failing);
    service.get_or_create(&id("a")).await.unwrap();
    service.rotate(&id("a")).await.unwrap();
    let partial = record(&*store, "a").await;
    assert!(partial.versions.iter().all(|v| v.missing == ["r3"]));
    regions.0[2].set(Mode::Healthy);
    service.repair(&id("a")).await.unwrap();
    let repaired = record(&*store, "a").await;
    for version in &repaired.versions {
        assert!(version.missing.is_empty(), "{version:?}");
        let context = EncryptionContext::for_version(&id("a"), version.number);
        regions.0[2]
            .inner
            .decrypt(&version.copies["r3"].ciphertext, &context)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_format_1_record_reads_as_version_1_and_survives_a_rotation() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service_with(store.clone(), options(&TestClock::new()));
    let key = service.get_or_create(&id("a")).await.unwrap();
    let stored = store.get(&id("a")).await.unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&stored.bytes).unwrap();
    assert_eq!(
        json["format"], 1,
        "an unrotated id is still written as before"
    );
    assert_eq!(service.describe(&id("a")).await.unwrap().versions.len(), 1);
    service.rotate(&id("a")).await.unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&store.get(&id("a")).await.unwrap().unwrap().bytes).unwrap();
    assert_eq!(json["format"], 2);
    assert_eq!(service.get_version(&id("a"), 1).await.unwrap().key, key.key);
}

#[tokio::test]
async fn listing_pages_through_ids_with_a_prefix_and_their_states() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service_with(store.clone(), options(&TestClock::new()));
    for name in ["app/a", "app/b", "app/c", "other/x"] {
        service.get_or_create(&id(name)).await.unwrap();
    }
    service.schedule_deletion(&id("app/b")).await.unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = service
            .list_keys("tester", "app/", after.as_deref(), 2)
            .await
            .unwrap();
        assert!(page.keys.len() <= 2);
        seen.extend(
            page.keys
                .into_iter()
                .map(|k| (k.id.as_str().to_owned(), k.state.map(KeyState::name))),
        );
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("app/a".to_owned(), Some("active")),
            ("app/b".to_owned(), Some("pending_deletion")),
            ("app/c".to_owned(), Some("active")),
        ]
    );
}

#[tokio::test]
async fn operations_on_an_id_that_does_not_exist_are_not_found_and_create_nothing() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service_with(store.clone(), options(&TestClock::new()));
    let missing = id("missing");
    assert!(matches!(
        service.rotate(&missing).await,
        Err(ServiceError::NotFound { .. })
    ));
    assert!(matches!(
        service.schedule_deletion(&missing).await,
        Err(ServiceError::NotFound { .. })
    ));
    assert!(matches!(
        service.restore(&missing).await,
        Err(ServiceError::NotFound { .. })
    ));
    assert!(matches!(
        service.describe(&missing).await,
        Err(ServiceError::NotFound { .. })
    ));
    assert!(matches!(
        service.complete_deletion(&missing).await,
        Err(ServiceError::NotFound { .. })
    ));
    assert!(service.get_existing(&missing).await.unwrap().is_none());
    assert!(store.get(&missing).await.unwrap().is_none());
    assert_eq!(regions.total_calls(), 0);
}

#[tokio::test]
async fn rotation_stops_before_a_record_outgrows_what_every_store_holds() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service_with(
        store.clone(),
        ServiceOptions {
            data_key_len: 1024,
            ..options(&TestClock::new())
        },
    );
    service.get_or_create(&id("big")).await.unwrap();
    let refused = loop {
        match service.rotate(&id("big")).await {
            Ok(version) => assert!(version <= rkms_core::MAX_VERSIONS),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(refused, ServiceError::Conflict { .. }),
        "{refused}"
    );
    let stored = store.get(&id("big")).await.unwrap().unwrap();
    let versions = Record::decode(&stored.bytes).unwrap().versions.len();
    assert!(
        stored.bytes.len() <= 300 * 1024 && versions < rkms_core::MAX_VERSIONS as usize,
        "{} bytes, {versions} versions",
        stored.bytes.len()
    );
    assert!(service.get_version(&id("big"), 1).await.is_ok());
}
