//! Test stores over a `MemoryStore`: a test overrides only the calls it changes.

use std::ops::Deref;

use async_trait::async_trait;
use rkms_core::{
    KeyId, ListCursor, ListPage, MemoryStore, PutOutcome, Store, StoreError, Stored, Version,
};

/// The calls of a test store; each one not overridden reaches [`StoreWrapper::inner`].
#[async_trait]
pub(crate) trait StoreWrapper: Send + Sync + std::fmt::Debug {
    fn inner(&self) -> &MemoryStore;

    async fn get(&self, id: &KeyId) -> Result<Option<Stored>, StoreError> {
        self.inner().get(id).await
    }

    async fn put_if_absent(&self, id: &KeyId, bytes: Vec<u8>) -> Result<PutOutcome, StoreError> {
        self.inner().put_if_absent(id, bytes).await
    }

    async fn compare_and_swap(
        &self,
        id: &KeyId,
        expected: Version,
        bytes: Vec<u8>,
    ) -> Result<Version, StoreError> {
        self.inner().compare_and_swap(id, expected, bytes).await
    }

    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        self.inner().delete(id).await
    }

    async fn list(
        &self,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        self.inner().list(cursor, limit).await
    }
}

/// A [`StoreWrapper`] as a [`Store`]; derefs to the wrapper, for its counters and switches.
#[derive(Debug, Default)]
pub(crate) struct Wrapped<W>(pub(crate) W);

impl<W> Deref for Wrapped<W> {
    type Target = W;

    fn deref(&self) -> &W {
        &self.0
    }
}

#[async_trait]
impl<W: StoreWrapper> Store for Wrapped<W> {
    async fn get(&self, id: &KeyId) -> Result<Option<Stored>, StoreError> {
        StoreWrapper::get(&self.0, id).await
    }

    async fn put_if_absent(&self, id: &KeyId, bytes: Vec<u8>) -> Result<PutOutcome, StoreError> {
        StoreWrapper::put_if_absent(&self.0, id, bytes).await
    }

    async fn compare_and_swap(
        &self,
        id: &KeyId,
        expected: Version,
        bytes: Vec<u8>,
    ) -> Result<Version, StoreError> {
        StoreWrapper::compare_and_swap(&self.0, id, expected, bytes).await
    }

    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        StoreWrapper::delete(&self.0, id).await
    }

    async fn list(
        &self,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        StoreWrapper::list(&self.0, cursor, limit).await
    }
}
