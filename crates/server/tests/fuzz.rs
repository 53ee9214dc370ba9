//! Fuzzing request handling (proptest): any request through the whole API, and any bytes
//! through the connection loop, get a 4xx (JSON from the API) and never a 5xx or a crash.
//!
//! Bounded: `RKMS_FUZZ_CASES` cases per target (256 by default, as in the test suite);
//! `scripts/fuzz.sh` runs many more.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::Request;
use axum::Router;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rkms_core::{KeyService, LocalKeyring, MemoryStore};
use rkms_server::access::AppState;
use rkms_server::audit::{AuditLog, AuditSync, AuditTarget};
use rkms_server::auth::{
    Authenticator, IdPattern, Operations, Policy, PrincipalSpec, Rule, TokenHash,
};
use rkms_server::limits::Limits;
use rkms_server::live::LiveService;
use rkms_server::routes::app;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tower::ServiceExt as _;

const TOKEN: &str = "rkms_fuzz-token";

fn runner() -> TestRunner {
    let cases = std::env::var("RKMS_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

fn router(audit: &std::path::Path) -> Router {
    let ring = LocalKeyring::generate(&["k1", "k2"]).unwrap();
    let service = KeyService::builder(Arc::new(MemoryStore::new()))
        .region(Arc::new(ring.region("r1", "k1").unwrap()))
        .region(Arc::new(ring.region("r2", "k2").unwrap()))
        .build()
        .unwrap();
    let principal = PrincipalSpec {
        name: "fuzzer".into(),
        tokens: vec![TokenHash::of(TOKEN)],
        certificate_names: Vec::new(),
        anonymous: false,
        metrics: true,
        policy: Policy::new(vec![Rule {
            ids: vec![IdPattern::parse("a*").unwrap()],
            operations: Operations::all(),
        }]),
        rate_limit: None,
        create_rate: None,
    };
    app(
        AppState {
            service: Arc::new(LiveService::new(service)),
            metrics: None,
            audit: Some(Arc::new(
                AuditLog::open(&AuditTarget::File(audit.to_owned()), AuditSync::Os).unwrap(),
            )),
            auth: Arc::new(Authenticator::new(&[principal])),
        },
        "/api/v1/key",
        Limits::default(),
    )
}

/// Text with the characters that matter to URLs and ids, percent escapes included.
fn url_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            "[a-zA-Z0-9]{1,4}",
            Just("%".to_owned()),
            "%[0-9a-fA-F]{2}",
            "[-_.:/@+=&?#;, ]",
            Just("id=".to_owned()),
            Just("version=".to_owned()),
            Just("limit=".to_owned()),
            Just("prefix=".to_owned()),
            Just("after=".to_owned()),
            Just("a".to_owned()),
            ".",
        ],
        0..max,
    )
    .prop_map(|parts| parts.concat())
}

#[derive(Debug, Clone)]
struct FuzzRequest {
    method: &'static str,
    path: String,
    query: Option<String>,
    authorization: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

fn request() -> impl Strategy<Value = FuzzRequest> {
    let path = prop_oneof![
        4 => Just("/api/v1/key".to_owned()),
        1 => Just("/api/v1/key/rotate".to_owned()),
        1 => Just("/api/v1/key/restore".to_owned()),
        1 => Just("/api/v1/key/info".to_owned()),
        1 => Just("/api/v1/keys".to_owned()),
        1 => Just("/healthz".to_owned()),
        1 => Just("/readyz".to_owned()),
        1 => Just("/metrics".to_owned()),
        1 => url_text(8).prop_map(|p| format!("/{p}")),
    ];
    let query = prop_oneof![
        url_text(12),
        "[a-zA-Z0-9._:/@+=-]{0,12}".prop_map(|t| format!("id=a{t}")),
        ("[a-c]{1,2}", "[-0-9a-z]{0,12}").prop_map(|(id, v)| format!("id={id}&version={v}")),
        ("[a-c]{0,2}", "[-0-9a-zA-Z_]{0,16}", "[-0-9]{0,5}")
            .prop_map(|(p, after, limit)| format!("prefix={p}&after={after}&limit={limit}")),
    ];
    let authorization = prop::option::of(prop_oneof![
        4 => Just(format!("Bearer {TOKEN}")),
        1 => Just(format!("bearer {TOKEN}")),
        1 => Just(format!("Bearer  {TOKEN} ")),
        1 => ".{0,40}",
        1 => "Bearer [ -~]{0,40}",
    ]);
    (
        prop_oneof![
            4 => Just("GET"),
            1 => prop::sample::select(vec!["POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
        ],
        path,
        prop::option::of(query),
        authorization,
        prop::collection::vec(
            (
                "[a-zA-Z-]{1,12}",
                prop_oneof![
                    3 => "[ -~]{0,32}".prop_map(String::into_bytes),
                    1 => prop::collection::vec(any::<u8>(), 0..32),
                ],
            ),
            0..3,
        ),
        prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(any::<u8>(), 1..8)],
    )
        .prop_map(
            |(method, path, query, authorization, headers, body)| FuzzRequest {
                method,
                path,
                query,
                authorization,
                headers,
                body,
            },
        )
}

#[test]
fn any_request_through_the_api_gets_json_and_never_a_5xx() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _entered = runtime.enter();
    let dir = tempfile::tempdir().unwrap();
    let router = router(&dir.path().join("audit.log"));
    runner()
        .run(&request(), |fuzz| {
            let uri = match &fuzz.query {
                Some(query) => format!("{}?{query}", fuzz.path),
                None => fuzz.path.clone(),
            };
            let mut builder = Request::builder().method(fuzz.method).uri(&uri);
            if let Some(authorization) = &fuzz.authorization {
                builder = builder.header("authorization", authorization.as_bytes());
            }
            for (name, value) in &fuzz.headers {
                builder = builder.header(name.as_str(), value.as_slice());
            }
            if !fuzz.body.is_empty() {
                builder = builder.header("content-length", fuzz.body.len());
            }
            // Requests that cannot be put on the wire are not the server's concern.
            let Ok(request) = builder.body(Body::from(fuzz.body.clone())) else {
                return Ok(());
            };
            runtime.block_on(async {
                let response = router.clone().oneshot(request).await.unwrap();
                let status = response.status();
                let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
                prop_assert!(!status.is_server_error(), "{status} for {fuzz:?}");
                if fuzz.method == "HEAD" {
                    return Ok(());
                }
                let body: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                    TestCaseError::fail(format!("{status}: not JSON ({e}) for {fuzz:?}"))
                })?;
                if status.is_success() {
                    prop_assert!(fuzz.method == "GET");
                } else {
                    prop_assert!(body["error_type"].is_string(), "{body} for {fuzz:?}");
                }
                if body.get("key").is_some() {
                    let token = fuzz
                        .authorization
                        .as_deref()
                        .and_then(|a| a.strip_prefix("Bearer "))
                        .map(str::trim);
                    prop_assert_eq!(token, Some(TOKEN));
                    prop_assert!(body["id"].as_str().is_some_and(|id| id.starts_with('a')));
                }
                Ok(())
            })
        })
        .unwrap();
}

/// Bytes a client might send: a request with some bytes changed, cut or repeated, or noise.
fn raw_request() -> impl Strategy<Value = Vec<u8>> {
    let valid = format!(
        "GET /api/v1/key?id=abc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .into_bytes();
    let len = valid.len();
    prop_oneof![
        prop::collection::vec((0..len, any::<u8>()), 1..8).prop_map({
            let valid = valid.clone();
            move |edits| {
                let mut bytes = valid.clone();
                for (at, byte) in edits {
                    bytes[at] = byte;
                }
                bytes
            }
        }),
        (0..len, 1usize..2000).prop_map({
            let valid = valid.clone();
            move |(at, times)| {
                let mut bytes = valid.clone();
                let piece = bytes[at];
                bytes.splice(at..at, std::iter::repeat_n(piece, times));
                bytes
            }
        }),
        prop::collection::vec(any::<u8>(), 0..256),
        "[ -~\r\n]{0,256}".prop_map(String::into_bytes),
    ]
}

/// Serves the fuzz router on a loopback port from `runtime`; returns the address.
fn serve_on_loopback(runtime: &tokio::runtime::Runtime, audit: &std::path::Path) -> SocketAddr {
    let router = runtime.block_on(async { router(audit) });
    let limits = Limits {
        header_read_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(rkms_server::serve::serve(
            listener,
            router,
            None,
            limits,
            std::future::pending(),
        ));
        addr
    })
}

/// Sends `bytes`, shuts down the sending side, and returns everything the server answered.
fn exchange(runtime: &tokio::runtime::Runtime, addr: SocketAddr, bytes: &[u8]) -> String {
    runtime.block_on(async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The server may close early on garbage; what it answers is what counts.
        let _ = stream.write_all(bytes).await;
        let _ = stream.shutdown().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    })
}

fn key_request(id: &str) -> Vec<u8> {
    format!("GET /api/v1/key?id={id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
        .into_bytes()
}

#[test]
fn any_bytes_on_a_connection_get_a_4xx_at_most_and_the_server_keeps_serving() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addr = serve_on_loopback(&runtime, &dir.path().join("audit.log"));
    runner()
        .run(&raw_request(), |bytes| {
            let text = exchange(&runtime, addr, &bytes);
            for status in text
                .match_indices("HTTP/1.1 ")
                .map(|(at, _)| &text[at + 9..])
            {
                prop_assert!(
                    status.starts_with('2') || status.starts_with('4'),
                    "answered {} to {:?}",
                    text.lines().next().unwrap_or_default(),
                    String::from_utf8_lossy(&bytes)
                );
            }
            Ok(())
        })
        .unwrap();
    let text = exchange(&runtime, addr, &key_request("abc"));
    assert!(text.starts_with("HTTP/1.1 200"), "answer: {text:?}");
}

/// Found by the target above: hyper dropped a request whose client had shut down its
/// sending side before the answer was ready.
#[test]
fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addr = serve_on_loopback(&runtime, &dir.path().join("audit.log"));
    for n in 0..200 {
        let text = exchange(&runtime, addr, &key_request(&format!("a-{n}")));
        assert!(text.starts_with("HTTP/1.1 200"), "request {n}: {text:?}");
    }
}
