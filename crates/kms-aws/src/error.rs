//! AWS KMS errors, normalised into the core's `KmsError`.

use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use rkms_core::KmsError;

/// Error codes meaning "this region cannot serve right now", as opposed to a refusal.
const UNAVAILABLE_CODES: [&str; 4] = [
    "ThrottlingException",
    "KMSInternalException",
    "DependencyTimeoutException",
    "LimitExceededException",
];

pub(crate) fn from_sdk<E>(region: &str, error: SdkError<E, HttpResponse>) -> KmsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let unavailable = |message: String| KmsError::Unavailable {
        region: region.to_owned(),
        message,
    };
    match &error {
        SdkError::TimeoutError(_) => unavailable("no answer within the operation timeout".into()),
        SdkError::DispatchFailure(failure) => {
            let kind = if failure.is_timeout() {
                "connect timeout"
            } else if failure.is_io() {
                "connection failed"
            } else {
                "request could not be sent"
            };
            unavailable(format!(
                "{kind}: {}",
                aws_sdk_kms::error::DisplayErrorContext(&error)
            ))
        }
        SdkError::ServiceError(service) => {
            let code = error.code().unwrap_or("UnknownError");
            let message = format!("{code}: {}", error.message().unwrap_or("no message"));
            if service.raw().status().is_server_error() || UNAVAILABLE_CODES.contains(&code) {
                unavailable(message)
            } else {
                KmsError::Refused {
                    region: region.to_owned(),
                    message,
                }
            }
        }
        SdkError::ConstructionFailure(_) => KmsError::Refused {
            region: region.to_owned(),
            message: format!(
                "request could not be built: {}",
                aws_sdk_kms::error::DisplayErrorContext(&error)
            ),
        },
        _ => unavailable(format!(
            "{}",
            aws_sdk_kms::error::DisplayErrorContext(&error)
        )),
    }
}
