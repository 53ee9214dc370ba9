//! Settings of the etcd store.

use std::time::Duration;

/// Settings of an [`crate::EtcdStore`].
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client endpoints, e.g. `["http://10.0.0.1:2379", "http://10.0.0.2:2379"]`.
    pub endpoints: Vec<String>,
    /// Prefix of every key this store writes (default `rkms/`); non-empty ASCII.
    pub prefix: String,
    /// Longest one store call may take (default 2 s).
    pub operation_timeout: Duration,
    /// Longest wait to connect to an endpoint (default 1 s).
    pub connect_timeout: Duration,
}

impl EtcdConfig {
    /// Defaults for the cluster at `endpoints`.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: "rkms/".into(),
            operation_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
        }
    }
}
