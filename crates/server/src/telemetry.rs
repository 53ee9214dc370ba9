//! Metric names the server's own modules record, kept below them all so that the modules
//! that count a rejection or an audit sync need not import each other. The core's metrics
//! are named in `rkms_core::telemetry`.

/// Requests refused by authentication, authorization, limits or the TLS handshake, labelled
/// by `reason`.
pub const REJECTIONS: &str = "rkms_http_rejections_total";
