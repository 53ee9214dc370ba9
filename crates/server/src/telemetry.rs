//! Metric names the server's own modules record, kept below them all so that the modules
//! that count a rejection or an audit sync need not import each other. The core's metrics
//! are named in `rkms_core::telemetry`.

/// Requests refused by authentication, authorization, limits or the TLS handshake, labelled
/// by `reason`.
pub const REJECTIONS: &str = "rkms_http_rejections_total";
/// Audit log fsyncs (`[audit] sync = "always"`); each covers every line written before it
/// started, so under load there are fewer fsyncs than lines.
pub const AUDIT_SYNCS: &str = "rkms_audit_syncs_total";
/// Duration of audit log fsyncs, in seconds.
pub const AUDIT_SYNC_SECONDS: &str = "rkms_audit_sync_seconds";
/// Audit lines that could not be written; each failed its request (no key was handed out,
/// or a change made is answered 500).
pub const AUDIT_WRITE_FAILURES: &str = "rkms_audit_write_failures_total";
/// Keys created, labelled by the `principal` that created them (a bounded, configured set).
pub const KEYS_CREATED: &str = "rkms_keys_created_total";
/// Key operations answered, labelled by `operation`, `transport` (`http`, `grpc`, `command`)
/// and `outcome` (`ok`, or the `error_type` answered).
pub const REQUESTS: &str = "rkms_requests_total";
/// Duration of key operations, in seconds, labelled by `operation` and `transport`.
pub const REQUEST_SECONDS: &str = "rkms_request_seconds";

/// Exports the server's counters of rare events at zero from start (see
/// [`rkms_core::telemetry::export_from_start`]): audit write failures and the rejections the
/// alerts watch.
pub fn export_from_start() {
    metrics::counter!(AUDIT_WRITE_FAILURES).increment(0);
    for reason in [
        "rate_limited",
        "create_rate_limited",
        "probe_rate_limited",
        "too_many_failures",
    ] {
        metrics::counter!(REJECTIONS, "reason" => reason).increment(0);
    }
}

/// How often [`keep_up`] folds the histogram samples recorded since into their buckets.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every `every`, until aborted. The
/// Prometheus recorder keeps each sample until a scrape or an upkeep folds it in, so without
/// this a server nobody scrapes grows by every request's duration (8 bytes and more a
/// sample, some 400 KB a second at 50,000 requests a second).
pub async fn keep_up(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    every: std::time::Duration,
) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        handle.run_upkeep();
    }
}
