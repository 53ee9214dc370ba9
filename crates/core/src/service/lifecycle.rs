//! The key lifecycle: rotation, scheduled deletion, restore, completing a deletion, and the
//! read-only describe and list.
//!
//! Every change reads the record, decides from its state, and writes it back by
//! compare-and-set on the version it read (`change`); a write that loses a race reads again
//! and decides again, so no change is lost and none is made on a state it did not see. The
//! process that made a change drops its own cached key at once; other processes see it
//! within their cache TTL (or at once with `lifecycle.check_state_on_hit`).
//!
//! Records of the original Go RKMS are upgraded (wrapped again under the id's context) before
//! any change: a changed record is written in RKMS's own format, which carries no legacy mark.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures::stream::{self, StreamExt as _};
use tracing::info;

use super::{KeyService, KmsAction, ServiceError};
use crate::record::{KeyState, Record, MAX_VERSIONS};
use crate::store::StoreError;
use crate::telemetry;
use crate::{DataKey, EncryptionContext, KeyId, ListCursor};

/// Attempts at one change before giving up on a record that keeps changing.
const ATTEMPTS: usize = 5;

/// Store pages a listing reads at most per call, so that a sparse prefix costs a bounded
/// amount per call; the caller goes on from `next`.
const MAX_LIST_PAGES: usize = 10;

/// Records a listing reads at once, for their states.
const LIST_READS_AT_ONCE: usize = 16;

/// Largest encoded record a change writes: DynamoDB holds at most 400 KB per item (attribute
/// names, the id and an original's `keys` included), the tightest of the stores.
const MAX_RECORD_BYTES: usize = 300 * 1024;

/// How long a change waits before reading again when another task of this process is
/// upgrading the same legacy record.
const UPGRADE_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Metadata of one id, without key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The id.
    pub id: KeyId,
    /// Its state now: a pending deletion whose window has ended reads as deleted.
    pub state: KeyState,
    /// Every version, oldest first; the last is the current one.
    pub versions: Vec<VersionInfo>,
}

/// Metadata of one version of an id's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// Its number.
    pub number: u32,
    /// When it was made, seconds since the Unix epoch (0 when unknown).
    pub created_at: u64,
    /// Regions holding a wrapped copy.
    pub regions: Vec<String>,
    /// Configured regions still lacking one.
    pub missing: Vec<String>,
}

/// One id of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedKey {
    /// The id.
    pub id: KeyId,
    /// Its state now; `None` when its record cannot be read.
    pub state: Option<KeyState>,
}

/// A page of ids from [`KeyService::list_keys`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyListing {
    /// Ids with the prefix asked for, in the store's order.
    pub keys: Vec<ListedKey>,
    /// A sealed cursor to go on from (`after` of the next call); `None` when the walk is
    /// done.
    pub next: Option<String>,
}

/// What a change decided on the record it read.
enum Change<T> {
    /// Write this record; answer `T` once written.
    Write(Record, T),
    /// Nothing to write; answer `T`.
    Unchanged(T),
}

/// True when `record` is pending deletion and its window has ended at `now`.
pub(super) fn deletion_due(record: &Record, now: u64) -> bool {
    matches!(record.state, KeyState::PendingDeletion { .. })
        && matches!(record.state.at(now), KeyState::Deleted { .. })
}

/// The error that answers a request for the key of an id in `state`.
fn not_active(id: &KeyId, state: KeyState) -> ServiceError {
    match state {
        KeyState::PendingDeletion { deletion_time } => ServiceError::PendingDeletion {
            id: id.clone(),
            deletion_time,
        },
        KeyState::Deleted { deleted_at } => ServiceError::Deleted {
            id: id.clone(),
            deleted_at,
        },
        KeyState::Active => unreachable!("an active id is served"),
    }
}

impl KeyService {
    /// The record for `id`; [`ServiceError::NotFound`] when there is none.
    pub(super) async fn read_existing(&self, id: &KeyId) -> Result<Record, ServiceError> {
        match self.store_call("get", self.inner.store.get(id)).await? {
            Some(stored) => super::decode(id, &stored),
            None => Err(ServiceError::NotFound { id: id.clone() }),
        }
    }

    /// Applies `decide` to `id`'s record and writes what it returns by compare-and-set,
    /// reading again after a lost race. `change` names the change in metrics.
    async fn change<T>(
        &self,
        id: &KeyId,
        change: &'static str,
        mut decide: impl FnMut(&Record) -> Result<Change<T>, ServiceError>,
    ) -> Result<T, ServiceError> {
        for _ in 0..ATTEMPTS {
            let Some(stored) = self.store_call("get", self.inner.store.get(id)).await? else {
                return Err(ServiceError::NotFound { id: id.clone() });
            };
            let record = super::decode(id, &stored)?;
            if record.wrapped_without_context {
                self.upgrade_before_change(id).await?;
                continue;
            }
            let (update, answer) = match decide(&record)? {
                Change::Unchanged(answer) => {
                    // A retry of a change whose answer was lost (a timeout after the write
                    // landed) finds it made: the cached key goes now.
                    self.forget_cached(id).await;
                    return Ok(answer);
                }
                Change::Write(update, answer) => (update, answer),
            };
            let bytes = update.encode();
            if bytes.len() > MAX_RECORD_BYTES {
                return Err(ServiceError::Conflict {
                    id: id.clone(),
                    reason: format!(
                        "its record would grow past {MAX_RECORD_BYTES} bytes, more than every \
                         store can hold in one item"
                    ),
                });
            }
            let write = self.inner.store.compare_and_swap(id, stored.version, bytes);
            let written = self.store_call("compare_and_swap", write).await;
            if !matches!(
                written,
                Err(ServiceError::Store(StoreError::PreconditionFailed { .. }))
            ) {
                // Also after an error: the write may have landed all the same.
                self.forget_cached(id).await;
            }
            match written {
                Ok(_) => {
                    metrics::counter!(telemetry::LIFECYCLE_CHANGES, "change" => change)
                        .increment(1);
                    return Ok(answer);
                }
                Err(ServiceError::Store(StoreError::PreconditionFailed { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        Err(ServiceError::Conflict {
            id: id.clone(),
            reason: "its record kept changing under concurrent writers; retry".into(),
        })
    }

    /// Wraps a legacy record's key again under the id's context, as repair does. When a
    /// repair of this process already holds the id (a read started one), waits a moment for
    /// the caller to read again.
    async fn upgrade_before_change(&self, id: &KeyId) -> Result<(), ServiceError> {
        match self.repair(id).await? {
            super::RepairOutcome::Upgraded { .. } | super::RepairOutcome::Complete => Ok(()),
            super::RepairOutcome::StillMissing(regions) if regions.is_empty() => {
                tokio::time::sleep(UPGRADE_WAIT).await;
                Ok(())
            }
            _ => Err(ServiceError::RegionsUnavailable {
                id: id.clone(),
                action: KmsAction::Wrap,
                failures: Vec::new(),
            }),
        }
    }

    /// Makes a new version of `id`'s key, wrapped in every region like a create (with the
    /// same quorum), and makes it current; older versions stay readable by number. Returns
    /// the new version's number.
    ///
    /// # Races
    /// Two rotations of one id never make the same version: the one whose compare-and-set
    /// lands first wins, and the other is [`ServiceError::Conflict`] (retry to rotate again).
    /// An id that is not active is not rotated. A record of the original Go RKMS is upgraded
    /// first.
    pub async fn rotate(&self, id: &KeyId) -> Result<u32, ServiceError> {
        self.within_deadline(async {
            let mut record = self.read_existing(id).await?;
            for _ in 0..ATTEMPTS {
                if !record.wrapped_without_context {
                    break;
                }
                self.upgrade_before_change(id).await?;
                record = self.read_existing(id).await?;
            }
            let number = next_version(id, &record, self.now())?;
            let (key, version, region) = self.new_version(id, number).await?;
            drop(key);
            let incomplete = !version.missing.is_empty();
            self.change(id, "rotate", |current| {
                next_version(id, current, self.now()).and_then(|next| {
                    if next != number {
                        return Err(ServiceError::Conflict {
                            id: id.clone(),
                            reason: format!("another rotation made version {number} first; retry"),
                        });
                    }
                    let mut update = current.clone();
                    update.versions.push(version.clone());
                    Ok(Change::Write(update, number))
                })
            })
            .await?;
            info!(%id, version = number, %region, "rotated key");
            if incomplete {
                self.mark_pending(id);
            }
            Ok(number)
        })
        .await
    }

    /// Schedules the deletion of `id` after `lifecycle.deletion_window`; returns the pending
    /// state. Until then no key of the id is handed out, and [`KeyService::restore`] cancels
    /// it. Scheduling an id already pending deletion changes nothing.
    pub async fn schedule_deletion(&self, id: &KeyId) -> Result<KeyState, ServiceError> {
        let window = self.inner.options.lifecycle.deletion_window;
        let state = self
            .within_deadline(self.change(id, "schedule_deletion", |record| {
                match record.state.at(self.now()) {
                    KeyState::Active => {
                        let mut update = record.clone();
                        update.state = KeyState::PendingDeletion {
                            deletion_time: self.now().saturating_add(window.as_secs()),
                        };
                        Ok(Change::Write(update.clone(), update.state))
                    }
                    pending @ KeyState::PendingDeletion { .. } => Ok(Change::Unchanged(pending)),
                    deleted @ KeyState::Deleted { .. } => Err(not_active(id, deleted)),
                }
            }))
            .await?;
        if let KeyState::PendingDeletion { deletion_time } = state {
            info!(%id, deletion_time, "deletion scheduled");
            self.deletions().insert(id.clone(), deletion_time);
        }
        Ok(state)
    }

    /// Cancels `id`'s pending deletion; returns the state, active. Restoring an active id
    /// changes nothing; a deleted one cannot be restored ([`ServiceError::Deleted`]).
    pub async fn restore(&self, id: &KeyId) -> Result<KeyState, ServiceError> {
        let restored =
            self.within_deadline(self.change(id, "restore", |record| {
                match record.state.at(self.now()) {
                    KeyState::PendingDeletion { .. } => {
                        let mut update = record.clone();
                        update.state = KeyState::Active;
                        Ok(Change::Write(update, true))
                    }
                    KeyState::Active => Ok(Change::Unchanged(false)),
                    deleted @ KeyState::Deleted { .. } => Err(not_active(id, deleted)),
                }
            }))
            .await?;
        if restored {
            info!(%id, "deletion cancelled");
        }
        self.deletions().remove(id);
        Ok(KeyState::Active)
    }

    /// Completes `id`'s deletion if its window has ended: destroys every wrapped copy of every
    /// version and leaves a tombstone, so that the id is never created again. Returns whether
    /// this call did it.
    pub async fn complete_deletion(&self, id: &KeyId) -> Result<bool, ServiceError> {
        let done = self
            .within_deadline(self.change(id, "complete_deletion", |record| {
                let KeyState::Deleted { deleted_at } = record.state.at(self.now()) else {
                    return Ok(Change::Unchanged(false));
                };
                if matches!(record.state, KeyState::Deleted { .. }) {
                    return Ok(Change::Unchanged(false));
                }
                let mut tombstone = record.clone();
                tombstone.state = KeyState::Deleted { deleted_at };
                for version in &mut tombstone.versions {
                    version.copies.clear();
                    version.missing.clear();
                }
                Ok(Change::Write(tombstone, true))
            }))
            .await?;
        if done {
            info!(%id, "deletion completed: every wrapped copy is destroyed");
        }
        Ok(done)
    }

    fn deletions(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<KeyId, u64>> {
        self.inner
            .deletions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Completes the deletions this process scheduled whose window has ended; one that fails
    /// is tried again next time.
    pub(super) async fn complete_scheduled_deletions(&self) {
        let now = self.now();
        let due: Vec<(KeyId, u64)> = self
            .deletions()
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, at)| (id.clone(), *at))
            .collect();
        for (id, at) in due {
            match self.complete_deletion(&id).await {
                Ok(_) | Err(ServiceError::NotFound { .. }) => {
                    let mut deletions = self.deletions();
                    if deletions.get(&id) == Some(&at) {
                        deletions.remove(&id);
                    }
                }
                Err(e) => {
                    tracing::warn!(%id, error = %e, "completing a deletion failed; it is retried")
                }
            }
        }
    }

    /// Completes `id`'s deletion in the background (a read found its window ended), unless
    /// this process is already working on the id.
    pub(super) fn spawn_purge(&self, id: &KeyId) {
        if !self.claim(id, Some(self.inner.options.repair.concurrency)) {
            return;
        }
        let service = self.clone();
        let id = id.clone();
        tokio::spawn(async move {
            if let Err(e) = service.complete_deletion(&id).await {
                tracing::warn!(%id, error = %e, "completing a deletion failed; a sweep retries it");
            }
            service.release(&id);
        });
    }

    /// `id`'s metadata: state, and each version's creation time and regions. No key material,
    /// no KMS call.
    pub async fn describe(&self, id: &KeyId) -> Result<KeyInfo, ServiceError> {
        let record = self.within_deadline(self.read_existing(id)).await?;
        Ok(KeyInfo {
            id: id.clone(),
            state: record.state.at(self.now()),
            versions: record
                .versions
                .iter()
                .map(|v| VersionInfo {
                    number: v.number,
                    created_at: v.created_at,
                    regions: v.copies.keys().cloned().collect(),
                    missing: v.missing.clone(),
                })
                .collect(),
        })
    }

    /// Up to `limit` ids that start with `prefix`, with their states, going on from `after`
    /// (a cursor an earlier call sealed for the same `audience` and prefix).
    ///
    /// Ids come in the store's order. The prefix is applied to the store's listing, so a call
    /// reads at most a few store pages: a page may hold fewer than `limit` ids (even none)
    /// while `next` is set. Records are read for their states, a few at once.
    ///
    /// The store's cursor names the last id it examined, which may be one the caller may not
    /// see; so `next` is sealed (encrypted under a region's master key, bound to `audience`
    /// and `prefix`): a caller learns no id from it, and no caller can use another's. A token
    /// that does not open is [`StoreError::InvalidCursor`].
    pub async fn list_keys(
        &self,
        audience: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeyListing, ServiceError> {
        let context = EncryptionContext::for_list_cursor(audience, prefix);
        self.within_deadline(async {
            let mut ids = Vec::new();
            let mut next = match after {
                Some(token) => Some(self.open_cursor(token, &context).await?),
                None => None,
            };
            for _ in 0..MAX_LIST_PAGES {
                let want = limit.saturating_sub(ids.len());
                if want == 0 {
                    break;
                }
                let page = self
                    .store_call("list", self.inner.store.list(next.as_ref(), want))
                    .await?;
                ids.extend(
                    page.ids
                        .into_iter()
                        .filter(|id| id.as_str().starts_with(prefix)),
                );
                next = page.next;
                if next.is_none() {
                    break;
                }
            }
            let keys = stream::iter(ids)
                .map(|id| async move {
                    let read = self.store_call("get", self.inner.store.get(&id)).await;
                    let state = match read {
                        Ok(Some(stored)) => Some(
                            super::decode(&id, &stored)
                                .ok()
                                .map(|record| record.state.at(self.now())),
                        ),
                        // Deleted from the store by hand since it was listed.
                        Ok(None) => None,
                        Err(e) => return Err(e),
                    };
                    Ok(state.map(|state| ListedKey { id, state }))
                })
                .buffered(LIST_READS_AT_ONCE)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .filter_map(Result::transpose)
                .collect::<Result<Vec<_>, _>>()?;
            let next = match next {
                Some(cursor) => Some(self.seal_cursor(&cursor, &context).await?),
                None => None,
            };
            Ok(KeyListing { keys, next })
        })
        .await
    }

    /// Encrypts a store cursor for a client (see [`KeyService::list_keys`]): the token is the
    /// sealing region's name and the ciphertext.
    async fn seal_cursor(
        &self,
        cursor: &ListCursor,
        context: &EncryptionContext,
    ) -> Result<String, ServiceError> {
        let regions = &self.inner.regions;
        let plain = DataKey::new(cursor.to_string().into_bytes());
        let (index, sealed) = self
            .first_success(&cursor_id(), self.ordered_regions(), "encrypt", |index| {
                regions[index].kms.encrypt(&plain, context)
            })
            .await
            .map_err(|failures| ServiceError::RegionsUnavailable {
                id: cursor_id(),
                action: KmsAction::Wrap,
                failures,
            })?;
        let name = regions[index].name().as_bytes();
        let mut token = Vec::with_capacity(1 + name.len() + sealed.len());
        token.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        token.extend_from_slice(name);
        token.extend_from_slice(&sealed);
        Ok(URL_SAFE_NO_PAD.encode(token))
    }

    /// The store cursor inside a token [`KeyService::seal_cursor`] made for `context`.
    async fn open_cursor(
        &self,
        token: &str,
        context: &EncryptionContext,
    ) -> Result<ListCursor, ServiceError> {
        let invalid = || {
            ServiceError::Store(StoreError::invalid_cursor(
                "rkms",
                "this service did not issue it for this caller and prefix",
            ))
        };
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let (&len, rest) = bytes.split_first().ok_or_else(invalid)?;
        let (name, sealed) = (rest.len() >= usize::from(len))
            .then(|| rest.split_at(usize::from(len)))
            .ok_or_else(invalid)?;
        let regions = &self.inner.regions;
        let index = regions
            .iter()
            .position(|r| r.name().as_bytes() == name)
            .ok_or_else(invalid)?;
        let opened = self
            .first_success(&cursor_id(), vec![index], "decrypt", |index| {
                regions[index].kms.decrypt(sealed, context)
            })
            .await;
        match opened {
            Ok((_, plain)) => std::str::from_utf8(plain.expose_secret())
                .map(ListCursor::from_token)
                .map_err(|_| invalid()),
            Err(failures)
                if failures
                    .iter()
                    .all(|f| matches!(f, crate::KmsError::Refused { .. })) =>
            {
                Err(invalid())
            }
            Err(failures) => Err(ServiceError::RegionsUnavailable {
                id: cursor_id(),
                action: KmsAction::Decrypt,
                failures,
            }),
        }
    }
}

/// The id KMS failures of cursor sealing are reported under.
fn cursor_id() -> KeyId {
    KeyId::parse("rkms-list-cursor").expect("a valid id")
}

/// The number the next version of `record` gets, if it may be rotated.
fn next_version(id: &KeyId, record: &Record, now: u64) -> Result<u32, ServiceError> {
    match record.state.at(now) {
        KeyState::Active => {}
        other => return Err(not_active(id, other)),
    }
    let count = record.current().number;
    if count >= MAX_VERSIONS {
        return Err(ServiceError::Conflict {
            id: id.clone(),
            reason: format!("it has {MAX_VERSIONS} versions, the most one id may have"),
        });
    }
    Ok(count + 1)
}
