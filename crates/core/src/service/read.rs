//! Unwrapping a record: hedged decrypt across the regions that hold a copy.
//!
//! The best region (see `ordered_regions`) is asked first. If it has not answered after its
//! hedge delay, the next region is asked too; if it fails, the next is asked at once. The first
//! success wins and the calls still in flight are cancelled. In steady state one region
//! answers within its hedge delay, so a cache miss costs one KMS call.
//!
//! When every region was asked and every one refused, the record fails its integrity check
//! ([`ServiceError::IntegrityFailure`]); when any region could not be asked or did not answer,
//! the outcome may differ later, so it is [`ServiceError::RegionsUnavailable`].

use futures::stream::{FuturesUnordered, StreamExt as _};
use tracing::warn;

use super::{KeyService, KmsAction, ServiceError};
use crate::kms::KmsError;
use crate::record::Record;
use crate::telemetry;
use crate::{DataKey, EncryptionContext, KeyId};

impl KeyService {
    /// Decrypts one of the record's copies; returns the key and the region that unwrapped it.
    pub(super) async fn decrypt_record(
        &self,
        id: &KeyId,
        record: &Record,
        context: &EncryptionContext,
    ) -> Result<(DataKey, String), ServiceError> {
        let legacy_context = EncryptionContext::empty();
        // Set only for the original Go RKMS's items, as their store translated them.
        let context = if record.wrapped_without_context {
            &legacy_context
        } else {
            context
        };
        let regions = &self.inner.regions;
        let candidates: Vec<usize> = self
            .ordered_regions()
            .into_iter()
            .filter(|i| record.copies.contains_key(regions[*i].name()))
            .collect();
        if candidates.is_empty() {
            return Err(ServiceError::NoCopyForConfiguredRegions {
                id: id.clone(),
                in_record: record.copies.keys().cloned().collect(),
            });
        }

        let mut pending = candidates.into_iter();
        let mut failures = Vec::new();
        let mut in_flight = FuturesUnordered::new();
        let mut hedge = Box::pin(tokio::time::sleep(std::time::Duration::ZERO));
        // Each turn asks the next region: at the start, after a failure, and when the hedge
        // delay passes.
        loop {
            for index in pending.by_ref() {
                match self.permit(index) {
                    Err(skipped) => failures.push(skipped),
                    Ok(permit) => {
                        let delay = self.hedge_delay(index);
                        let copy = &record.copies[regions[index].name()];
                        let kms = &regions[index].kms;
                        in_flight.push(async move {
                            let call = kms.decrypt(&copy.ciphertext, context);
                            (
                                index,
                                self.kms_call(index, permit.slow_after(delay), "decrypt", call)
                                    .await,
                            )
                        });
                        hedge.as_mut().reset(tokio::time::Instant::now() + delay);
                        break;
                    }
                }
            }
            if in_flight.is_empty() {
                break;
            }
            let more_to_ask = pending.len() > 0;
            tokio::select! {
                Some((index, result)) = in_flight.next() => match result {
                    Ok(key) => return Ok((key, regions[index].name().to_owned())),
                    Err(e) => {
                        warn!(%id, region = regions[index].name(), error = %e, "decrypt failed; trying the next region");
                        failures.push(e);
                    }
                },
                () = &mut hedge, if more_to_ask => {}
            }
        }
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
