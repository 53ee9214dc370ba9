//! Errors, typed after the API's `error_type`.

use std::time::Duration;

/// The API's `error_type`, as the server names it in every error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// 400: the request is malformed (an invalid id, an unknown parameter).
    BadRequest,
    /// 401: no valid credentials.
    Unauthorized,
    /// 403: the principal may not do this to this id.
    Forbidden,
    /// 403: an anonymous request to a host the server does not serve anonymously.
    HostNotAllowed,
    /// 404: no such key, version or endpoint.
    NotFound,
    /// 409: the change conflicts with the key's state (a concurrent rotation; too many
    /// versions).
    Conflict,
    /// 410: the key is scheduled for deletion.
    KeyPendingDeletion,
    /// 410: the key was deleted.
    KeyDeleted,
    /// 429: rate limited.
    TooManyRequests,
    /// 503: not enough KMS regions, or the store, answered.
    ServiceUnavailable,
    /// 500: the key's record failed its integrity check.
    IntegrityFailure,
    /// 500: anything else that went wrong in the server.
    InternalError,
    /// An `error_type` this client does not know.
    Other(String),
}

impl ErrorKind {
    pub(crate) fn parse(error_type: &str) -> Self {
        match error_type {
            "BadRequest" => Self::BadRequest,
            "Unauthorized" => Self::Unauthorized,
            "Forbidden" => Self::Forbidden,
            "HostNotAllowed" => Self::HostNotAllowed,
            "NotFound" => Self::NotFound,
            "Conflict" => Self::Conflict,
            "KeyPendingDeletion" => Self::KeyPendingDeletion,
            "KeyDeleted" => Self::KeyDeleted,
            "TooManyRequests" => Self::TooManyRequests,
            "ServiceUnavailable" => Self::ServiceUnavailable,
            "IntegrityFailure" => Self::IntegrityFailure,
            "InternalError" => Self::InternalError,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl ErrorKind {
    /// The HTTP status the API answers this error with (0 for an unknown `error_type`): what
    /// [`Error::Api`] carries for an error that came over gRPC.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden | Self::HostNotAllowed => 403,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::KeyPendingDeletion | Self::KeyDeleted => 410,
            Self::TooManyRequests => 429,
            Self::IntegrityFailure | Self::InternalError => 500,
            Self::ServiceUnavailable => 503,
            Self::Other(_) => 0,
        }
    }
}

/// Why a call failed. Never holds key material.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A server answered with an API error.
    #[error("{kind:?} ({status}): {message}")]
    Api {
        /// The HTTP status (over gRPC, the one the HTTP API answers the error with).
        status: u16,
        /// The `error_type`.
        kind: ErrorKind,
        /// The `error_message`.
        message: String,
    },
    /// No server gave an answer within the attempts: each was unreachable or unavailable.
    #[error(
        "no RKMS server answered after {attempts} attempts over {elapsed:?}; the last: {last}"
    )]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// What the last attempt got.
        last: String,
    },
    /// A server answered with something that is not the API's answer.
    #[error("the server's answer is not understood: {0}")]
    InvalidResponse(String),
    /// The client's own settings are wrong (a URL, a certificate).
    #[error("invalid client settings: {0}")]
    Config(String),
    /// An argument cannot make a valid request (version 0).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// The API error's kind, if a server answered with one.
    pub fn kind(&self) -> Option<&ErrorKind> {
        match self {
            Self::Api { kind, .. } => Some(kind),
            _ => None,
        }
    }
}
