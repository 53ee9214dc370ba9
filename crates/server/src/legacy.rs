//! `rkms-server legacy upgrade`: wraps the keys of the original Go RKMS's items again under
//! their ids' encryption context, so that `legacy_records = "refuse"` can follow.
//!
//! It walks the whole store. An item of the original is upgraded by the core's repair: its
//! key is decrypted (empty context) and wrapped under `{"rkms:id": id}` in every configured
//! region, and RKMS's own record is written by compare-and-set from the item's legacy version,
//! keeping the original's `keys` for Go servers still running. Items already carrying RKMS's
//! record are left alone, so the command is safe to rerun and to run while servers serve.

use std::sync::{Arc, Mutex};

use futures::stream::{self, StreamExt as _};
use rkms_core::{KeyId, KeyService, ListCursor, RepairOutcome, Store};

/// Ids read per page.
const PAGE: usize = 100;

/// What one run found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UpgradeSummary {
    /// Ids read.
    pub scanned: usize,
    /// Items of the original that now carry RKMS's record (or would, in a dry run).
    pub upgraded: usize,
    /// Ids whose record is already RKMS's own (or that vanished meanwhile).
    pub already_current: usize,
    /// Items that could not be upgraded, with the reason.
    pub failed: Vec<(KeyId, String)>,
}

/// Upgrades every legacy item in `store` through `service`; `dry_run` only counts them.
/// `progress` is called after every page.
pub async fn upgrade(
    store: &Arc<dyn Store>,
    service: &KeyService,
    dry_run: bool,
    concurrency: usize,
    mut progress: impl FnMut(&UpgradeSummary),
) -> Result<UpgradeSummary, String> {
    let summary = Mutex::new(UpgradeSummary::default());
    let mut cursor: Option<ListCursor> = None;
    loop {
        let page = store
            .list(cursor.as_ref(), PAGE)
            .await
            .map_err(|e| format!("cannot list the store: {e}"))?;
        stream::iter(&page.ids)
            .for_each_concurrent(concurrency.max(1), |id| {
                let summary = &summary;
                async move {
                    let outcome = upgrade_one(store, service, id, dry_run).await;
                    let mut summary = summary.lock().unwrap_or_else(|e| e.into_inner());
                    summary.scanned += 1;
                    match outcome {
                        Ok(true) => summary.upgraded += 1,
                        Ok(false) => summary.already_current += 1,
                        Err(reason) => summary.failed.push((id.clone(), reason)),
                    }
                }
            })
            .await;
        progress(&summary.lock().unwrap_or_else(|e| e.into_inner()));
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(summary.into_inner().unwrap_or_else(|e| e.into_inner())),
        }
    }
}

/// Upgrades one id if it is a legacy item: `Ok(true)` when it was (or would be) upgraded.
async fn upgrade_one(
    store: &Arc<dyn Store>,
    service: &KeyService,
    id: &KeyId,
    dry_run: bool,
) -> Result<bool, String> {
    let stored = store.get(id).await.map_err(|e| e.to_string())?;
    if !stored.is_some_and(|s| s.legacy) {
        return Ok(false);
    }
    if dry_run {
        return Ok(true);
    }
    match service.repair(id).await.map_err(|e| e.to_string())? {
        RepairOutcome::Upgraded { .. } => Ok(true),
        RepairOutcome::StillMissing(_) => Err(format!(
            "not upgraded now: fewer than {} regions could be called or wrapped its key, or \
             other writers kept changing it; rerun when the regions answer",
            service.options().min_regions
        )),
        RepairOutcome::Complete | RepairOutcome::Repaired { .. } | RepairOutcome::NotFound => {
            Ok(false)
        }
    }
}
