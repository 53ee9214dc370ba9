//! The HTTP API: routes, handlers and the layers around them.

use std::any::Any;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, Request, State};
use axum::handler::Handler;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Extension, Router};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use metrics_exporter_prometheus::PrometheusHandle;
use rkms_core::{IssuedKey, KeyId, KeyService, ServiceError};
use serde::Serialize;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use zeroize::Zeroizing;

use crate::audit::{AuditEvent, AuditLog};
use crate::auth::{Authenticator, Credentials, Principal};
use crate::error::ApiError;
use crate::limits::{self, Limits};
use crate::probes::{self, Probes};
use crate::serve::Peer;
use crate::telemetry::{KEYS_CREATED, REJECTIONS};

/// Longest query string the key endpoint reads; anything longer cannot hold a valid id.
const MAX_QUERY_LEN: usize = 4096;

/// The header that carries a key request's id, as in the audit log.
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The protocol.
    pub service: Arc<KeyService>,
    /// Renders the process's metrics for `/metrics`; `None` serves no metrics.
    pub metrics: Option<PrometheusHandle>,
    /// Where every key operation is recorded; `None` records nothing (tests of the API alone).
    pub audit: Option<Arc<AuditLog>>,
    /// Who may call.
    pub auth: Arc<Authenticator>,
}

/// The whole HTTP API. `key_path` is `/api/<api_version>/key`. The key endpoint and
/// `/metrics` need an authenticated principal; the health checks do not, and are limited per
/// client address instead. Starts the background readiness check: needs a Tokio runtime.
///
/// Every route answers GET only (see [`get_only`]).
pub fn app(state: AppState, key_path: &str, limits: Limits) -> Router {
    let protected = Router::new()
        .route(key_path, get_only(get_key))
        .route("/metrics", get_only(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .merge(protected)
        .merge(probe_routes(Arc::clone(&state.service)))
        .route_layer(middleware::from_fn(limits::refuse_body))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(middleware::from_fn_with_state(limits, limits::enforce))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(panic_response))
}

/// `/healthz` and `/readyz` alone, for `[server] health_port`: a listener of their own, which
/// no key client can fill. Starts its own background readiness check.
pub fn health_app(service: Arc<KeyService>, limits: Limits) -> Router {
    probe_routes(service)
        .route_layer(middleware::from_fn(limits::refuse_body))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(limits, limits::enforce))
        .layer(CatchPanicLayer::custom(panic_response))
}

/// The probes, limited per client address, over a background readiness check of `service`.
fn probe_routes<S>(service: Arc<KeyService>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let probes = Probes::start(service);
    Router::new()
        .route(limits::HEALTH_PATH, get_only(probes::healthz))
        .route(limits::READY_PATH, get_only(probes::readyz))
        .route_layer(middleware::from_fn_with_state(
            probes.clone(),
            probes::limit,
        ))
        .with_state(probes)
}

/// A route for GET alone. axum runs a GET handler for HEAD too, which on the key route would
/// create and audit a key whose answer has no body; HEAD is refused like any other method.
fn get_only<H, T, S>(handler: H) -> MethodRouter<S>
where
    H: Handler<T, S>,
    T: 'static,
    S: Clone + Send + Sync + 'static,
{
    get(handler).head(|| async { ApiError::MethodNotAllowed })
}

/// Finds the request's principal (401 without one; 429 for an address that failed too
/// often; 403 for an anonymous request to a host not allowed) and takes a request from its
/// rate limit (429 when spent). Failures are logged by the authenticator, in counts.
async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let peer = request.extensions().get::<Peer>();
    // An absolute-form request line names its host itself; `Host` is then ignored (RFC 9112).
    let host = match request.uri().authority() {
        Some(authority) => Some(authority.as_str().as_bytes()),
        None => request
            .headers()
            .get(header::HOST)
            .map(HeaderValue::as_bytes),
    };
    let credentials = Credentials {
        authorization: request.headers().get(header::AUTHORIZATION),
        certificate: peer.and_then(|p| p.certificate.as_deref()),
        client: peer.map(|p| p.remote.ip()),
        host,
    };
    let principal = state.auth.authenticate(&credentials).map_err(|e| {
        ::metrics::counter!(REJECTIONS, "reason" => e.reason()).increment(1);
        ApiError::from(e)
    })?;
    principal.admit().map_err(|wait| {
        ::metrics::counter!(REJECTIONS, "reason" => "rate_limited").increment(1);
        ApiError::TooManyRequests(wait)
    })?;
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

#[derive(Serialize)]
struct KeyResponse<'a> {
    id: &'a str,
    key: &'a str,
}

/// `GET /api/<v>/key?id=ID`: the data key for ID, created on first use when the principal may
/// create it. Every outcome past id validation is audited; the answer carries `x-request-id`.
async fn get_key(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    RawQuery(query): RawQuery,
) -> Response {
    let request_id = format!("{:016x}", rand::random::<u64>());
    let mut response = match issue_key(&state, &principal, query.as_deref(), &request_id).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}

async fn issue_key(
    state: &AppState,
    principal: &Principal,
    query: Option<&str>,
    request_id: &str,
) -> Result<Response, ApiError> {
    let id = id_from_query(query.unwrap_or_default())?;
    let audit = Audit {
        state,
        principal,
        id: &id,
        request_id,
    };
    let allowed = principal.policy.allowed(&id);
    if allowed.is_empty() {
        audit.denied("get_or_create").await?;
        return Err(ApiError::Forbidden(format!(
            "principal {:?} may not use id {:?}",
            principal.name,
            id.as_str()
        )));
    }
    let result = if !allowed.create {
        state.service.get_existing(&id).await
    } else if principal.limits_creates() {
        // An existing key costs nothing from the create allowance; a create takes one first.
        match state.service.get_existing(&id).await {
            Ok(None) => {
                principal.admit_create().map_err(|wait| {
                    ::metrics::counter!(REJECTIONS, "reason" => "create_rate_limited").increment(1);
                    ApiError::TooManyRequests(wait)
                })?;
                state.service.get_or_create(&id).await.map(Some)
            }
            existing => existing,
        }
    } else {
        state.service.get_or_create(&id).await.map(Some)
    };
    let issued = match result {
        Err(error) => {
            let operation = if allowed.create {
                "get_or_create"
            } else {
                "get"
            };
            audit.failed(operation, &error).await?;
            return Err(ApiError::from_service(&error));
        }
        Ok(None) => {
            audit.denied("create").await?;
            return Err(ApiError::Forbidden(format!(
                "no key exists for id {:?}, and principal {:?} may not create one",
                id.as_str(),
                principal.name
            )));
        }
        Ok(Some(issued)) if !issued.created && !allowed.get => {
            audit.denied("get").await?;
            return Err(ApiError::Forbidden(format!(
                "the key for id {:?} exists, and principal {:?} may create keys for it but not read existing ones",
                id.as_str(),
                principal.name
            )));
        }
        Ok(Some(issued)) => issued,
    };
    // A key is handed out only once its release is on record.
    audit.issued(&issued).await?;
    if issued.created {
        ::metrics::counter!(KEYS_CREATED, "principal" => principal.name.clone()).increment(1);
    }
    key_response(&id, &issued)
}

/// Writes one key request's audit line.
struct Audit<'a> {
    state: &'a AppState,
    principal: &'a Principal,
    id: &'a KeyId,
    request_id: &'a str,
}

impl Audit<'_> {
    async fn issued(&self, issued: &IssuedKey) -> Result<(), ApiError> {
        let operation = if issued.created { "create" } else { "get" };
        self.write(operation, "ok", Some(issued)).await
    }

    async fn denied(&self, operation: &str) -> Result<(), ApiError> {
        ::metrics::counter!(REJECTIONS, "reason" => "forbidden").increment(1);
        self.write(operation, "denied", None).await
    }

    async fn failed(&self, operation: &str, error: &ServiceError) -> Result<(), ApiError> {
        self.write(operation, ApiError::kind_of(error), None).await
    }

    async fn write(
        &self,
        operation: &str,
        outcome: &str,
        issued: Option<&IssuedKey>,
    ) -> Result<(), ApiError> {
        let Some(audit) = &self.state.audit else {
            return Ok(());
        };
        let event = AuditEvent {
            request_id: self.request_id,
            principal: &self.principal.name,
            operation,
            id: self.id.as_str(),
            outcome,
            region: issued.map(|i| i.region.as_str()),
            cache_hit: issued.is_some_and(|i| i.from_cache),
            stale: issued.is_some_and(|i| i.stale),
            created: issued.is_some_and(|i| i.created),
        };
        audit.record(&event).await.map_err(|e| {
            tracing::error!(error = %e, "cannot write the audit log");
            ApiError::Internal("the audit log cannot be written; no key was handed out".into())
        })
    }
}

fn key_response(id: &KeyId, issued: &IssuedKey) -> Result<Response, ApiError> {
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

/// `GET /metrics`: Prometheus text, for principals allowed to read it.
async fn metrics(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
) -> Result<Response, ApiError> {
    if !principal.metrics {
        return Err(ApiError::Forbidden(format!(
            "principal {:?} may not read metrics",
            principal.name
        )));
    }
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
