//! The HTTP API in process (`oneshot`), over MemoryStore and local regions.

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use rkms_core::{
    DataKey, EncryptionContext, GeneratedKey, KeyId, KeyService, Kms, KmsError, LocalKeyring,
    MemoryStore, Store,
};
use rkms_server::routes::{app, AppState};
use serde_json::Value;
use tower::ServiceExt as _;

/// A region that is always down.
#[derive(Debug)]
struct DownRegion(&'static str);

#[async_trait]
impl Kms for DownRegion {
    fn region(&self) -> &str {
        self.0
    }
    fn master_key(&self) -> &str {
        "none"
    }
    async fn generate_data_key(
        &self,
        _: usize,
        _: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError> {
        Err(self.down())
    }
    async fn encrypt(&self, _: &DataKey, _: &EncryptionContext) -> Result<Vec<u8>, KmsError> {
        Err(self.down())
    }
    async fn decrypt(&self, _: &[u8], _: &EncryptionContext) -> Result<DataKey, KmsError> {
        Err(self.down())
    }
}

impl DownRegion {
    fn down(&self) -> KmsError {
        KmsError::Unavailable {
            region: self.0.into(),
            message: "connection refused".into(),
        }
    }
}

fn router(store: Arc<MemoryStore>, healthy: bool) -> Router {
    let ring = LocalKeyring::generate(&["k1", "k2"]).unwrap();
    let regions: Vec<Arc<dyn Kms>> = if healthy {
        vec![
            Arc::new(ring.region("r1", "k1").unwrap()),
            Arc::new(ring.region("r2", "k2").unwrap()),
        ]
    } else {
        vec![Arc::new(DownRegion("r1")), Arc::new(DownRegion("r2"))]
    };
    let service = regions
        .into_iter()
        .fold(KeyService::builder(store), |b, k| b.region(k))
        .build()
        .unwrap();
    app(
        AppState {
            service: Arc::new(service),
            metrics: None,
            audit: None,
        },
        "/api/v1/key",
    )
}

async fn call(router: &Router, method: &str, uri: &str) -> (StatusCode, Option<String>, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let cache = response
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON body")
    };
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
    assert_eq!(body.as_object().unwrap().len(), 2);
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
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/v1/key?id=x".into(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "DELETE",
            "/api/v1/key?id=x".into(),
            StatusCode::METHOD_NOT_ALLOWED,
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
    // Repeated failures open every region's breaker: the server reports itself not ready.
    for _ in 0..2 {
        call(&router, "GET", "/api/v1/key?id=new").await;
    }
    let (status, _, _) = call(&router, "GET", "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
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
        .all(|r| r["breaker"] == "closed"));
}
