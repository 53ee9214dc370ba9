//! Limits on what one request or connection may use, and the check that answers an oversized
//! request with a JSON error before anything reads it.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;
use crate::telemetry::REJECTIONS;

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
    /// Open connections at once; more wait in the listen queue.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_uri_bytes: 4096,
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

impl Limits {
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
    State(limits): State<Limits>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
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
    Ok(next.run(request).await)
}

/// Refuses a request with a body: no endpoint takes one, and none is read.
pub async fn refuse_body(request: Request, next: Next) -> Result<Response, ApiError> {
    let headers = request.headers();
    let declares_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0");
    if declares_body {
        metrics::counter!(REJECTIONS, "reason" => "too_large").increment(1);
        return Err(ApiError::PayloadTooLarge);
    }
    Ok(next.run(request).await)
}
