//! `ApiError`: the one error of both front ends: the HTTP API's JSON shape,
//! `{"error_type", "error_message"}`, and the gRPC status, from one table.

use std::borrow::Cow;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rkms_core::{ServiceError, StoreError};
use serde::Serialize;
use tonic::metadata::MetadataValue;
use tonic::Code;
use tracing::{debug, error};

use crate::auth::AuthError;

/// An error answer. Messages are for clients: they never hold key material, and the details
/// of a 5xx go to the log instead.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed (missing or invalid id, ...).
    BadRequest(String),
    /// 401: no valid credentials.
    Unauthorized(String),
    /// 403: the principal may not do this.
    Forbidden(String),
    /// 403: a request without credentials addressed to a host anonymous callers may not use.
    HostNotAllowed(String),
    /// 413: a request body; no endpoint takes one.
    PayloadTooLarge,
    /// 414: the path and query are longer than this many bytes.
    UriTooLong(usize),
    /// 429: the principal's rate limit is spent; retry after this long.
    TooManyRequests(Duration),
    /// 429: the client address failed to authenticate too often; retry after this long.
    TooManyFailures(Duration),
    /// 429: the client address spent its budget of health checks; retry after this long.
    TooManyProbes(Duration),
    /// 431: the headers are larger than this many bytes.
    HeadersTooLarge(usize),
    /// 404: no such path.
    NotFound,
    /// 404: no key, or no such version, for the id (operations that never create).
    KeyNotFound(String),
    /// 409: the change conflicts with the id's record (a concurrent rotation won; retry).
    Conflict(String),
    /// 410: the id's deletion is scheduled; no key is handed out until it is restored.
    KeyPendingDeletion(String),
    /// 410: the id was deleted, for good.
    KeyDeleted(String),
    /// 405: the path exists but not for this method; these are the methods it takes.
    MethodNotAllowed(&'static str),
    /// 503: no region or the store can serve right now; retry later.
    Unavailable(String),
    /// 500: something is wrong on the server's side.
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error_type: &'a str,
    error_message: &'a str,
}

impl ApiError {
    /// Maps a protocol failure to an answer, logging the details.
    pub fn from_service(error: &ServiceError) -> Self {
        let answer = Self::from_service_quietly(error);
        if answer.parts().0.is_server_error() {
            error!(error = %error, "key request failed");
        } else {
            debug!(error = %error, "key request refused");
        }
        answer
    }

    fn from_service_quietly(error: &ServiceError) -> Self {
        match error.root() {
            ServiceError::NotFound { id } => {
                Self::KeyNotFound(format!("no key exists for id {:?}", id.as_str()))
            }
            ServiceError::VersionNotFound { id, version } => {
                Self::KeyNotFound(format!("id {:?} has no version {version}", id.as_str()))
            }
            ServiceError::Conflict { .. } => Self::Conflict(error.root().to_string()),
            ServiceError::PendingDeletion { id, deletion_time } => {
                Self::KeyPendingDeletion(format!(
                    "the key for id {:?} is pending deletion at {}; restore it to use it again",
                    id.as_str(),
                    rfc3339(*deletion_time)
                ))
            }
            ServiceError::Deleted { id, deleted_at } => Self::KeyDeleted(format!(
                "the key for id {:?} was deleted at {}; the id is never used again",
                id.as_str(),
                rfc3339(*deleted_at)
            )),
            ServiceError::Store(StoreError::InvalidCursor { .. }) => {
                Self::BadRequest("the list cursor was not issued by this service".into())
            }
            ServiceError::CorruptRecord { id, .. } => Self::Internal(format!(
                "the stored record for id {id:?} is unreadable; the server log has the details"
            )),
            ServiceError::IntegrityFailure { id, .. } => Self::Internal(format!(
                "the stored record for id {id:?} failed its integrity check: every KMS region that \
                 answered refused its copies; no key was handed out"
            )),
            ServiceError::KeyChanged { id } => Self::Internal(format!(
                "the stored record for id {id:?} failed its integrity check: it holds another key \
                 than the one this server had; no key was handed out"
            )),
            ServiceError::NoCopyForConfiguredRegions { id, .. } => Self::Internal(format!(
                "the stored record for id {id:?} has no copy for any configured KMS region"
            )),
            ServiceError::RegionsUnavailable { id, action, .. } => Self::Unavailable(format!(
                "no KMS region could {action} the data key for id {id:?}; retry later"
            )),
            ServiceError::StoreTimeout(_) => {
                Self::Unavailable("the key store did not answer in time; retry later".into())
            }
            ServiceError::DeadlineExceeded(limit) => Self::Unavailable(format!(
                "the request did not complete within {limit:?}; retry later"
            )),
            other if other.is_unavailable() => {
                Self::Unavailable("the key store is unavailable; retry later".into())
            }
            _ => Self::Internal("internal error; the server log has the details".into()),
        }
    }

    /// The audit outcome of a protocol failure: the `error_type` it is answered with, or
    /// `IntegrityFailure` for a record every region refused, which is answered as an
    /// `InternalError` but audited on its own.
    pub fn kind_of(error: &ServiceError) -> &'static str {
        match error.root() {
            ServiceError::IntegrityFailure { .. } | ServiceError::KeyChanged { .. } => {
                "IntegrityFailure"
            }
            _ if error.is_unavailable() => "ServiceUnavailable",
            ServiceError::NotFound { .. }
            | ServiceError::VersionNotFound { .. }
            | ServiceError::Conflict { .. }
            | ServiceError::PendingDeletion { .. }
            | ServiceError::Deleted { .. }
            | ServiceError::Store(StoreError::InvalidCursor { .. }) => {
                Self::from_service_quietly(error).parts().1
            }
            _ => "InternalError",
        }
    }

    /// The status and JSON body this error is answered with, for callers that print it.
    pub fn status_and_body(&self) -> (StatusCode, serde_json::Value) {
        let (status, error_type, error_message) = self.parts();
        (
            status,
            serde_json::json!({ "error_type": error_type, "error_message": error_message }),
        )
    }

    /// Its `error_type`, as answered and as the request metrics label it.
    pub fn error_type(&self) -> &'static str {
        self.parts().1
    }

    /// The HTTP status, `error_type` and message answered, and the gRPC code, all from one
    /// table so that the front ends cannot drift apart (the table in README, "gRPC").
    fn parts(&self) -> (StatusCode, &'static str, Cow<'_, str>) {
        let (status, error_type, message, _) = self.answer();
        (status, error_type, message)
    }

    /// The gRPC status this error is answered with over gRPC: the code of the table, the
    /// message, and the `error_type` in `rkms-error-type` (and `retry-after`, in seconds,
    /// where a wait is known).
    pub fn into_status(self) -> tonic::Status {
        let (_, error_type, message, code) = self.answer();
        let mut status = tonic::Status::new(code, message);
        let metadata = status.metadata_mut();
        metadata.insert("rkms-error-type", MetadataValue::from_static(error_type));
        if let Some(wait) = self.retry_after() {
            metadata.insert("retry-after", MetadataValue::from(wait));
        }
        status
    }

    /// Whole seconds to wait before retrying, where the error says.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::TooManyRequests(wait)
            | Self::TooManyFailures(wait)
            | Self::TooManyProbes(wait) => {
                Some((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1))
            }
            _ => None,
        }
    }

    fn answer(&self) -> (StatusCode, &'static str, Cow<'_, str>, Code) {
        match self {
            Self::BadRequest(message) => (
                StatusCode::BAD_REQUEST,
                "BadRequest",
                message.into(),
                Code::InvalidArgument,
            ),
            Self::Unauthorized(message) => (
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                message.into(),
                Code::Unauthenticated,
            ),
            Self::Forbidden(message) => (
                StatusCode::FORBIDDEN,
                "Forbidden",
                message.into(),
                Code::PermissionDenied,
            ),
            Self::HostNotAllowed(message) => (
                StatusCode::FORBIDDEN,
                "HostNotAllowed",
                message.into(),
                Code::PermissionDenied,
            ),
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                "NotFound",
                "no such endpoint".into(),
                Code::Unimplemented,
            ),
            Self::KeyNotFound(message) => (
                StatusCode::NOT_FOUND,
                "NotFound",
                message.into(),
                Code::NotFound,
            ),
            Self::Conflict(message) => (
                StatusCode::CONFLICT,
                "Conflict",
                message.into(),
                Code::Aborted,
            ),
            Self::KeyPendingDeletion(message) => (
                StatusCode::GONE,
                "KeyPendingDeletion",
                message.into(),
                Code::FailedPrecondition,
            ),
            Self::KeyDeleted(message) => (
                StatusCode::GONE,
                "KeyDeleted",
                message.into(),
                Code::FailedPrecondition,
            ),
            Self::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "method not allowed for this endpoint".into(),
                Code::Unimplemented,
            ),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLarge",
                "requests to this API take no body".into(),
                Code::ResourceExhausted,
            ),
            Self::UriTooLong(limit) => (
                StatusCode::URI_TOO_LONG,
                "UriTooLong",
                format!("the path and query string are longer than {limit} bytes").into(),
                Code::ResourceExhausted,
            ),
            Self::TooManyRequests(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "rate limit exceeded for this principal; retry after the Retry-After delay".into(),
                Code::ResourceExhausted,
            ),
            Self::TooManyFailures(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "too many failed authentications from this client address; retry after the \
                 Retry-After delay"
                    .into(),
                Code::ResourceExhausted,
            ),
            Self::TooManyProbes(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "too many health checks from this client address; retry after the Retry-After \
                 delay"
                    .into(),
                Code::ResourceExhausted,
            ),
            Self::HeadersTooLarge(limit) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "HeadersTooLarge",
                format!("the request headers are larger than {limit} bytes").into(),
                Code::ResourceExhausted,
            ),
            Self::Unavailable(message) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                message.into(),
                Code::Unavailable,
            ),
            Self::Internal(message) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                message.into(),
                Code::Internal,
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error_type, error_message) = self.parts();
        let mut response = (
            status,
            Json(ErrorBody {
                error_type,
                error_message: &error_message,
            }),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            Self::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"rkms\""),
                );
            }
            Self::MethodNotAllowed(allow) => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        if let Some(seconds) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// `seconds` since the Unix epoch as an RFC 3339 time in UTC, as the API writes times.
pub fn rfc3339(seconds: u64) -> String {
    i64::try_from(seconds)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{seconds}"))
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::TooManyFailures(wait) => Self::TooManyFailures(wait),
            AuthError::HostNotAllowed => Self::HostNotAllowed(error.to_string()),
            other => Self::Unauthorized(other.to_string()),
        }
    }
}
