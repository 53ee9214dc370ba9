//! The HTTP API in process (`oneshot`), over MemoryStore and local regions: answers,
//! authentication, authorization, limits and the audit lines they leave.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use axum::body::{to_bytes, Body};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use rkms_core::{
    DataKey, EncryptionContext, GeneratedKey, KeyId, KeyService, Kms, KmsError, LocalKeyring,
    MemoryStore, Store,
};
use rkms_server::access::AppState;
use rkms_server::audit::{self, AuditLog, AuditSync, AuditTarget};
use rkms_server::auth::{
    Authenticator, IdPattern, Operations, Policy, PrincipalSpec, RateLimit, Rule, TokenHash,
};
use rkms_server::limits::Limits;
use rkms_server::live::LiveService;
use rkms_server::routes::app;
use serde_json::Value;
use tower::ServiceExt as _;

/// A region that always fails: down, or panicking (a bug below the handlers).
#[derive(Debug)]
struct BrokenRegion {
    name: &'static str,
    panics: bool,
}

#[async_trait]
impl Kms for BrokenRegion {
    fn region(&self) -> &str {
        self.name
    }
    fn master_key(&self) -> &str {
        "none"
    }
    async fn generate_data_key(
        &self,
        _: usize,
        _: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError> {
        Err(self.fail())
    }
    async fn encrypt(&self, _: &DataKey, _: &EncryptionContext) -> Result<Vec<u8>, KmsError> {
        Err(self.fail())
    }
    async fn decrypt(&self, _: &[u8], _: &EncryptionContext) -> Result<DataKey, KmsError> {
        Err(self.fail())
    }
}

impl BrokenRegion {
    fn down(name: &'static str) -> Self {
        Self {
            name,
            panics: false,
        }
    }

    fn panicking(name: &'static str) -> Self {
        Self { name, panics: true }
    }

    fn fail(&self) -> KmsError {
        assert!(!self.panics, "a bug in a region");
        KmsError::Unavailable {
            region: self.name.into(),
            message: "connection refused".into(),
        }
    }
}

fn service(store: Arc<MemoryStore>, healthy: bool) -> KeyService {
    let ring = LocalKeyring::generate(&["k1", "k2"]).unwrap();
    let regions: Vec<Arc<dyn Kms>> = if healthy {
        vec![
            Arc::new(ring.region("r1", "k1").unwrap()),
            Arc::new(ring.region("r2", "k2").unwrap()),
        ]
    } else {
        vec![
            Arc::new(BrokenRegion::down("r1")),
            Arc::new(BrokenRegion::down("r2")),
        ]
    };
    regions
        .into_iter()
        .fold(KeyService::builder(store), |b, k| b.region(k))
        .build()
        .unwrap()
}

/// A principal allowed `operations` on ids matching `patterns`.
fn principal(name: &str, patterns: &[&str], operations: Operations) -> PrincipalSpec {
    PrincipalSpec {
        name: name.into(),
        tokens: vec![TokenHash::of(&token_of(name))],
        certificate_names: Vec::new(),
        anonymous: false,
        metrics: false,
        policy: Policy::new(vec![Rule {
            ids: patterns
                .iter()
                .map(|p| IdPattern::parse(p).unwrap())
                .collect(),
            operations,
        }]),
        rate_limit: None,
        create_rate: None,
    }
}

/// The bearer token the tests give principal `name`.
fn token_of(name: &str) -> String {
    format!("rkms_test-token-of-{name}")
}

const BOTH: Operations = Operations {
    get: true,
    create: true,
    rotate: false,
    delete: false,
    restore: false,
    describe: false,
    list: false,
};

fn router_for(
    store: Arc<MemoryStore>,
    healthy: bool,
    principals: &[PrincipalSpec],
    audit: Option<&Path>,
) -> Router {
    router_over(service(store, healthy), principals, audit)
}

fn router_over(service: KeyService, principals: &[PrincipalSpec], audit: Option<&Path>) -> Router {
    app(
        AppState {
            service: Arc::new(LiveService::new(service)),
            metrics: None,
            audit: audit.map(|path| {
                Arc::new(
                    AuditLog::open(&AuditTarget::File(path.to_owned()), AuditSync::Os).unwrap(),
                )
            }),
            auth: Arc::new(Authenticator::new(principals)),
        },
        "/api/v1/key",
        Limits::default(),
    )
}

/// An anonymous principal that may do anything, as in development.
fn anyone() -> PrincipalSpec {
    PrincipalSpec {
        anonymous: true,
        tokens: Vec::new(),
        ..principal("anyone", &["*"], BOTH)
    }
}

/// A router with one principal, `orders`, that may get and create `orders/*`, and its store.
fn orders_router() -> (Arc<MemoryStore>, Router) {
    let store = Arc::new(MemoryStore::new());
    let router = router_for(
        store.clone(),
        true,
        &[principal("orders", &["orders/*"], BOTH)],
        None,
    );
    (store, router)
}

/// A router whose anonymous callers may do anything.
fn router(store: Arc<MemoryStore>, healthy: bool) -> Router {
    router_for(store, healthy, &[anyone()], None)
}

async fn send(router: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON body")
    };
    (status, headers, body)
}

/// GETs `uri` as principal `name` (by its token), or anonymously with `None`.
async fn get_as(router: &Router, name: Option<&str>, uri: &str) -> (StatusCode, Value) {
    let mut request = Request::builder().uri(uri);
    if let Some(name) = name {
        request = request.header("authorization", format!("Bearer {}", token_of(name)));
    }
    let (status, _, body) = send(router, request.body(Body::empty()).unwrap()).await;
    (status, body)
}

async fn call(router: &Router, method: &str, uri: &str) -> (StatusCode, Option<String>, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = send(router, request).await;
    let cache = headers
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, cache, body)
}

#[tokio::test]
async fn key_responses_have_the_original_wire_format() {
    let router = router(Arc::new(MemoryStore::new()), true);
    let (status, cache, body) = call(&router, "GET", "/api/v1/key?id=orders").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cache.as_deref(), Some("no-store"));
    assert_eq!(body["id"], "orders");
    let key = base64::engine::general_purpose::STANDARD
        .decode(body["key"].as_str().unwrap())
        .unwrap();
    assert_eq!(key.len(), 32);
    assert_eq!(body["version"], 1, "a field old clients ignore");
    assert_eq!(body.as_object().unwrap().len(), 3);
    let (_, _, again) = call(&router, "GET", "/api/v1/key?id=orders").await;
    assert_eq!(again, body);
}

#[tokio::test]
async fn bad_requests_get_4xx_json_and_touch_nothing() {
    let store = Arc::new(MemoryStore::new());
    let router = router(store.clone(), true);
    let long = "a".repeat(rkms_core::MAX_ID_LEN + 1);
    let huge = "b".repeat(10_000);
    let cases: Vec<(&str, String, StatusCode)> = vec![
        ("GET", "/api/v1/key".into(), StatusCode::BAD_REQUEST),
        ("GET", "/api/v1/key?id=".into(), StatusCode::BAD_REQUEST),
        ("GET", "/api/v1/key?ID=x".into(), StatusCode::BAD_REQUEST),
        (
            "GET",
            "/api/v1/key?id=a%20b".into(),
            StatusCode::BAD_REQUEST,
        ),
        ("GET", "/api/v1/key?id=%00".into(), StatusCode::BAD_REQUEST),
        (
            "GET",
            "/api/v1/key?id=%E2%82%AC".into(),
            StatusCode::BAD_REQUEST,
        ),
        ("GET", "/api/v1/key?id=%zz".into(), StatusCode::BAD_REQUEST),
        (
            "GET",
            "/api/v1/key?id=a&id=b".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            format!("/api/v1/key?id={long}"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            format!("/api/v1/key?id={huge}"),
            StatusCode::URI_TOO_LONG,
        ),
        (
            "POST",
            "/api/v1/key?id=x".into(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "PUT",
            "/api/v1/key?id=x".into(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "GET",
            "/api/v1/key/rotate?id=x".into(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "DELETE",
            "/api/v1/key/info?id=x".into(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "GET",
            "/api/v1/key?id=x&version=0".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/api/v1/key?id=x&version=-1".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/api/v1/key?id=x&version=1&version=2".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/api/v1/key?id=x&version=99999999999".into(),
            StatusCode::BAD_REQUEST,
        ),
        ("POST", "/api/v1/key/rotate".into(), StatusCode::BAD_REQUEST),
        (
            "POST",
            "/api/v1/key/restore?id=a%20b".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/api/v1/key/info?id=".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/api/v1/keys?limit=0".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/api/v1/keys?limit=1001".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/api/v1/keys?limit=x".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/api/v1/keys?prefix=a%20b".into(),
            StatusCode::BAD_REQUEST,
        ),
        ("GET", "/api/v2/key?id=x".into(), StatusCode::NOT_FOUND),
        ("GET", "/key?id=x".into(), StatusCode::NOT_FOUND),
    ];
    for (method, uri, expected) in cases {
        let (status, _, body) = call(&router, method, &uri).await;
        assert_eq!(status, expected, "{method} {uri}");
        assert!(
            body["error_type"].is_string() && body["error_message"].is_string(),
            "{method} {uri}: {body}"
        );
    }
    assert!(
        store.list(None, 10).await.unwrap().ids.is_empty(),
        "no bad request wrote anything"
    );
}

#[tokio::test]
async fn regions_down_give_503_json_and_write_nothing() {
    let store = Arc::new(MemoryStore::new());
    let router = router(store.clone(), false);
    let (status, cache, body) = call(&router, "GET", "/api/v1/key?id=new").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(cache.as_deref(), Some("no-store"));
    assert_eq!(body["error_type"], "ServiceUnavailable");
    assert!(
        body["error_message"]
            .as_str()
            .unwrap()
            .contains("no KMS region"),
        "{body}"
    );
    assert!(store.list(None, 10).await.unwrap().ids.is_empty());
    // Repeated failures open every region's breaker: the server reports itself not ready at
    // its next readiness check.
    for _ in 0..2 {
        call(&router, "GET", "/api/v1/key?id=new").await;
    }
    readiness_becomes(&router, StatusCode::SERVICE_UNAVAILABLE).await;
}

/// Waits for `/readyz` to answer `status`, which it does after its next background check.
async fn readiness_becomes(router: &Router, status: StatusCode) {
    for _ in 0..30 {
        if call(router, "GET", "/readyz").await.0 == status {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("/readyz did not answer {status} within 3 s");
}

#[tokio::test]
async fn a_corrupt_record_gives_500_json_and_other_ids_still_work() {
    let store = Arc::new(MemoryStore::new());
    store
        .put_if_absent(&KeyId::parse("broken").unwrap(), b"\xffgarbage".to_vec())
        .await
        .unwrap();
    let router = router(store, true);
    let (status, _, body) = call(&router, "GET", "/api/v1/key?id=broken").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error_type"], "InternalError");
    assert!(
        body["error_message"]
            .as_str()
            .unwrap()
            .contains("unreadable"),
        "{body}"
    );
    let (status, _, _) = call(&router, "GET", "/api/v1/key?id=fine").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn health_and_readiness() {
    let router = router(Arc::new(MemoryStore::new()), true);
    let (status, _, body) = call(&router, "GET", "/healthz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, _, body) = call(&router, "GET", "/readyz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
    let names: Vec<&str> = body["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["r1", "r2"]);
    assert!(body["regions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["state"] == "up"));
}

/// The health checks are limited per client address, not per principal (they need none): a
/// refusal says so, with a Retry-After.
#[tokio::test]
async fn health_checks_past_their_address_budget_get_429_naming_the_address() {
    let router = router(Arc::new(MemoryStore::new()), true);
    for _ in 0..1000 {
        let request = Request::get("/healthz").body(Body::empty()).unwrap();
        let (status, headers, body) = send(&router, request).await;
        if status == StatusCode::OK {
            continue;
        }
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error_type"], "TooManyRequests", "{body}");
        let message = body["error_message"].as_str().unwrap();
        assert!(
            message.contains("client address") && !message.contains("principal"),
            "{message}"
        );
        assert!(headers.contains_key("retry-after"), "{headers:?}");
        return;
    }
    panic!("1,000 health checks in a burst were never refused");
}

/// `/readyz` once `ready` says it is what the test waits for (it changes at the next
/// background check, once a second).
async fn readiness_until(router: &Router, ready: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..50 {
        let (status, _, body) = call(router, "GET", "/readyz").await;
        if status == StatusCode::OK && ready(&body) {
            return body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("/readyz never showed what was waited for");
}

#[tokio::test]
async fn readiness_says_since_when_a_region_fails_and_the_repair_backlog() {
    let store = Arc::new(MemoryStore::new());
    let ring = LocalKeyring::generate(&["k2"]).unwrap();
    let service = KeyService::builder(store)
        .region(Arc::new(BrokenRegion::down("r1")))
        .region(Arc::new(ring.region("r2", "k2").unwrap()))
        .options(rkms_core::ServiceOptions {
            min_regions: 1,
            ..Default::default()
        })
        .build()
        .unwrap();
    let live = Arc::new(LiveService::new(service));
    let router = app(
        AppState {
            service: live.clone(),
            metrics: None,
            audit: None,
            auth: Arc::new(Authenticator::new(&[anyone()])),
        },
        "/api/v1/key",
        Limits::default(),
    );
    let before = std::time::SystemTime::now();
    for n in 0..4 {
        let (status, _, _) = call(&router, "GET", &format!("/api/v1/key?id=k{n}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(live.current().repair_backlog(), 4);
    // Each id was made with r2's copy alone; the repairer knows they lack r1's.
    let body = readiness_until(&router, |body| body["repair"]["backlog"] == 4).await;
    assert_eq!(body["regions"][0]["state"], "down");
    let since = body["regions"][0]["unhealthy_since"]
        .as_str()
        .expect("a time");
    let since =
        time::OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339).unwrap();
    let before = time::OffsetDateTime::from(before)
        .replace_nanosecond(0)
        .unwrap();
    assert!(
        since >= before,
        "{since} is before the failures started at {before}"
    );
    assert_eq!(body["regions"][1]["state"], "up");
    assert_eq!(body["regions"][1]["unhealthy_since"], Value::Null);
}

#[tokio::test]
async fn a_replaced_service_serves_the_next_requests_and_keeps_the_cache() {
    let store = Arc::new(MemoryStore::new());
    let live = Arc::new(LiveService::new(service(store.clone(), true)));
    let router = app(
        AppState {
            service: Arc::clone(&live),
            metrics: None,
            audit: None,
            auth: Arc::new(Authenticator::new(&[anyone()])),
        },
        "/api/v1/key",
        Limits::default(),
    );
    let (status, _, first) = call(&router, "GET", "/api/v1/key?id=kept").await;
    assert_eq!(status, StatusCode::OK);
    // The successor's regions are all down: only the cache the first service filled, which
    // it shares, can answer.
    let successor = ["r1", "r2", "r3"]
        .into_iter()
        .fold(KeyService::builder(store), |b, name| {
            b.region(Arc::new(BrokenRegion::down(name)))
        })
        .succeeding(&live.current())
        .build()
        .unwrap();
    live.replace(successor);
    let (status, _, again) = call(&router, "GET", "/api/v1/key?id=kept").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["key"], first["key"]);
    let (status, _, _) = call(&router, "GET", "/api/v1/key?id=new").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the successor serves new ids"
    );
    let body = readiness_until(&router, |body| {
        body["regions"].as_array().unwrap().len() == 3
    })
    .await;
    assert_eq!(body["regions"][2]["name"], "r3");
}

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test]
async fn callers_without_valid_credentials_get_401_json() {
    let (store, router) = orders_router();
    let wrong = |header: &str| {
        Request::builder()
            .uri("/api/v1/key?id=orders/1")
            .header("authorization", header)
            .body(Body::empty())
            .unwrap()
    };
    let requests = [
        Request::builder()
            .uri("/api/v1/key?id=orders/1")
            .body(Body::empty())
            .unwrap(),
        wrong("Bearer rkms_not-a-token"),
        wrong(&format!("Bearer {}x", token_of("orders"))),
        wrong("Basic b3JkZXJzOg=="),
        wrong("Bearer "),
        Request::builder()
            .uri("/metrics")
            .body(Body::empty())
            .unwrap(),
    ];
    for request in requests {
        let described = format!("{:?}", request.headers().get("authorization"));
        let (status, headers, body) = send(&router, request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{described}");
        assert_eq!(body["error_type"], "Unauthorized", "{described}");
        assert_eq!(headers["www-authenticate"], "Bearer realm=\"rkms\"");
        assert!(!body.to_string().contains("rkms_not-a-token"));
    }
    assert!(store.list(None, 10).await.unwrap().ids.is_empty());
    // Health checks stay open to load balancers.
    assert_eq!(call(&router, "GET", "/healthz").await.0, StatusCode::OK);
    // The right token works.
    let (status, body) = get_as(&router, Some("orders"), "/api/v1/key?id=orders/1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Authentication is the `Admitted` extractor each route's handler takes, not a layer over the
/// routes: a route whose handler forgot it would be open. Every method every route takes is
/// refused without credentials, with or without a body or `Origin`.
#[tokio::test]
async fn every_route_refuses_a_caller_without_credentials() {
    let (store, router) = orders_router();
    let routes = [
        ("GET", "/api/v1/key?id=orders/1"),
        ("DELETE", "/api/v1/key?id=orders/1"),
        ("POST", "/api/v1/key/rotate?id=orders/1"),
        ("POST", "/api/v1/key/restore?id=orders/1"),
        ("GET", "/api/v1/key/info?id=orders/1"),
        ("GET", "/api/v1/keys?prefix=orders/"),
        ("GET", "/metrics"),
    ];
    for (method, uri) in routes {
        for (origin, body) in [(false, ""), (true, ""), (false, "x")] {
            let mut request = Request::builder().method(method).uri(uri);
            if origin {
                request = request.header("origin", "https://attacker.example");
            }
            if !body.is_empty() {
                // Declared, so that the body refusal would answer first if it came first.
                request = request.header("content-length", body.len());
            }
            let request = request.body(Body::from(body)).unwrap();
            let (status, _, answer) = send(&router, request).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} (Origin: {origin}, body: {body:?}): {answer}"
            );
        }
    }
    assert!(store.list(None, 10).await.unwrap().ids.is_empty());
}

#[tokio::test]
async fn ids_outside_a_principals_patterns_get_403_and_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.log");
    let store = Arc::new(MemoryStore::new());
    let router = router_for(
        store.clone(),
        true,
        &[
            principal("orders", &["orders/*"], BOTH),
            principal("billing", &["billing/*"], BOTH),
        ],
        Some(&audit_path),
    );
    let (status, body) = get_as(&router, Some("orders"), "/api/v1/key?id=billing/7").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error_type"], "Forbidden");
    assert!(store.list(None, 10).await.unwrap().ids.is_empty());
    let (status, _) = get_as(&router, Some("billing"), "/api/v1/key?id=billing/7").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get_as(&router, Some("orders"), "/api/v1/key?id=billing/7").await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "an existing key is refused too"
    );

    let lines = audit_lines(&audit_path);
    let summary: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["principal"].as_str().unwrap(),
                l["operation"].as_str().unwrap(),
                l["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("orders", "get_or_create", "denied"),
            ("billing", "create", "ok"),
            ("orders", "get_or_create", "denied"),
        ]
    );
    assert!(lines.iter().all(|l| l["id"] == "billing/7"));
    audit::verify(&audit_path).unwrap();
}

#[tokio::test]
async fn readers_never_create_and_creators_never_read_existing_keys() {
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.log");
    let store = Arc::new(MemoryStore::new());
    let router = router_for(
        store.clone(),
        true,
        &[
            principal(
                "reader",
                &["*"],
                Operations {
                    get: true,
                    ..Operations::default()
                },
            ),
            principal(
                "maker",
                &["*"],
                Operations {
                    create: true,
                    ..Operations::default()
                },
            ),
        ],
        Some(&audit_path),
    );
    let (status, body) = get_as(&router, Some("reader"), "/api/v1/key?id=k").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(store.list(None, 10).await.unwrap().ids.is_empty());
    let (status, made) = get_as(&router, Some("maker"), "/api/v1/key?id=k").await;
    assert_eq!(status, StatusCode::OK);
    let (status, read) = get_as(&router, Some("reader"), "/api/v1/key?id=k").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["key"], made["key"]);
    let (status, body) = get_as(&router, Some("maker"), "/api/v1/key?id=k").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.get("key").is_none());
    let outcomes: Vec<(String, String)> = audit_lines(&audit_path)
        .iter()
        .map(|l| {
            (
                l["operation"].as_str().unwrap().to_owned(),
                l["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("create", "denied"),
        ("create", "ok"),
        ("get", "ok"),
        ("get", "denied"),
    ];
    assert_eq!(
        outcomes,
        expected.map(|(o, r)| (o.to_owned(), r.to_owned()))
    );
}

#[tokio::test]
async fn metrics_need_a_principal_allowed_to_read_them() {
    let router = router_for(
        Arc::new(MemoryStore::new()),
        true,
        &[
            principal("orders", &["*"], BOTH),
            PrincipalSpec {
                metrics: true,
                ..principal("prometheus", &["none"], Operations::default())
            },
        ],
        None,
    );
    let (status, body) = get_as(&router, Some("orders"), "/metrics").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // This router renders no metrics: an allowed principal gets past authorization to a 404.
    let (status, _) = get_as(&router, Some("prometheus"), "/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Each create costs KMS calls in every region and room in the shared cache: a principal's
/// creates are limited apart from its requests, and reading existing keys costs none of it.
#[tokio::test]
async fn a_principal_past_its_create_rate_gets_429_and_creates_nothing_but_still_reads() {
    let creator = PrincipalSpec {
        create_rate: Some(RateLimit {
            per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(2).unwrap(),
        }),
        ..principal("creator", &["*"], BOTH)
    };
    let store = Arc::new(MemoryStore::new());
    let router = router_for(Arc::clone(&store), true, &[creator], None);
    for id in ["first", "second"] {
        let uri = format!("/api/v1/key?id={id}");
        assert_eq!(
            get_as(&router, Some("creator"), &uri).await.0,
            StatusCode::OK
        );
    }
    let (status, body) = get_as(&router, Some("creator"), "/api/v1/key?id=third").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error_type"], "TooManyRequests");
    assert_eq!(
        store.list(None, 10).await.unwrap().ids.len(),
        2,
        "nothing created"
    );
    for _ in 0..5 {
        let (status, body) = get_as(&router, Some("creator"), "/api/v1/key?id=first").await;
        assert_eq!(status, StatusCode::OK, "reads are not creates: {body}");
    }
}

#[tokio::test]
async fn a_principal_past_its_rate_limit_gets_429_with_retry_after() {
    let limited = PrincipalSpec {
        rate_limit: Some(RateLimit {
            per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(3).unwrap(),
        }),
        ..principal("busy", &["*"], BOTH)
    };
    let router = router_for(
        Arc::new(MemoryStore::new()),
        true,
        &[limited, principal("calm", &["*"], BOTH)],
        None,
    );
    for _ in 0..3 {
        assert_eq!(
            get_as(&router, Some("busy"), "/api/v1/key?id=a").await.0,
            StatusCode::OK
        );
    }
    let request = Request::builder()
        .uri("/api/v1/key?id=a")
        .header("authorization", format!("Bearer {}", token_of("busy")))
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = send(&router, request).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error_type"], "TooManyRequests");
    assert_eq!(headers["retry-after"], "1");
    // Another principal is not affected.
    assert_eq!(
        get_as(&router, Some("calm"), "/api/v1/key?id=a").await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn oversized_requests_get_4xx_json() {
    let store = Arc::new(MemoryStore::new());
    let router = router(store.clone(), true);
    let limits = Limits::default();
    let big_header = Request::builder()
        .uri("/api/v1/key?id=a")
        .header("x-filler", "f".repeat(limits.max_header_bytes))
        .body(Body::empty())
        .unwrap();
    let many_headers = (0..200)
        .fold(Request::builder().uri("/api/v1/key?id=a"), |r, i| {
            r.header(format!("x-filler-{i}"), "f".repeat(100))
        })
        .body(Body::empty())
        .unwrap();
    let with_body = Request::builder()
        .uri("/api/v1/key?id=a")
        .header("content-length", "5")
        .body(Body::from("hello"))
        .unwrap();
    let chunked = Request::builder()
        .uri("/api/v1/key?id=a")
        .header("transfer-encoding", "chunked")
        .body(Body::from("hello"))
        .unwrap();
    let long_path = Request::builder()
        .uri(format!("/{}", "p".repeat(limits.max_uri_bytes)))
        .body(Body::empty())
        .unwrap();
    let cases = [
        (big_header, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        (many_headers, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        (with_body, StatusCode::PAYLOAD_TOO_LARGE),
        (chunked, StatusCode::PAYLOAD_TOO_LARGE),
        (long_path, StatusCode::URI_TOO_LONG),
    ];
    for (request, expected) in cases {
        let (status, _, body) = send(&router, request).await;
        assert_eq!(status, expected, "{body}");
        assert!(body["error_message"].is_string(), "{body}");
    }
    assert!(store.list(None, 10).await.unwrap().ids.is_empty());
}

#[tokio::test]
async fn a_record_every_region_refuses_is_a_500_audited_as_an_integrity_failure() {
    let store = Arc::new(MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.log");
    let router = router_for(store.clone(), true, &[anyone()], Some(&audit_path));
    let (status, _, _) = call(&router, "GET", "/api/v1/key?id=b").await;
    assert_eq!(status, StatusCode::OK);
    // Someone with the store's credentials copies b's record under a.
    let b = store
        .get(&KeyId::parse("b").unwrap())
        .await
        .unwrap()
        .unwrap();
    store
        .put_if_absent(&KeyId::parse("a").unwrap(), b.bytes)
        .await
        .unwrap();
    let (status, cache, body) = call(&router, "GET", "/api/v1/key?id=a").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(cache.as_deref(), Some("no-store"));
    assert_eq!(body["error_type"], "InternalError");
    let message = body["error_message"].as_str().unwrap();
    assert!(
        message.contains("\"a\"") && message.contains("integrity"),
        "{message}"
    );
    let log = std::fs::read_to_string(&audit_path).unwrap();
    let last: Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["id"], "a");
    assert_eq!(last["outcome"], "IntegrityFailure");
}

#[tokio::test]
async fn head_on_the_key_route_is_refused_and_creates_nothing() {
    let store = Arc::new(MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.log");
    let router = router_for(store.clone(), true, &[anyone()], Some(&audit_path));
    for (uri, allow) in [
        ("/api/v1/key?id=probe", "GET, DELETE"),
        ("/api/v1/key/info?id=probe", "GET"),
        ("/api/v1/keys", "GET"),
        ("/metrics", "GET"),
        ("/healthz", "GET"),
        ("/readyz", "GET"),
    ] {
        let (status, headers, _) = send(
            &router,
            Request::builder()
                .method("HEAD")
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "HEAD {uri}");
        assert_eq!(
            headers.get("allow").map(|v| v.to_str().unwrap()),
            Some(allow),
            "HEAD {uri}"
        );
    }
    assert!(
        store.list(None, 10).await.unwrap().ids.is_empty(),
        "HEAD created no key"
    );
    let audited = std::fs::read_to_string(&audit_path).unwrap_or_default();
    assert!(
        !audited.contains("\"outcome\":\"ok\""),
        "no key release is audited: {audited}"
    );
}

/// The key route's GET is answered by the front layer, not the router: a panic there is
/// still a JSON 500, and the server goes on answering.
#[tokio::test]
async fn a_panic_while_getting_a_key_is_a_json_500() {
    let service = KeyService::builder(Arc::new(MemoryStore::new()))
        .region(Arc::new(BrokenRegion::panicking("r1")))
        .region(Arc::new(BrokenRegion::panicking("r2")))
        .build()
        .unwrap();
    let router = router_over(service, &[anyone()], None);
    let (status, _, body) = call(&router, "GET", "/api/v1/key?id=boom").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error_type"], "InternalError", "{body}");
    let (status, _, _) = call(&router, "GET", "/healthz").await;
    assert_eq!(status, StatusCode::OK);
}

/// A gRPC call goes to the gRPC API whatever its path, the key route's included; an HTTP/2
/// GET of the key route with a body (no length header: HTTP/2 frames it) is refused.
#[tokio::test]
async fn http2_requests_to_the_key_route() {
    let store = Arc::new(MemoryStore::new());
    let router = router(store.clone(), true);
    for method in ["POST", "GET"] {
        let grpc = Request::builder()
            .method(method)
            .version(axum::http::Version::HTTP_2)
            .uri("/api/v1/key?id=a")
            .header("content-type", "application/grpc")
            .body(Body::empty())
            .unwrap();
        let response = router.clone().oneshot(grpc).await.unwrap();
        assert_eq!(
            response.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"12"[..]),
            "{method}: answered by the gRPC API as an unknown method: {:?}",
            response.headers()
        );
    }
    let with_body = Request::builder()
        .version(axum::http::Version::HTTP_2)
        .uri("/api/v1/key?id=a")
        .body(Body::from("x"))
        .unwrap();
    let (status, _, body) = send(&router, with_body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(store.list(None, 10).await.unwrap().ids.is_empty());
}
