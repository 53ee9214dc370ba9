//! How far a change of regions or master keys has got: a walk of the store that counts, per
//! configured region, the records whose every version holds a copy under the region's
//! current key, those with a copy under an old key, and those lacking a copy; and the records
//! below the quorum, which no drop may touch and which need their regions back.

use std::collections::BTreeMap;

use super::repair::CopyKey;
use super::{KeyService, ServiceError};
use crate::record::{KeyState, Record};
use crate::{KeyId, ListCursor};

/// Ids read per store page by the walk.
const PAGE: usize = 500;

/// Ids below the quorum named in a report; past it they are only counted.
const NAMED: usize = 100;

/// One configured region's share of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionCopies {
    /// The region's name.
    pub region: String,
    /// Records whose every version holds a copy under the region's current master key.
    pub current: usize,
    /// Records with a copy under one of the region's previous keys (to be wrapped again).
    pub old_key: usize,
    /// Records with a copy under a key name this configuration does not know (another
    /// spelling of a key, another server's configuration): read naming the current key, never
    /// rewrapped.
    pub other_key: usize,
    /// Records with a version lacking a copy in the region (to be added).
    pub missing: usize,
}

/// What [`KeyService::copies_report`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopiesReport {
    /// Records read (tombstones included).
    pub records: usize,
    /// Deleted ids: no copies to count.
    pub deleted: usize,
    /// Records that could not be read (unreadable bytes), by count.
    pub unreadable: usize,
    /// Per configured region, in configured order.
    pub regions: Vec<RegionCopies>,
    /// Copies held for regions no longer configured, by region: repair drops them where a
    /// quorum remains.
    pub unconfigured: BTreeMap<String, usize>,
    /// Records with a version holding fewer than `min_regions` copies under configured
    /// regions' current keys.
    pub below_quorum: usize,
    /// The first of them, by id.
    pub below_quorum_ids: Vec<KeyId>,
}

impl KeyService {
    /// Walks the whole store and counts each configured region's copies (see the module
    /// documentation). Reads records only; makes no KMS call.
    pub async fn copies_report(&self) -> Result<CopiesReport, ServiceError> {
        let regions = &self.inner.regions;
        let mut report = CopiesReport {
            regions: regions
                .iter()
                .map(|r| RegionCopies {
                    region: r.name().to_owned(),
                    ..RegionCopies::default()
                })
                .collect(),
            ..CopiesReport::default()
        };
        let mut after: Option<ListCursor> = None;
        loop {
            let page = self
                .store_call("list", self.inner.store.list(after.as_ref(), PAGE))
                .await?;
            for id in &page.ids {
                let Some(stored) = self.store_call("get", self.inner.store.get(id)).await? else {
                    continue;
                };
                report.records += 1;
                match super::decode(id, &stored) {
                    Ok(record) => self.count(id, &record, &mut report),
                    Err(_) => report.unreadable += 1,
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(report),
            }
        }
    }

    fn count(&self, id: &KeyId, record: &Record, report: &mut CopiesReport) {
        if matches!(record.state.at(self.now()), KeyState::Deleted { .. }) {
            report.deleted += 1;
            return;
        }
        let regions = &self.inner.regions;
        for (index, counts) in report.regions.iter_mut().enumerate() {
            let copies: Vec<_> = record
                .versions
                .iter()
                .map(|v| v.copies.get(regions[index].name()))
                .collect();
            // A record may count in several columns: one version may lack a copy while another
            // holds one under an old key.
            let present: Vec<_> = copies.iter().flatten().collect();
            let missing = present.len() < copies.len();
            counts.missing += usize::from(missing);
            counts.old_key += usize::from(
                present
                    .iter()
                    .any(|c| self.copy_key(index, c) == CopyKey::Previous),
            );
            counts.other_key +=
                usize::from(present.iter().any(|c| {
                    !self.is_current(index, c) && self.copy_key(index, c) == CopyKey::Other
                }));
            counts.current +=
                usize::from(!missing && present.iter().all(|c| self.is_current(index, c)));
        }
        let mut below = false;
        for version in &record.versions {
            below |= self.current_copies(version) < self.inner.options.min_regions;
            for name in version.copies.keys() {
                if !regions.iter().any(|r| r.name() == name.as_str()) {
                    *report.unconfigured.entry(name.clone()).or_default() += 1;
                }
            }
        }
        if below {
            report.below_quorum += 1;
            if report.below_quorum_ids.len() < NAMED {
                report.below_quorum_ids.push(id.clone());
            }
        }
    }
}
