//! What a service built for a reloaded configuration (`KeyServiceBuilder::succeeding`) takes
//! over from the one it replaces: the work the old one knew about must not be forgotten.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rkms_core::{
    Clock, KeyId, KeyService, Kms, LifecycleOptions, MemoryStore, Record, RepairOptions,
    ServiceOptions, Store,
};
use support::{Mode, Regions};

fn id(s: &str) -> KeyId {
    KeyId::parse(s).unwrap()
}

/// The regions' successor of `previous`, with `options`.
fn successor(
    regions: &Regions,
    store: Arc<MemoryStore>,
    previous: &KeyService,
    options: ServiceOptions,
) -> KeyService {
    regions
        .0
        .iter()
        .fold(KeyService::builder(store), |b, kms| {
            b.region(Arc::clone(kms) as Arc<dyn Kms>)
        })
        .options(options)
        .succeeding(previous)
        .build()
        .unwrap()
}

async fn record(store: &MemoryStore, key_id: &str) -> Record {
    Record::decode(&store.get(&id(key_id)).await.unwrap().unwrap().bytes).unwrap()
}

#[tokio::test]
async fn a_successor_repairs_the_ids_its_predecessor_knew_to_lack_copies() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    regions.0[2].set(Mode::Failing);
    let before = regions.service(store.clone());
    before.get_or_create(&id("thin")).await.unwrap();
    assert_eq!(record(&store, "thin").await.current().missing, ["r3"]);
    regions.0[2].set(Mode::Healthy);

    let after = successor(&regions, store.clone(), &before, Regions::options());
    assert_eq!(after.repair_backlog(), 1);
    assert_eq!(after.repair_pending().await, 0);
    let repaired = record(&store, "thin").await;
    assert!(repaired.current().missing.is_empty());
    assert_eq!(repaired.current().copies.len(), 3);
}

#[tokio::test]
async fn a_successor_completes_the_deletions_its_predecessor_scheduled() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let now = Arc::new(AtomicU64::new(1_800_000_000));
    let options = ServiceOptions {
        lifecycle: LifecycleOptions {
            deletion_window: Duration::from_secs(60),
            ..LifecycleOptions::default()
        },
        clock: Clock::from_fn({
            let now = Arc::clone(&now);
            move || now.load(Ordering::SeqCst)
        }),
        repair: RepairOptions {
            interval: Duration::from_millis(20),
            sweep_interval: None,
            ..RepairOptions::default()
        },
        ..Regions::options()
    };
    let before = regions.service_with(store.clone(), options.clone());
    before.get_or_create(&id("leaving")).await.unwrap();
    before.schedule_deletion(&id("leaving")).await.unwrap();

    let after = successor(&regions, store.clone(), &before, options);
    drop(before);
    now.fetch_add(60, Ordering::SeqCst);
    let repairer = tokio::spawn({
        let after = after.clone();
        async move { after.run_repairer().await }
    });
    let mut destroyed = false;
    for _ in 0..100 {
        let versions = record(&store, "leaving").await.versions;
        if versions.iter().all(|v| v.copies.is_empty()) {
            destroyed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    repairer.abort();
    assert!(
        destroyed,
        "the successor completed the deletion its predecessor scheduled"
    );
}
