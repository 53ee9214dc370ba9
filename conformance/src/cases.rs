//! The conformance cases: plain async functions over a [`Backend`], one property each.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use rkms_core::{
    KeyId, ListCursor, PutOutcome, Store, StoreError, Version, ID_PUNCTUATION, MAX_ID_LEN,
};

use crate::proxy::{Proxy, ProxyMode};
use crate::{Backend, NativeBackend, NetworkBackend};

/// Longest a store call may take against a dead service before the case calls it a hang.
const HANG: Duration = Duration::from_secs(30);

fn id(s: &str) -> KeyId {
    KeyId::parse(s).expect("test ids are valid")
}

fn created(outcome: PutOutcome) -> Version {
    match outcome {
        PutOutcome::Created(version) => version,
        PutOutcome::Exists(existing) => panic!("expected a create, found {existing:?}"),
    }
}

/// Reading an id nobody wrote gives `None`.
pub async fn missing_id_reads_as_none(backend: &dyn Backend) {
    let ns = backend.namespace().await;
    let store = ns.connect().await;
    assert!(store.get(&id("never-written")).await.unwrap().is_none());
    ns.cleanup().await;
}

/// The first `put_if_absent` creates; a second returns the existing record untouched.
pub async fn first_write_wins(backend: &dyn Backend) {
    let ns = backend.namespace().await;
    let store = ns.connect().await;
    let version = created(
        store
            .put_if_absent(&id("a"), b"first".to_vec())
            .await
            .unwrap(),
    );
    match store
        .put_if_absent(&id("a"), b"second".to_vec())
        .await
        .unwrap()
    {
        PutOutcome::Exists(existing) => {
            assert_eq!(existing.bytes, b"first");
            assert_eq!(existing.version, version);
        }
        PutOutcome::Created(_) => panic!("a second create over an existing id must not win"),
    }
    let stored = store.get(&id("a")).await.unwrap().unwrap();
    assert_eq!(
        (stored.bytes.as_slice(), stored.version),
        (&b"first"[..], version)
    );
    ns.cleanup().await;
}

/// 64 concurrent creators of one id, each through its own connection: exactly one wins, and
/// every loser is handed the winner's bytes.
pub async fn racing_creators_through_separate_connections_have_one_winner(backend: &dyn Backend) {
    const CREATORS: usize = 64;
    let ns = backend.namespace().await;
    let stores: Vec<Arc<dyn Store>> = join_all((0..CREATORS).map(|_| ns.connect())).await;
    let outcomes = join_all(stores.iter().enumerate().map(|(i, store)| async move {
        let bytes = format!("creator-{i}").into_bytes();
        (
            bytes.clone(),
            store.put_if_absent(&id("contended"), bytes).await.unwrap(),
        )
    }))
    .await;
    let winners: Vec<&Vec<u8>> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, PutOutcome::Created(_)))
        .map(|(bytes, _)| bytes)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one creator wins");
    let stored = stores[0].get(&id("contended")).await.unwrap().unwrap();
    assert_eq!(&stored.bytes, winners[0]);
    for (_, outcome) in &outcomes {
        if let PutOutcome::Exists(existing) = outcome {
            assert_eq!(
                existing.bytes, stored.bytes,
                "a loser sees the winner's bytes"
            );
            assert_eq!(existing.version, stored.version);
        }
    }
    ns.cleanup().await;
}

/// Compare-and-set succeeds on the current version, fails on a stale one and changes nothing.
pub async fn compare_and_swap_needs_the_current_version(backend: &dyn Backend) {
    let ns = backend.namespace().await;
    let store = ns.connect().await;
    let v1 = created(
        store
            .put_if_absent(&id("a"), b"one".to_vec())
            .await
            .unwrap(),
    );
    let v2 = store
        .compare_and_swap(&id("a"), v1, b"two".to_vec())
        .await
        .unwrap();
    assert_ne!(v1, v2, "every write returns a new version");
    let stale = store
        .compare_and_swap(&id("a"), v1, b"stale".to_vec())
        .await;
    assert!(
        matches!(stale, Err(StoreError::PreconditionFailed { .. })),
        "{stale:?}"
    );
    let stored = store.get(&id("a")).await.unwrap().unwrap();
    assert_eq!((stored.bytes.as_slice(), stored.version), (&b"two"[..], v2));
    let v3 = store
        .compare_and_swap(&id("a"), v2, b"three".to_vec())
        .await
        .unwrap();
    assert!(v3 != v1 && v3 != v2);
    ns.cleanup().await;
}

/// Compare-and-set on an id with no record is "precondition failed" and creates nothing.
pub async fn compare_and_swap_on_a_missing_id_fails(backend: &dyn Backend) {
    let ns = backend.namespace().await;
    let store = ns.connect().await;
    let version = created(
        store
            .put_if_absent(&id("other"), b"x".to_vec())
            .await
            .unwrap(),
    );
    let result = store
        .compare_and_swap(&id("missing"), version, b"y".to_vec())
        .await;
    assert!(
        matches!(result, Err(StoreError::PreconditionFailed { .. })),
        "{result:?}"
    );
    assert!(store.get(&id("missing")).await.unwrap().is_none());
    ns.cleanup().await;
}

/// N workers each add M to one counter by read-then-compare-and-set; every increment lands.
pub async fn concurrent_increments_by_compare_and_swap_all_land(backend: &dyn Backend) {
    const WORKERS: u64 = 4;
    const INCREMENTS: u64 = 8;
    let ns = backend.namespace().await;
    let seed = ns.connect().await;
    created(
        seed.put_if_absent(&id("counter"), 0u64.to_string().into_bytes())
            .await
            .unwrap(),
    );
    let stores: Vec<Arc<dyn Store>> = join_all((0..WORKERS).map(|_| ns.connect())).await;
    join_all(stores.iter().map(|store| async move {
        for _ in 0..INCREMENTS {
            loop {
                let current = store.get(&id("counter")).await.unwrap().unwrap();
                let value: u64 = String::from_utf8(current.bytes).unwrap().parse().unwrap();
                let next = (value + 1).to_string().into_bytes();
                match store
                    .compare_and_swap(&id("counter"), current.version, next)
                    .await
                {
                    Ok(_) => break,
                    Err(StoreError::PreconditionFailed { .. }) => continue,
                    Err(e) => panic!("compare-and-set failed: {e}"),
                }
            }
        }
    }))
    .await;
    let last = seed.get(&id("counter")).await.unwrap().unwrap();
    assert_eq!(
        String::from_utf8(last.bytes).unwrap(),
        (WORKERS * INCREMENTS).to_string()
    );
    ns.cleanup().await;
}

/// Delete removes the record and reports whether there was one.
pub async fn delete_removes_the_record(backend: &dyn Backend) {
    let ns = backend.namespace().await;
    let store = ns.connect().await;
    created(store.put_if_absent(&id("a"), b"x".to_vec()).await.unwrap());
    assert!(store.delete(&id("a")).await.unwrap());
    assert!(store.get(&id("a")).await.unwrap().is_none());
    assert!(!store.delete(&id("a")).await.unwrap());
    assert!(!store.delete(&id("never")).await.unwrap());
    ns.cleanup().await;
}

/// After delete and re-create, a compare-and-set holding the old version fails.
pub async fn a_recreated_id_never_reuses_a_version(backend: &dyn Backend) {
    let ns = backend.namespace().await;
    let store = ns.connect().await;
    let old = created(
        store
            .put_if_absent(&id("a"), b"old".to_vec())
            .await
            .unwrap(),
    );
    assert!(store.delete(&id("a")).await.unwrap());
    let new = created(
        store
            .put_if_absent(&id("a"), b"new".to_vec())
            .await
            .unwrap(),
    );
    assert_ne!(old, new);
    let stale = store
        .compare_and_swap(&id("a"), old, b"clobber".to_vec())
        .await;
    assert!(
        matches!(stale, Err(StoreError::PreconditionFailed { .. })),
        "{stale:?}"
    );
    assert_eq!(store.get(&id("a")).await.unwrap().unwrap().bytes, b"new");
    ns.cleanup().await;
}

/// Two namespaces never see each other's ids.
pub async fn namespaces_never_see_each_others_ids(backend: &dyn Backend) {
    let (first, second) = (backend.namespace().await, backend.namespace().await);
    let (a, b) = (first.connect().await, second.connect().await);
    created(
        a.put_if_absent(&id("shared"), b"first".to_vec())
            .await
            .unwrap(),
    );
    created(
        a.put_if_absent(&id("only-first"), b"x".to_vec())
            .await
            .unwrap(),
    );
    created(
        b.put_if_absent(&id("shared"), b"second".to_vec())
            .await
            .unwrap(),
    );
    assert_eq!(a.get(&id("shared")).await.unwrap().unwrap().bytes, b"first");
    assert_eq!(
        b.get(&id("shared")).await.unwrap().unwrap().bytes,
        b"second"
    );
    assert!(b.get(&id("only-first")).await.unwrap().is_none());
    assert_eq!(b.list(None, 100).await.unwrap().ids, [id("shared")]);
    assert!(b.delete(&id("shared")).await.unwrap());
    assert_eq!(a.get(&id("shared")).await.unwrap().unwrap().bytes, b"first");
    first.cleanup().await;
    second.cleanup().await;
}

/// Ids at the documented limits (longest, every allowed punctuation, one byte) round-trip.
pub async fn ids_at_the_limits_round_trip(backend: &dyn Backend) {
    let ns = backend.namespace().await;
    let store = ns.connect().await;
    let ids = [
        "z".repeat(MAX_ID_LEN),
        format!("Az09{ID_PUNCTUATION}"),
        "q".to_owned(),
        format!(
            "{ID_PUNCTUATION}{}",
            "9".repeat(MAX_ID_LEN - ID_PUNCTUATION.len())
        ),
    ];
    for raw in &ids {
        let key = id(raw);
        created(
            store
                .put_if_absent(&key, raw.as_bytes().to_vec())
                .await
                .unwrap(),
        );
        assert_eq!(
            store.get(&key).await.unwrap().unwrap().bytes,
            raw.as_bytes()
        );
    }
    let mut expected: Vec<KeyId> = ids.iter().map(|raw| id(raw)).collect();
    expected.sort();
    let mut listed = store.list(None, 10).await.unwrap().ids;
    listed.sort();
    assert_eq!(listed, expected);
    ns.cleanup().await;
}

/// A walk through the pages lists every id present for the whole walk exactly once, whatever
/// the backend's order, with ids created and deleted meanwhile listed at most once; pages hold
/// at most their limit, and the walk ends.
pub async fn list_pages_through_every_id_once(backend: &dyn Backend) {
    const LIMIT: usize = 4;
    let ns = backend.namespace().await;
    let store = ns.connect().await;
    let names: Vec<String> = (0..23)
        .map(|i| format!("{}{i}", ["m", "a", "Z", "b-", "b/", "0", "z"][i % 7]))
        .collect();
    for name in &names {
        created(store.put_if_absent(&id(name), vec![1]).await.unwrap());
    }
    let mut listed: Vec<KeyId> = Vec::new();
    let mut cursor = None;
    let mut churned = Vec::new();
    for _ in 0..names.len() + 2 {
        let page = store.list(cursor.as_ref(), LIMIT).await.unwrap();
        assert!(page.ids.len() <= LIMIT, "a page holds at most its limit");
        listed.extend(page.ids);
        if churned.is_empty() {
            // One id not listed yet goes away and a new one arrives mid-walk.
            let gone = names.iter().map(|n| id(n)).find(|k| !listed.contains(k));
            let gone = gone.expect("ids are left after the first page");
            assert!(store.delete(&gone).await.unwrap());
            created(store.put_if_absent(&id("arrived"), vec![1]).await.unwrap());
            churned = vec![gone, id("arrived")];
        }
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    assert!(cursor.is_none(), "the walk ends");
    let mut unique = listed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        listed.len(),
        "no id is listed twice: {listed:?}"
    );
    let mut expected: Vec<KeyId> = names.iter().map(|n| id(n)).collect();
    expected.retain(|k| !churned.contains(k));
    expected.sort();
    unique.retain(|k| !churned.contains(k));
    assert_eq!(unique, expected, "every id present throughout is listed");
    ns.cleanup().await;
}

/// A cursor survives a trip through text (as through a client) and continues the same walk; a
/// token no store issued is `InvalidCursor`, not a panic; a limit of zero lists nothing.
pub async fn list_cursors_round_trip_and_malformed_ones_are_refused(backend: &dyn Backend) {
    let ns = backend.namespace().await;
    let store = ns.connect().await;
    for name in ["a", "b", "c", "d", "e"] {
        created(store.put_if_absent(&id(name), vec![1]).await.unwrap());
    }
    let first = store.list(None, 2).await.unwrap();
    let cursor = first.next.expect("more ids follow");
    let from_text = ListCursor::from_token(cursor.to_string());
    assert_eq!(
        store.list(Some(&from_text), 2).await.unwrap(),
        store.list(Some(&cursor), 2).await.unwrap()
    );
    for token in ["not a cursor!", "%%%", ""] {
        let result = store.list(Some(&ListCursor::from_token(token)), 2).await;
        if token.is_empty() && result.is_ok() {
            continue;
        }
        assert!(
            matches!(result, Err(StoreError::InvalidCursor { .. })),
            "{token:?}: {result:?}"
        );
    }
    let empty = store.list(None, 0).await.unwrap();
    assert!(empty.ids.is_empty() && empty.next.is_none());
    ns.cleanup().await;
}

/// Ids in the store that fail the id rules (planted with the backend's native client) are
/// skipped: every valid id is still listed, page by page, and nothing fails.
pub async fn list_skips_ids_that_fail_the_id_rules(backend: &dyn NativeBackend) {
    let too_long = "x".repeat(MAX_ID_LEN + 1);
    let ns = backend
        .namespace_with_raw_ids(&["not valid", &too_long, "m\u{e9}nage"])
        .await;
    let store = ns.connect().await;
    let valid = [id("a"), id("m"), id("y"), id("z")];
    for key in &valid {
        created(store.put_if_absent(key, vec![1]).await.unwrap());
    }
    let mut seen = Vec::new();
    let mut after = None;
    for _ in 0..100 {
        let page = store
            .list(after.as_ref(), 2)
            .await
            .expect("list passes an undecodable id by instead of failing");
        assert!(page.ids.len() <= 2, "a page holds at most its limit");
        seen.extend(page.ids);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, valid);
    ns.cleanup().await;
}

/// Random operation sequences give the same results as a reference model.
pub async fn random_operations_match_a_reference_model(backend: &dyn Backend) {
    let ns = backend.namespace().await;
    let store = ns.connect().await;
    crate::model::check_against_model(store).await;
    ns.cleanup().await;
}

/// The key lifecycle (get-or-create, version reads, rotate, scheduled deletion, restore,
/// completing deletions, describe), run by three servers on their own connections, some calls
/// racing, matches a reference model: no lost update, no version made twice, one key per id
/// and version, nothing created under a pending or deleted id.
pub async fn lifecycle_matches_a_reference_model(backend: &dyn Backend) {
    let ns = backend.namespace().await;
    let mut connections = Vec::new();
    for _ in 0..3 {
        connections.push(ns.connect().await);
    }
    crate::lifecycle::check_lifecycle_against_model(connections).await;
    ns.cleanup().await;
}

/// With the service refusing connections, and then accepting but never answering, every
/// operation returns `StoreError::Unavailable` in bounded time; service back, all works again.
pub async fn an_unreachable_service_is_unavailable_not_a_hang(backend: &dyn NetworkBackend) {
    let proxy = Proxy::start(backend.service_addr()).await;
    let ns = backend.namespace_via(proxy.addr()).await;
    let store = ns.connect().await;
    let version = created(
        store
            .put_if_absent(&id("kept"), b"x".to_vec())
            .await
            .unwrap(),
    );
    for mode in [ProxyMode::Refuse, ProxyMode::Blackhole] {
        proxy.set(mode).await;
        let calls: [(&str, futures::future::BoxFuture<'_, Result<(), StoreError>>); 5] = [
            (
                "get",
                Box::pin(async { store.get(&id("kept")).await.map(drop) }),
            ),
            (
                "put_if_absent",
                Box::pin(async {
                    store
                        .put_if_absent(&id("new"), b"y".to_vec())
                        .await
                        .map(drop)
                }),
            ),
            (
                "compare_and_swap",
                Box::pin(async {
                    store
                        .compare_and_swap(&id("kept"), version, b"z".to_vec())
                        .await
                        .map(drop)
                }),
            ),
            (
                "delete",
                Box::pin(async { store.delete(&id("kept")).await.map(drop) }),
            ),
            (
                "list",
                Box::pin(async { store.list(None, 10).await.map(drop) }),
            ),
        ];
        for (name, call) in calls {
            let result = tokio::time::timeout(HANG, call)
                .await
                .unwrap_or_else(|_| panic!("{name} hung for {HANG:?} with the service {mode:?}"));
            assert!(
                matches!(result, Err(StoreError::Unavailable { .. })),
                "{name} with the service {mode:?}: expected Unavailable, got {result:?}"
            );
        }
    }
    proxy.set(ProxyMode::Pass).await;
    let mut recovered = None;
    for _ in 0..50 {
        match store.get(&id("kept")).await {
            Ok(found) => {
                recovered = found;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert_eq!(
        recovered
            .expect("the client reconnects once the service is back")
            .bytes,
        b"x"
    );
    drop(store);
    ns.cleanup().await;
}
