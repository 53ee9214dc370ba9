//! The gRPC API against the built server: every operation answers what the HTTP API answers,
//! through the same checks, audit lines, rate limits and metrics; errors carry the codes of
//! the table; health follows readiness; reflection describes the service.

mod support;

use std::path::Path;
use std::time::Duration;

use rkms_proto::v1::key_service_client::KeyServiceClient;
use rkms_proto::v1::{
    DeleteKeyRequest, DescribeKeyRequest, GetKeyRequest, KeyState, ListKeysRequest,
    RestoreKeyRequest, RotateKeyRequest,
};
use rkms_server::auth::TokenHash;
use support::Server;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const TOKEN: &str = "rkms_grpc-test-token-of-enough-length";

/// A server whose principal `app` (a token) may use `app/*` at 2 requests per second, and
/// whose anonymous principal may only read `public/*`.
fn server(dir: &Path) -> Server {
    let config = dir.join("rkms.toml");
    std::fs::write(
        &config,
        format!(
            "[kms]\nprovider = \"local\"\nregions = [\"local-1\", \"local-2\"]\n\
             [[principals]]\nname = \"app\"\ntoken_sha256 = [\"{}\"]\nmetrics = true\n\
             rate_limit_per_second = 2\nrate_limit_burst = 30\n\
             allow = [{{ ids = [\"app/*\"], operations = [\"get\", \"create\", \"rotate\", \
             \"delete\", \"restore\", \"describe\", \"list\"] }}]\n\
             [[principals]]\nname = \"visitor\"\nanonymous = true\n\
             allow = [{{ ids = [\"public/*\"], operations = [\"get\"] }}]\n",
            TokenHash::of(TOKEN).to_hex()
        ),
    )
    .unwrap();
    Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
    ])
}

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(server.base.clone())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// `message` with the bearer token.
fn authorized<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    request
}

fn get(id: &str, version: Option<u32>) -> GetKeyRequest {
    GetKeyRequest {
        id: id.into(),
        version,
    }
}

/// The code and `rkms-error-type` of a refusal.
fn refusal<T: std::fmt::Debug>(result: Result<T, Status>) -> (Code, String) {
    let status = result.expect_err("a refusal");
    let error_type = status
        .metadata()
        .get("rkms-error-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status.code(), error_type)
}

// Several threads: the channel's connection answers the server's shutdown while the test
// waits for the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_over_grpc_answers_as_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let mut keys = KeyServiceClient::new(channel(&server).await);
    let http = reqwest::Client::new();

    // Created over gRPC, the same key over HTTP.
    let created = keys
        .get_key(authorized(get("app/orders", None)))
        .await
        .unwrap();
    assert!(created.metadata().get("x-request-id").is_some());
    let created = created.into_inner();
    assert_eq!((created.id.as_str(), created.version), ("app/orders", 1));
    assert_eq!(created.key.len(), 32);
    let over_http: serde_json::Value = http
        .get(server.key_url("id=app/orders"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    use base64::Engine as _;
    let http_key = base64::engine::general_purpose::STANDARD
        .decode(over_http["key"].as_str().unwrap())
        .unwrap();
    assert_eq!(http_key, created.key.to_vec());

    // Rotation, versions, description, listing.
    let rotated = keys
        .rotate_key(authorized(RotateKeyRequest {
            id: "app/orders".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((rotated.version, rotated.state()), (2, KeyState::Active));
    let first = keys
        .get_key(authorized(get("app/orders", Some(1))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.key, created.key);
    let current = keys
        .get_key(authorized(get("app/orders", None)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(current.version, 2);
    assert_ne!(current.key, created.key);
    let info = keys
        .describe_key(authorized(DescribeKeyRequest {
            id: "app/orders".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.state(), info.current_version), (KeyState::Active, 2));
    assert_eq!(info.versions.len(), 2);
    assert_eq!(info.versions[0].regions, ["local-1", "local-2"]);
    assert!(info.versions[0].created_at.is_some());
    keys.get_key(authorized(get("app/orders-eu", None)))
        .await
        .unwrap();
    let page = keys
        .list_keys(authorized(ListKeysRequest {
            prefix: "app/".into(),
            page_token: String::new(),
            page_size: 1,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.keys.len(), 1);
    assert_eq!(page.keys[0].id, "app/orders");
    let rest = keys
        .list_keys(authorized(ListKeysRequest {
            prefix: "app/".into(),
            page_token: page.next_page_token,
            page_size: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.keys.len(), 1);
    assert_eq!(rest.keys[0].id, "app/orders-eu");
    assert!(rest.next_page_token.is_empty());

    // Deletion and restore.
    let deleted = keys
        .delete_key(authorized(DeleteKeyRequest {
            id: "app/orders-eu".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.state(), KeyState::PendingDeletion);
    assert!(deleted.deletion_time.is_some());
    assert_eq!(
        refusal(keys.get_key(authorized(get("app/orders-eu", None))).await),
        (Code::FailedPrecondition, "KeyPendingDeletion".into())
    );
    let restored = keys
        .restore_key(authorized(RestoreKeyRequest {
            id: "app/orders-eu".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(restored.state(), KeyState::Active);

    // Refusals, with the codes of the table.
    assert_eq!(
        refusal(keys.get_key(authorized(get("no spaces", None))).await),
        (Code::InvalidArgument, "BadRequest".into())
    );
    assert_eq!(
        refusal(keys.get_key(authorized(get("app/orders", Some(0)))).await),
        (Code::InvalidArgument, "BadRequest".into())
    );
    assert_eq!(
        refusal(keys.get_key(authorized(get("app/orders", Some(9)))).await),
        (Code::NotFound, "NotFound".into())
    );
    assert_eq!(
        refusal(keys.get_key(authorized(get("other/x", None))).await),
        (Code::PermissionDenied, "Forbidden".into())
    );
    assert_eq!(
        refusal(keys.get_key(get("public/x", None)).await),
        (Code::PermissionDenied, "Forbidden".into()),
        "anonymous may read public/* but not create"
    );
    let mut wrong = Request::new(get("app/orders", None));
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer rkms_wrong".parse().unwrap());
    assert_eq!(
        refusal(keys.get_key(wrong).await),
        (Code::Unauthenticated, "Unauthorized".into())
    );
    let oversized = get(&"a".repeat(64 * 1024), None);
    assert_eq!(
        refusal(keys.get_key(authorized(oversized)).await).0,
        Code::OutOfRange,
        "a request message past the limit is refused before it is read"
    );

    let mut crowded = authorized(get("app/orders", None));
    crowded
        .metadata_mut()
        .insert("x-filler", "f".repeat(20_000).parse().unwrap());
    assert_eq!(
        refusal(keys.get_key(crowded).await),
        (Code::ResourceExhausted, "HeadersTooLarge".into()),
        "the HTTP API's header limit holds for gRPC"
    );

    // The principal's rate limit is the same whichever front end spends it.
    let mut limited = None;
    for _ in 0..60 {
        if let Err(status) = keys.get_key(authorized(get("app/orders", None))).await {
            limited = Some(status);
            break;
        }
    }
    let limited = limited.expect("the rate limit is enforced over gRPC");
    assert_eq!(limited.code(), Code::ResourceExhausted);
    assert_eq!(
        limited.metadata().get("rkms-error-type").unwrap(),
        "TooManyRequests"
    );
    assert!(limited.metadata().get("retry-after").is_some());

    // One audit log, one set of metrics, each line and sample naming its transport.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = http
        .get(format!("{}/metrics", server.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sample = |labels: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("rkms_requests_total{") && labels.split(',').all(|p| l.contains(p))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        sample(r#"operation="rotate",transport="grpc",outcome="ok""#) >= 1.0,
        "{metrics}"
    );
    assert!(sample(r#"operation="get_key",transport="http",outcome="ok""#) >= 1.0);
    assert!(sample(r#"operation="get_key",transport="grpc",outcome="NotFound""#) >= 1.0);
    assert!(server.stop().success());
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let line = |operation: &str, transport: &str| {
        lines
            .iter()
            .any(|l| l["operation"] == operation && l["transport"] == transport)
    };
    assert!(line("create", "grpc") && line("get", "http") && line("rotate", "grpc"));
    assert!(line("delete", "grpc") && line("restore", "grpc") && line("list", "grpc"));
    assert!(line("get_or_create", "grpc"), "refusals are audited too");
    for key in [&created.key, &current.key] {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!audit.contains(&hex));
    }
}

#[tokio::test]
async fn health_follows_readiness_and_reflection_describes_the_api() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let channel = channel(&server).await;
    let mut health = HealthClient::new(channel.clone());
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let mut serving = false;
    for _ in 0..50 {
        let answer = health.check(check("rkms.v1.KeyService")).await;
        if answer.is_ok_and(|a| a.into_inner().status() == ServingStatus::Serving) {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(serving, "the key service is reported serving once ready");
    let overall = health.check(check("")).await.unwrap().into_inner();
    assert_eq!(overall.status(), ServingStatus::Serving);
    assert_eq!(
        health
            .check(check("other.Service"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // A stream without end would hold a connection for any anonymous caller.
    assert_eq!(
        health.watch(check("")).await.unwrap_err().code(),
        Code::Unimplemented
    );

    // Reflection lists the services and hands out the API's descriptor, without the proto.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(channel);
    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let asks = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "rkms.v1.KeyService".into(),
        )),
    ];
    let mut answers = reflection
        .server_reflection_info(authorized(futures::stream::iter(asks)))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(listed)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list");
    };
    let names: Vec<&str> = listed.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"rkms.v1.KeyService"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a file descriptor");
    };
    use prost::Message as _;
    let file =
        prost_types::FileDescriptorProto::decode(&files.file_descriptor_proto[0][..]).unwrap();
    let methods: Vec<&str> = file.service[0].method.iter().map(|m| m.name()).collect();
    assert_eq!(
        methods,
        [
            "GetKey",
            "RotateKey",
            "DeleteKey",
            "RestoreKey",
            "DescribeKey",
            "ListKeys"
        ]
    );
}

#[tokio::test]
async fn grpc_content_over_http1_reaches_the_http_api_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    // A web page can send this over HTTP/1.1 (a rebound host name makes it same-origin); it
    // must not reach the gRPC service, which would answer with the key in the body.
    let response = reqwest::Client::new()
        .post(format!("{}/rkms.v1.KeyService/GetKey", server.base))
        .header("content-type", "application/grpc")
        .body(vec![
            0, 0, 0, 0, 10, 10, 8, b'p', b'u', b'b', b'l', b'i', b'c', b'/', b'x',
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error_type"], "NotFound");
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rkms.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nrequest_timeout_ms = 1000\n[limits]\nheader_read_timeout_seconds = 1\n\
             [kms]\nprovider = \"local\"\nregions = [\"local-1\"]\n{}",
            support::ANONYMOUS_PRINCIPAL
        ),
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);

    // A connection that never sends a byte.
    use tokio::io::AsyncReadExt as _;
    let mut silent = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut sink));
    assert!(closed.await.is_ok(), "a silent connection was kept open");

    // An HTTP/2 connection that makes no request (its client answers pings, as any does).
    let stream = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let (_requests, connection) = h2::client::handshake(stream).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(closed.is_ok(), "an idle HTTP/2 connection was kept open");

    // A call whose request never ends (no credentials needed for health) is answered
    // DEADLINE_EXCEEDED within the header timeout and the request deadline, and its
    // connection then closes.
    let stream = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let (requests, connection) = h2::client::handshake(stream).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut requests = requests.ready().await.unwrap();
    let call = http::Request::post(format!("{}/grpc.health.v1.Health/Check", server.base))
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let (answer, mut body) = requests.send_request(call, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 9]), false)
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("a half-sent call is answered in time")
        .unwrap();
    let status = answer
        .headers()
        .get("grpc-status")
        .map(|s| s.to_str().unwrap().to_owned());
    assert_eq!(
        status.as_deref(),
        Some("4"),
        "DEADLINE_EXCEEDED: {answer:?}"
    );
    drop((requests, body));
    let closed = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(
        closed.is_ok(),
        "the connection of a half-sent call was kept open"
    );

    // Over HTTP/2 a body comes without Content-Length; the HTTP API still takes none.
    let stream = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let (requests, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    let mut requests = requests.ready().await.unwrap();
    let rotate = http::Request::post(format!("{}/api/v1/key/rotate?id=x", server.base))
        .body(())
        .unwrap();
    let (answer, mut body) = requests.send_request(rotate, false).unwrap();
    body.send_data(bytes::Bytes::from_static(b"surprise"), true)
        .unwrap();
    let answer = answer.await.unwrap();
    assert_eq!(answer.status().as_u16(), 413);
}
