//! A fault-injecting in-memory KMS for the protocol tests.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

pub(crate) mod wrapped;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rkms_core::{
    CacheOptions, DataKey, EncryptionContext, GeneratedKey, KeyService, Kms, KmsError,
    LocalKeyring, LocalKms, ServiceOptions, Store,
};

/// How a [`FaultyKms`] region behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Healthy,
    Failing,
    Hanging,
    /// Answers correctly, after a delay.
    Slow(Duration),
    /// Only `generate_data_key` fails; encrypt and decrypt work.
    FailingGenerate,
    /// Every call answers that the request quota is spent.
    Throttling,
}

/// A LocalKms region that can be told to fail or hang, counting calls and recording contexts.
#[derive(Debug)]
pub(crate) struct FaultyKms {
    pub(crate) inner: LocalKms,
    mode: Mutex<Mode>,
    calls: AtomicUsize,
    /// Calls dropped before they finished (hedged over).
    pub(crate) cancelled: Arc<AtomicUsize>,
    pub(crate) contexts: Mutex<Vec<EncryptionContext>>,
}

impl FaultyKms {
    pub(crate) fn new(inner: LocalKms) -> Arc<Self> {
        Arc::new(Self {
            inner,
            mode: Mutex::new(Mode::Healthy),
            calls: AtomicUsize::new(0),
            cancelled: Arc::default(),
            contexts: Mutex::default(),
        })
    }

    pub(crate) fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Counts the call, yields so that concurrent callers interleave, then fails or hangs as told.
    async fn enter(&self, context: &EncryptionContext, generating: bool) -> Result<(), KmsError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.contexts.lock().unwrap().push(context.clone());
        tokio::task::yield_now().await;
        let mode = *self.mode.lock().unwrap();
        let mut guard = CancelGuard(Some(Arc::clone(&self.cancelled)));
        let result = match mode {
            Mode::Slow(delay) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
            Mode::Healthy => Ok(()),
            Mode::FailingGenerate if !generating => Ok(()),
            Mode::Failing | Mode::FailingGenerate => Err(KmsError::Unavailable {
                region: self.region().into(),
                message: "injected failure".into(),
            }),
            Mode::Throttling => Err(KmsError::Throttled {
                region: self.region().into(),
                message: "injected throttling".into(),
            }),
            Mode::Hanging => std::future::pending().await,
        };
        guard.0 = None;
        result
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
    fn previous_master_keys(&self) -> &[String] {
        self.inner.previous_master_keys()
    }
    async fn decrypt_under(
        &self,
        master_key: &str,
        ciphertext: &[u8],
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        self.enter(context, false).await?;
        self.inner
            .decrypt_under(master_key, ciphertext, context)
            .await
    }
}

/// Three regions over one keyring, shared by every service in a test (as servers share a KMS).
pub(crate) struct Regions(pub(crate) Vec<Arc<FaultyKms>>);

impl Regions {
    pub(crate) fn new() -> Self {
        let ring = LocalKeyring::generate(&["k1", "k2", "k3"]).unwrap();
        Self(
            [("r1", "k1"), ("r2", "k2"), ("r3", "k3")]
                .iter()
                .map(|(region, key)| FaultyKms::new(ring.region(region, key).unwrap()))
                .collect(),
        )
    }

    /// A service over these regions with short timeouts and no cache, so that every call
    /// reaches the store and KMS.
    pub(crate) fn service(&self, store: Arc<dyn Store>) -> KeyService {
        self.service_with(store, Self::options())
    }

    /// The options [`Regions::service`] uses.
    pub(crate) fn options() -> ServiceOptions {
        ServiceOptions {
            kms_timeout: Duration::from_millis(200),
            cache: CacheOptions {
                enabled: false,
                ..CacheOptions::default()
            },
            ..ServiceOptions::default()
        }
    }

    pub(crate) fn service_with(
        &self,
        store: Arc<dyn Store>,
        options: ServiceOptions,
    ) -> KeyService {
        self.0
            .iter()
            .fold(KeyService::builder(store), |b, kms| {
                b.region(Arc::clone(kms) as Arc<dyn Kms>)
            })
            .options(options)
            .build()
            .unwrap()
    }

    pub(crate) fn total_calls(&self) -> usize {
        self.0.iter().map(|k| k.calls()).sum()
    }
}

/// Counts a call as cancelled when dropped before it finished.
struct CancelGuard(Option<Arc<AtomicUsize>>);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(counter) = self.0.take() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }
}
