//! Limits on what one request or connection may use, and the check that answers an oversized
//! request with a JSON error before anything reads it.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use axum::body::HttpBody;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;
use crate::telemetry::REJECTIONS;

/// The health checks' paths: a connection beyond `max_connections` may still make these.
pub const HEALTH_PATH: &str = "/healthz";
/// See [`HEALTH_PATH`].
pub const READY_PATH: &str = "/readyz";

/// Size, time and connection limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest path and query string (414 past it).
    pub max_uri_bytes: usize,
    /// Most bytes of header names and values together (431 past it).
    pub max_header_bytes: usize,
    /// Time a client gets to complete a TLS handshake or send a request's headers, and how
    /// long an idle keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// Time a client may go without taking any of the bytes the server is sending; then its
    /// connection is closed, so a client that stops reading cannot hold a slot.
    pub write_timeout: Duration,
    /// Age at which a connection is closed after the request in progress, so that no client
    /// holds a slot for good, however it paces its reads.
    pub max_connection_age: Duration,
    /// Open connections at once serving every route; a few more answer health checks only.
    pub max_connections: usize,
    /// Open connections at once from one client address (an IPv6 /64); 0 turns the cap off.
    pub max_connections_per_address: usize,
}

/// The limits in force, replaced by a configuration reload: a connection takes them when it
/// is accepted and keeps them to its end; the size checks read them per request.
#[derive(Debug, Clone)]
pub struct LiveLimits {
    in_force: Arc<ArcSwap<Limits>>,
    /// Wakes the accept loop when the limits change, so that more connection slots are
    /// opened at once even while every slot is taken.
    changed: Arc<Notify>,
}

impl LiveLimits {
    /// The limits in force now.
    pub fn current(&self) -> Arc<Limits> {
        self.in_force.load_full()
    }

    /// Puts `limits` in force for connections accepted and requests read from now on.
    pub fn replace(&self, limits: Limits) {
        self.in_force.store(Arc::new(limits));
        self.changed.notify_waiters();
    }

    /// Resolves at the next [`LiveLimits::replace`].
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

impl From<Limits> for LiveLimits {
    fn from(limits: Limits) -> Self {
        Self {
            in_force: Arc::new(ArcSwap::from_pointee(limits)),
            changed: Arc::new(Notify::new()),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        let max_connections = 1024;
        Self {
            max_uri_bytes: 4096,
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(600),
            max_connections,
            max_connections_per_address: Self::default_per_address(max_connections),
        }
    }
}

impl Limits {
    /// The per-address cap unless configured: a quarter of the connections, so that it takes
    /// four addresses to hold them all.
    pub fn default_per_address(max_connections: usize) -> usize {
        max_connections.div_ceil(4)
    }

    /// HTTP/1 read buffer: room for a request just past the limits, so that it reaches
    /// [`enforce`] and gets a JSON answer; anything larger is cut off by hyper with a bare 431.
    pub fn read_buffer_bytes(&self) -> usize {
        (self.max_uri_bytes + self.max_header_bytes)
            .saturating_mul(2)
            .max(8192)
    }
}

/// Refuses a request over the size limits.
pub async fn enforce(
    State(limits): State<LiveLimits>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check(&limits.current(), &request)?;
    Ok(next.run(request).await)
}

/// Whether `request`'s path and query and its headers are within `limits` (414 and 431
/// otherwise), whichever front end it came to.
pub fn check<B>(limits: &Limits, request: &http::Request<B>) -> Result<(), ApiError> {
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if uri_len > limits.max_uri_bytes {
        metrics::counter!(REJECTIONS, "reason" => "too_large").increment(1);
        return Err(ApiError::UriTooLong(limits.max_uri_bytes));
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > limits.max_header_bytes {
        metrics::counter!(REJECTIONS, "reason" => "too_large").increment(1);
        return Err(ApiError::HeadersTooLarge(limits.max_header_bytes));
    }
    Ok(())
}

/// Refuses a request with a body: no endpoint takes one, and none is read.
pub async fn refuse_body(request: Request, next: Next) -> Result<Response, ApiError> {
    no_body(&request)?;
    Ok(next.run(request).await)
}

/// Whether `request` comes without a body (413 otherwise).
pub fn no_body<B: HttpBody>(request: &http::Request<B>) -> Result<(), ApiError> {
    let headers = request.headers();
    // HTTP/2 frames a body without either header: a request whose stream goes on has one.
    let declares_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0")
        || (request.version() == http::Version::HTTP_2 && !request.body().is_end_stream());
    if declares_body {
        metrics::counter!(REJECTIONS, "reason" => "too_large").increment(1);
        return Err(ApiError::PayloadTooLarge);
    }
    Ok(())
}
