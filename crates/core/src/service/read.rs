//! Unwrapping a record: hedged decrypt across the regions that hold a copy, best first (see
//! `ordered_regions` and `hedged.rs`). In steady state a cache miss costs one KMS call.
//!
//! When every region was asked and every one refused, the record fails its integrity check
//! ([`ServiceError::IntegrityFailure`]); when any region could not be asked or did not answer,
//! the outcome may differ later, so it is [`ServiceError::RegionsUnavailable`].

use super::repair::CopyKey;
use super::{KeyService, KmsAction, ServiceError};
use crate::kms::KmsError;
use crate::record::{KeyVersion, Record};
use crate::telemetry;
use crate::{DataKey, EncryptionContext, KeyId};

impl KeyService {
    /// Decrypts one of `version`'s copies (a version of `record`); returns the key and the
    /// region that unwrapped it.
    pub(super) async fn decrypt_version(
        &self,
        id: &KeyId,
        record: &Record,
        version: &KeyVersion,
    ) -> Result<(DataKey, String), ServiceError> {
        // Set only for the original Go RKMS's items, as their store translated them.
        let context = if record.wrapped_without_context {
            EncryptionContext::empty()
        } else {
            EncryptionContext::for_version(id, version.number)
        };
        let context = &context;
        let regions = &self.inner.regions;
        // Copies under one of a region's previous keys go last: repair wraps them again.
        let (mut candidates, previous): (Vec<usize>, Vec<usize>) = self
            .ordered_regions()
            .into_iter()
            .filter(|i| version.copies.contains_key(regions[*i].name()))
            .partition(|i| {
                self.copy_key(*i, &version.copies[regions[*i].name()]) != CopyKey::Previous
            });
        candidates.extend(previous);
        if candidates.is_empty() {
            return Err(ServiceError::NoCopyForConfiguredRegions {
                id: id.clone(),
                in_record: version.copies.keys().cloned().collect(),
            });
        }

        let failures = match self
            .first_success(id, candidates, "decrypt", |index| {
                let copy = &version.copies[regions[index].name()];
                let kms = &regions[index].kms;
                // Under a previous key when the copy names one; otherwise naming the current
                // key, whatever the copy says: never a key the record chose.
                let master_key = match self.copy_key(index, copy) {
                    CopyKey::Previous => &copy.master_key,
                    CopyKey::Current | CopyKey::Other => kms.master_key(),
                };
                kms.decrypt_under(master_key, &copy.ciphertext, context)
            })
            .await
        {
            Ok((index, key)) => return Ok((key, regions[index].name().to_owned())),
            Err(failures) => failures,
        };
        if failures
            .iter()
            .all(|failure| matches!(failure, KmsError::Refused { .. }))
        {
            tracing::error!(%id, failures = %failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
                "every region refused the record's copies: it fails its integrity check");
            metrics::counter!(telemetry::INTEGRITY_FAILURES).increment(1);
            return Err(ServiceError::IntegrityFailure {
                id: id.clone(),
                failures,
            });
        }
        Err(ServiceError::RegionsUnavailable {
            id: id.clone(),
            action: KmsAction::Decrypt,
            failures,
        })
    }
}
