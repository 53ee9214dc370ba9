//! `KeyService`: the get-or-create protocol over one store and several KMS regions.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use tracing::{debug, warn};

use crate::kms::{GeneratedKey, Kms, KmsError};
use crate::record::{Record, WrappedCopy, RECORD_FORMAT};
use crate::store::{PutOutcome, Store, StoreError, Stored};
use crate::{DataKey, EncryptionContext, KeyId};

/// Largest data key a service hands out, in bytes (AWS KMS's `NumberOfBytes` limit).
pub const MAX_DATA_KEY_LEN: usize = 1024;

/// Tunables of a [`KeyService`].
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Length of generated data keys in bytes (default 32, AES-256).
    pub data_key_len: usize,
    /// Longest wait for one KMS call before the next region is tried (default 2 s).
    pub kms_timeout: Duration,
    /// Longest wait for one store call (default 2 s).
    pub store_timeout: Duration,
    /// Longest a whole `get_or_create` may take (default 10 s).
    pub request_deadline: Duration,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            data_key_len: 32,
            kms_timeout: Duration::from_secs(2),
            store_timeout: Duration::from_secs(2),
            request_deadline: Duration::from_secs(10),
        }
    }
}

/// A data key handed out by [`KeyService::get_or_create`], with how it was obtained.
#[derive(Debug)]
pub struct IssuedKey {
    /// The plaintext data key.
    pub key: DataKey,
    /// The region that generated (on create) or unwrapped (on read) the key.
    pub region: String,
    /// True when this call created the record.
    pub created: bool,
}

/// What the service was doing when every region failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsAction {
    /// Unwrapping an existing record.
    Decrypt,
    /// Generating a key for a new record.
    Generate,
    /// Wrapping a new key in every other region.
    Wrap,
}

impl std::fmt::Display for KmsAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Decrypt => "decrypt",
            Self::Generate => "generate",
            Self::Wrap => "wrap",
        })
    }
}

/// Why a key could not be handed out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// No region could do what was needed; nothing was written.
    #[error("no KMS region could {action} the data key for id {id:?}: {}", summarize(.failures))]
    RegionsUnavailable {
        /// The id asked for.
        id: KeyId,
        /// The step that failed.
        action: KmsAction,
        /// Each region's failure, in the order tried.
        failures: Vec<KmsError>,
    },
    /// The record has no copy for any configured region.
    #[error("the record for id {id:?} has copies only for regions {in_record:?}, none of which is configured")]
    NoCopyForConfiguredRegions {
        /// The id asked for.
        id: KeyId,
        /// The regions that hold a copy.
        in_record: Vec<String>,
    },
    /// The stored bytes are not a readable record.
    #[error("the record for id {id:?} is unreadable: {reason}")]
    CorruptRecord {
        /// The id asked for.
        id: KeyId,
        /// What is wrong.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store did not answer in time.
    #[error("the store did not answer within {0:?}")]
    StoreTimeout(Duration),
    /// The whole request took longer than its deadline.
    #[error("the request exceeded its deadline of {0:?}")]
    DeadlineExceeded(Duration),
}

impl ServiceError {
    /// True when the failure is a dependency being down or slow (an HTTP 503), not a fault.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::RegionsUnavailable { .. } | Self::StoreTimeout(_) | Self::DeadlineExceeded(_) => {
                true
            }
            Self::Store(e) => e.is_retryable(),
            Self::NoCopyForConfiguredRegions { .. } | Self::CorruptRecord { .. } => false,
        }
    }
}

fn summarize(failures: &[KmsError]) -> String {
    if failures.is_empty() {
        return "no region was tried".to_owned();
    }
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a [`KeyServiceBuilder`] refused its settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No region was added.
    #[error("at least one KMS region is required")]
    NoRegions,
    /// Two regions share a name.
    #[error("KMS region {0:?} is configured twice")]
    DuplicateRegion(String),
    /// The data key length is out of range.
    #[error("data key length {0} is out of range 1..={MAX_DATA_KEY_LEN}")]
    DataKeyLength(usize),
    /// A timeout is zero.
    #[error("{0} must be greater than zero")]
    ZeroTimeout(&'static str),
}

/// Builds a [`KeyService`].
#[derive(Debug)]
pub struct KeyServiceBuilder {
    store: Arc<dyn Store>,
    regions: Vec<Arc<dyn Kms>>,
    options: ServiceOptions,
}

impl KeyServiceBuilder {
    /// Adds a region; regions are preferred in the order added.
    pub fn region(mut self, kms: Arc<dyn Kms>) -> Self {
        self.regions.push(kms);
        self
    }

    /// Replaces the options.
    pub fn options(mut self, options: ServiceOptions) -> Self {
        self.options = options;
        self
    }

    /// Checks the settings and builds the service.
    pub fn build(self) -> Result<KeyService, BuildError> {
        if self.regions.is_empty() {
            return Err(BuildError::NoRegions);
        }
        for (i, kms) in self.regions.iter().enumerate() {
            if self.regions[..i]
                .iter()
                .any(|other| other.region() == kms.region())
            {
                return Err(BuildError::DuplicateRegion(kms.region().to_owned()));
            }
        }
        let o = &self.options;
        if !(1..=MAX_DATA_KEY_LEN).contains(&o.data_key_len) {
            return Err(BuildError::DataKeyLength(o.data_key_len));
        }
        for (name, value) in [
            ("kms_timeout", o.kms_timeout),
            ("store_timeout", o.store_timeout),
            ("request_deadline", o.request_deadline),
        ] {
            if value.is_zero() {
                return Err(BuildError::ZeroTimeout(name));
            }
        }
        let health = self.regions.iter().map(|_| AtomicBool::new(true)).collect();
        Ok(KeyService {
            store: self.store,
            regions: self.regions,
            health,
            options: self.options,
        })
    }
}

/// Hands out data keys: reads and unwraps existing records, creates missing ones.
///
/// Cheap to share behind an `Arc`; it holds no per-id state, so any number of services in any
/// number of processes can share one store. See the crate documentation for the protocol.
#[derive(Debug)]
pub struct KeyService {
    store: Arc<dyn Store>,
    regions: Vec<Arc<dyn Kms>>,
    /// Whether each region's last call succeeded, for readiness reporting.
    health: Vec<AtomicBool>,
    options: ServiceOptions,
}

impl KeyService {
    /// Starts building a service over `store`.
    pub fn builder(store: Arc<dyn Store>) -> KeyServiceBuilder {
        KeyServiceBuilder {
            store,
            regions: Vec::new(),
            options: ServiceOptions::default(),
        }
    }

    /// The configured regions' names, in order of preference.
    pub fn region_names(&self) -> impl Iterator<Item = &str> {
        self.regions.iter().map(|kms| kms.region())
    }

    /// Names of the regions whose last call succeeded (or that have not been called yet).
    pub fn usable_regions(&self) -> Vec<&str> {
        self.regions
            .iter()
            .zip(&self.health)
            .filter(|(_, healthy)| healthy.load(Ordering::Relaxed))
            .map(|(kms, _)| kms.region())
            .collect()
    }

    /// Checks that the store answers a read within the store timeout.
    pub async fn check_store(&self) -> Result<(), ServiceError> {
        let probe = KeyId::parse("rkms-readiness-probe").expect("a valid id");
        self.store_call(self.store.get(&probe)).await.map(drop)
    }

    /// Returns the data key for `id`, creating it on first use. See the crate documentation.
    pub async fn get_or_create(&self, id: &KeyId) -> Result<IssuedKey, ServiceError> {
        let deadline = self.options.request_deadline;
        tokio::time::timeout(deadline, self.get_or_create_within_deadline(id))
            .await
            .map_err(|_| ServiceError::DeadlineExceeded(deadline))?
    }

    async fn get_or_create_within_deadline(&self, id: &KeyId) -> Result<IssuedKey, ServiceError> {
        let context = EncryptionContext::for_id(id);
        if let Some(stored) = self.store_call(self.store.get(id)).await? {
            return self.unwrap_stored(id, &stored, &context).await;
        }
        let generated = self
            .generate_in_first_answering_region(id, &context)
            .await?;
        let (
            generator,
            GeneratedKey {
                plaintext,
                ciphertext,
            },
        ) = generated;
        let copies = self
            .wrap_in_all_regions(id, generator, &plaintext, ciphertext, &context)
            .await?;
        let record = Record {
            format: RECORD_FORMAT,
            id: id.as_str().to_owned(),
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            copies,
            missing: Vec::new(),
            wrapped_without_context: false,
        };
        match self
            .store_call(self.store.put_if_absent(id, record.encode()))
            .await?
        {
            PutOutcome::Created(_) => {
                debug!(%id, region = self.regions[generator].region(), "created data key");
                Ok(IssuedKey {
                    key: plaintext,
                    region: self.regions[generator].region().to_owned(),
                    created: true,
                })
            }
            PutOutcome::Exists(winner) => {
                debug!(%id, "lost a create race; returning the winner's key");
                drop(plaintext);
                self.unwrap_stored(id, &winner, &context).await
            }
        }
    }

    /// Unwraps a stored record in the first configured region that holds a copy and answers.
    async fn unwrap_stored(
        &self,
        id: &KeyId,
        stored: &Stored,
        context: &EncryptionContext,
    ) -> Result<IssuedKey, ServiceError> {
        let record = Record::decode(&stored.bytes).map_err(|e| {
            warn!(%id, error = %e, "stored record is unreadable");
            ServiceError::CorruptRecord {
                id: id.clone(),
                reason: e.to_string(),
            }
        })?;
        let legacy_context = EncryptionContext::empty();
        let context = if record.wrapped_without_context {
            // Nothing cryptographic binds a legacy copy to its id; at least the record must.
            if record.id != id.as_str() {
                return Err(ServiceError::CorruptRecord {
                    id: id.clone(),
                    reason: "a legacy record names another id".into(),
                });
            }
            &legacy_context
        } else {
            context
        };
        let mut failures = Vec::new();
        for (index, kms) in self.regions.iter().enumerate() {
            let Some(copy) = record.copies.get(kms.region()) else {
                continue;
            };
            match self
                .kms_call(index, kms.decrypt(&copy.ciphertext, context))
                .await
            {
                Ok(key) => {
                    return Ok(IssuedKey {
                        key,
                        region: kms.region().to_owned(),
                        created: false,
                    })
                }
                Err(e) => {
                    warn!(%id, region = kms.region(), error = %e, "decrypt failed; trying the next region");
                    failures.push(e);
                }
            }
        }
        if failures.is_empty() {
            return Err(ServiceError::NoCopyForConfiguredRegions {
                id: id.clone(),
                in_record: record.copies.into_keys().collect(),
            });
        }
        Err(ServiceError::RegionsUnavailable {
            id: id.clone(),
            action: KmsAction::Decrypt,
            failures,
        })
    }

    /// Generates a data key in the first region, in order of preference, that answers.
    async fn generate_in_first_answering_region(
        &self,
        id: &KeyId,
        context: &EncryptionContext,
    ) -> Result<(usize, GeneratedKey), ServiceError> {
        let mut failures = Vec::new();
        for (index, kms) in self.regions.iter().enumerate() {
            match self
                .kms_call(
                    index,
                    kms.generate_data_key(self.options.data_key_len, context),
                )
                .await
            {
                Ok(generated) => return Ok((index, generated)),
                Err(e) => {
                    warn!(%id, region = kms.region(), error = %e, "generate failed; trying the next region");
                    failures.push(e);
                }
            }
        }
        Err(ServiceError::RegionsUnavailable {
            id: id.clone(),
            action: KmsAction::Generate,
            failures,
        })
    }

    /// Wraps `key` in every region but the generator, concurrently, and adds the generator's
    /// own copy. Every region must succeed.
    async fn wrap_in_all_regions(
        &self,
        id: &KeyId,
        generator: usize,
        key: &DataKey,
        generator_ciphertext: Vec<u8>,
        context: &EncryptionContext,
    ) -> Result<std::collections::BTreeMap<String, WrappedCopy>, ServiceError> {
        let others = self
            .regions
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != generator);
        let results = join_all(others.map(|(index, kms)| async move {
            (kms, self.kms_call(index, kms.encrypt(key, context)).await)
        }))
        .await;
        let generator_kms = &self.regions[generator];
        let mut copies = std::collections::BTreeMap::from([(
            generator_kms.region().to_owned(),
            WrappedCopy {
                master_key: generator_kms.master_key().to_owned(),
                ciphertext: generator_ciphertext,
            },
        )]);
        let mut failures = Vec::new();
        for (kms, result) in results {
            match result {
                Ok(ciphertext) => {
                    copies.insert(
                        kms.region().to_owned(),
                        WrappedCopy {
                            master_key: kms.master_key().to_owned(),
                            ciphertext,
                        },
                    );
                }
                Err(e) => {
                    warn!(%id, region = kms.region(), error = %e, "wrap failed; the key will not be created");
                    failures.push(e);
                }
            }
        }
        if failures.is_empty() {
            Ok(copies)
        } else {
            Err(ServiceError::RegionsUnavailable {
                id: id.clone(),
                action: KmsAction::Wrap,
                failures,
            })
        }
    }

    /// Runs one KMS call under the KMS timeout and records the region's health.
    async fn kms_call<T>(
        &self,
        index: usize,
        call: impl Future<Output = Result<T, KmsError>>,
    ) -> Result<T, KmsError> {
        let timeout = self.options.kms_timeout;
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(KmsError::Unavailable {
                region: self.regions[index].region().to_owned(),
                message: format!("no answer within {timeout:?}"),
            }),
        };
        let answered = !matches!(result, Err(KmsError::Unavailable { .. }));
        self.health[index].store(answered, Ordering::Relaxed);
        result
    }

    async fn store_call<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ServiceError> {
        let timeout = self.options.store_timeout;
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| ServiceError::StoreTimeout(timeout))?
            .map_err(Into::into)
    }
}
