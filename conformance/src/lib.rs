//! One behaviour suite that every RKMS [`Store`] must pass.
//!
//! A backend author implements [`Backend`] (fresh, isolated namespaces) and invokes
//! [`conformance_suite!`] once in a test file; the macro expands to one named `#[tokio::test]`
//! per case, so a failure reads `conformance::first_write_wins` and one case runs alone with
//! `cargo test first_write_wins`. For the in-memory store:
//!
//! ```text
//! rkms_conformance::conformance_suite!(in_process: memory_backend);
//! ```
//!
//! Network backends also implement [`NetworkBackend`] and use `conformance_suite!(backend)`,
//! which adds the case that puts a proxy in front of the service and takes it away. Backends
//! that can be written past the `Store` API (every one but the in-memory store) implement
//! [`NativeBackend`]; network backends must, and an in-process one opts in with
//! `conformance_suite!(in_process, native: backend)`.
//!
//! [`services::endpoint`] finds a test service: from an environment variable, else from a
//! container started with testcontainers where a Docker engine is available, else it fails
//! with how to start the service. No case is ever skipped silently.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use rkms_core::Store;

pub mod cases;
mod lifecycle;
mod model;
pub mod proxy;
pub mod services;

/// A store backend under test.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Creates a fresh, empty namespace (prefix, table, schema or file) no other case sees.
    async fn namespace(&self) -> Box<dyn Namespace>;
}

/// One isolated namespace of a backend.
#[async_trait]
pub trait Namespace: Send + Sync {
    /// Opens a new client with its own connections on this namespace.
    async fn connect(&self) -> Arc<dyn Store>;

    /// Removes everything the namespace holds.
    async fn cleanup(self: Box<Self>);
}

/// A backend reached over the network, which the suite can take away.
#[async_trait]
pub trait NetworkBackend: Backend {
    /// The service's address, for a proxy to forward to.
    fn service_addr(&self) -> SocketAddr;

    /// Creates a fresh namespace whose clients reach the service through `via` instead of
    /// directly. Clients must be configured with short timeouts (a few seconds at most), so that
    /// a service that stops answering gives `StoreError::Unavailable` rather than a hang.
    async fn namespace_via(&self, via: SocketAddr) -> Box<dyn Namespace>;
}

/// A backend the suite can also write with its native client, past the `Store` API, as anyone
/// holding the store's credentials (an operator, an old tool, an attacker) can.
#[async_trait]
pub trait NativeBackend: Backend {
    /// Creates a fresh namespace (as [`Backend::namespace`]) holding a record under each of
    /// `raw_ids`, written with the backend's native client, so not checked against the id rules.
    async fn namespace_with_raw_ids(&self, raw_ids: &[&str]) -> Box<dyn Namespace>;
}

/// A name no other namespace of this run or of another run uses: `<prefix><pid>_<nanos>_<n>`,
/// lower-case letters, digits and `_`, so it is valid as a schema, table or key prefix.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}_{nanos}_{n}", std::process::id())
}

/// Expands to one `#[tokio::test]` per conformance case for the backend that `$factory`
/// (an `async fn() -> impl Backend`) returns.
///
/// `conformance_suite!(factory)` needs a [`NetworkBackend`] and a [`NativeBackend`] and
/// includes the unavailability and native-write cases; `conformance_suite!(in_process: factory)`
/// leaves both out for stores with no network, and `conformance_suite!(in_process, native:
/// factory)` adds the native-write cases back.
#[macro_export]
macro_rules! conformance_suite {
    (in_process, native: $factory:path) => {
        $crate::conformance_suite!(in_process: $factory);
        $crate::conformance_suite!(@cases $factory; list_skips_ids_that_fail_the_id_rules);
    };
    (in_process: $factory:path) => {
        $crate::conformance_suite!(@cases $factory;
            missing_id_reads_as_none,
            first_write_wins,
            racing_creators_through_separate_connections_have_one_winner,
            compare_and_swap_needs_the_current_version,
            compare_and_swap_on_a_missing_id_fails,
            concurrent_increments_by_compare_and_swap_all_land,
            delete_removes_the_record,
            a_recreated_id_never_reuses_a_version,
            namespaces_never_see_each_others_ids,
            ids_at_the_limits_round_trip,
            list_pages_through_every_id_once,
            list_cursors_round_trip_and_malformed_ones_are_refused,
            random_operations_match_a_reference_model,
            lifecycle_matches_a_reference_model
        );
    };
    ($factory:path) => {
        $crate::conformance_suite!(in_process, native: $factory);
        $crate::conformance_suite!(@cases $factory; an_unreachable_service_is_unavailable_not_a_hang);
    };
    (@cases $factory:path; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let backend = $factory().await;
                $crate::cases::$case(&backend).await;
            }
        )+
    };
}
