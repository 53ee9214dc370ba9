//! Repair: adding the copies a record lacks, by compare-and-set, never clobbering a change.
//!
//! A version of a record lacks a region's copy when it was made while that region was down
//! (quorum create or rotation), or when a region was added to the configuration later; every
//! version is repaired alike, and a deleted id never is. A copy under another master key than
//! its region wraps with now (the region's key changed) is wrapped again, from a current copy
//! elsewhere, and replaced in the same compare-and-set. Repair decrypts the key in a
//! region that has it, wraps it in each missing region that answers, and writes the record back
//! with `compare_and_swap` on the version it read. If another writer changed the record
//! meanwhile, the write fails, and repair starts over from a fresh read.
//!
//! A record of the original Go RKMS (wrapped without encryption context, as its store
//! translated it) is upgraded the same way: its key is wrapped again under the id's context in
//! every configured region, and once at least `min_regions` copies exist they replace the old
//! ones in one compare-and-set. Copies of the two kinds are never mixed in one record.
//!
//! Three triggers: a read that finds a record lacking copies repairs it in the background; the
//! ids this process knows to be lacking (its own quorum creates, failed repairs) are retried
//! every `repair.interval` by [`KeyService::run_repairer`]; and [`KeyService::repair_sweep`]
//! walks the whole store, for operators and for records no running process knows about.
//!
//! Repair must never take KMS capacity from serving: it calls no region before at least one
//! region it needs can be called (breaker not open), its KMS calls are paced by a per-process
//! [`Budget`], a few records are repaired at once, and an id that fails waits longer each time
//! (`pending.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::join_all;
use futures::stream::{self, StreamExt as _};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{KeyService, RepairOptions, ServiceError};
use crate::health::Permit;
use crate::kms::KmsError;
use crate::record::{KeyState, KeyVersion, Record, WrappedCopy};
use crate::store::StoreError;
use crate::telemetry;
use crate::{DataKey, EncryptionContext, KeyId, ListCursor};

/// Attempts at one repair before it gives up for this round (each lost race costs one).
const ATTEMPTS: usize = 5;

/// Ids read per page by a sweep.
const SWEEP_PAGE: usize = 100;

/// What repairing one id did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepairOutcome {
    /// Every configured region already has a copy.
    Complete,
    /// Copies were added (or wrapped again, or dropped); `still_missing` lists regions that
    /// did not answer.
    Repaired {
        /// Regions whose copies were added or wrapped again.
        added: Vec<String>,
        /// Regions no longer configured whose copies were dropped.
        dropped: Vec<String>,
        /// Regions still without a copy.
        still_missing: Vec<String>,
    },
    /// A record of the original Go RKMS was wrapped again under the id's encryption context;
    /// its context-free copies are gone from the record.
    Upgraded {
        /// Regions that hold a copy now.
        regions: Vec<String>,
        /// Regions still without a copy.
        still_missing: Vec<String>,
    },
    /// No region it needs could be called or answered, fewer than `min_regions` could wrap a
    /// legacy record's key, or every attempt lost a race; try again later.
    StillMissing(Vec<String>),
    /// There is no record for the id.
    NotFound,
}

impl RepairOutcome {
    /// True when the record still lacks something repair should retry.
    fn incomplete(&self) -> bool {
        match self {
            Self::Complete | Self::NotFound => false,
            Self::Repaired { still_missing, .. } | Self::Upgraded { still_missing, .. } => {
                !still_missing.is_empty()
            }
            Self::StillMissing(_) => true,
        }
    }
}

/// What one sweep over the store found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairSweep {
    /// Records read.
    pub scanned: usize,
    /// Records that got copies added (or were upgraded).
    pub repaired: usize,
    /// Records still lacking a copy afterwards.
    pub pending: usize,
    /// Records that could not be read or repaired because of an error.
    pub errors: usize,
    /// Deletions completed: ids whose window had ended, now tombstones.
    pub deleted: usize,
}

/// How a copy's recorded master key stands with its region's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CopyKey {
    /// The key the region wraps with now.
    Current,
    /// A key named in the region's previous keys: read under it, and wrapped again.
    Previous,
    /// Neither: another spelling of the current key (an alias for its ARN), another server's
    /// configuration during a rolling change, a legacy copy, or a label written by hand. Read
    /// naming the current key, as before key changes existed, and never rewrapped, so that
    /// servers whose configurations differ do not undo each other's work.
    Other,
}

/// The copies one repair writes, counted in metrics only once its compare-and-set succeeds.
#[derive(Debug, Default)]
struct Tally {
    /// New copies, by region.
    added: BTreeMap<String, u64>,
    rewrapped: u64,
    dropped: usize,
}

impl Tally {
    fn record(&self) {
        for (region, count) in &self.added {
            metrics::counter!(telemetry::COPIES_ADDED, "region" => region.clone())
                .increment(*count);
        }
        metrics::counter!(telemetry::REWRAPS).increment(self.rewrapped);
        metrics::counter!(telemetry::COPIES_DROPPED).increment(self.dropped as u64);
    }
}

/// Paces repair's KMS calls: each call waits for its own slot, one every `1 / rate`.
#[derive(Debug)]
pub(super) struct Budget {
    spacing: Duration,
    next: Mutex<Instant>,
}

impl Budget {
    pub(super) fn new(per_second: u32) -> Self {
        Self {
            spacing: Duration::from_secs(1) / per_second.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for the next free slot.
    async fn take(&self) {
        let wait = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.spacing;
            slot - now
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

impl KeyService {
    /// How `copy`, held for region `index`, stands with the region's configured keys.
    pub(super) fn copy_key(&self, index: usize, copy: &WrappedCopy) -> CopyKey {
        let kms = &self.inner.regions[index].kms;
        if copy.master_key == kms.master_key() {
            CopyKey::Current
        } else if kms.previous_master_keys().contains(&copy.master_key) {
            CopyKey::Previous
        } else {
            CopyKey::Other
        }
    }

    /// True when `copy` names the master key region `index` wraps with now, or names none (a
    /// copy of the original Go RKMS, whose record is upgraded as a whole).
    pub(super) fn is_current(&self, index: usize, copy: &WrappedCopy) -> bool {
        copy.master_key.is_empty() || self.copy_key(index, copy) == CopyKey::Current
    }

    /// What `record` lacks: for each version (by index) that should get new copies, the
    /// configured regions (by index) to wrap it in: those without a copy, those whose copy is
    /// under one of the region's previous keys (rewrapped: the new copy replaces the old one
    /// in the same compare-and-set), or every region for a legacy record, whose copies all
    /// need wrapping again. Nothing for a deleted id.
    fn gaps(&self, record: &Record) -> Vec<(usize, Vec<usize>)> {
        if matches!(record.state.at(self.now()), KeyState::Deleted { .. }) {
            return Vec::new();
        }
        record
            .versions
            .iter()
            .enumerate()
            .filter_map(|(v, version)| {
                let regions: Vec<usize> = (0..self.inner.regions.len())
                    .filter(|i| {
                        record.wrapped_without_context
                            || version
                                .copies
                                .get(self.inner.regions[*i].name())
                                .is_none_or(|copy| self.copy_key(*i, copy) == CopyKey::Previous)
                    })
                    .collect();
                (!regions.is_empty()).then_some((v, regions))
            })
            .collect()
    }

    /// How many configured regions hold a copy of `version` under their current key: what
    /// the quorum counts.
    pub(super) fn current_copies(&self, version: &KeyVersion) -> usize {
        let regions = &self.inner.regions;
        (0..regions.len())
            .filter(|i| {
                version
                    .copies
                    .get(regions[*i].name())
                    .is_some_and(|copy| self.is_current(*i, copy))
            })
            .count()
    }

    /// For each version (by index), the removed regions (`removed_regions`) whose copies it may
    /// drop: only once the version holds at least `min_regions` current copies in configured
    /// regions, so that dropping never leaves it with fewer than a quorum it can be read from.
    /// A region removed by mistake and added back loses only what was dropped. Nothing for a
    /// legacy record (upgraded as a whole) or a deleted id.
    fn droppable(&self, record: &Record) -> Vec<(usize, Vec<String>)> {
        if record.wrapped_without_context
            || matches!(record.state.at(self.now()), KeyState::Deleted { .. })
        {
            return Vec::new();
        }
        record
            .versions
            .iter()
            .enumerate()
            .filter_map(|(v, version)| {
                let current = self.current_copies(version);
                let unconfigured: Vec<String> = version
                    .copies
                    .keys()
                    .filter(|name| self.inner.options.removed_regions.contains(name))
                    .cloned()
                    .collect();
                (current >= self.inner.options.min_regions && !unconfigured.is_empty())
                    .then_some((v, unconfigured))
            })
            .collect()
    }

    /// Configured regions, by index, that some version of `record` should get a copy in.
    fn regions_to_wrap(&self, record: &Record) -> Vec<usize> {
        let mut regions: Vec<usize> = self
            .gaps(record)
            .into_iter()
            .flat_map(|(_, regions)| regions)
            .collect();
        regions.sort_unstable();
        regions.dedup();
        regions
    }

    /// True when a configured region lacks a current copy of some version, the record holds
    /// copies it may drop, or it is a legacy one to upgrade.
    pub(super) fn needs_repair(&self, record: &Record) -> bool {
        !self.gaps(record).is_empty() || !self.droppable(record).is_empty()
    }

    /// True when at least one of `regions` may be called now: its breaker is closed, or ready
    /// for a probe nobody is making yet.
    fn any_callable(&self, regions: &[usize]) -> bool {
        regions
            .iter()
            .any(|i| self.inner.regions[*i].health.can_call())
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, super::pending::PendingRepairs> {
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn report_pending(&self, pending: &super::pending::PendingRepairs, dropped: usize) {
        metrics::gauge!(telemetry::REPAIRS_PENDING).set(pending.len() as f64);
        if dropped > 0 {
            metrics::counter!(telemetry::REPAIRS_DROPPED).increment(dropped as u64);
        }
    }

    /// Remembers that `id` lacks copies, for the next round of [`KeyService::run_repairer`];
    /// returns whether a try is due now (false while it backs off after a failure).
    pub(super) fn mark_pending(&self, id: &KeyId) -> bool {
        let mut pending = self.pending();
        let dropped = pending.insert(id);
        self.report_pending(&pending, dropped);
        !pending.backing_off(id)
    }

    /// Remembers that repairing `id` failed: its next try waits longer.
    fn mark_failed(&self, id: &KeyId) {
        let mut pending = self.pending();
        let dropped = pending.failed(id, self.inner.options.repair.interval);
        self.report_pending(&pending, dropped);
    }

    fn clear_pending(&self, id: &KeyId) {
        let mut pending = self.pending();
        pending.remove(id);
        self.report_pending(&pending, 0);
    }

    /// Ids this process knows to lack copies, oldest first.
    pub fn pending_repairs(&self) -> Vec<KeyId> {
        self.pending().ids()
    }

    /// How many ids this process knows to lack copies: the repairer's backlog.
    pub fn repair_backlog(&self) -> usize {
        self.pending().len()
    }

    /// Repairs `id` in the background, unless it backs off after a failure, a repair of it is
    /// already running here, `repair.concurrency` repairs are running, or every region it needs
    /// has an open breaker: the repairer retries it later. So reads of many incomplete records
    /// cannot pile up repairs waiting for the KMS budget.
    pub(super) fn spawn_repair(&self, id: &KeyId, record: &Record) {
        // A record that only has copies to drop needs no region.
        let targets = self.regions_to_wrap(record);
        if !self.mark_pending(id) || (!targets.is_empty() && !self.any_callable(&targets)) {
            return;
        }
        if !self.claim(id, Some(self.inner.options.repair.concurrency)) {
            return;
        }
        let service = self.clone();
        let id = id.clone();
        tokio::spawn(async move {
            if let Err(e) = service.repair_claimed(&id).await {
                warn!(%id, error = %e, "background repair failed; it will be retried");
            }
        });
    }

    /// Ends this process's claim on `id` ([`KeyService::claim`]).
    pub(super) fn release(&self, id: &KeyId) {
        self.inner
            .repairing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Marks `id` as being repaired (or its deletion completed) here, unless it already is or
    /// `limit` such tasks are running.
    pub(super) fn claim(&self, id: &KeyId, limit: Option<usize>) -> bool {
        let mut running = self
            .inner
            .repairing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if limit.is_some_and(|limit| running.len() >= limit) {
            return false;
        }
        running.insert(id.clone())
    }

    /// Adds the copies `id`'s record lacks in every missing region that answers, or upgrades a
    /// legacy record.
    pub async fn repair(&self, id: &KeyId) -> Result<RepairOutcome, ServiceError> {
        if !self.claim(id, None) {
            return Ok(RepairOutcome::StillMissing(Vec::new()));
        }
        self.repair_claimed(id).await
    }

    /// [`KeyService::repair`] for an id this call has claimed; releases the claim.
    async fn repair_claimed(&self, id: &KeyId) -> Result<RepairOutcome, ServiceError> {
        let outcome = self.repair_now(id).await;
        self.release(id);
        match &outcome {
            Ok(done) if !done.incomplete() => self.clear_pending(id),
            _ => self.mark_failed(id),
        }
        outcome
    }

    async fn repair_now(&self, id: &KeyId) -> Result<RepairOutcome, ServiceError> {
        let mut still_missing = Vec::new();
        for _ in 0..ATTEMPTS {
            let Some(stored) = self.store_call("get", self.inner.store.get(id)).await? else {
                return Ok(RepairOutcome::NotFound);
            };
            let record = super::decode(id, &stored)?;
            let gaps = self.gaps(&record);
            still_missing = self.names(&self.regions_to_wrap(&record));
            if gaps.is_empty() && self.droppable(&record).is_empty() {
                return Ok(RepairOutcome::Complete);
            }
            let mut added = Vec::new();
            // A version no region can read (its copies fail their integrity check, or every
            // region holding one is down) keeps the others from nothing, and loses no copy
            // (a removed region's may be the one good copy); its error is the outcome only
            // when nothing else could be written.
            let (mut unreadable, mut unread_error) = (Vec::new(), None);
            for (v, targets) in gaps {
                // Leave to call the regions to wrap in is taken before the key is decrypted,
                // so that repairs racing for a half-open region's one probe decrypt nothing in
                // vain.
                let permits: Vec<(usize, Permit<'_>)> = targets
                    .iter()
                    .filter_map(|&index| {
                        let permit = self.inner.regions[index].health.try_acquire()?;
                        Some((index, permit))
                    })
                    .collect();
                if permits.is_empty() {
                    continue;
                }
                let version = &record.versions[v];
                self.inner.repair_budget.take().await;
                let key = match self.decrypt_version(id, &record, version).await {
                    Ok((key, _)) => key,
                    Err(e) => {
                        warn!(%id, version = version.number, error = %e, "cannot read this version to repair it; the others are repaired");
                        unreadable.push(v);
                        unread_error.get_or_insert(e);
                        continue;
                    }
                };
                let context = EncryptionContext::for_version(id, version.number);
                added.push((v, self.wrap_paced(&key, permits, &context).await));
            }
            let Some((update, outcome, tally)) = self.repaired_record(record, added, &unreadable)
            else {
                if let Some(e) = unread_error {
                    return Err(e);
                }
                metrics::counter!(telemetry::REPAIRS, "outcome" => "pending").increment(1);
                return Ok(RepairOutcome::StillMissing(still_missing));
            };
            match self
                .store_call(
                    "compare_and_swap",
                    self.inner
                        .store
                        .compare_and_swap(id, stored.version, update.encode()),
                )
                .await
            {
                Ok(_) => {
                    info!(%id, ?outcome, "repaired record");
                    metrics::counter!(telemetry::REPAIRS, "outcome" => "repaired").increment(1);
                    tally.record();
                    return Ok(outcome);
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

    fn names(&self, regions: &[usize]) -> Vec<String> {
        regions
            .iter()
            .map(|i| self.inner.regions[*i].name().to_owned())
            .collect()
    }

    /// Wraps `key` in each region it holds a permit for, each call in its budget slot, and
    /// keeps a new copy only once the region has decrypted it back to `key`: a master key the
    /// region may wrap under but not decrypt under (a key policy without Decrypt, another
    /// account's key) would otherwise replace a readable copy by a dead one.
    async fn wrap_paced(
        &self,
        key: &DataKey,
        permits: Vec<(usize, Permit<'_>)>,
        context: &EncryptionContext,
    ) -> BTreeMap<String, WrappedCopy> {
        join_all(permits.into_iter().map(|(index, permit)| async move {
            let region = &self.inner.regions[index];
            self.inner.repair_budget.take().await;
            let ciphertext = self
                .kms_call(index, permit, "encrypt", region.kms.encrypt(key, context))
                .await
                .ok()?;
            self.inner.repair_budget.take().await;
            let checked = tokio::time::timeout(
                self.inner.options.kms_timeout,
                region.kms.decrypt(&ciphertext, context),
            )
            .await;
            match checked {
                Ok(Ok(back)) if back == *key => {}
                Ok(Ok(_)) | Ok(Err(KmsError::Refused { .. })) => {
                    tracing::error!(
                        region = region.name(),
                        master_key = region.kms.master_key(),
                        "a copy the region just wrapped does not decrypt back: its master key may \
                         wrap but not decrypt (check the key policy); the copy is not stored"
                    );
                    return None;
                }
                // Unavailable: try again in a later round.
                _ => return None,
            }
            Some((
                region.name().to_owned(),
                WrappedCopy {
                    master_key: region.kms.master_key().to_owned(),
                    ciphertext,
                },
            ))
        }))
        .await
        .into_iter()
        .flatten()
        .collect()
    }

    /// The record with the copies in `added` (by version index), what that does, and the
    /// copies it counts once written; `None` when there is nothing to write (no copy was
    /// made, or too few to replace a legacy record's copies). The `unreadable` versions (by
    /// index) drop no copy.
    fn repaired_record(
        &self,
        mut record: Record,
        added: Vec<(usize, BTreeMap<String, WrappedCopy>)>,
        unreadable: &[usize],
    ) -> Option<(Record, RepairOutcome, Tally)> {
        let upgrading = record.wrapped_without_context;
        let mut tally = Tally::default();
        let mut names: Vec<String> = Vec::new();
        for (v, copies) in added {
            let version = &mut record.versions[v];
            if upgrading {
                if copies.len() < self.inner.options.min_regions {
                    continue;
                }
                names.extend(copies.keys().cloned());
                version.copies = copies;
                // A legacy record holds one version; once it is wrapped again, none is left
                // without context.
                record.wrapped_without_context = false;
            } else {
                for name in copies.keys() {
                    let count = if version.copies.contains_key(name) {
                        &mut tally.rewrapped
                    } else {
                        tally.added.entry(name.clone()).or_default()
                    };
                    *count += 1;
                }
                names.extend(copies.keys().cloned());
                version.copies.extend(copies);
            }
        }
        let mut dropped: Vec<String> = Vec::new();
        for (v, regions) in self.droppable(&record) {
            if unreadable.contains(&v) {
                continue;
            }
            for name in regions {
                record.versions[v].copies.remove(&name);
                dropped.push(name);
            }
        }
        if names.is_empty() && dropped.is_empty() {
            return None;
        }
        tally.dropped = dropped.len();
        names.sort_unstable();
        names.dedup();
        dropped.sort_unstable();
        dropped.dedup();
        let configured: Vec<String> = self
            .inner
            .regions
            .iter()
            .map(|r| r.name().to_owned())
            .collect();
        for version in &mut record.versions {
            version.missing = configured
                .iter()
                .filter(|name| !version.copies.contains_key(*name))
                .cloned()
                .collect();
        }
        let still_missing = self.names(&self.regions_to_wrap(&record));
        let outcome = if upgrading {
            RepairOutcome::Upgraded {
                regions: names,
                still_missing,
            }
        } else {
            RepairOutcome::Repaired {
                added: names,
                dropped,
                still_missing,
            }
        };
        Some((record, outcome, tally))
    }

    /// Reads every record in the store and repairs those that lack copies, but for ids backing
    /// off after a failed repair.
    pub async fn repair_sweep(&self) -> Result<RepairSweep, ServiceError> {
        let mut sweep = RepairSweep::default();
        let mut after: Option<ListCursor> = None;
        loop {
            let page = self
                .store_call("list", self.inner.store.list(after.as_ref(), SWEEP_PAGE))
                .await?;
            for id in &page.ids {
                sweep.scanned += 1;
                let read = match self.store_call("get", self.inner.store.get(id)).await {
                    Ok(Some(stored)) => super::decode(id, &stored).map(Some),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                };
                match read {
                    Ok(Some(record)) if super::lifecycle::deletion_due(&record, self.now()) => {
                        match self.complete_deletion(id).await {
                            Ok(done) => sweep.deleted += usize::from(done),
                            Err(_) => sweep.errors += 1,
                        }
                    }
                    Ok(Some(record)) if !self.needs_repair(&record) => {}
                    Ok(None) => {}
                    // Its backoff stands: the repairer tries it when it is due.
                    Ok(Some(_)) if self.pending().backing_off(id) => sweep.pending += 1,
                    Ok(Some(_)) => match self.repair(id).await {
                        Ok(
                            outcome @ (RepairOutcome::Repaired { .. }
                            | RepairOutcome::Upgraded { .. }),
                        ) => {
                            sweep.repaired += 1;
                            sweep.pending += usize::from(outcome.incomplete());
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

    /// Retries the ids this process knows to lack copies whose next try is due, a few at once;
    /// returns how many ids are still remembered. A region that came back since the last round (its breaker closed after it had opened)
    /// makes every remembered id due at once, whatever its backoff.
    pub async fn repair_pending(&self) -> usize {
        let recoveries = self
            .inner
            .regions
            .iter()
            .map(|r| r.health.recoveries())
            .sum();
        if self
            .inner
            .recoveries_seen
            .swap(recoveries, Ordering::Relaxed)
            != recoveries
        {
            self.pending().all_due_now();
        }
        let due = self.pending().due();
        stream::iter(due)
            .for_each_concurrent(self.inner.options.repair.concurrency, |id| async move {
                if let Err(e) = self.repair(&id).await {
                    warn!(%id, error = %e, "repair failed; it will be retried");
                }
            })
            .await;
        self.pending().len()
    }

    /// Runs forever: every `repair.interval`, retries the pending repairs that are due; sweeps
    /// the whole store soon after start (`repair.first_sweep_after`), then every
    /// `repair.sweep_interval`, if that is set. Spawn it on the runtime and abort it at
    /// shutdown.
    pub async fn run_repairer(&self) {
        self.run_repairer_with(&SweepSchedule::new(&self.inner.options.repair))
            .await;
    }

    /// [`KeyService::run_repairer`] on a schedule shared with the repairers of the services
    /// this one replaces or is replaced by (a reload), so that a reload neither puts a sweep
    /// off nor loses one that is due: a sweep aborted half way is due at once again.
    pub async fn run_repairer_with(&self, schedule: &SweepSchedule) {
        let options = &self.inner.options.repair;
        let mut ticks = tokio::time::interval(options.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.complete_scheduled_deletions().await;
            let left = self.repair_pending().await;
            if left > 0 {
                debug!(left, "records still lack copies");
            }
            if !schedule.due() {
                continue;
            }
            match self.repair_sweep().await {
                Ok(sweep) => {
                    info!(?sweep, "repair sweep done");
                    schedule.set(options.sweep_interval);
                }
                Err(e) => {
                    warn!(error = %e, "repair sweep failed; it runs again in a minute");
                    schedule.set(Some(RETRY_FAILED_SWEEP));
                }
            }
        }
    }
}

/// When a failed sweep is tried again.
const RETRY_FAILED_SWEEP: Duration = Duration::from_secs(60);

/// When the repairer sweeps the store next; see [`KeyService::run_repairer_with`].
#[derive(Debug)]
pub struct SweepSchedule {
    next: Mutex<Option<Instant>>,
}

impl SweepSchedule {
    /// The first sweep `first_sweep_after` (1-2x, differing between processes) from now, or
    /// one `sweep_interval` from now; none without a `sweep_interval`.
    pub fn new(options: &RepairOptions) -> Self {
        let first = options.sweep_interval.map(|every| {
            let first = options
                .first_sweep_after
                .map_or(every, |after| after + after.mul_f64(jitter()));
            first.min(every)
        });
        let schedule = Self {
            next: Mutex::new(None),
        };
        schedule.set(first);
        schedule
    }

    /// Makes a sweep due at once: the regions or their keys changed, and every record may
    /// need copies added, rewrapped or dropped.
    pub fn sweep_now(&self) {
        *self.lock() = Some(Instant::now());
    }

    fn set(&self, after: Option<Duration>) {
        *self.lock() = after.map(|after| Instant::now() + after);
    }

    fn due(&self) -> bool {
        self.lock().is_some_and(|at| Instant::now() >= at)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.next.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A number in `0.0..1.0` that differs between processes, to spread their first sweeps.
fn jitter() -> f64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1_u64 << 53) as f64
}
