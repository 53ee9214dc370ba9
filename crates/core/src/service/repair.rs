//! Repair: adding the copies a record lacks, by compare-and-set, never clobbering a change.
//!
//! A record lacks a region's copy when it was created while that region was down (quorum
//! create), or when a region was added to the configuration later. Repair decrypts the key in a
//! region that has it, wraps it in each missing region that answers, and writes the record back
//! with `compare_and_swap` on the version it read. If another writer changed the record
//! meanwhile, the write fails, and repair starts over from a fresh read.
//!
//! Three triggers: a read that finds a record lacking copies repairs it in the background; the
//! ids this process knows to be lacking (its own quorum creates, failed repairs) are retried
//! every `repair_interval` by [`KeyService::run_repairer`]; and [`KeyService::repair_sweep`]
//! walks the whole store, for operators and for records no running process knows about.

use std::collections::BTreeMap;

use futures::future::join_all;
use tracing::{debug, info, warn};

use super::{KeyService, ServiceError};
use crate::health::BreakerState;
use crate::record::{Record, WrappedCopy};
use crate::store::StoreError;
use crate::telemetry;
use crate::{EncryptionContext, KeyId, ListCursor};

/// Attempts at one repair before it gives up for this round (each lost race costs one).
const ATTEMPTS: usize = 5;

/// Ids read per page by a sweep.
const SWEEP_PAGE: usize = 100;

/// What repairing one id did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepairOutcome {
    /// Every configured region already has a copy.
    Complete,
    /// Copies were added; `still_missing` lists regions that did not answer.
    Repaired {
        /// Regions whose copies were added.
        added: Vec<String>,
        /// Regions still without a copy.
        still_missing: Vec<String>,
    },
    /// No missing region answered, or every attempt lost a race; try again later.
    StillMissing(Vec<String>),
    /// There is no record for the id.
    NotFound,
}

/// What one sweep over the store found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairSweep {
    /// Records read.
    pub scanned: usize,
    /// Records that got copies added.
    pub repaired: usize,
    /// Records still lacking a copy afterwards.
    pub pending: usize,
    /// Records that could not be read or repaired because of an error.
    pub errors: usize,
}

impl KeyService {
    /// Configured regions without a copy in `record`, by index.
    fn regions_missing_from(&self, record: &Record) -> Vec<usize> {
        (0..self.inner.regions.len())
            .filter(|i| !record.copies.contains_key(self.inner.regions[*i].name()))
            .collect()
    }

    /// True when a configured region lacks a copy.
    pub(super) fn needs_repair(&self, record: &Record) -> bool {
        !self.regions_missing_from(record).is_empty()
    }

    /// Remembers that `id` lacks copies, for the next round of [`KeyService::run_repairer`].
    pub(super) fn mark_pending(&self, id: &KeyId) {
        let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.insert(id.clone());
        metrics::gauge!(telemetry::REPAIRS_PENDING).set(pending.len() as f64);
    }

    fn clear_pending(&self, id: &KeyId) {
        let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.remove(id);
        metrics::gauge!(telemetry::REPAIRS_PENDING).set(pending.len() as f64);
    }

    /// Ids this process knows to lack copies.
    pub fn pending_repairs(&self) -> Vec<KeyId> {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Repairs `id` in the background, unless a repair of it is already running here or every
    /// region it lacks has an open breaker (the repairer retries it later).
    pub(super) fn spawn_repair(&self, id: &KeyId, record: &Record) {
        self.mark_pending(id);
        let reachable = self
            .regions_missing_from(record)
            .iter()
            .any(|i| self.inner.regions[*i].health.state() != BreakerState::Open);
        let running = self
            .inner
            .repairing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id);
        if !reachable || running {
            return;
        }
        let service = self.clone();
        let id = id.clone();
        tokio::spawn(async move {
            if let Err(e) = service.repair(&id).await {
                warn!(%id, error = %e, "background repair failed; it will be retried");
            }
        });
    }

    /// Adds the copies `id`'s record lacks in every missing region that answers.
    pub async fn repair(&self, id: &KeyId) -> Result<RepairOutcome, ServiceError> {
        if !self
            .inner
            .repairing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone())
        {
            return Ok(RepairOutcome::StillMissing(Vec::new()));
        }
        let outcome = self.repair_now(id).await;
        self.inner
            .repairing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        match &outcome {
            Ok(RepairOutcome::Complete | RepairOutcome::NotFound) => self.clear_pending(id),
            Ok(RepairOutcome::Repaired { still_missing, .. }) if still_missing.is_empty() => {
                self.clear_pending(id)
            }
            _ => self.mark_pending(id),
        }
        outcome
    }

    async fn repair_now(&self, id: &KeyId) -> Result<RepairOutcome, ServiceError> {
        let context = EncryptionContext::for_id(id);
        let mut still_missing = Vec::new();
        for _ in 0..ATTEMPTS {
            let Some(stored) = self.store_call("get", self.inner.store.get(id)).await? else {
                return Ok(RepairOutcome::NotFound);
            };
            let mut record = super::decode(id, &stored.bytes)?;
            let missing = self.regions_missing_from(&record);
            if missing.is_empty() {
                return Ok(RepairOutcome::Complete);
            }
            let (key, _) = self.decrypt_record(id, &record, &context).await?;
            // Copies are always wrapped under the id's context, also when repairing a legacy record.
            let added: BTreeMap<String, WrappedCopy> = join_all(missing.iter().map(|&index| {
                let (key, context) = (&key, &context);
                async move {
                    let region = &self.inner.regions[index];
                    let permit = self.permit(index).ok()?;
                    let ciphertext = self
                        .kms_call(index, permit, "encrypt", region.kms.encrypt(key, context))
                        .await
                        .ok()?;
                    Some((
                        region.name().to_owned(),
                        WrappedCopy {
                            master_key: region.kms.master_key().to_owned(),
                            ciphertext,
                        },
                    ))
                }
            }))
            .await
            .into_iter()
            .flatten()
            .collect();
            still_missing = missing
                .iter()
                .map(|i| self.inner.regions[*i].name().to_owned())
                .filter(|r| !added.contains_key(r))
                .collect();
            if added.is_empty() || record.wrapped_without_context {
                // A legacy record's other copies have no context: mixing would leave it
                // half-bound; upgrading legacy records is a separate, explicit step.
                metrics::counter!(telemetry::REPAIRS, "outcome" => "pending").increment(1);
                return Ok(RepairOutcome::StillMissing(still_missing));
            }
            let added_names: Vec<String> = added.keys().cloned().collect();
            record.copies.extend(added);
            record.missing = still_missing.clone();
            match self
                .store_call(
                    "compare_and_swap",
                    self.inner
                        .store
                        .compare_and_swap(id, stored.version, record.encode()),
                )
                .await
            {
                Ok(_) => {
                    info!(%id, added = ?added_names, still_missing = ?still_missing, "repaired record");
                    metrics::counter!(telemetry::REPAIRS, "outcome" => "repaired").increment(1);
                    return Ok(RepairOutcome::Repaired {
                        added: added_names,
                        still_missing,
                    });
                }
                Err(ServiceError::Store(StoreError::PreconditionFailed { .. })) => {
                    debug!(%id, "repair lost a race with another writer; reading again");
                    metrics::counter!(telemetry::REPAIRS, "outcome" => "lost_race").increment(1);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(RepairOutcome::StillMissing(still_missing))
    }

    /// Reads every record in the store and repairs those that lack copies.
    pub async fn repair_sweep(&self) -> Result<RepairSweep, ServiceError> {
        let mut sweep = RepairSweep::default();
        let mut after: Option<ListCursor> = None;
        loop {
            let page = self
                .store_call("list", self.inner.store.list(after.as_ref(), SWEEP_PAGE))
                .await?;
            for id in &page.ids {
                sweep.scanned += 1;
                let needs = match self.store_call("get", self.inner.store.get(id)).await {
                    Ok(Some(stored)) => {
                        super::decode(id, &stored.bytes).map(|r| self.needs_repair(&r))
                    }
                    Ok(None) => Ok(false),
                    Err(e) => Err(e),
                };
                match needs {
                    Ok(false) => {}
                    Ok(true) => match self.repair(id).await {
                        Ok(RepairOutcome::Repaired { still_missing, .. }) => {
                            sweep.repaired += 1;
                            sweep.pending += usize::from(!still_missing.is_empty());
                        }
                        Ok(RepairOutcome::StillMissing(_)) => sweep.pending += 1,
                        Ok(_) => {}
                        Err(_) => sweep.errors += 1,
                    },
                    Err(_) => sweep.errors += 1,
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(sweep),
            }
        }
    }

    /// Retries every id this process knows to lack copies; returns how many are left.
    pub async fn repair_pending(&self) -> usize {
        for id in self.pending_repairs() {
            if let Err(e) = self.repair(&id).await {
                warn!(%id, error = %e, "repair failed; it will be retried");
            }
        }
        self.pending_repairs().len()
    }

    /// Runs forever: every `repair_interval`, retries the pending repairs, and every
    /// `sweep_interval` (if set) sweeps the whole store. Spawn it on the runtime and abort it
    /// at shutdown.
    pub async fn run_repairer(&self) {
        let options = &self.inner.options;
        let mut ticks = tokio::time::interval(options.repair_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = tokio::time::Instant::now();
        loop {
            ticks.tick().await;
            let left = self.repair_pending().await;
            if left > 0 {
                debug!(left, "records still lack copies");
            }
            if options
                .sweep_interval
                .is_some_and(|every| last_sweep.elapsed() >= every)
            {
                last_sweep = tokio::time::Instant::now();
                match self.repair_sweep().await {
                    Ok(sweep) => info!(?sweep, "repair sweep done"),
                    Err(e) => warn!(error = %e, "repair sweep failed; it runs again next interval"),
                }
            }
        }
    }
}
