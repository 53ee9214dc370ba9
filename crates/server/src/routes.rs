//! The HTTP API: routes, handlers and the layers around them.

use std::any::Any;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use metrics_exporter_prometheus::PrometheusHandle;
use rkms_core::{BreakerState, KeyId, KeyService};
use serde::Serialize;
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use zeroize::Zeroizing;

use crate::audit::{AuditEvent, AuditLog};
use crate::error::ApiError;

/// The principal of every request until authentication exists.
const ANONYMOUS: &str = "anonymous";

/// Longest query string the key endpoint reads; anything longer cannot hold a valid id.
const MAX_QUERY_LEN: usize = 4096;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The protocol.
    pub service: Arc<KeyService>,
    /// Renders the process's metrics for `/metrics`; `None` serves no metrics.
    pub metrics: Option<PrometheusHandle>,
    /// Where every key operation is recorded; `None` records nothing (tests of the API alone).
    pub audit: Option<Arc<AuditLog>>,
}

/// The whole HTTP API. `key_path` is `/api/<api_version>/key`.
pub fn app(state: AppState, key_path: &str) -> Router {
    Router::new()
        .route(key_path, get(get_key))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(panic_response))
}

#[derive(Serialize)]
struct KeyResponse<'a> {
    id: &'a str,
    key: &'a str,
}

/// `GET /api/<v>/key?id=ID`: the data key for ID, created on first use.
async fn get_key(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let id = id_from_query(query.as_deref().unwrap_or_default())?;
    let request_id = format!("{:016x}", rand::random::<u64>());
    let result = state.service.get_or_create(&id).await;
    if let Some(audit) = &state.audit {
        let event = match &result {
            Ok(issued) => AuditEvent {
                request_id: &request_id,
                principal: ANONYMOUS,
                operation: if issued.created { "create" } else { "get" },
                id: id.as_str(),
                outcome: "ok",
                region: Some(&issued.region),
                cache_hit: issued.from_cache,
                created: issued.created,
            },
            Err(error) => AuditEvent {
                request_id: &request_id,
                principal: ANONYMOUS,
                operation: "get_or_create",
                id: id.as_str(),
                outcome: ApiError::kind_of(error),
                region: None,
                cache_hit: false,
                created: false,
            },
        };
        // A key is handed out only once its release is on record.
        audit.record(&event).map_err(|e| {
            tracing::error!(error = %e, "cannot write the audit log");
            ApiError::Internal("the audit log cannot be written; no key was handed out".into())
        })?;
    }
    let issued = result.map_err(|e| ApiError::from_service(&e))?;
    let encoded = Zeroizing::new(BASE64.encode(issued.key.expose_secret()));
    let body = Zeroizing::new(
        serde_json::to_vec(&KeyResponse {
            id: id.as_str(),
            key: &encoded,
        })
        .map_err(|_| ApiError::Internal("could not encode the response".into()))?,
    );
    // The body buffer is wiped when the response has been sent and dropped.
    let mut response = Response::new(Body::from(Bytes::from_owner(body)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Reads exactly one valid `id` from a query string, before any I/O.
fn id_from_query(query: &str) -> Result<KeyId, ApiError> {
    if query.len() > MAX_QUERY_LEN {
        return Err(ApiError::BadRequest(format!(
            "query string longer than {MAX_QUERY_LEN} bytes"
        )));
    }
    let mut ids = form_urlencoded::parse(query.as_bytes())
        .filter(|(name, _)| name == "id")
        .map(|(_, value)| value);
    let id = ids
        .next()
        .ok_or_else(|| ApiError::BadRequest("id query parameter is required".into()))?;
    if ids.next().is_some() {
        return Err(ApiError::BadRequest(
            "id query parameter must be given once".into(),
        ));
    }
    KeyId::parse(&id).map_err(|e| ApiError::BadRequest(format!("invalid id: {e}")))
}

/// `GET /healthz`: the process is up.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the store answers and at least one region's circuit breaker is not open.
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.service.check_store().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness: store check failed");
        ApiError::Unavailable("the key store is not reachable".into())
    })?;
    let regions = state.service.region_status();
    if regions.iter().all(|r| r.breaker == BreakerState::Open) {
        return Err(ApiError::Unavailable(
            "every KMS region's circuit breaker is open after repeated failures".into(),
        ));
    }
    let regions: Vec<serde_json::Value> = regions
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "breaker": r.breaker.name(),
                "latency_ms": r.latency.map(|l| l.as_secs_f64() * 1000.0),
            })
        })
        .collect();
    Ok(Json(json!({ "status": "ready", "regions": regions })))
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let handle = state.metrics.ok_or(ApiError::NotFound)?;
    let mut response = handle.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(response)
}

/// A panic becomes a JSON 500; its payload is not echoed, since it might hold anything.
fn panic_response(_payload: Box<dyn Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    let mut response =
        ApiError::Internal("internal error; the server log has the details".into()).into_response();
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_query_string_is_answered_without_panicking(query in ".{0,600}") {
            if let Ok(id) = id_from_query(&query) {
                prop_assert!(query.contains("id="));
                prop_assert!(!id.as_str().is_empty());
            }
        }
    }

    #[test]
    fn id_is_read_once_and_validated() {
        assert_eq!(id_from_query("id=abc").unwrap().as_str(), "abc");
        assert_eq!(id_from_query("x=1&id=a%2Fb").unwrap().as_str(), "a/b");
        assert!(id_from_query("").is_err());
        assert!(id_from_query("id=").is_err());
        assert!(id_from_query("id=a&id=b").is_err());
        assert!(id_from_query("id=a%20b").is_err());
        assert!(id_from_query("id=%ff%fe").is_err());
        assert!(id_from_query(&format!("id={}", "a".repeat(5000))).is_err());
    }
}
