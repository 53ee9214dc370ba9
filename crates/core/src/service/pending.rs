//! `PendingRepairs`: the ids this process knows to lack copies, bounded and backed off.
//!
//! The set is bounded: beyond `capacity` the oldest ids are dropped (and counted), left for the
//! sweep to find again, so that a long outage cannot grow it without end. An id whose repair
//! fails waits before its next try, twice as long each time up to 64 repair intervals, so
//! that records that cannot be completed yet (a region that refuses, a region added that
//! will not answer) are not retried every interval forever.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::KeyId;

/// The longest backoff, in repair intervals, as a power of two.
const MAX_BACKOFF_DOUBLINGS: u32 = 6;

#[derive(Debug)]
struct Entry {
    /// Insertion order, the key into `order`.
    seq: u64,
    /// Failed repairs in a row.
    failures: u32,
    /// When the next try is due.
    due: Instant,
}

/// See the module documentation.
#[derive(Debug)]
pub(super) struct PendingRepairs {
    by_id: HashMap<KeyId, Entry>,
    order: BTreeMap<u64, KeyId>,
    next_seq: u64,
    capacity: usize,
}

impl PendingRepairs {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            by_id: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            capacity,
        }
    }

    /// Remembers `id`, due now unless it is already known (its backoff stands). Returns how
    /// many of the oldest ids were dropped to make room.
    pub(super) fn insert(&mut self, id: &KeyId) -> usize {
        if self.by_id.contains_key(id) {
            return 0;
        }
        let mut dropped = 0;
        while self.by_id.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.by_id.remove(&oldest);
            dropped += 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, id.clone());
        self.by_id.insert(
            id.clone(),
            Entry {
                seq,
                failures: 0,
                due: Instant::now(),
            },
        );
        dropped
    }

    /// Records a failed repair of `id` (remembering it if it was not known): its next try waits
    /// `interval` times two to the number of failures in a row, up to 64 intervals.
    pub(super) fn failed(&mut self, id: &KeyId, interval: Duration) -> usize {
        let dropped = self.insert(id);
        if let Some(entry) = self.by_id.get_mut(id) {
            entry.failures = entry.failures.saturating_add(1);
            let doublings = (entry.failures - 1).min(MAX_BACKOFF_DOUBLINGS);
            entry.due = Instant::now() + interval * (1 << doublings);
        }
        dropped
    }

    /// Makes every id due now, keeping its count of failures: a region came back, so the
    /// repairs that failed while it was away may succeed.
    pub(super) fn all_due_now(&mut self) {
        let now = Instant::now();
        for entry in self.by_id.values_mut() {
            entry.due = now;
        }
    }

    /// True when `id` is remembered and its next try is not due yet.
    pub(super) fn backing_off(&self, id: &KeyId) -> bool {
        self.by_id
            .get(id)
            .is_some_and(|entry| entry.due > Instant::now())
    }

    pub(super) fn remove(&mut self, id: &KeyId) {
        if let Some(entry) = self.by_id.remove(id) {
            self.order.remove(&entry.seq);
        }
    }

    /// The ids whose next try is due, newest first: a record created incomplete a moment ago
    /// is the likeliest to be read next, and the one with the fewest copies to lose.
    pub(super) fn due(&self) -> Vec<KeyId> {
        let now = Instant::now();
        self.order
            .values()
            .rev()
            .filter(|id| self.by_id.get(*id).is_some_and(|e| e.due <= now))
            .cloned()
            .collect()
    }

    /// Every id remembered, oldest first.
    pub(super) fn ids(&self) -> Vec<KeyId> {
        self.order.values().cloned().collect()
    }

    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> KeyId {
        KeyId::parse(s).unwrap()
    }

    #[test]
    fn the_oldest_are_dropped_beyond_the_capacity() {
        let mut pending = PendingRepairs::new(3);
        for name in ["a", "b", "c"] {
            assert_eq!(pending.insert(&id(name)), 0);
        }
        assert_eq!(pending.insert(&id("a")), 0, "a known id is not added twice");
        assert_eq!(pending.insert(&id("d")), 1);
        assert_eq!(pending.ids(), vec![id("b"), id("c"), id("d")]);
        pending.remove(&id("c"));
        assert_eq!(pending.insert(&id("e")), 0);
        assert_eq!(pending.len(), 3);
    }

    #[test]
    fn a_failed_id_waits_twice_as_long_each_time() {
        let mut pending = PendingRepairs::new(10);
        pending.insert(&id("a"));
        pending.insert(&id("b"));
        assert_eq!(pending.due(), vec![id("b"), id("a")], "newest first");
        pending.failed(&id("a"), Duration::from_secs(60));
        assert_eq!(pending.due(), vec![id("b")]);
        assert!(pending.backing_off(&id("a")) && !pending.backing_off(&id("b")));
        let entry = &pending.by_id[&id("a")];
        assert!(entry.due > Instant::now() + Duration::from_secs(59));
        for _ in 0..20 {
            pending.failed(&id("a"), Duration::from_secs(60));
        }
        let wait = pending.by_id[&id("a")].due - Instant::now();
        assert!(wait <= Duration::from_secs(64 * 60), "{wait:?}");
        assert!(wait > Duration::from_secs(63 * 60), "{wait:?}");
        pending.failed(&id("new"), Duration::from_millis(1));
        assert_eq!(pending.len(), 3);
    }
}
