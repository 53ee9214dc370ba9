//! Embedding RKMS: a `KeyService` over a store written here, with software KMS regions.
//!
//! Run with `cargo run -p rkms-core --example embed`. A real application would back the store
//! with its own database and use AWS KMS regions; the protocol is the same.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rkms_core::{
    KeyId, KeyService, Kms, ListCursor, ListPage, LocalKeyring, PutOutcome, Store, StoreError,
    Stored, Version,
};

/// The smallest correct store: a map behind a lock, each write bumping a version counter.
#[derive(Debug, Default)]
struct MapStore {
    inner: Mutex<(HashMap<KeyId, Stored>, u64)>,
}

#[async_trait]
impl Store for MapStore {
    async fn get(&self, id: &KeyId) -> Result<Option<Stored>, StoreError> {
        Ok(self.inner.lock().unwrap().0.get(id).cloned())
    }

    async fn put_if_absent(&self, id: &KeyId, bytes: Vec<u8>) -> Result<PutOutcome, StoreError> {
        let mut guard = self.inner.lock().unwrap();
        let (records, counter) = &mut *guard;
        if let Some(existing) = records.get(id) {
            return Ok(PutOutcome::Exists(existing.clone()));
        }
        *counter += 1;
        let version = Version::new(*counter);
        records.insert(id.clone(), Stored::new(bytes, version));
        Ok(PutOutcome::Created(version))
    }

    async fn compare_and_swap(
        &self,
        id: &KeyId,
        expected: Version,
        bytes: Vec<u8>,
    ) -> Result<Version, StoreError> {
        let mut guard = self.inner.lock().unwrap();
        let (records, counter) = &mut *guard;
        match records.get(id) {
            Some(current) if current.version == expected => {
                *counter += 1;
                let version = Version::new(*counter);
                records.insert(id.clone(), Stored::new(bytes, version));
                Ok(version)
            }
            _ => Err(StoreError::PreconditionFailed { expected }),
        }
    }

    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        Ok(self.inner.lock().unwrap().0.remove(id).is_some())
    }

    /// Pages in byte order; the cursor is the last id examined.
    async fn list(
        &self,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        let after = cursor.map(|c| c.text_position("map")).transpose()?;
        let records = &self.inner.lock().unwrap().0;
        let mut ids: Vec<&str> = records
            .keys()
            .map(KeyId::as_str)
            .filter(|id| after.as_deref().is_none_or(|a| *id > a))
            .collect();
        ids.sort_unstable();
        ids.truncate(limit.saturating_add(1));
        Ok(ListPage::from_overfetched("map", ids, limit))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Three software regions; in production these are AWS KMS regions.
    let keyring = LocalKeyring::generate(&["key-a", "key-b", "key-c"])?;
    let mut builder = KeyService::builder(Arc::new(MapStore::default()));
    for (region, key) in [
        ("region-a", "key-a"),
        ("region-b", "key-b"),
        ("region-c", "key-c"),
    ] {
        builder = builder.region(Arc::new(keyring.region(region, key)?) as Arc<dyn Kms>);
    }
    let service = builder.build()?;

    let id = KeyId::parse("invoices/2026")?;
    let first = service.get_or_create(&id).await?;
    let again = service.get_or_create(&id).await?;
    assert_eq!(first.key, again.key);
    println!(
        "id {id}: {}-byte key created in {}, read back from {} (the key itself: {:?})",
        first.key.len(),
        first.region,
        again.region,
        first.key
    );
    Ok(())
}
