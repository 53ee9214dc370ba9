//! The get-or-create protocol over MemoryStore and a fault-injecting in-memory KMS.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use proptest::prelude::*;
use rkms_core::{
    DataKey, EncryptionContext, GeneratedKey, KeyId, KeyService, Kms, KmsAction, KmsError,
    LocalKeyring, LocalKms, MemoryStore, PutOutcome, Record, ServiceError, ServiceOptions, Store,
    ID_CONTEXT_KEY,
};

/// How a [`FaultyKms`] region behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Healthy,
    Failing,
    Hanging,
    /// Only `generate_data_key` fails; encrypt and decrypt work.
    FailingGenerate,
}

/// A LocalKms region that can be told to fail or hang, counting calls and recording contexts.
#[derive(Debug)]
struct FaultyKms {
    inner: LocalKms,
    mode: Mutex<Mode>,
    calls: AtomicUsize,
    contexts: Mutex<Vec<EncryptionContext>>,
}

impl FaultyKms {
    fn new(inner: LocalKms) -> Arc<Self> {
        Arc::new(Self {
            inner,
            mode: Mutex::new(Mode::Healthy),
            calls: AtomicUsize::new(0),
            contexts: Mutex::default(),
        })
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Counts the call, yields so that concurrent callers interleave, then fails or hangs as told.
    async fn enter(&self, context: &EncryptionContext, generating: bool) -> Result<(), KmsError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.contexts.lock().unwrap().push(context.clone());
        tokio::task::yield_now().await;
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::Healthy => Ok(()),
            Mode::FailingGenerate if !generating => Ok(()),
            Mode::Failing | Mode::FailingGenerate => Err(KmsError::Unavailable {
                region: self.region().into(),
                message: "injected failure".into(),
            }),
            Mode::Hanging => std::future::pending().await,
        }
    }
}

#[async_trait]
impl Kms for FaultyKms {
    fn region(&self) -> &str {
        self.inner.region()
    }
    fn master_key(&self) -> &str {
        self.inner.master_key()
    }
    async fn generate_data_key(
        &self,
        len: usize,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError> {
        self.enter(context, true).await?;
        self.inner.generate_data_key(len, context).await
    }
    async fn encrypt(
        &self,
        key: &DataKey,
        context: &EncryptionContext,
    ) -> Result<Vec<u8>, KmsError> {
        self.enter(context, false).await?;
        self.inner.encrypt(key, context).await
    }
    async fn decrypt(
        &self,
        ciphertext: &[u8],
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        self.enter(context, false).await?;
        self.inner.decrypt(ciphertext, context).await
    }
}

/// Three regions over one keyring, shared by every service in a test (as servers share a KMS).
struct Regions(Vec<Arc<FaultyKms>>);

impl Regions {
    fn new() -> Self {
        let ring = LocalKeyring::generate(&["k1", "k2", "k3"]).unwrap();
        Self(
            [("r1", "k1"), ("r2", "k2"), ("r3", "k3")]
                .iter()
                .map(|(region, key)| FaultyKms::new(ring.region(region, key).unwrap()))
                .collect(),
        )
    }

    fn service(&self, store: Arc<dyn Store>) -> KeyService {
        let options = ServiceOptions {
            kms_timeout: Duration::from_millis(200),
            ..ServiceOptions::default()
        };
        self.0
            .iter()
            .fold(KeyService::builder(store), |b, kms| {
                b.region(Arc::clone(kms) as Arc<dyn Kms>)
            })
            .options(options)
            .build()
            .unwrap()
    }

    fn total_calls(&self) -> usize {
        self.0.iter().map(|k| k.calls()).sum()
    }
}

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
    assert_eq!(record.copies.keys().collect::<Vec<_>>(), ["r1", "r2", "r3"]);
    assert_eq!(record.copies["r2"].master_key, "k2");
    assert!(record.missing.is_empty());
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
    assert_eq!(service.usable_regions(), ["r2", "r3"]);
}

#[tokio::test(start_paused = true)]
async fn hanging_first_region_is_served_by_the_second_after_the_kms_timeout() {
    let regions = Regions::new();
    let service = regions.service(Arc::new(MemoryStore::new()));
    let created = service.get_or_create(&id("a")).await.unwrap();
    regions.0[0].set(Mode::Hanging);
    let started = tokio::time::Instant::now();
    let read = service.get_or_create(&id("a")).await.unwrap();
    assert_eq!(read.region, "r2");
    assert_eq!(read.key, created.key);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_millis(300),
        "{waited:?}"
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
    assert_eq!(record.copies.len(), 3, "r1 still wraps a copy");
    regions.0[0].set(Mode::Healthy);
    let read = service.get_or_create(&id("a")).await.unwrap();
    assert_eq!(read.region, "r1");
    assert_eq!(read.key, created.key);
}

#[tokio::test]
async fn create_fails_and_writes_nothing_while_any_region_is_down() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service(store.clone());
    regions.0[0].set(Mode::Failing);
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
async fn one_region_failing_to_wrap_writes_nothing() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service(store.clone());
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
    match err {
        ServiceError::RegionsUnavailable {
            action: KmsAction::Decrypt,
            failures,
            ..
        } => {
            assert_eq!(failures.len(), 3);
            assert!(failures
                .iter()
                .all(|f| matches!(f, KmsError::Refused { .. })));
        }
        other => panic!("unexpected {other}"),
    }
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
impl Store for ReadsAlwaysMiss {
    async fn get(&self, _: &KeyId) -> Result<Option<rkms_core::Stored>, rkms_core::StoreError> {
        Ok(None)
    }
    async fn put_if_absent(
        &self,
        id: &KeyId,
        bytes: Vec<u8>,
    ) -> Result<PutOutcome, rkms_core::StoreError> {
        self.0.put_if_absent(id, bytes).await
    }
    async fn compare_and_swap(
        &self,
        id: &KeyId,
        v: rkms_core::Version,
        b: Vec<u8>,
    ) -> Result<rkms_core::Version, rkms_core::StoreError> {
        self.0.compare_and_swap(id, v, b).await
    }
    async fn delete(&self, id: &KeyId) -> Result<bool, rkms_core::StoreError> {
        self.0.delete(id).await
    }
    async fn list(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<rkms_core::ListPage, rkms_core::StoreError> {
        self.0.list(after, limit).await
    }
}

#[tokio::test]
async fn loser_of_a_race_returns_the_winners_key() {
    let regions = Regions::new();
    let service = regions.service(Arc::new(ReadsAlwaysMiss(MemoryStore::new())));
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
            _: Option<&KeyId>,
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

#[tokio::test]
async fn legacy_records_wrapped_without_context_are_read() {
    let regions = Regions::new();
    let store = Arc::new(MemoryStore::new());
    let service = regions.service(store.clone());
    let key = DataKey::new(vec![5; 32]);
    let mut copies = std::collections::BTreeMap::new();
    for kms in &regions.0 {
        let ciphertext = kms
            .inner
            .encrypt(&key, &EncryptionContext::empty())
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
    let legacy = Record {
        format: rkms_core::RECORD_FORMAT,
        id: "old".into(),
        created_at: 0,
        copies,
        missing: Vec::new(),
        wrapped_without_context: true,
    };
    store
        .put_if_absent(&id("old"), legacy.encode())
        .await
        .unwrap();
    assert_eq!(service.get_or_create(&id("old")).await.unwrap().key, key);

    let mut moved = legacy.clone();
    moved.id = "elsewhere".into();
    store
        .put_if_absent(&id("moved"), moved.encode())
        .await
        .unwrap();
    let err = service.get_or_create(&id("moved")).await.unwrap_err();
    assert!(matches!(err, ServiceError::CorruptRecord { .. }), "{err}");
}
