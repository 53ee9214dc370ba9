//! What a service built for a reloaded configuration (`KeyServiceBuilder::succeeding`) takes
//! over from the one it replaces: the work the old one knew about must not be forgotten.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rkms_core::{
    Clock, KeyId, KeyService, Kms, LifecycleOptions, ListCursor, ListPage, MemoryStore, Record,
    RepairOptions, ServiceOptions, Store, StoreError, SweepSchedule,
};
use support::wrapped::{StoreWrapper, Wrapped};
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

/// A store whose listings can be held up, counting them: a sweep starts with one.
#[derive(Debug, Default)]
struct HeldListings {
    inner: MemoryStore,
    held: AtomicBool,
    listings: AtomicUsize,
}

#[async_trait]
impl StoreWrapper for HeldListings {
    fn inner(&self) -> &MemoryStore {
        &self.inner
    }

    async fn list(
        &self,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        self.listings.fetch_add(1, Ordering::SeqCst);
        if self.held.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.list(cursor, limit).await
    }
}

async fn wait_for_listings(store: &HeldListings, count: usize) {
    for _ in 0..200 {
        if store.listings.load(Ordering::SeqCst) >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no sweep started");
}

#[tokio::test]
async fn a_sweep_cut_short_by_a_reload_is_still_due_for_the_successor() {
    let regions = Regions::new();
    let store = Arc::new(Wrapped(HeldListings::default()));
    store.held.store(true, Ordering::SeqCst);
    let options = ServiceOptions {
        repair: RepairOptions {
            interval: Duration::from_millis(10),
            sweep_interval: None,
            ..RepairOptions::default()
        },
        ..Regions::options()
    };
    let schedule = Arc::new(SweepSchedule::new(&options.repair));
    schedule.sweep_now();
    let before = regions.service_with(store.clone(), options.clone());
    let repairer = tokio::spawn({
        let (before, schedule) = (before.clone(), Arc::clone(&schedule));
        async move { before.run_repairer_with(&schedule).await }
    });
    wait_for_listings(&store, 1).await;
    repairer.abort();

    store.held.store(false, Ordering::SeqCst);
    let after = regions
        .0
        .iter()
        .fold(KeyService::builder(store.clone()), |b, kms| {
            b.region(Arc::clone(kms) as Arc<dyn Kms>)
        })
        .options(options)
        .succeeding(&before)
        .build()
        .unwrap();
    let repairer = tokio::spawn({
        let schedule = Arc::clone(&schedule);
        async move { after.run_repairer_with(&schedule).await }
    });
    wait_for_listings(&store, 2).await;
    // Done, and without a sweep_interval not due again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    repairer.abort();
    assert_eq!(store.listings.load(Ordering::SeqCst), 2);
}
