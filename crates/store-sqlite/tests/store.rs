//! SqliteStore behaviour: first write wins across connections, compare-and-set, listing.

use futures::future::join_all;
use rkms_core::{KeyId, PutOutcome, Store, StoreError};
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
async fn first_write_wins_and_the_loser_sees_the_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    assert!(store.get(&id("a")).await.unwrap().is_none());
    let PutOutcome::Created(version) = store
        .put_if_absent(&id("a"), b"one".to_vec())
        .await
        .unwrap()
    else {
        panic!("first put must create");
    };
    match store
        .put_if_absent(&id("a"), b"two".to_vec())
        .await
        .unwrap()
    {
        PutOutcome::Exists(existing) => {
            assert_eq!(existing.bytes, b"one");
            assert_eq!(existing.version, version);
        }
        other => panic!("second put must not create: {other:?}"),
    }
    assert_eq!(store.get(&id("a")).await.unwrap().unwrap().bytes, b"one");
}

#[tokio::test]
async fn concurrent_creators_through_separate_pools_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let mut stores = Vec::new();
    for _ in 0..8 {
        stores.push(open(&dir).await);
    }
    let results = join_all((0..64).map(|i| {
        let store = stores[i % stores.len()].clone();
        async move {
            store
                .put_if_absent(&id("race"), format!("writer-{i}").into_bytes())
                .await
                .unwrap()
        }
    }))
    .await;
    let winners: Vec<_> = results
        .iter()
        .filter(|r| matches!(r, PutOutcome::Created(_)))
        .collect();
    assert_eq!(winners.len(), 1);
    let stored = stores[0].get(&id("race")).await.unwrap().unwrap();
    for result in &results {
        if let PutOutcome::Exists(existing) = result {
            assert_eq!(existing.bytes, stored.bytes);
        }
    }
}

#[tokio::test]
async fn compare_and_swap_needs_the_current_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let PutOutcome::Created(v1) = store
        .put_if_absent(&id("a"), b"one".to_vec())
        .await
        .unwrap()
    else {
        panic!()
    };
    let v2 = store
        .compare_and_swap(&id("a"), v1, b"two".to_vec())
        .await
        .unwrap();
    assert_ne!(v1, v2);
    let stale = store
        .compare_and_swap(&id("a"), v1, b"three".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(stale, StoreError::PreconditionFailed { .. }));
    assert_eq!(store.get(&id("a")).await.unwrap().unwrap().bytes, b"two");
    let missing = store
        .compare_and_swap(&id("nope"), v1, b"x".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(missing, StoreError::PreconditionFailed { .. }));
}

#[tokio::test]
async fn a_recreated_id_does_not_reuse_the_old_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let PutOutcome::Created(old) = store
        .put_if_absent(&id("a"), b"one".to_vec())
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(store.delete(&id("a")).await.unwrap());
    assert!(!store.delete(&id("a")).await.unwrap());
    store
        .put_if_absent(&id("a"), b"two".to_vec())
        .await
        .unwrap();
    let stale = store
        .compare_and_swap(&id("a"), old, b"three".to_vec())
        .await;
    assert!(matches!(stale, Err(StoreError::PreconditionFailed { .. })));
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
async fn list_pages_through_ids_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    for name in ["c", "a", "e", "b", "d"] {
        store.put_if_absent(&id(name), vec![1]).await.unwrap();
    }
    let first = store.list(None, 2).await.unwrap();
    assert_eq!(first.ids, [id("a"), id("b")]);
    let second = store.list(first.next.as_ref(), 2).await.unwrap();
    assert_eq!(second.ids, [id("c"), id("d")]);
    let last = store.list(second.next.as_ref(), 2).await.unwrap();
    assert_eq!(last.ids, [id("e")]);
    assert!(last.next.is_none());
    assert!(store.list(None, 0).await.unwrap().ids.is_empty());
}

#[tokio::test]
async fn ids_at_the_limits_are_stored_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let long = id(&"z".repeat(rkms_core::MAX_ID_LEN));
    let punctuated = id(&format!("A0{}", rkms_core::ID_PUNCTUATION));
    for key in [&long, &punctuated] {
        store
            .put_if_absent(key, key.as_str().as_bytes().to_vec())
            .await
            .unwrap();
        assert_eq!(
            store.get(key).await.unwrap().unwrap().bytes,
            key.as_str().as_bytes()
        );
    }
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
