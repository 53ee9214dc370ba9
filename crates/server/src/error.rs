//! `ApiError`: the one JSON error shape of the HTTP API, `{"error_type", "error_message"}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rkms_core::ServiceError;
use serde::Serialize;
use tracing::error;

/// An error answer. Messages are for clients: they never hold key material, and the details
/// of a 5xx go to the log instead.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed (missing or invalid id, ...).
    BadRequest(String),
    /// 404: no such path.
    NotFound,
    /// 405: the path exists but not for this method.
    MethodNotAllowed,
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
        error!(error = %error, "key request failed");
        match error.root() {
            ServiceError::CorruptRecord { id, .. } => Self::Internal(format!(
                "the stored record for id {id:?} is unreadable; the server log has the details"
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

    /// The `error_type` a protocol failure is answered with, without logging it.
    pub fn kind_of(error: &ServiceError) -> &'static str {
        if error.is_unavailable() {
            "ServiceUnavailable"
        } else {
            "InternalError"
        }
    }

    fn parts(&self) -> (StatusCode, &str, &str) {
        match self {
            Self::BadRequest(message) => (StatusCode::BAD_REQUEST, "BadRequest", message),
            Self::NotFound => (StatusCode::NOT_FOUND, "NotFound", "no such endpoint"),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "method not allowed for this endpoint",
            ),
            Self::Unavailable(message) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                message,
            ),
            Self::Internal(message) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
            }
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
                error_message,
            }),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}
