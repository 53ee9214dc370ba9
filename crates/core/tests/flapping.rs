//! Availability while regions flap: a breaker orders the regions, it never stops a request
//! from asking a region when nothing else can serve; and a hanging first region costs a
//! create a hedge delay, not a KMS timeout. Deterministic: a fault-injecting KMS, paused time.

mod support;

use std::sync::Arc;

use rkms_core::{BreakerState, KeyId, KeyService, MemoryStore, Record, ServiceError, Store};
use support::{Mode, Regions};

fn id(s: &str) -> KeyId {
    KeyId::parse(s).unwrap()
}

async fn record(store: &dyn Store, key_id: &str) -> Record {
    Record::decode(&store.get(&id(key_id)).await.unwrap().unwrap().bytes).unwrap()
}

/// Opens r1's breaker with failed reads of `key_id`, then makes r1 healthy again: it has
/// recovered, but its breaker still remembers the failures for `open_for`.
async fn recovered_with_open_breaker(regions: &Regions, service: &KeyService, key_id: &str) {
    regions.0[0].set(Mode::Failing);
    for _ in 0..service.options().breaker.failure_threshold {
        service.get_existing(&id(key_id)).await.unwrap();
    }
    assert_eq!(service.region_status()[0].breaker, BreakerState::Open);
    regions.0[0].set(Mode::Healthy);
}

#[tokio::test(start_paused = true)]
async fn a_recovered_region_with_an_open_breaker_decrypts_when_no_other_region_can() {
    let regions = Regions::new();
    let service = regions.service(Arc::new(MemoryStore::new()));
    let created = service.get_or_create(&id("a")).await.unwrap();
    recovered_with_open_breaker(&regions, &service, "a").await;
    regions.0[1].set(Mode::Failing);
    regions.0[2].set(Mode::Failing);

    let read = service.get_existing(&id("a")).await.unwrap().unwrap();
    assert_eq!((read.region.as_str(), &read.key), ("r1", &created.key));
    assert_eq!(
        service.region_status()[0].breaker,
        BreakerState::Closed,
        "the region answered: its breaker closes"
    );
}

#[tokio::test(start_paused = true)]
async fn a_recovered_region_with_an_open_breaker_wraps_when_the_quorum_needs_it() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service(store.clone());
    service.get_or_create(&id("a")).await.unwrap();
    recovered_with_open_breaker(&regions, &service, "a").await;
    regions.0[1].set(Mode::Failing);

    service.get_or_create(&id("b")).await.unwrap();
    let stored = record(&*store, "b").await;
    assert_eq!(
        stored.current().copies.keys().collect::<Vec<_>>(),
        ["r1", "r3"]
    );
    assert_eq!(stored.current().missing, ["r2"]);
}

#[tokio::test(start_paused = true)]
async fn a_recovered_region_with_an_open_breaker_generates_when_no_other_region_can() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service(store.clone());
    service.get_or_create(&id("a")).await.unwrap();
    recovered_with_open_breaker(&regions, &service, "a").await;
    regions.0[1].set(Mode::FailingGenerate);
    regions.0[2].set(Mode::FailingGenerate);

    let created = service.get_or_create(&id("b")).await.unwrap();
    assert_eq!(created.region, "r1");
    assert!(record(&*store, "b").await.current().missing.is_empty());
}

/// With every region down, concurrent requests share one probe of an open region instead of
/// each sending it a call that will hang: the dead region sees one call, and every request
/// fails within about one KMS timeout.
#[tokio::test(start_paused = true)]
async fn concurrent_requests_share_one_probe_of_a_region_that_is_still_down() {
    let regions = Regions::new();
    let service = regions.service(Arc::new(MemoryStore::new()));
    service.get_or_create(&id("a")).await.unwrap();
    recovered_with_open_breaker(&regions, &service, "a").await;
    regions.0[0].set(Mode::Hanging);
    regions.0[1].set(Mode::Failing);
    regions.0[2].set(Mode::Failing);
    let calls = regions.0[0].calls();

    let started = tokio::time::Instant::now();
    let key_id = id("a");
    let reads = (0..10).map(|_| service.get_existing(&key_id));
    for result in futures::future::join_all(reads).await {
        assert!(matches!(
            result.unwrap_err().root(),
            ServiceError::RegionsUnavailable { .. }
        ));
    }
    assert_eq!(
        regions.0[0].calls() - calls,
        1,
        "one probe for ten requests"
    );
    let took = started.elapsed();
    assert!(took <= service.options().kms_timeout * 2, "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_create_whose_first_region_hangs_waits_a_hedge_delay_not_a_kms_timeout() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service(store.clone());
    service.get_or_create(&id("warm-up")).await.unwrap();
    regions.0[0].set(Mode::Hanging);

    let started = tokio::time::Instant::now();
    let created = service.get_or_create(&id("a")).await.unwrap();
    let took = started.elapsed();
    assert_eq!(created.region, "r2");
    assert!(took < service.options().kms_timeout, "{took:?}");
    assert_eq!(record(&*store, "a").await.current().missing, ["r1"]);
}

/// A process that restarts forgets which records it stored incomplete; its repairer sweeps
/// the store soon after start (within twice `first_sweep_after`), not hours later.
#[tokio::test(start_paused = true)]
async fn a_restarted_process_completes_records_left_incomplete_soon_after_start() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    regions.0[2].set(Mode::Failing);
    regions
        .service(store.clone())
        .get_or_create(&id("a"))
        .await
        .unwrap();
    assert_eq!(record(&*store, "a").await.current().missing, ["r3"]);
    regions.0[2].set(Mode::Healthy);

    let mut options = Regions::options();
    options.repair.interval = std::time::Duration::from_secs(1);
    let restarted = regions.service_with(store.clone(), options.clone());
    let repairer = tokio::spawn(async move { restarted.run_repairer().await });
    let first_sweep = options.repair.first_sweep_after.unwrap();
    tokio::time::sleep(first_sweep * 2 + options.repair.interval * 2).await;
    repairer.abort();
    assert!(
        record(&*store, "a").await.current().missing.is_empty(),
        "repaired by the first sweep after the restart"
    );
}

/// Repairs that failed while a region was away back off, up to 64 intervals; once the region
/// is back (its breaker closes again), they are all retried at the next round.
#[tokio::test(start_paused = true)]
async fn repairs_backing_off_are_retried_as_soon_as_the_missing_region_is_back() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service(store.clone());
    regions.0[2].set(Mode::Failing);
    service.get_or_create(&id("a")).await.unwrap();
    assert_eq!(service.repair_pending().await, 1, "r3 still down");
    service.get_or_create(&id("b")).await.unwrap();
    assert_eq!(service.region_status()[2].breaker, BreakerState::Open);

    regions.0[2].set(Mode::Healthy);
    tokio::time::sleep(service.options().breaker.open_for).await;
    service.get_or_create(&id("c")).await.unwrap();
    assert_eq!(
        service.region_status()[2].breaker,
        BreakerState::Closed,
        "a create's wrap probed the region and closed its breaker"
    );
    assert_eq!(
        service.repair_pending().await,
        0,
        "a, backing off after its failed repair, is retried at once"
    );
    for name in ["a", "b", "c"] {
        assert!(
            record(&*store, name).await.current().missing.is_empty(),
            "{name}"
        );
    }
}
