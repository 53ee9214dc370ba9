//! AWS KMS errors, normalised into the core's `KmsError`.

use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use rkms_core::KmsError;

/// Error codes meaning "this ciphertext does not open here": the wrong encryption context,
/// another master key, damaged bytes. Only these are refusals, which the core reads as a
/// record failing its integrity check. Every other error (throttling, a missing, disabled or
/// pending-deletion key, denied access, expired credentials, a request that cannot be built)
/// means this region cannot serve right now: an outage, which may end.
const REFUSAL_CODES: [&str; 3] = [
    "InvalidCiphertextException",
    "IncorrectKeyException",
    "InvalidKeyUsageException",
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
        SdkError::ServiceError(_) => {
            let code = error.code().unwrap_or("UnknownError");
            let message = format!("{code}: {}", error.message().unwrap_or("no message"));
            if REFUSAL_CODES.contains(&code) {
                KmsError::Refused {
                    region: region.to_owned(),
                    message,
                }
            } else {
                unavailable(message)
            }
        }
        SdkError::ConstructionFailure(_) => unavailable(format!(
            "request could not be built: {}",
            aws_sdk_kms::error::DisplayErrorContext(&error)
        )),
        _ => unavailable(format!(
            "{}",
            aws_sdk_kms::error::DisplayErrorContext(&error)
        )),
    }
}
