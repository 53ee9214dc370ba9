//! AWS KMS errors, normalised into the core's `KmsError`.

use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use rkms_core::KmsError;

/// Error codes meaning "this ciphertext does not open here": the wrong encryption context,
/// another master key, damaged bytes. Only these are refusals, which the core reads as a
/// record failing its integrity check. Throttling is its own kind (below). Every other error
/// (a missing, disabled or pending-deletion key, denied access, expired credentials, a request
/// that cannot be built) means this region cannot serve right now: an outage, which may end.
const REFUSAL_CODES: [&str; 3] = [
    "InvalidCiphertextException",
    "IncorrectKeyException",
    "InvalidKeyUsageException",
];

/// Error codes meaning "your request quota is spent". The SDK has already retried these with
/// backoff; the core falls back to another region without counting it against this one.
const THROTTLING_CODES: [&str; 4] = [
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
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
            } else if THROTTLING_CODES.contains(&code) {
                KmsError::Throttled {
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

#[cfg(test)]
mod tests {
    use aws_sdk_kms::config::http::HttpResponse;
    use aws_sdk_kms::error::{ErrorMetadata, SdkError};
    use aws_sdk_kms::operation::decrypt::DecryptError;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    fn service_error(code: &str) -> KmsError {
        let error =
            DecryptError::generic(ErrorMetadata::builder().code(code).message("said").build());
        let response = HttpResponse::new(400.try_into().unwrap(), SdkBody::empty());
        from_sdk("r1", SdkError::service_error(error, response))
    }

    #[test]
    fn throttling_is_its_own_kind_and_refusals_and_outages_keep_theirs() {
        assert!(matches!(
            service_error("ThrottlingException"),
            KmsError::Throttled { .. }
        ));
        assert!(matches!(
            service_error("InvalidCiphertextException"),
            KmsError::Refused { .. }
        ));
        assert!(matches!(
            service_error("KMSInternalException"),
            KmsError::Unavailable { .. }
        ));
    }
}
