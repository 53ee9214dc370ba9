//! The shared conformance suite against SqliteStore: each namespace is its own database file,
//! and each connection its own pool, as separate server processes would have.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use rkms_conformance::{Backend, Namespace};
use rkms_core::Store;
use rkms_store_sqlite::{SqliteConfig, SqliteStore};

struct SqliteBackend;

struct SqliteNamespace {
    dir: tempfile::TempDir,
}

impl SqliteNamespace {
    fn path(&self) -> PathBuf {
        self.dir.path().join("rkms.sqlite3")
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn namespace(&self) -> Box<dyn Namespace> {
        Box::new(SqliteNamespace {
            dir: tempfile::tempdir().unwrap(),
        })
    }
}

#[async_trait]
impl Namespace for SqliteNamespace {
    async fn connect(&self) -> Arc<dyn Store> {
        let mut config = SqliteConfig::new(self.path());
        config.max_connections = 1;
        Arc::new(SqliteStore::open(&config).await.unwrap())
    }

    async fn cleanup(self: Box<Self>) {}
}

async fn sqlite_backend() -> SqliteBackend {
    SqliteBackend
}

rkms_conformance::conformance_suite!(in_process: sqlite_backend);
