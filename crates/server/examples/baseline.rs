//! The ceiling for RKMS's cached GET, for `scripts/bench.sh`: the server's own connection loop
//! and HTTP stack (`rkms_server::serve` with its default limits, axum), answering
//! `GET /api/v1/key` with the same bytes RKMS answers for id `hot` (a 32-byte key, version 1),
//! with no authentication, cache, audit line or metrics.
//!
//! `cargo run --release -p rkms-server --example baseline -- [ADDR]` (default 127.0.0.1:0);
//! prints `baseline listening addr=ADDR` once it accepts.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::routing::get;
use axum::Router;
use rkms_server::limits::Limits;
use rkms_server::serve::serve;

/// What RKMS answers for `hot` (key bytes aside), so both send the same response.
const ANSWER: &str =
    r#"{"id":"hot","key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","version":1}"#;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("baseline listening addr={}", listener.local_addr()?);
    let app = Router::new().route(
        "/api/v1/key",
        get(|| async {
            (
                [
                    (CONTENT_TYPE, "application/json"),
                    (CACHE_CONTROL, "no-store"),
                ],
                ANSWER,
            )
        }),
    );
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve(listener, app, None, Limits::default(), stop).await;
    Ok(())
}
