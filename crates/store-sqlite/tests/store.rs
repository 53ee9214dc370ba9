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

/// Servers started together on a fresh data directory all open the file: switching a new
/// database into WAL mode takes a lock SQLite's busy timeout does not wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_opened_together_on_a_fresh_file_all_open() {
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let config = SqliteConfig::new(dir.path().join("rkms.sqlite3"));
        let opens: Vec<_> = (0..6)
            .map(|_| {
                let config = config.clone();
                tokio::spawn(async move { SqliteStore::open(&config).await })
            })
            .collect();
        for open in opens {
            let store = open.await.unwrap().expect("every store opens");
            store
                .put_if_absent(&id("shared"), b"bytes".to_vec())
                .await
                .unwrap();
        }
    }
}
