//! The shared conformance suite against SqliteStore: each namespace is its own database file,
//! and each connection its own pool, as separate server processes would have.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use rkms_conformance::{Backend, Namespace, NativeBackend};
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
impl NativeBackend for SqliteBackend {
    async fn namespace_with_raw_ids(&self, raw_ids: &[&str]) -> Box<dyn Namespace> {
        let ns = SqliteNamespace {
            dir: tempfile::tempdir().unwrap(),
        };
        drop(ns.connect().await);
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", ns.path().display()))
            .await
            .unwrap();
        for raw in raw_ids {
            sqlx::query("INSERT INTO rkms_keys (id, record, version) VALUES (?, x'00', 1)")
                .bind(*raw)
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
        Box::new(ns)
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

rkms_conformance::conformance_suite!(in_process, native: sqlite_backend);
