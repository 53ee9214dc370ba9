//! The HTTP API: routes, handlers and the layers around them.

use std::any::Any;
use std::borrow::Cow;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, RawQuery, Request, State};
use axum::handler::Handler;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rkms_core::{IssuedKey, KeyId};
use serde::Serialize;
use tower::{ServiceBuilder, ServiceExt as _};
use tower_http::catch_panic::CatchPanicLayer;
use zeroize::Zeroizing;

use crate::access::{self, admit, AppState, Caller, Transport, DEFAULT_LIST_LIMIT};
use crate::auth::Credentials;
use crate::error::ApiError;
use crate::grpc;
use crate::limits::{self, LiveLimits};
use crate::live::LiveService;
use crate::probes::{self, Probes};
use crate::render::{info_body, list_body, rotated_body, state_body};
use crate::telemetry::REJECTIONS;

/// Longest query string the key endpoints read; anything longer cannot hold a valid request.
const MAX_QUERY_LEN: usize = 4096;

/// The methods the key route takes (its GET is answered by [`front`]).
const KEY_ROUTE_METHODS: &str = "GET, DELETE";

/// The header that carries a key request's id, as in the audit log.
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole HTTP API. `key_path` is `/api/<api_version>/key`; beside it are
/// `<key_path>/rotate`, `<key_path>/restore`, `<key_path>/info` and the listing
/// `<key_path>s`. The key routes and `/metrics` need an authenticated principal; the health
/// checks do not, and are limited per client address instead. Starts the background
/// readiness check: needs a Tokio runtime.
///
/// Reads answer GET only (see [`get_only`]); the key route also takes DELETE, and rotate and
/// restore take POST. No route takes a body (see [`Admitted`] and [`probe`]); a method a route
/// does not take is refused first, with the methods it does. A GET of the key route, the hot
/// path, is answered by [`front`] without going through the router.
pub fn app(state: AppState, key_path: &str, limits: impl Into<LiveLimits>) -> Router {
    let limits = limits.into();
    let protected = Router::new()
        // No GET here: `front` answers it before the router.
        .route(
            key_path,
            delete(delete_key)
                .head(|| async { ApiError::MethodNotAllowed(KEY_ROUTE_METHODS) })
                .fallback(|| async { ApiError::MethodNotAllowed(KEY_ROUTE_METHODS) }),
        )
        .route(&format!("{key_path}/rotate"), post_only(rotate_key))
        .route(&format!("{key_path}/restore"), post_only(restore_key))
        .route(&format!("{key_path}/info"), get_only(key_info))
        .route(&format!("{key_path}s"), get_only(list_keys))
        .route("/metrics", get_only(metrics));
    let probes = Probes::start(Arc::clone(&state.service));
    let port = Arc::new(Port {
        grpc: grpc::app(state.clone(), probes.clone(), limits.clone()),
        limits,
        key_path: key_path.into(),
        state: state.clone(),
    });
    let routes = Router::new()
        .merge(protected)
        .merge(probe_routes(probes))
        .fallback(|| async { ApiError::NotFound })
        .with_state(state);
    // Around the whole router once, not with `Router::layer`, which wraps every route apart:
    // a layered route is cloned for each request, layer by layer, each clone a box.
    let layered = ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(port, front))
        .service(routes);
    Router::new().fallback_service(layered)
}

/// What the port's [`front`] needs; shared, as the layer clones it for every request.
struct Port {
    grpc: Router,
    limits: LiveLimits,
    key_path: Box<str>,
    state: AppState,
}

/// The port's front: a gRPC call goes to the gRPC API ([`grpc::is_grpc`]), which has limits
/// and error answers of its own; anything else is held to the size limits, and then a GET of
/// the key route is answered here ([`get_key`]) and the rest goes on to the HTTP routes. One
/// layer for all, as each layer costs every request a clone and a box; and the hot path skips
/// the router, its method dispatch and the handler's boxing (BENCHMARKS.md, issue 15). The
/// panic catcher is around this layer, so it covers the hot path too.
async fn front(
    State(port): State<Arc<Port>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if grpc::is_grpc(&request) {
        return Ok(match port.grpc.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        });
    }
    limits::check(&port.limits.current(), &request)?;
    if request.method() == Method::GET && request.uri().path() == &*port.key_path {
        return Ok(get_key(&port.state, request).await);
    }
    Ok(next.run(request).await)
}

/// `/healthz` and `/readyz` alone, for `[server] health_port`: a listener of their own, which
/// no key client can fill. Starts its own background readiness check.
pub fn health_app(service: Arc<LiveService>, limits: impl Into<LiveLimits>) -> Router {
    let limits = limits.into();
    probe_routes(Probes::start(service))
        .fallback(|| async { ApiError::NotFound })
        .layer(middleware::from_fn_with_state(limits, limits::enforce))
        .layer(CatchPanicLayer::custom(panic_response))
}

/// The probes, limited per client address, answered from `probes`' background checks.
fn probe_routes<S>(probes: Probes) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route(limits::HEALTH_PATH, probe(probes::healthz))
        .route(limits::READY_PATH, probe(probes::readyz))
        .route_layer(middleware::from_fn_with_state(
            probes.clone(),
            probes::limit,
        ))
        .with_state(probes)
}

/// A route for GET alone. axum runs a GET handler for HEAD too, which on a key route would
/// audit a read whose answer has no body; HEAD is refused like any other method.
fn get_only<H, T, S>(handler: H) -> MethodRouter<S>
where
    H: Handler<T, S>,
    T: 'static,
    S: Clone + Send + Sync + 'static,
{
    get(handler)
        .head(|| async { ApiError::MethodNotAllowed("GET") })
        .fallback(|| async { ApiError::MethodNotAllowed("GET") })
}

/// A probe's route: GET alone, without a body.
fn probe<H, T>(handler: H) -> MethodRouter<Probes>
where
    H: Handler<T, Probes>,
    T: 'static,
{
    get_only(handler).route_layer(middleware::from_fn(limits::refuse_body))
}

/// A route for POST alone: a change, never run by a GET (which caches, prefetchers and
/// crawlers send freely).
fn post_only<H, T, S>(handler: H) -> MethodRouter<S>
where
    H: Handler<T, S>,
    T: 'static,
    S: Clone + Send + Sync + 'static,
{
    post(handler).fallback(|| async { ApiError::MethodNotAllowed("POST") })
}

/// The caller of a key route or `/metrics`, admitted (see [`admit`]), then checked as a change
/// must be: no route takes a body, and a change (any method but GET) sent by a web page is
/// refused. Browsers send `Origin` with every cross-origin POST and DELETE, and a page can
/// send a bodiless POST without a preflight, which would let any site a developer visits
/// rotate the keys of a server on their loopback; programs calling RKMS send no `Origin`.
///
/// An extractor, the handler's last argument, rather than middleware: a method the route does
/// not take is answered 405 before it, and no layer is cloned per request. The key route's
/// GET, answered by [`front`], runs the same checks ([`admit_http`]).
struct Admitted(Caller);

impl FromRequest<AppState> for Admitted {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        admit_http(state, &request).map(Self)
    }
}

/// What [`Admitted`] checks, for a request the router did not take apart.
fn admit_http(state: &AppState, request: &Request) -> Result<Caller, ApiError> {
    let caller = admit(&state.auth, &Credentials::of(request), Transport::Http)?;
    if request.method() != Method::GET && request.headers().contains_key(header::ORIGIN) {
        ::metrics::counter!(REJECTIONS, "reason" => "web_page").increment(1);
        return Err(ApiError::Forbidden(
            "a request carrying Origin (sent by a web page) may not change keys".into(),
        ));
    }
    limits::no_body(request)?;
    Ok(caller)
}

#[derive(Serialize)]
struct KeyResponse<'a> {
    id: &'a str,
    key: &'a str,
    version: u32,
}

/// Runs one key route's work; the answer carries the request's id in `x-request-id` (as the
/// audit line does in `request_id`).
async fn answer<Fut>(caller: &Caller, work: Fut) -> Response
where
    Fut: std::future::Future<Output = Result<Response, ApiError>>,
{
    let mut response = work.await.unwrap_or_else(IntoResponse::into_response);
    if let Ok(value) = HeaderValue::from_str(caller.request_id()) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}

/// `GET /api/<v>/key?id=ID[&version=N]`: the data key for ID (its current version, created
/// on first use when the principal may create it; or version N, never created). Called by
/// [`front`], not the router; checks what the routes' [`Admitted`] does.
async fn get_key(state: &AppState, request: Request) -> Response {
    let caller = match admit_http(state, &request) {
        Ok(caller) => caller,
        Err(refused) => return refused.into_response(),
    };
    let uri = request.into_parts().0.uri;
    answer(&caller, async {
        let query = Query::parse(uri.query())?;
        let id = query.id()?;
        let version = query.version()?;
        let issued = state.operations().get_key(&caller, &id, version).await?;
        key_response(&id, &issued)
    })
    .await
}

/// `POST /api/<v>/key/rotate?id=ID`: a new current version; answers its number.
async fn rotate_key(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    Admitted(caller): Admitted,
) -> Response {
    answer(&caller, async {
        let id = Query::parse(query.as_deref())?.id()?;
        let version = state.operations().rotate(&caller, &id).await?;
        Ok(json(&rotated_body(&id, version)))
    })
    .await
}

/// `DELETE /api/<v>/key?id=ID`: schedules the deletion; answers the pending state.
async fn delete_key(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    Admitted(caller): Admitted,
) -> Response {
    answer(&caller, async {
        let id = Query::parse(query.as_deref())?.id()?;
        let state = state.operations().delete(&caller, &id).await?;
        Ok(json(&state_body(&id, state)))
    })
    .await
}

/// `POST /api/<v>/key/restore?id=ID`: cancels a scheduled deletion.
async fn restore_key(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    Admitted(caller): Admitted,
) -> Response {
    answer(&caller, async {
        let id = Query::parse(query.as_deref())?.id()?;
        let state = state.operations().restore(&caller, &id).await?;
        Ok(json(&state_body(&id, state)))
    })
    .await
}

/// `GET /api/<v>/key/info?id=ID`: metadata, never key material.
async fn key_info(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    Admitted(caller): Admitted,
) -> Response {
    answer(&caller, async {
        let id = Query::parse(query.as_deref())?.id()?;
        let info = state.operations().describe(&caller, &id).await?;
        Ok(json(&info_body(&info)))
    })
    .await
}

/// `GET /api/<v>/keys?prefix=P&after=CURSOR&limit=N`: ids the principal may list, paged.
async fn list_keys(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    Admitted(caller): Admitted,
) -> Response {
    answer(&caller, async {
        let query = Query::parse(query.as_deref())?;
        let prefix = query.prefix()?;
        let after = query.one("after")?;
        let limit = query.limit()?;
        let listing = state
            .operations()
            .list(&caller, &prefix, after.as_deref(), limit)
            .await?;
        Ok(json(&list_body(&listing)))
    })
    .await
}

fn json(body: &serde_json::Value) -> Response {
    let mut response = axum::Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn key_response(id: &KeyId, issued: &IssuedKey) -> Result<Response, ApiError> {
    let encoded = Zeroizing::new(BASE64.encode(issued.key.expose_secret()));
    let body = Zeroizing::new(
        serde_json::to_vec(&KeyResponse {
            id: id.as_str(),
            key: &encoded,
            version: issued.version,
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

/// A key route's query string, read before any I/O. Each parameter may be given once;
/// parameters a route does not read are ignored.
struct Query<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> Query<'a> {
    fn parse(query: Option<&'a str>) -> Result<Self, ApiError> {
        let query = query.unwrap_or_default();
        if query.len() > MAX_QUERY_LEN {
            return Err(ApiError::BadRequest(format!(
                "query string longer than {MAX_QUERY_LEN} bytes"
            )));
        }
        Ok(Self(form_urlencoded::parse(query.as_bytes()).collect()))
    }

    /// The value of `name`, if given (once).
    fn one(&self, name: &str) -> Result<Option<Cow<'a, str>>, ApiError> {
        let mut values = self.0.iter().filter(|(n, _)| n == name).map(|(_, v)| v);
        let value = values.next().cloned();
        if values.next().is_some() {
            return Err(ApiError::BadRequest(format!(
                "{name} query parameter must be given once"
            )));
        }
        Ok(value)
    }

    fn id(&self) -> Result<KeyId, ApiError> {
        let id = self
            .one("id")?
            .ok_or_else(|| ApiError::BadRequest("id query parameter is required".into()))?;
        access::key_id(&id)
    }

    fn version(&self) -> Result<Option<u32>, ApiError> {
        self.one("version")?
            .map(|v| access::key_version(v.parse().unwrap_or(0)))
            .transpose()
    }

    fn prefix(&self) -> Result<String, ApiError> {
        let prefix = self.one("prefix")?.unwrap_or_default();
        Ok(access::list_prefix(&prefix)?.to_owned())
    }

    fn limit(&self) -> Result<usize, ApiError> {
        match self.one("limit")? {
            None => Ok(DEFAULT_LIST_LIMIT),
            Some(text) => access::list_limit(text.parse().unwrap_or(0)),
        }
    }
}

/// Reads exactly one valid `id` from a query string, before any I/O.
#[cfg(test)]
fn id_from_query(query: &str) -> Result<KeyId, ApiError> {
    Query::parse(Some(query))?.id()
}

/// `GET /metrics`: Prometheus text, for principals allowed to read it.
async fn metrics(
    State(state): State<AppState>,
    Admitted(caller): Admitted,
) -> Result<Response, ApiError> {
    let principal = caller.principal();
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
