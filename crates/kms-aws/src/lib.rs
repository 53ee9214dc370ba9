//! RKMS KMS regions on AWS KMS, through the official `aws-sdk-kms`.
//!
//! [`AwsKms`] implements the core's [`rkms_core::Kms`] for one region and one master key (key
//! id, key ARN or alias). Every call carries the encryption context, and `Decrypt` names the
//! expected master key, so a copy wrapped under any other key is refused by KMS itself.
//!
//! # Failing over fast
//!
//! RKMS's own fallback to the next region is the retry that matters, so each region's client
//! is set to give up quickly rather than retry slowly:
//!
//! - `connect_timeout` (default 1 s): a region whose endpoint refuses or drops connections
//!   costs at most this much.
//! - `operation_timeout` (default 2 s): the whole call, retries included. A region that accepts
//!   connections and never answers costs at most this much.
//! - `max_attempts` (default 2): one retry, for a dropped connection or a throttled call, still
//!   inside `operation_timeout`. The SDK's default of 3 attempts with backoff would make a dead
//!   region cost several timeouts before the next region is tried.
//!
//! Credentials come from the standard AWS provider chain (environment, profile, web identity,
//! container and instance metadata). Endpoints can be overridden per region for VPC endpoints,
//! FIPS endpoints or emulators.

mod config;
mod error;
mod kms;

pub use config::AwsKmsConfig;
pub use kms::AwsKms;
