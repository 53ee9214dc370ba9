//! The get-or-create protocol over MemoryStore and a fault-injecting in-memory KMS.

mod support;

use support::wrapped::{StoreWrapper, Wrapped};
use support::{Mode, Regions};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use proptest::prelude::*;
use rkms_core::{
    DataKey, EncryptionContext, KeyId, KeyService, Kms, KmsAction, KmsError, MemoryStore,
    PutOutcome, Record, ServiceError, Store, ID_CONTEXT_KEY,
};

fn id(s: &str) -> KeyId {
    KeyId::parse(s).unwrap()
}

async fn record_count(store: &MemoryStore) -> usize {
    store.list(None, 1000).await.unwrap().ids.len()
}

#[tokio::test]
async fn same_id_gives_the_same_key_and_different_ids_differ() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service(store.clone());
    let first = service.get_or_create(&id("a")).await.unwrap();
    assert!(first.created);
    assert_eq!(first.key.len(), 32);
    let again = service.get_or_create(&id("a")).await.unwrap();
    assert!(!again.created);
    assert_eq!(first.key, again.key);
    let other = service.get_or_create(&id("b")).await.unwrap();
    assert_ne!(first.key, other.key);
    assert_eq!(record_count(&store).await, 2);
}

#[tokio::test]
async fn get_existing_never_creates_and_reads_what_exists() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service(store.clone());
    assert!(service.get_existing(&id("a")).await.unwrap().is_none());
    assert_eq!(record_count(&store).await, 0);
    let created = service.get_or_create(&id("a")).await.unwrap();
    let read = service.get_existing(&id("a")).await.unwrap().unwrap();
    assert!(!read.created);
    assert_eq!(read.key, created.key);
    let uncached = regions.service(store.clone());
    let read = uncached.get_existing(&id("a")).await.unwrap().unwrap();
    assert!(!read.created && !read.from_cache);
    assert_eq!(read.key, created.key);
}

#[tokio::test]
async fn a_new_record_holds_one_copy_per_region_and_no_plaintext() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let issued = regions
        .service(store.clone())
        .get_or_create(&id("a"))
        .await
        .unwrap();
    let stored = store.get(&id("a")).await.unwrap().unwrap();
    let record = Record::decode(&stored.bytes).unwrap();
    assert_eq!(
        record.current().copies.keys().collect::<Vec<_>>(),
        ["r1", "r2", "r3"]
    );
    assert_eq!(record.current().copies["r2"].master_key, "k2");
    assert!(record.current().missing.is_empty());
    let key = issued.key.expose_secret();
    assert!(!stored.bytes.windows(key.len()).any(|w| w == key));
}

#[tokio::test]
async fn every_kms_call_carries_the_id_context() {
    let regions = Regions::new();
    let service = regions.service(Arc::new(MemoryStore::new()));
    service.get_or_create(&id("tenant/7")).await.unwrap();
    service.get_or_create(&id("tenant/7")).await.unwrap();
    let contexts: Vec<_> = regions
        .0
        .iter()
        .flat_map(|k| k.contexts.lock().unwrap().clone())
        .collect();
    assert_eq!(contexts.len(), 4, "generate + two wraps + one decrypt");
    for context in contexts {
        assert_eq!(context.entries().len(), 1);
        assert_eq!(context.entries()[ID_CONTEXT_KEY], "tenant/7");
    }
}

#[tokio::test]
async fn failing_first_region_is_served_by_the_second() {
    let regions = Regions::new();
    let service = regions.service(Arc::new(MemoryStore::new()));
    let created = service.get_or_create(&id("a")).await.unwrap();
    regions.0[0].set(Mode::Failing);
    let read = service.get_or_create(&id("a")).await.unwrap();
    assert_eq!(read.region, "r2");
    assert_eq!(read.key, created.key);
    let states: Vec<_> = service
        .region_status()
        .into_iter()
        .map(|r| r.breaker)
        .collect();
    assert_eq!(
        states,
        [rkms_core::BreakerState::Closed; 3],
        "one failure does not open a breaker"
    );
}

#[tokio::test(start_paused = true)]
async fn hanging_first_region_is_served_by_the_second_after_the_hedge_delay() {
    let regions = Regions::new();
    let service = regions.service(Arc::new(MemoryStore::new()));
    let created = service.get_or_create(&id("a")).await.unwrap();
    regions.0[0].set(Mode::Hanging);
    let started = tokio::time::Instant::now();
    let read = service.get_or_create(&id("a")).await.unwrap();
    assert_eq!(read.region, "r2");
    assert_eq!(read.key, created.key);
    let waited = started.elapsed();
    let hedge = service.options().hedge.floor;
    assert!(
        waited >= hedge && waited < Duration::from_millis(200),
        "hedged after {waited:?}, well before the KMS timeout"
    );
}

#[tokio::test]
async fn create_generates_in_the_next_region_when_the_first_cannot() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service(store.clone());
    regions.0[0].set(Mode::FailingGenerate);
    let created = service.get_or_create(&id("a")).await.unwrap();
    assert_eq!(created.region, "r2");
    let record = Record::decode(&store.get(&id("a")).await.unwrap().unwrap().bytes).unwrap();
    assert_eq!(record.current().copies.len(), 3, "r1 still wraps a copy");
    regions.0[0].set(Mode::Healthy);
    let read = service.get_or_create(&id("a")).await.unwrap();
    assert_eq!(read.region, "r1");
    assert_eq!(read.key, created.key);
}

#[tokio::test]
async fn create_fails_and_writes_nothing_without_a_quorum() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service(store.clone());
    regions.0[0].set(Mode::Failing);
    regions.0[1].set(Mode::Failing);
    let err = service.get_or_create(&id("a")).await.unwrap_err();
    assert!(
        matches!(
            err,
            ServiceError::RegionsUnavailable {
                action: KmsAction::Wrap,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(record_count(&store).await, 0);
}

#[tokio::test]
async fn every_region_failing_gives_a_clear_error_and_writes_nothing() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service(store.clone());
    for kms in &regions.0 {
        kms.set(Mode::Failing);
    }
    let err = service.get_or_create(&id("a")).await.unwrap_err();
    assert!(err.is_unavailable());
    let message = err.to_string();
    assert!(
        message.contains("no KMS region could generate")
            && message.contains("r1")
            && message.contains("r3"),
        "{message}"
    );
    assert_eq!(record_count(&store).await, 0);

    for kms in &regions.0 {
        kms.set(Mode::Healthy);
    }
    service.get_or_create(&id("b")).await.unwrap();
    for kms in &regions.0 {
        kms.set(Mode::Failing);
    }
    let err = service.get_or_create(&id("b")).await.unwrap_err();
    assert!(
        matches!(err, ServiceError::RegionsUnavailable { action: KmsAction::Decrypt, ref failures, .. } if failures.len() == 3)
    );
}

#[tokio::test]
async fn requiring_every_region_refuses_a_create_while_one_is_down() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let options = rkms_core::ServiceOptions {
        min_regions: 3,
        ..Regions::options()
    };
    let service = regions.service_with(store.clone(), options);
    regions.0[2].set(Mode::Failing);
    let err = service.get_or_create(&id("a")).await.unwrap_err();
    assert!(matches!(
        err,
        ServiceError::RegionsUnavailable {
            action: KmsAction::Wrap,
            ..
        }
    ));
    assert_eq!(record_count(&store).await, 0);
}

#[tokio::test]
async fn a_record_copied_under_another_id_does_not_decrypt() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service(store.clone());
    service.get_or_create(&id("victim")).await.unwrap();
    let stored = store.get(&id("victim")).await.unwrap().unwrap();
    let mut record = Record::decode(&stored.bytes).unwrap();
    record.id = "attacker".into();
    assert!(matches!(
        store
            .put_if_absent(&id("attacker"), record.encode())
            .await
            .unwrap(),
        PutOutcome::Created(_)
    ));
    let err = service.get_or_create(&id("attacker")).await.unwrap_err();
    match &err {
        ServiceError::IntegrityFailure {
            id: failed,
            failures,
        } => {
            assert_eq!(failed.as_str(), "attacker");
            assert_eq!(failures.len(), 3);
            assert!(failures
                .iter()
                .all(|f| matches!(f, KmsError::Refused { .. })));
        }
        other => panic!("unexpected {other}"),
    }
    assert!(!err.is_unavailable(), "a refusal is not an outage: {err}");

    // One region refusing and another not answering may be an outage: retry later.
    regions.0[1].set(Mode::Failing);
    let err = service.get_or_create(&id("attacker")).await.unwrap_err();
    assert!(
        matches!(
            err,
            ServiceError::RegionsUnavailable {
                action: KmsAction::Decrypt,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_corrupt_record_is_a_clear_error_and_other_ids_still_work() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service(store.clone());
    store
        .put_if_absent(&id("broken"), b"not a record".to_vec())
        .await
        .unwrap();
    let err = service.get_or_create(&id("broken")).await.unwrap_err();
    assert!(matches!(err, ServiceError::CorruptRecord { .. }));
    assert!(!err.is_unavailable());
    service.get_or_create(&id("fine")).await.unwrap();
}

/// A store whose reads always miss, so every caller goes on to create: forces the lost race.
#[derive(Debug)]
struct ReadsAlwaysMiss(MemoryStore);

#[async_trait]
impl StoreWrapper for ReadsAlwaysMiss {
    fn inner(&self) -> &MemoryStore {
        &self.0
    }

    async fn get(&self, _: &KeyId) -> Result<Option<rkms_core::Stored>, rkms_core::StoreError> {
        Ok(None)
    }
}

#[tokio::test]
async fn loser_of_a_race_returns_the_winners_key() {
    let regions = Regions::new();
    let service = regions.service(Arc::new(Wrapped(ReadsAlwaysMiss(MemoryStore::new()))));
    let winner = service.get_or_create(&id("a")).await.unwrap();
    let loser = service.get_or_create(&id("a")).await.unwrap();
    assert!(winner.created);
    assert!(!loser.created);
    assert_eq!(winner.key, loser.key);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_store_is_bounded_by_the_store_timeout() {
    #[derive(Debug)]
    struct Hangs;
    #[async_trait]
    impl Store for Hangs {
        async fn get(&self, _: &KeyId) -> Result<Option<rkms_core::Stored>, rkms_core::StoreError> {
            std::future::pending().await
        }
        async fn put_if_absent(
            &self,
            _: &KeyId,
            _: Vec<u8>,
        ) -> Result<PutOutcome, rkms_core::StoreError> {
            std::future::pending().await
        }
        async fn compare_and_swap(
            &self,
            _: &KeyId,
            _: rkms_core::Version,
            _: Vec<u8>,
        ) -> Result<rkms_core::Version, rkms_core::StoreError> {
            std::future::pending().await
        }
        async fn delete(&self, _: &KeyId) -> Result<bool, rkms_core::StoreError> {
            std::future::pending().await
        }
        async fn list(
            &self,
            _: Option<&rkms_core::ListCursor>,
            _: usize,
        ) -> Result<rkms_core::ListPage, rkms_core::StoreError> {
            std::future::pending().await
        }
    }
    let regions = Regions::new();
    let service = regions.service(Arc::new(Hangs));
    let err = service.get_or_create(&id("a")).await.unwrap_err();
    assert!(matches!(err, ServiceError::StoreTimeout(_)));
    assert!(err.is_unavailable());
    assert_eq!(regions.total_calls(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Many concurrent callers over several services sharing one store converge on one key per
    /// id and leave exactly one record per id.
    #[test]
    fn concurrent_callers_over_several_services_converge(
        services in 1usize..5,
        callers in 2usize..40,
        ids in 1usize..4,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
        rt.block_on(async {
            let regions = Regions::new();
            let store = Arc::new(MemoryStore::new());
            let services: Vec<Arc<KeyService>> =
                (0..services).map(|_| Arc::new(regions.service(store.clone()))).collect();
            let tasks: Vec<_> = (0..callers)
                .map(|i| {
                    let service = Arc::clone(&services[i % services.len()]);
                    let key_id = id(&format!("id-{}", i % ids));
                    tokio::spawn(async move { (key_id.clone(), service.get_or_create(&key_id).await.unwrap()) })
                })
                .collect();
            let mut by_id: std::collections::BTreeMap<KeyId, Vec<DataKey>> = Default::default();
            let mut created = 0;
            for task in tasks {
                let (key_id, issued) = task.await.unwrap();
                created += usize::from(issued.created);
                by_id.entry(key_id).or_default().push(issued.key);
            }
            for keys in by_id.values() {
                prop_assert!(keys.iter().all(|k| k == &keys[0]));
            }
            prop_assert_eq!(created, by_id.len(), "one creator per id");
            prop_assert_eq!(record_count(&store).await, by_id.len());
            Ok(())
        })?;
    }
}

/// The bytes of a record claiming to be the original Go RKMS's, as anyone who can write the
/// store could write them: copies wrapped with no context, and the flag that once said so.
async fn legacy_bytes(regions: &Regions, record_id: &str, key: &DataKey) -> Vec<u8> {
    let record = legacy_record(regions, record_id, key).await;
    let mut json: serde_json::Value = serde_json::from_slice(&record.encode()).unwrap();
    json["wrapped_without_context"] = serde_json::Value::Bool(true);
    serde_json::to_vec(&json).unwrap()
}

async fn legacy_record(regions: &Regions, record_id: &str, key: &DataKey) -> Record {
    let mut copies = std::collections::BTreeMap::new();
    for kms in &regions.0 {
        let ciphertext = kms
            .inner
            .encrypt(key, &EncryptionContext::empty())
            .await
            .unwrap();
        copies.insert(
            kms.region().to_owned(),
            rkms_core::WrappedCopy {
                master_key: kms.master_key().into(),
                ciphertext,
            },
        );
    }
    let mut record = Record::new(
        record_id,
        rkms_core::KeyVersion {
            number: 1,
            created_at: 0,
            copies,
            missing: Vec::new(),
        },
    );
    record.wrapped_without_context = true;
    record
}

#[tokio::test]
async fn a_legacy_flag_in_stored_bytes_is_refused_so_keys_cannot_be_substituted() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service(store.clone());
    let key_of_a = DataKey::new(vec![5; 32]);

    // A's context-free copies planted under B, naming B: before, B was served A's key.
    store
        .put_if_absent(&id("b"), legacy_bytes(&regions, "b", &key_of_a).await)
        .await
        .unwrap();
    let err = service.get_or_create(&id("b")).await.unwrap_err();
    assert!(matches!(err, ServiceError::CorruptRecord { .. }), "{err}");

    // Planted over an existing id, it does not change that id's key either.
    let original = service.get_or_create(&id("c")).await.unwrap();
    let stored = store.get(&id("c")).await.unwrap().unwrap();
    store
        .compare_and_swap(
            &id("c"),
            stored.version,
            legacy_bytes(&regions, "c", &key_of_a).await,
        )
        .await
        .unwrap();
    let err = service.get_or_create(&id("c")).await.unwrap_err();
    assert!(matches!(err, ServiceError::CorruptRecord { .. }), "{err}");
    assert_ne!(original.key, key_of_a);
}

/// A store that, like DynamoDB's, translates the original Go RKMS's items for some ids: they
/// are read as legacy until a compare-and-set writes RKMS's own record over them.
#[derive(Debug, Default)]
struct TranslatingStore {
    inner: MemoryStore,
    originals: std::sync::Mutex<std::collections::HashSet<KeyId>>,
}

#[async_trait]
impl StoreWrapper for TranslatingStore {
    fn inner(&self) -> &MemoryStore {
        &self.inner
    }

    async fn get(&self, id: &KeyId) -> Result<Option<rkms_core::Stored>, rkms_core::StoreError> {
        let legacy = self.originals.lock().unwrap().contains(id);
        Ok(self
            .inner
            .get(id)
            .await?
            .map(|stored| rkms_core::Stored { legacy, ..stored }))
    }

    async fn compare_and_swap(
        &self,
        id: &KeyId,
        expected: rkms_core::Version,
        bytes: Vec<u8>,
    ) -> Result<rkms_core::Version, rkms_core::StoreError> {
        let version = self.inner.compare_and_swap(id, expected, bytes).await?;
        self.originals.lock().unwrap().remove(id);
        Ok(version)
    }
}

#[tokio::test]
async fn legacy_items_translated_by_their_store_are_served_then_upgraded_on_read() {
    let regions = Regions::new();
    let store = Arc::new(Wrapped(TranslatingStore::default()));
    let service = regions.service(store.clone());
    let key = DataKey::new(vec![5; 32]);
    store
        .inner
        .put_if_absent(
            &id("old"),
            legacy_record(&regions, "old", &key).await.encode(),
        )
        .await
        .unwrap();
    store.originals.lock().unwrap().insert(id("old"));
    assert_eq!(service.get_or_create(&id("old")).await.unwrap().key, key);

    // The read upgraded the record in the background: every copy is now bound to the id.
    let mut upgraded = None;
    for _ in 0..100 {
        if !store.originals.lock().unwrap().contains(&id("old")) {
            upgraded = store.get(&id("old")).await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let upgraded = Record::decode(&upgraded.expect("upgraded on read").bytes).unwrap();
    assert_eq!(upgraded.current().copies.len(), 3);
    let context = EncryptionContext::for_id(&id("old"));
    for kms in &regions.0 {
        let copy = &upgraded.current().copies[kms.region()].ciphertext;
        assert_eq!(kms.inner.decrypt(copy, &context).await.unwrap(), key);
        assert!(kms
            .inner
            .decrypt(copy, &EncryptionContext::empty())
            .await
            .is_err());
    }
    assert_eq!(service.get_or_create(&id("old")).await.unwrap().key, key);

    // A translated item that names another id is refused.
    store
        .inner
        .put_if_absent(
            &id("moved"),
            legacy_record(&regions, "elsewhere", &key).await.encode(),
        )
        .await
        .unwrap();
    store.originals.lock().unwrap().insert(id("moved"));
    let err = service.get_or_create(&id("moved")).await.unwrap_err();
    assert!(matches!(err, ServiceError::CorruptRecord { .. }), "{err}");
}

#[tokio::test]
async fn a_legacy_item_is_upgraded_before_a_rotation_and_stays_readable_as_version_1() {
    let regions = Regions::new();
    let store = Arc::new(Wrapped(TranslatingStore::default()));
    let service = regions.service(store.clone());
    let key = DataKey::new(vec![6; 32]);
    for name in ["rotated", "deleted"] {
        store
            .inner
            .put_if_absent(
                &id(name),
                legacy_record(&regions, name, &key).await.encode(),
            )
            .await
            .unwrap();
        store.originals.lock().unwrap().insert(id(name));
    }

    assert_eq!(service.rotate(&id("rotated")).await.unwrap(), 2);
    assert!(!store.originals.lock().unwrap().contains(&id("rotated")));
    assert_eq!(
        service.get_version(&id("rotated"), 1).await.unwrap().key,
        key
    );
    let current = service.get_or_create(&id("rotated")).await.unwrap();
    assert_eq!(current.version, 2);
    assert_ne!(current.key, key);

    // Any change writes RKMS's own format, which carries no legacy mark: the copies are
    // bound to the id first, or a restored key could not be read.
    service.schedule_deletion(&id("deleted")).await.unwrap();
    service.restore(&id("deleted")).await.unwrap();
    assert_eq!(
        service.get_or_create(&id("deleted")).await.unwrap().key,
        key
    );
}

/// Holds a record on the first read and loses it after, as when a delete lands between a
/// reader's two store reads; counts creates.
#[derive(Debug, Default)]
struct VanishingStore {
    inner: MemoryStore,
    reads: std::sync::atomic::AtomicUsize,
    creates: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl StoreWrapper for VanishingStore {
    fn inner(&self) -> &MemoryStore {
        &self.inner
    }

    async fn get(&self, id: &KeyId) -> Result<Option<rkms_core::Stored>, rkms_core::StoreError> {
        let read = self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if read == 0 {
            self.inner.get(id).await
        } else {
            Ok(None)
        }
    }

    async fn put_if_absent(
        &self,
        id: &KeyId,
        bytes: Vec<u8>,
    ) -> Result<PutOutcome, rkms_core::StoreError> {
        self.creates
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.put_if_absent(id, bytes).await
    }
}

#[tokio::test]
async fn a_reader_never_creates_even_when_the_record_vanishes_mid_read() {
    let regions = Regions::new();
    let elsewhere = Arc::new(MemoryStore::new());
    regions
        .service(elsewhere.clone())
        .get_or_create(&id("a"))
        .await
        .unwrap();
    let bytes = elsewhere.get(&id("a")).await.unwrap().unwrap().bytes;
    for cache in [false, true] {
        let store = Arc::new(Wrapped(VanishingStore::default()));
        store
            .inner
            .put_if_absent(&id("a"), bytes.clone())
            .await
            .unwrap();
        let mut options = Regions::options();
        options.cache.enabled = cache;
        let reader = regions.service_with(store.clone(), options);
        if let Some(read) = reader.get_existing(&id("a")).await.unwrap() {
            assert!(!read.created);
        }
        assert_eq!(
            store.creates.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the reader made a record (cache {cache})"
        );
    }
}
