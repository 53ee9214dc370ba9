//! The key lifecycle over the HTTP API in process (`oneshot`): rotate, version reads,
//! scheduled deletion, restore, tombstones, info and listing; who may do each, and the audit
//! line each leaves.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use rkms_core::{
    CacheOptions, Clock, KeyService, Kms, LifecycleOptions, LocalKeyring, MemoryStore,
    ServiceOptions, Store,
};
use rkms_server::access::AppState;
use rkms_server::audit::{AuditLog, AuditSync, AuditTarget};
use rkms_server::auth::{
    Authenticator, IdPattern, Operations, Policy, PrincipalSpec, Rule, TokenHash,
};
use rkms_server::limits::Limits;
use rkms_server::live::LiveService;
use rkms_server::routes::app;
use serde_json::Value;
use tower::ServiceExt as _;

const WINDOW: u64 = 7 * 24 * 3600;
const START: u64 = 1_800_000_000;

struct Api {
    router: Router,
    store: Arc<MemoryStore>,
    now: Arc<AtomicU64>,
    audit: tempfile::TempDir,
}

impl Api {
    fn new(principals: &[PrincipalSpec]) -> Self {
        let store = Arc::new(MemoryStore::new());
        let now = Arc::new(AtomicU64::new(START));
        let ring = LocalKeyring::generate(&["k1", "k2"]).unwrap();
        let clock = Arc::clone(&now);
        let service = [("r1", "k1"), ("r2", "k2")]
            .iter()
            .fold(KeyService::builder(store.clone()), |b, (region, key)| {
                b.region(Arc::new(ring.region(region, key).unwrap()) as Arc<dyn Kms>)
            })
            .options(ServiceOptions {
                cache: CacheOptions {
                    ttl: Duration::from_secs(600),
                    ..CacheOptions::default()
                },
                lifecycle: LifecycleOptions {
                    deletion_window: Duration::from_secs(WINDOW),
                    ..LifecycleOptions::default()
                },
                clock: Clock::from_fn(move || clock.load(Ordering::SeqCst)),
                ..ServiceOptions::default()
            })
            .build()
            .unwrap();
        let audit = tempfile::tempdir().unwrap();
        let router = app(
            AppState {
                service: Arc::new(LiveService::new(service)),
                metrics: None,
                audit: Some(Arc::new(
                    AuditLog::open(
                        &AuditTarget::File(audit.path().join("audit.log")),
                        AuditSync::Os,
                    )
                    .unwrap(),
                )),
                auth: Arc::new(Authenticator::new(principals)),
            },
            "/api/v1/key",
            Limits::default(),
        );
        Self {
            router,
            store,
            now,
            audit,
        }
    }

    async fn call(&self, who: &str, method: &str, uri: &str) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {}", token(who)))
            .body(Body::empty())
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        assert!(
            response.headers().contains_key("x-request-id"),
            "{method} {uri}"
        );
        let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).expect("a JSON body"))
    }

    fn audit_lines(&self) -> Vec<Value> {
        audit_lines(&self.audit.path().join("audit.log"))
    }
}

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|line: &Value| line.get("operation").is_some())
        .collect()
}

fn token(name: &str) -> String {
    format!("rkms_test-lifecycle-token-of-{name}")
}

fn principal(name: &str, pattern: &str, names: &[&str]) -> PrincipalSpec {
    let mut operations = Operations::default();
    for op in names {
        operations.add(op).unwrap();
    }
    PrincipalSpec {
        name: name.into(),
        tokens: vec![TokenHash::of(&token(name))],
        certificate_names: Vec::new(),
        anonymous: false,
        metrics: false,
        policy: Policy::new(vec![Rule {
            ids: vec![IdPattern::parse(pattern).unwrap()],
            operations,
        }]),
        rate_limit: None,
        create_rate: None,
    }
}

fn admin() -> PrincipalSpec {
    principal(
        "admin",
        "*",
        &[
            "get", "create", "rotate", "delete", "restore", "describe", "list",
        ],
    )
}

#[tokio::test]
async fn a_key_lives_through_rotation_deletion_restore_and_its_tombstone() {
    let api = Api::new(&[admin()]);
    let (status, first) = api.call("admin", "GET", "/api/v1/key?id=orders").await;
    assert_eq!(
        (status, &first["version"]),
        (StatusCode::OK, &Value::from(1))
    );

    let (status, rotated) = api
        .call("admin", "POST", "/api/v1/key/rotate?id=orders")
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_eq!(
        rotated,
        serde_json::json!({"id": "orders", "version": 2, "state": "active"})
    );
    let (_, current) = api.call("admin", "GET", "/api/v1/key?id=orders").await;
    assert_eq!(current["version"], 2);
    assert_ne!(current["key"], first["key"]);
    let (status, old) = api
        .call("admin", "GET", "/api/v1/key?id=orders&version=1")
        .await;
    assert_eq!((status, &old["key"]), (StatusCode::OK, &first["key"]));
    let (status, missing) = api
        .call("admin", "GET", "/api/v1/key?id=orders&version=3")
        .await;
    assert_eq!(
        (status, &missing["error_type"]),
        (StatusCode::NOT_FOUND, &Value::from("NotFound"))
    );

    let (status, info) = api.call("admin", "GET", "/api/v1/key/info?id=orders").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["state"], "active");
    assert_eq!(info["current_version"], 2);
    assert_eq!(
        info["versions"][1]["regions"],
        serde_json::json!(["r1", "r2"])
    );
    assert!(info["versions"][0]["created_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert!(!info.to_string().contains(first["key"].as_str().unwrap()));

    let (status, deleted) = api.call("admin", "DELETE", "/api/v1/key?id=orders").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted["state"], "pending_deletion");
    assert_eq!(
        deleted["deletion_time"], "2027-01-22T08:00:00Z",
        "{deleted}"
    );
    for (method, uri) in [
        ("GET", "/api/v1/key?id=orders"),
        ("GET", "/api/v1/key?id=orders&version=1"),
        ("POST", "/api/v1/key/rotate?id=orders"),
    ] {
        let (status, body) = api.call("admin", method, uri).await;
        assert_eq!(status, StatusCode::GONE, "{method} {uri}");
        assert_eq!(body["error_type"], "KeyPendingDeletion");
        assert!(body["error_message"]
            .as_str()
            .unwrap()
            .contains("2027-01-22T08:00:00Z"));
    }
    let (status, restored) = api
        .call("admin", "POST", "/api/v1/key/restore?id=orders")
        .await;
    assert_eq!(
        (status, restored),
        (
            StatusCode::OK,
            serde_json::json!({"id": "orders", "state": "active"})
        )
    );
    let (_, back) = api.call("admin", "GET", "/api/v1/key?id=orders").await;
    assert_eq!(back["key"], current["key"]);

    api.call("admin", "DELETE", "/api/v1/key?id=orders").await;
    api.now.fetch_add(WINDOW, Ordering::SeqCst);
    for (method, uri) in [
        ("GET", "/api/v1/key?id=orders"),
        ("POST", "/api/v1/key/restore?id=orders"),
        ("DELETE", "/api/v1/key?id=orders"),
    ] {
        let (status, body) = api.call("admin", method, uri).await;
        assert_eq!(
            (status, &body["error_type"]),
            (StatusCode::GONE, &Value::from("KeyDeleted")),
            "{method} {uri}"
        );
    }
    let (_, info) = api.call("admin", "GET", "/api/v1/key/info?id=orders").await;
    assert_eq!(info["state"], "deleted");
    assert!(info["deleted_at"].is_string());
    let (_, listed) = api.call("admin", "GET", "/api/v1/keys").await;
    assert_eq!(
        listed["keys"],
        serde_json::json!([{"id": "orders", "state": "deleted"}])
    );
    assert!(api
        .store
        .get(&rkms_core::KeyId::parse("orders").unwrap())
        .await
        .unwrap()
        .is_some());

    let operations: Vec<String> = api
        .audit_lines()
        .iter()
        .map(|l| {
            format!(
                "{} {}",
                l["operation"].as_str().unwrap(),
                l["outcome"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "rotate ok",
        "delete ok",
        "restore ok",
        "describe ok",
        "list ok",
        "get KeyPendingDeletion",
        "rotate KeyPendingDeletion",
        "get_or_create KeyDeleted",
        "restore KeyDeleted",
    ] {
        assert!(
            operations.iter().any(|o| o == expected),
            "{expected} in {operations:?}"
        );
    }
    let rotation = api
        .audit_lines()
        .into_iter()
        .find(|l| l["operation"] == "rotate")
        .unwrap();
    assert_eq!(
        (&rotation["principal"], &rotation["version"]),
        (&Value::from("admin"), &Value::from(2))
    );
}

#[tokio::test]
async fn every_operation_needs_its_own_grant_and_every_refusal_is_audited() {
    let api = Api::new(&[
        admin(),
        principal("reader", "*", &["get"]),
        principal("rotator", "*", &["rotate"]),
        principal("deleter", "*", &["delete", "restore"]),
        principal("viewer", "team/*", &["describe", "list"]),
    ]);
    api.call("admin", "GET", "/api/v1/key?id=team/a").await;
    api.call("admin", "GET", "/api/v1/key?id=other/b").await;
    let denied = [
        ("reader", "POST", "/api/v1/key/rotate?id=team/a"),
        ("reader", "DELETE", "/api/v1/key?id=team/a"),
        ("reader", "POST", "/api/v1/key/restore?id=team/a"),
        ("reader", "GET", "/api/v1/key/info?id=team/a"),
        ("reader", "GET", "/api/v1/keys"),
        ("rotator", "GET", "/api/v1/key?id=team/a"),
        ("rotator", "GET", "/api/v1/key?id=team/a&version=1"),
        ("deleter", "POST", "/api/v1/key/rotate?id=team/a"),
        ("viewer", "GET", "/api/v1/key/info?id=other/b"),
        ("viewer", "GET", "/api/v1/key?id=team/a"),
    ];
    for (who, method, uri) in denied {
        let (status, body) = api.call(who, method, uri).await;
        assert_eq!(
            (status, &body["error_type"]),
            (StatusCode::FORBIDDEN, &Value::from("Forbidden")),
            "{who} {method} {uri}"
        );
    }
    let refusals = api
        .audit_lines()
        .iter()
        .filter(|l| l["outcome"] == "denied")
        .count();
    assert_eq!(refusals, denied.len(), "each refusal has its audit line");

    let (status, _) = api
        .call("rotator", "POST", "/api/v1/key/rotate?id=team/a")
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api
        .call("reader", "GET", "/api/v1/key?id=team/a&version=2")
        .await;
    assert_eq!(
        (status, &body["version"]),
        (StatusCode::OK, &Value::from(2))
    );
    let (status, body) = api
        .call("reader", "GET", "/api/v1/key?id=team/new&version=1")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = api.call("deleter", "DELETE", "/api/v1/key?id=team/a").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .call("deleter", "POST", "/api/v1/key/restore?id=team/a")
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, info) = api
        .call("viewer", "GET", "/api/v1/key/info?id=team/a")
        .await;
    assert_eq!(
        (status, &info["current_version"]),
        (StatusCode::OK, &Value::from(2))
    );

    let (status, listed) = api.call("viewer", "GET", "/api/v1/keys").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        listed["keys"],
        serde_json::json!([{"id": "team/a", "state": "active"}]),
        "only the ids the principal may list"
    );
    assert!(
        api.store
            .get(&rkms_core::KeyId::parse("team/new").unwrap())
            .await
            .unwrap()
            .is_none(),
        "a reader's version read creates nothing"
    );
}

#[tokio::test]
async fn listings_page_with_their_cursor_and_refuse_one_they_did_not_issue() {
    let api = Api::new(&[admin()]);
    for i in 0..5 {
        api.call("admin", "GET", &format!("/api/v1/key?id=app/{i}"))
            .await;
    }
    api.call("admin", "GET", "/api/v1/key?id=zzz").await;
    let mut seen = Vec::new();
    let mut uri = "/api/v1/keys?prefix=app/&limit=2".to_owned();
    loop {
        let (status, page) = api.call("admin", "GET", &uri).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let keys = page["keys"].as_array().unwrap();
        assert!(keys.len() <= 2);
        seen.extend(keys.iter().map(|k| k["id"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(next) => uri = format!("/api/v1/keys?prefix=app/&limit=2&after={next}"),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["app/0", "app/1", "app/2", "app/3", "app/4"]);
    let (status, body) = api
        .call("admin", "GET", "/api/v1/keys?after=not-a-cursor!")
        .await;
    assert_eq!(
        (status, &body["error_type"]),
        (StatusCode::BAD_REQUEST, &Value::from("BadRequest")),
        "{body}"
    );
}

#[tokio::test]
async fn a_listing_cursor_names_no_id_and_opens_only_for_its_caller() {
    let api = Api::new(&[admin(), principal("viewer", "team/*", &["list"])]);
    for name in [
        "secret/alpha",
        "secret/beta",
        "team/a",
        "secret/gamma",
        "team/b",
        "zz-secret",
    ] {
        let (status, _) = api
            .call("admin", "GET", &format!("/api/v1/key?id={name}"))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let mut seen = Vec::new();
    let mut tokens = Vec::new();
    let mut uri = "/api/v1/keys?limit=1".to_owned();
    loop {
        let (status, page) = api.call("viewer", "GET", &uri).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(
            page["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["id"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => {
                tokens.push(next.to_owned());
                uri = format!("/api/v1/keys?limit=1&after={next}");
            }
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["team/a", "team/b"]);
    assert!(!tokens.is_empty());
    for token in &tokens {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("secret"),
            "a cursor names a hidden id: {text}"
        );
    }
    let (status, body) = api
        .call(
            "admin",
            "GET",
            &format!("/api/v1/keys?limit=1&after={}", tokens[0]),
        )
        .await;
    assert_eq!(
        (status, &body["error_type"]),
        (StatusCode::BAD_REQUEST, &Value::from("BadRequest")),
        "a cursor opens only for the caller it was sealed for: {body}"
    );
}

#[tokio::test]
async fn a_web_page_cannot_change_keys() {
    let api = Api::new(&[admin()]);
    api.call("admin", "GET", "/api/v1/key?id=orders").await;
    for (method, uri) in [
        ("POST", "/api/v1/key/rotate?id=orders"),
        ("POST", "/api/v1/key/restore?id=orders"),
        ("DELETE", "/api/v1/key?id=orders"),
    ] {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {}", token("admin")))
            .header("origin", "https://evil.example")
            .body(Body::empty())
            .unwrap();
        let response = api.router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{method} {uri}");
    }
    let (_, info) = api.call("admin", "GET", "/api/v1/key/info?id=orders").await;
    assert_eq!(
        (&info["current_version"], &info["state"]),
        (&Value::from(1), &Value::from("active"))
    );
}
