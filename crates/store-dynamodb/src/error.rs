//! DynamoDB's native errors, normalised into the core's `StoreError`.

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use rkms_core::StoreError;

pub(crate) const STORE: &str = "dynamodb";

/// The error code of a failed condition: another writer got there first.
pub(crate) const CONDITIONAL_CHECK_FAILED: &str = "ConditionalCheckFailedException";

/// Error codes meaning "cannot serve right now": retry later.
const UNAVAILABLE_CODES: [&str; 5] = [
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
];

/// The service's error code, if the service answered with one.
pub(crate) fn code<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> Option<&str> {
    match error {
        SdkError::ServiceError(_) => error.code(),
        _ => None,
    }
}

pub(crate) fn from_sdk<E>(error: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let unavailable = match &error {
        SdkError::ServiceError(service) => {
            service.raw().status().is_server_error()
                || error.code().is_some_and(|c| UNAVAILABLE_CODES.contains(&c))
        }
        SdkError::ConstructionFailure(_) => false,
        _ => true,
    };
    let source = match (&error, error.code()) {
        (SdkError::ServiceError(_), Some(code)) => {
            format!("{code}: {}", error.message().unwrap_or("no message"))
        }
        _ => DisplayErrorContext(&error).to_string(),
    }
    .into();
    if unavailable {
        StoreError::Unavailable {
            store: STORE,
            source,
        }
    } else {
        StoreError::Other {
            store: STORE,
            source,
        }
    }
}
