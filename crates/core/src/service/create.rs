//! Creating a record: generate in one region, wrap in the others, store once a quorum holds.
//!
//! The key is generated in the first region (in `ordered_regions` order, hedged: see
//! `hedged.rs`) that answers. Every other region wraps it concurrently; a region whose breaker
//! is open is asked too, as a last resort, once the quorum cannot be had without it. Once
//! `min_regions` copies exist (the generator's included), stragglers get
//! [`super::ServiceOptions::straggler_wait`] more; regions still without a copy are listed in
//! the record's `missing` for repair. Fewer than `min_regions` copies: nothing is written.

use std::collections::BTreeMap;

use futures::stream::{FuturesUnordered, StreamExt as _};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{KeyService, KmsAction, ServiceError};
use crate::cache::CachedKey;
use crate::kms::GeneratedKey;
use crate::record::{KeyVersion, Record, WrappedCopy};
use crate::store::PutOutcome;
use crate::telemetry;
use crate::{DataKey, EncryptionContext, KeyId};

impl KeyService {
    /// Creates the record for `id`, or returns the winner's key if another creator was first.
    pub(super) async fn create(&self, id: &KeyId) -> Result<CachedKey, ServiceError> {
        let (plaintext, first, region) = self.new_version(id, 1).await?;
        let quorum_only = !first.missing.is_empty();
        let record = Record::new(id.as_str(), first);
        match self
            .store_call(
                "put_if_absent",
                self.inner.store.put_if_absent(id, record.encode()),
            )
            .await?
        {
            PutOutcome::Created(_) => {
                debug!(%id, %region, missing = ?record.current().missing, "created data key");
                if quorum_only {
                    metrics::counter!(telemetry::QUORUM_CREATES).increment(1);
                    self.mark_pending(id);
                }
                Ok(CachedKey::new(plaintext, 1, region, true))
            }
            PutOutcome::Exists(winner) => {
                debug!(%id, "lost a create race; returning the winner's key");
                drop(plaintext);
                let record = super::decode(id, &winner)?;
                self.check_serving(id, &record)?;
                let current = record.current();
                let (key, region) = self.decrypt_version(id, &record, current).await?;
                Ok(CachedKey::new(key, current.number, region, false))
            }
        }
    }

    /// Makes version `number` of `id`'s key: generated in one region, wrapped in the others
    /// for a quorum. Returns the plaintext, the version's copies and the generating region.
    pub(super) async fn new_version(
        &self,
        id: &KeyId,
        number: u32,
    ) -> Result<(DataKey, KeyVersion, String), ServiceError> {
        let context = EncryptionContext::for_version(id, number);
        let (
            generator,
            GeneratedKey {
                plaintext,
                ciphertext,
            },
        ) = self.generate(id, &context).await?;
        let (copies, missing) = self
            .wrap_for_quorum(id, generator, &plaintext, ciphertext, &context)
            .await?;
        let version = KeyVersion {
            number,
            created_at: self.now(),
            copies,
            missing,
        };
        let region = self.inner.regions[generator].name().to_owned();
        Ok((plaintext, version, region))
    }

    /// Generates a data key in the first region, in order and hedged, that answers.
    async fn generate(
        &self,
        id: &KeyId,
        context: &EncryptionContext,
    ) -> Result<(usize, GeneratedKey), ServiceError> {
        let len = self.inner.options.data_key_len;
        let regions = &self.inner.regions;
        self.first_success(id, self.ordered_regions(), "generate", |index| {
            regions[index].kms.generate_data_key(len, context)
        })
        .await
        .map_err(|failures| ServiceError::RegionsUnavailable {
            id: id.clone(),
            action: KmsAction::Generate,
            failures,
        })
    }

    /// Wraps `key` in every region but the generator; returns the copies (the generator's
    /// included) and the regions left without one.
    async fn wrap_for_quorum(
        &self,
        id: &KeyId,
        generator: usize,
        key: &DataKey,
        generator_ciphertext: Vec<u8>,
        context: &EncryptionContext,
    ) -> Result<(BTreeMap<String, WrappedCopy>, Vec<String>), ServiceError> {
        let regions = &self.inner.regions;
        let copy = |index: usize, ciphertext| {
            let kms = &regions[index].kms;
            (
                kms.region().to_owned(),
                WrappedCopy {
                    master_key: kms.master_key().to_owned(),
                    ciphertext,
                },
            )
        };
        let mut copies = BTreeMap::from([copy(generator, generator_ciphertext)]);
        let mut failures = Vec::new();
        let mut in_flight = FuturesUnordered::new();
        let wrap = |index: usize, permit| {
            let delay = self.hedge_delay(index);
            let call = regions[index].kms.encrypt(key, context);
            self.attempt(index, permit, delay, "encrypt", call)
        };
        let mut last_resort = Vec::new();
        for index in (0..regions.len()).filter(|i| *i != generator) {
            match regions[index].health.try_acquire() {
                Some(permit) => in_flight.push(wrap(index, Some(permit))),
                None => last_resort.push(index),
            }
        }
        let min_regions = self.inner.options.min_regions;
        let hedge_at = Instant::now() + self.hedge_delay(generator);
        let mut hedged = false;
        let mut straggler_deadline = None;
        loop {
            // Regions with open breakers are asked once the others cannot make the quorum,
            // or have not made it within a hedge delay.
            let short = copies.len() < min_regions;
            if !last_resort.is_empty()
                && ((hedged && short) || copies.len() + in_flight.len() < min_regions)
            {
                for index in last_resort.drain(..) {
                    in_flight.push(wrap(index, None));
                }
            }
            if copies.len() >= min_regions && straggler_deadline.is_none() {
                // The quorum holds: give the others a little longer, so that fewer records
                // are stored incomplete.
                straggler_deadline = Some(Instant::now() + self.straggler_wait(generator));
            }
            if in_flight.is_empty() {
                break;
            }
            tokio::select! {
                Some((index, result)) = in_flight.next() => match result {
                    Ok(ciphertext) => {
                        let (name, wrapped) = copy(index, ciphertext);
                        copies.insert(name, wrapped);
                    }
                    Err(e) => {
                        warn!(%id, region = regions[index].name(), error = %e, "wrap failed; the region will be repaired later");
                        failures.push(e);
                    }
                },
                () = tokio::time::sleep_until(hedge_at), if !hedged && !last_resort.is_empty() && copies.len() < min_regions => hedged = true,
                () = tokio::time::sleep_until(straggler_deadline.unwrap_or(hedge_at)), if straggler_deadline.is_some() => break,
            }
        }
        if copies.len() < min_regions {
            return Err(ServiceError::RegionsUnavailable {
                id: id.clone(),
                action: KmsAction::Wrap,
                failures,
            });
        }
        let missing = regions
            .iter()
            .map(|r| r.name().to_owned())
            .filter(|name| !copies.contains_key(name))
            .collect();
        Ok((copies, missing))
    }
}
