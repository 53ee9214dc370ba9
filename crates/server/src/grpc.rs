//! The gRPC API (`proto/rkms/v1/rkms.proto`), served on the HTTP API's port over HTTP/2:
//! `rkms.v1.KeyService` over the same access layer as the HTTP routes, `grpc.health.v1.Health`
//! following the readiness checks, and server reflection so that `grpcurl` needs no proto.
//! The handlers here only translate messages; [`crate::access`] decides.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use prost_types::Timestamp;
use rkms_core::{KeyId, KeyInfo, KeyListing, KeyState as CoreState};
use rkms_proto::v1::key_service_server::{KeyService, KeyServiceServer};
use rkms_proto::v1::{
    DeleteKeyRequest, DescribeKeyRequest, DescribeKeyResponse, GetKeyRequest, GetKeyResponse,
    KeyState, KeyStateResponse, KeyVersion, ListKeysRequest, ListKeysResponse, ListedKey,
    RestoreKeyRequest, RotateKeyRequest, RotateKeyResponse,
};
use tonic::metadata::MetadataValue;
use tonic::server::NamedService;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower_http::catch_panic::CatchPanicLayer;
use zeroize::Zeroizing;

use crate::access::{self, admit, AppState, Caller, Transport, DEFAULT_LIST_LIMIT};
use crate::auth::{Authenticator, Credentials};
use crate::error::ApiError;
use crate::limits::{self, LiveLimits};
use crate::live::LiveService;
use crate::probes::Probes;
use crate::render;

/// Largest request message taken: requests hold an id, a prefix or a list cursor (and
/// reflection requests, a symbol name).
const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Largest health check request: a service name.
const MAX_HEALTH_REQUEST_BYTES: usize = 1024;

/// Whether `request` is a gRPC call: HTTP/2 with a gRPC content type. Browsers send
/// plaintext requests over HTTP/1.1 only, so a web page cannot reach the gRPC API through a
/// rebound host name on the loopback; the host check of anonymous callers covers the rest.
pub fn is_grpc<B>(request: &http::Request<B>) -> bool {
    request.version() == http::Version::HTTP_2
        && request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC services: the key service and reflection for admitted callers (every call goes
/// through [`admit`], as on the HTTP routes), health for anyone, limited per address like
/// `/readyz`. Every call is held to the HTTP API's size limits and must finish within the
/// header read timeout plus the request deadline, its request message included.
pub fn app(state: AppState, probes: Probes, limits: LiveLimits) -> Router {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(rkms_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let auth = Arc::clone(&state.auth);
    let service = Arc::clone(&state.service);
    let keys = KeyServiceServer::new(Keys { state }).max_decoding_message_size(MAX_REQUEST_BYTES);
    let admitted = Router::new();
    let admitted = with_service(admitted, keys);
    let admitted = with_service(
        admitted,
        reflection()
            .build_v1()
            .expect("the descriptor sets are valid")
            .max_decoding_message_size(MAX_REQUEST_BYTES),
    );
    // grpcurl and older tools ask the pre-release version of reflection.
    let admitted = with_service(
        admitted,
        reflection()
            .build_v1alpha()
            .expect("the descriptor sets are valid")
            .max_decoding_message_size(MAX_REQUEST_BYTES),
    )
    .route_layer(middleware::from_fn_with_state(auth, admit_call));
    let health = HealthServer::new(Readiness(probes.clone()))
        .max_decoding_message_size(MAX_HEALTH_REQUEST_BYTES);
    let health = with_service(Router::new(), health)
        .route_layer(middleware::from_fn_with_state(probes, limit_probe));
    admitted
        .merge(health)
        .fallback(|| async { status_response(Status::unimplemented("no such service")) })
        .layer(middleware::from_fn_with_state(
            (limits, service),
            limit_call,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a gRPC handler panicked");
            status_response(Status::internal(
                "internal error; the server log has the details",
            ))
        }))
}

/// Refuses a call over the size limits (`RESOURCE_EXHAUSTED`, as the HTTP API's 414 and
/// 431), and ends one that has not finished in time (`DEADLINE_EXCEEDED`): a client that
/// never sends the rest of its request must not hold the connection.
async fn limit_call(
    State((limits, service)): State<(LiveLimits, Arc<LiveService>)>,
    request: Request,
    next: Next,
) -> Response {
    let limits = limits.current();
    if let Err(e) = limits::check(&limits, &request) {
        return status_response(e.into_status());
    }
    let time = limits.header_read_timeout + service.current().options().request_deadline;
    match tokio::time::timeout(time, next.run(request)).await {
        Ok(response) => response,
        Err(_) => status_response(Status::deadline_exceeded(format!(
            "the call did not complete within {time:?}"
        ))),
    }
}

/// `router` with the calls of the gRPC service `service` routed to it.
fn with_service<S>(router: Router, service: S) -> Router
where
    S: tower::Service<Request, Error = Infallible> + NamedService + Clone + Send + Sync + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    router.route_service(&format!("/{}/{{*method}}", S::NAME), service)
}

/// `grpc.health.v1.Health`: `Check` answers SERVING for the server (`""`) and
/// `rkms.v1.KeyService` exactly when `/readyz` would answer 200. `Watch` is not served: a
/// stream without end would hold a connection slot for any anonymous caller.
#[derive(Debug, Clone)]
struct Readiness(Probes);

#[tonic::async_trait]
impl Health for Readiness {
    async fn check(
        &self,
        request: GrpcRequest<HealthCheckRequest>,
    ) -> Result<GrpcResponse<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        if !service.is_empty() && service != KeyServiceServer::<Keys>::NAME {
            return Err(Status::not_found(format!("no service {service:?} here")));
        }
        let status = match self.0.ready().await {
            Ok(_) => ServingStatus::Serving,
            Err(_) => ServingStatus::NotServing,
        };
        Ok(GrpcResponse::new(HealthCheckResponse {
            status: status.into(),
        }))
    }

    type WatchStream = futures::stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _request: GrpcRequest<HealthCheckRequest>,
    ) -> Result<GrpcResponse<Self::WatchStream>, Status> {
        Err(Status::unimplemented(
            "Watch is not served; poll Check, as Kubernetes and grpc_health_probe do",
        ))
    }
}

/// Admits the call (see [`admit`]) and hands its [`Caller`] to the service.
async fn admit_call(
    State(auth): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Response {
    match admit(&auth, &Credentials::of(&request), Transport::Grpc) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => status_response(e.into_status()),
    }
}

/// Takes a health check from the caller's per-address budget, as for `/readyz`.
async fn limit_probe(State(probes): State<Probes>, request: Request, next: Next) -> Response {
    match probes.admit(&request) {
        Ok(()) => next.run(request).await,
        Err(e) => status_response(e.into_status()),
    }
}

fn status_response(status: Status) -> Response {
    status.into_http::<Body>().into_response()
}

/// `rkms.v1.KeyService`.
#[derive(Debug, Clone)]
struct Keys {
    state: AppState,
}

/// The admitted caller and the message of `request`.
fn admitted<T>(request: GrpcRequest<T>) -> Result<(Caller, T), Status> {
    let (_, extensions, message) = request.into_parts();
    let caller = extensions.get::<Caller>().cloned().ok_or_else(|| {
        tracing::error!("a gRPC call reached the key service without being admitted");
        Status::internal("internal error; the server log has the details")
    })?;
    Ok((caller, message))
}

/// The answer to an admitted call, carrying its request id in `x-request-id` as over HTTP.
fn reply<T>(caller: &Caller, result: Result<T, ApiError>) -> Result<GrpcResponse<T>, Status> {
    let request_id = MetadataValue::try_from(caller.request_id()).ok();
    match result {
        Ok(message) => {
            let mut response = GrpcResponse::new(message);
            if let Some(value) = request_id {
                response.metadata_mut().insert("x-request-id", value);
            }
            Ok(response)
        }
        Err(e) => {
            let mut status = e.into_status();
            if let Some(value) = request_id {
                status.metadata_mut().insert("x-request-id", value);
            }
            Err(status)
        }
    }
}

#[tonic::async_trait]
impl KeyService for Keys {
    async fn get_key(
        &self,
        request: GrpcRequest<GetKeyRequest>,
    ) -> Result<GrpcResponse<GetKeyResponse>, Status> {
        let (caller, message) = admitted(request)?;
        let result = async {
            let id = access::key_id(&message.id)?;
            let version = message.version.map(access::key_version).transpose()?;
            let issued = self
                .state
                .operations()
                .get_key(&caller, &id, version)
                .await?;
            // The copy sent is wiped once the response has been encoded and dropped.
            let key = Zeroizing::new(issued.key.expose_secret().to_vec());
            Ok(GetKeyResponse {
                id: id.as_str().to_owned(),
                key: Bytes::from_owner(key),
                version: issued.version,
            })
        }
        .await;
        reply(&caller, result)
    }

    async fn rotate_key(
        &self,
        request: GrpcRequest<RotateKeyRequest>,
    ) -> Result<GrpcResponse<RotateKeyResponse>, Status> {
        let (caller, message) = admitted(request)?;
        let result = async {
            let id = access::key_id(&message.id)?;
            let version = self.state.operations().rotate(&caller, &id).await?;
            Ok(RotateKeyResponse {
                id: id.as_str().to_owned(),
                version,
                state: KeyState::Active.into(),
            })
        }
        .await;
        reply(&caller, result)
    }

    async fn delete_key(
        &self,
        request: GrpcRequest<DeleteKeyRequest>,
    ) -> Result<GrpcResponse<KeyStateResponse>, Status> {
        let (caller, message) = admitted(request)?;
        let result = async {
            let id = access::key_id(&message.id)?;
            let state = self.state.operations().delete(&caller, &id).await?;
            Ok(state_response(&id, state))
        }
        .await;
        reply(&caller, result)
    }

    async fn restore_key(
        &self,
        request: GrpcRequest<RestoreKeyRequest>,
    ) -> Result<GrpcResponse<KeyStateResponse>, Status> {
        let (caller, message) = admitted(request)?;
        let result = async {
            let id = access::key_id(&message.id)?;
            let state = self.state.operations().restore(&caller, &id).await?;
            Ok(state_response(&id, state))
        }
        .await;
        reply(&caller, result)
    }

    async fn describe_key(
        &self,
        request: GrpcRequest<DescribeKeyRequest>,
    ) -> Result<GrpcResponse<DescribeKeyResponse>, Status> {
        let (caller, message) = admitted(request)?;
        let result = async {
            let id = access::key_id(&message.id)?;
            let info = self.state.operations().describe(&caller, &id).await?;
            Ok(describe_response(&info))
        }
        .await;
        reply(&caller, result)
    }

    async fn list_keys(
        &self,
        request: GrpcRequest<ListKeysRequest>,
    ) -> Result<GrpcResponse<ListKeysResponse>, Status> {
        let (caller, message) = admitted(request)?;
        let result = async {
            let prefix = access::list_prefix(&message.prefix)?;
            let limit = match message.page_size {
                0 => DEFAULT_LIST_LIMIT,
                size => access::list_limit(usize::try_from(size).unwrap_or(usize::MAX))?,
            };
            let after = Some(message.page_token.as_str()).filter(|t| !t.is_empty());
            let listing = self
                .state
                .operations()
                .list(&caller, prefix, after, limit)
                .await?;
            Ok(list_response(listing))
        }
        .await;
        reply(&caller, result)
    }
}

fn state_response(id: &KeyId, state: CoreState) -> KeyStateResponse {
    let (state, deletion_time, deleted_at) = state_fields(state);
    KeyStateResponse {
        id: id.as_str().to_owned(),
        state: state.into(),
        deletion_time,
        deleted_at,
    }
}

fn describe_response(info: &KeyInfo) -> DescribeKeyResponse {
    let (state, deletion_time, deleted_at) = state_fields(info.state);
    DescribeKeyResponse {
        id: info.id.as_str().to_owned(),
        state: state.into(),
        deletion_time,
        deleted_at,
        current_version: render::current_version(info),
        versions: info
            .versions
            .iter()
            .map(|v| KeyVersion {
                version: v.number,
                created_at: render::created_at(v).map(timestamp),
                regions: v.regions.clone(),
                missing: v.missing.clone(),
            })
            .collect(),
    }
}

fn list_response(listing: KeyListing) -> ListKeysResponse {
    ListKeysResponse {
        keys: listing
            .keys
            .into_iter()
            .map(|k| ListedKey {
                id: k.id.as_str().to_owned(),
                state: k
                    .state
                    .map_or(KeyState::Unreadable, |s| state_fields(s).0)
                    .into(),
            })
            .collect(),
        next_page_token: listing.next.unwrap_or_default(),
    }
}

/// A lifecycle state as the messages carry it: its name, and its time when it has one.
fn state_fields(state: CoreState) -> (KeyState, Option<Timestamp>, Option<Timestamp>) {
    match state {
        CoreState::Active => (KeyState::Active, None, None),
        CoreState::PendingDeletion { deletion_time } => (
            KeyState::PendingDeletion,
            Some(timestamp(deletion_time)),
            None,
        ),
        CoreState::Deleted { deleted_at } => (KeyState::Deleted, None, Some(timestamp(deleted_at))),
    }
}

fn timestamp(seconds: u64) -> Timestamp {
    Timestamp {
        seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
        nanos: 0,
    }
}
