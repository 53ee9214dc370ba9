//! SqliteStore behaviour beyond the conformance suite: durability and bad paths.

use rkms_core::{KeyId, Store};
use rkms_store_sqlite::{SqliteConfig, SqliteStore};

fn id(s: &str) -> KeyId {
    KeyId::parse(s).unwrap()
}

async fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&SqliteConfig::new(dir.path().join("db/rkms.sqlite3")))
        .await
        .unwrap()
}

#[tokio::test]
async fn records_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    open(&dir)
        .await
        .put_if_absent(&id("kept"), b"bytes".to_vec())
        .await
        .unwrap();
    let reopened = open(&dir).await;
    assert_eq!(
        reopened.get(&id("kept")).await.unwrap().unwrap().bytes,
        b"bytes"
    );
}

#[tokio::test]
async fn an_unopenable_path_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = SqliteStore::open(&SqliteConfig::new(file.join("rkms.sqlite3")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("sqlite"), "{err}");
}
