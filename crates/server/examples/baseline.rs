//! The ceiling for RKMS's cached GET, for `scripts/bench.sh`: the server's own connection loop
//! and HTTP stack (`rkms_server::serve` with its default limits, axum), answering
//! `GET /api/v1/key` with the same bytes RKMS answers for id `hot` (a 32-byte key, version 1,
//! an `x-request-id` of the same length), with no authentication, cache, audit line or metrics.
//!
//! With `--append FILE` each answer first appends a line of `--line-bytes` bytes (newline
//! included; default 307, RKMS's audit line for that GET by principal `bench`) to FILE with
//! one `O_APPEND` write(2) on the worker, as an RKMS request whose line finds no write under
//! way does: the ceiling for a server that hands the operating system a line a request so.
//!
//! With `--audit FILE` each answer first records RKMS's own audit line for that GET through
//! RKMS's audit log (`rkms_server::audit::AuditLog`, `sync = "os"`: the line's JSON, its chain
//! hash, the log's lock and queue, and its write): the audit line's whole cost, apart from
//! authentication and the key operation.
//!
//! `cargo run --release -p rkms-server --example baseline -- [ADDR] [--append FILE
//! [--line-bytes N]] [--audit FILE]` (default address 127.0.0.1:0); prints `baseline listening
//! addr=ADDR` once it accepts.

use axum::http::header::{HeaderName, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rkms_server::audit::{AuditEvent, AuditLog, AuditSync, AuditTarget};
use rkms_server::limits::Limits;
use rkms_server::serve::serve;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::OnceLock;

/// What RKMS answers for `hot` (key bytes aside), so both send the same response.
const ANSWER: &str =
    r#"{"id":"hot","key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","version":1}"#;

/// RKMS's answer carries its request id (16 hex digits) under this name, as its audit line does.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const REQUEST_ID_VALUE: &str = "0123456789abcdef";

/// The length of RKMS's audit line for a GET of `hot` by principal `bench`, newline included.
const DEFAULT_LINE_BYTES: usize = 307;

/// The file `--append` names, and the line each answer appends to it.
static APPEND: OnceLock<(File, Vec<u8>)> = OnceLock::new();

/// The audit log `--audit` names.
static AUDIT: OnceLock<AuditLog> = OnceLock::new();

/// RKMS's audit event for a cached GET of `hot` by principal `bench`.
const EVENT: AuditEvent<'static> = AuditEvent {
    request_id: REQUEST_ID_VALUE,
    transport: "http",
    principal: "bench",
    operation: "get",
    id: "hot",
    outcome: "ok",
    region: Some("local-1"),
    version: Some(1),
    cache_hit: true,
    created: false,
    stale: false,
};

/// A line that could not be written is answered 500, as RKMS answers it, so that a server
/// writing nothing (a full disk) fails wrk's count of non-2xx answers instead of running faster.
fn failed(what: &str, error: &std::io::Error) -> Response {
    eprintln!("{what} failed: {error}");
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}

fn usage(flag: &str) -> std::io::Error {
    std::io::Error::other(format!(
        "{flag}: usage: baseline [ADDR] [--append FILE [--line-bytes N]] [--audit FILE]"
    ))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:0".to_string();
    let mut append = None;
    let mut line_bytes = DEFAULT_LINE_BYTES;
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| usage(&arg));
        match arg.as_str() {
            "--append" => append = Some(value()?),
            "--audit" => {
                let log = AuditLog::open(&AuditTarget::File(value()?.into()), AuditSync::Os)?;
                AUDIT.set(log).map_err(|_| usage(&arg))?;
            }
            "--line-bytes" => {
                line_bytes = value()?
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| usage(&arg))?;
            }
            _ => addr = arg,
        }
    }
    if let Some(path) = append {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        let mut line = vec![b'x'; line_bytes - 1];
        line.push(b'\n');
        let _ = APPEND.set((file, line));
    }
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("baseline listening addr={}", listener.local_addr()?);
    let app = Router::new().route(
        "/api/v1/key",
        get(|| async {
            if let Some((file, line)) = APPEND.get() {
                if let Err(e) = (&*file).write_all(line) {
                    return failed("append", &e);
                }
            }
            if let Some(log) = AUDIT.get() {
                if let Err(e) = log.record(&EVENT).await {
                    return failed("audit", &e);
                }
            }
            (
                [
                    (CONTENT_TYPE, "application/json"),
                    (CACHE_CONTROL, "no-store"),
                    (REQUEST_ID, REQUEST_ID_VALUE),
                ],
                ANSWER,
            )
                .into_response()
        }),
    );
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve(listener, app, None, Limits::default(), stop).await;
    Ok(())
}
