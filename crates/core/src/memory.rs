//! `MemoryStore`: a store in process memory, for embedding, development and unit tests.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::list::{ListCursor, ListPage};
use crate::store::{PutOutcome, Store, StoreError, Stored, Version};
use crate::KeyId;

const STORE: &str = "memory";

/// A [`Store`] in process memory. Its records vanish with the process, so it suits tests and
/// embedding where something else persists keys; it is never a production key store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    records: BTreeMap<KeyId, Stored>,
    /// Versions are drawn from one counter, so a deleted and re-created id never reuses one.
    last_version: u64,
}

impl State {
    fn next_version(&mut self) -> Version {
        self.last_version += 1;
        Version::new(self.last_version)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-written map: every change is a
        // single insert or remove.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, id: &KeyId) -> Result<Option<Stored>, StoreError> {
        Ok(self.state().records.get(id).cloned())
    }

    async fn put_if_absent(&self, id: &KeyId, bytes: Vec<u8>) -> Result<PutOutcome, StoreError> {
        let mut state = self.state();
        if let Some(existing) = state.records.get(id) {
            return Ok(PutOutcome::Exists(existing.clone()));
        }
        let version = state.next_version();
        state
            .records
            .insert(id.clone(), Stored::new(bytes, version));
        Ok(PutOutcome::Created(version))
    }

    async fn compare_and_swap(
        &self,
        id: &KeyId,
        expected: Version,
        bytes: Vec<u8>,
    ) -> Result<Version, StoreError> {
        let mut state = self.state();
        match state.records.get(id) {
            Some(current) if current.version == expected => {
                let version = state.next_version();
                state
                    .records
                    .insert(id.clone(), Stored::new(bytes, version));
                Ok(version)
            }
            _ => Err(StoreError::PreconditionFailed { expected }),
        }
    }

    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        Ok(self.state().records.remove(id).is_some())
    }

    /// Pages in byte order; the cursor is the last id listed.
    async fn list(
        &self,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        if limit == 0 {
            return Ok(ListPage::default());
        }
        let after = cursor.map(|c| c.text_position(STORE)).transpose()?;
        let state = self.state();
        let lower = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let ids: Vec<&str> = state
            .records
            .range::<str, _>((lower, Bound::Unbounded))
            .take(limit.saturating_add(1))
            .map(|(id, _)| id.as_str())
            .collect();
        Ok(ListPage::from_overfetched(STORE, ids, limit))
    }
}
