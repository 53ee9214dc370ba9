//! The suite against MemoryStore: the reference every other backend is held to.

use std::sync::Arc;

use async_trait::async_trait;
use rkms_conformance::{Backend, Namespace};
use rkms_core::{MemoryStore, Store};

struct MemoryBackend;

/// One MemoryStore per namespace; every "connection" is the same store.
struct MemoryNamespace(Arc<MemoryStore>);

#[async_trait]
impl Backend for MemoryBackend {
    async fn namespace(&self) -> Box<dyn Namespace> {
        Box::new(MemoryNamespace(Arc::new(MemoryStore::new())))
    }
}

#[async_trait]
impl Namespace for MemoryNamespace {
    async fn connect(&self) -> Arc<dyn Store> {
        self.0.clone()
    }

    async fn cleanup(self: Box<Self>) {}
}

async fn memory_backend() -> MemoryBackend {
    MemoryBackend
}

rkms_conformance::conformance_suite!(in_process: memory_backend);
