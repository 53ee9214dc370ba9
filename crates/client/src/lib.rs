//! `rkms-client`: an async client for RKMS, for any tokio application: over the HTTP API by
//! default, or over gRPC with the `grpc` feature ([`ClientBuilder::grpc`]).
//!
//! - **Failover:** give it several server URLs. A request goes to the server that answered
//!   last; a server that cannot be reached, or answers 503, 502, 504 or 429, is passed over
//!   for the next, with jittered exponential backoff between rounds (`Retry-After` is
//!   honoured). Any other 4xx is the answer, never retried.
//! - **Only safe retries:** a rotation is sent again only when it cannot have reached a
//!   server (the connection was never made) or was rate limited (429); every other
//!   operation is idempotent.
//! - **Credentials:** a bearer token, a client certificate, or both; TLS by rustls, with
//!   extra trusted roots for a private CA.
//! - **Cache** (optional): keys kept in memory for a TTL, zeroized when they leave it.
//! - **Typed:** every operation returns a typed answer, and every API error its
//!   `error_type` as an [`ErrorKind`].

mod call;
mod client;
mod error;
#[cfg(feature = "grpc")]
mod grpc;
mod http;
mod model;

pub use client::{Client, ClientBuilder};
pub use error::{Error, ErrorKind};
pub use model::{Key, KeyInfo, KeyListing, KeyState, ListedKey, VersionInfo};
