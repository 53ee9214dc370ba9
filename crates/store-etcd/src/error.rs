//! etcd's native errors, normalised into the core's `StoreError`.

use etcd_tonic::Code;
use rkms_core::StoreError;

pub(crate) const STORE: &str = "etcd";

/// gRPC codes meaning "the cluster cannot serve right now": retry later.
const UNAVAILABLE_CODES: [Code; 5] = [
    Code::Unavailable,
    Code::DeadlineExceeded,
    Code::ResourceExhausted,
    Code::Aborted,
    Code::Cancelled,
];

pub(crate) fn from_etcd(error: etcd_client::Error) -> StoreError {
    let unavailable = match &error {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => {
            UNAVAILABLE_CODES.contains(&status.code()) || carries_transport_error(status)
        }
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable {
            store: STORE,
            source: Box::new(error),
        }
    } else {
        StoreError::Other {
            store: STORE,
            source: Box::new(error),
        }
    }
}

/// A connection cut mid-call surfaces as status `Unknown` wrapping the transport's error.
fn carries_transport_error(status: &etcd_tonic::Status) -> bool {
    std::error::Error::source(status).is_some_and(|source| {
        source
            .downcast_ref::<etcd_tonic::transport::Error>()
            .is_some()
    })
}
