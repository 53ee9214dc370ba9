//! Settings of one AWS KMS region.

use std::time::Duration;

/// Settings of one [`crate::AwsKms`] region. See the crate documentation for the timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsKmsConfig {
    /// The AWS region, e.g. `us-east-1`.
    pub region: String,
    /// The master key: key id, key ARN or `alias/...`.
    pub key_id: String,
    /// Master keys the region wrapped under before `key_id`, which it may still decrypt
    /// under until every copy is wrapped again (`Kms::previous_master_keys`).
    pub previous_key_ids: Vec<String>,
    /// An endpoint URL to use instead of the region's public one.
    pub endpoint: Option<String>,
    /// Longest wait to establish a connection (default 1 s).
    pub connect_timeout: Duration,
    /// Longest a whole call may take, retries included (default 2 s).
    pub operation_timeout: Duration,
    /// Attempts per call, the first included (default 2).
    pub max_attempts: u32,
}

impl AwsKmsConfig {
    /// Defaults for `key_id` in `region`.
    pub fn new(region: impl Into<String>, key_id: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            key_id: key_id.into(),
            previous_key_ids: Vec::new(),
            endpoint: None,
            connect_timeout: Duration::from_secs(1),
            operation_timeout: Duration::from_secs(2),
            max_attempts: 2,
        }
    }
}
