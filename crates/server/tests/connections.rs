//! Connection limits against the built binary: clients that hold connections (idle, or
//! pipelining without reading the answers) cannot keep the health checks or other clients
//! out, and the connection limit fits the open-file limit.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{ulimit_command, Server, ANONYMOUS_PRINCIPAL};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// A configuration over a local KMS and SQLite in `dir`, with `limits` as its `[limits]`.
fn config(dir: &Path, limits: &str) -> PathBuf {
    let path = dir.join("rkms.toml");
    std::fs::write(
        &path,
        format!(
            "[kms]\nprovider = \"local\"\nregions = [\"a\", \"b\"]\nkeyring_path = {:?}\n\
             [store]\nbackend = \"sqlite\"\npath = {:?}\n[limits]\n{limits}\n{ANONYMOUS_PRINCIPAL}",
            dir.join("ring.json"),
            dir.join("keys.db"),
        ),
    )
    .unwrap();
    path
}

fn start(dir: &Path, limits: &str) -> Server {
    Server::start(&["--config", config(dir, limits).to_str().unwrap()])
}

/// A client that gives up on an answer after a second.
fn impatient_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// A connection from `local` (a loopback address) to `server` that sends nothing.
async fn connect_from(local: &str, server: &Server) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    socket
        .connect(server.addr.parse::<SocketAddr>().unwrap())
        .await
        .unwrap()
}

/// Asks `url` every 100 ms, each time waiting at most a second, until it answers
/// `expected`; fails after `within`.
async fn wait_for_status(client: &reqwest::Client, url: &str, expected: u16, within: Duration) {
    let started = Instant::now();
    loop {
        let status = client.get(url).send().await.map(|r| r.status().as_u16());
        if status.as_ref().is_ok_and(|s| *s == expected) {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{url} did not answer {expected} within {within:?}; last: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the rejection counter with `reason` in the server's metrics.
async fn rejections(client: &reqwest::Client, server: &Server, reason: &str) -> u64 {
    let series = format!("rkms_http_rejections_total{{reason=\"{reason}\"}} ");
    server
        .metrics(client)
        .await
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.trim().parse().unwrap())
}

#[tokio::test]
async fn idle_connections_holding_every_slot_leave_the_health_checks_answering() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        "max_connections = 4\nmax_connections_per_address = 0\nheader_read_timeout_seconds = 60",
    );
    let mut idle = Vec::new();
    for _ in 0..6 {
        idle.push(connect_from("127.0.0.1", &server).await);
    }
    // Let the server accept them all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = impatient_client();
    for path in ["/healthz", "/readyz"] {
        let response = client
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path} did not answer within a second: {e}"));
        assert_eq!(response.status(), 200, "{path}");
    }
    let response = client
        .get(server.key_url("id=waiting"))
        .send()
        .await
        .expect("a key request beyond the limit is answered at once");
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error_type"], "ServiceUnavailable", "{body}");

    drop(idle);
    wait_for_status(
        &client,
        &server.key_url("id=waiting"),
        200,
        Duration::from_secs(5),
    )
    .await;
}

/// Pipelines health checks on a connection that never reads the answers, with a small
/// receive window, so the server soon has answers it cannot send.
async fn pipeline_without_reading(server: &Server) -> (OwnedReadHalf, JoinHandle<()>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket
        .connect(server.addr.parse::<SocketAddr>().unwrap())
        .await
        .unwrap();
    let (reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        let requests = b"GET /healthz HTTP/1.1\r\nHost: rkms\r\n\r\n".repeat(100_000);
        // Stalls once the server stops reading; fails once it closes the connection.
        let _ = writer.write_all(&requests).await;
    });
    (reader, sender)
}

#[tokio::test]
async fn clients_that_stop_reading_are_closed_after_the_write_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        "max_connections = 4\nmax_connections_per_address = 0\nheader_read_timeout_seconds = 60\n\
         write_timeout_seconds = 2",
    );
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(pipeline_without_reading(&server).await);
    }
    let client = impatient_client();
    let url = server.key_url("id=after-the-stall");
    let first = client.get(&url).send().await.map(|r| r.status().as_u16());
    assert_eq!(
        first.ok(),
        Some(503),
        "the pipelining clients hold every slot, and a request beyond them is answered at once"
    );
    wait_for_status(&client, &url, 200, Duration::from_secs(15)).await;
    let started = Instant::now();
    while rejections(&client, &server, "write_timeout").await < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "every stalled connection is closed for it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (mut reader, sender) in stalled {
        let mut buffer = vec![0; 1 << 20];
        // The answers sent before the stall, then the end of the connection.
        while tokio::time::timeout(Duration::from_secs(5), reader.read(&mut buffer))
            .await
            .expect("the server closed the connection")
            .is_ok_and(|n| n > 0)
        {}
        sender.await.unwrap();
    }
}

#[tokio::test]
async fn a_busy_connection_is_closed_at_its_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        "max_connections = 4\nheader_read_timeout_seconds = 60\nmax_connection_age_seconds = 2",
    );
    let mut stream = connect_from("127.0.0.1", &server).await;
    let started = Instant::now();
    let mut answers = String::new();
    loop {
        // A request every 100 ms keeps the connection from ever being idle.
        if stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: rkms\r\n\r\n")
            .await
            .is_err()
        {
            break;
        }
        let mut buffer = [0; 4096];
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => answers.push_str(&String::from_utf8_lossy(&buffer[..n])),
            Err(_) => panic!("no answer within a second"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the connection is still open after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(answers.matches("HTTP/1.1 200").count() > 5, "{answers}");
}

#[tokio::test]
async fn one_address_gets_at_most_max_connections_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        "max_connections = 16\nmax_connections_per_address = 2\nheader_read_timeout_seconds = 60",
    );
    let first = connect_from("127.0.0.1", &server).await;
    let _second = connect_from("127.0.0.1", &server).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut third = connect_from("127.0.0.1", &server).await;
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: rkms\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut answer))
        .await
        .expect("the connection over the cap is closed at once");
    assert!(
        read.is_err() || answer.is_empty(),
        "closed without an answer: {:?}",
        String::from_utf8_lossy(&answer)
    );

    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let response = other.get(server.key_url("id=other")).send().await.unwrap();
    assert_eq!(response.status(), 200, "another address is served");
    assert_eq!(
        rejections(&other, &server, "connections_per_address").await,
        1
    );

    drop(first);
    wait_for_status(
        &impatient_client(),
        &server.key_url("id=again"),
        200,
        Duration::from_secs(5),
    )
    .await;
}

/// Runs the server with `args` under `ulimit` with `limit` until it exits (at most 10 s).
fn run_with_ulimit(limit: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut child = ulimit_command(limit)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn an_open_file_limit_too_low_for_any_connections_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "");
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    let (code, stderr) = run_with_ulimit("-n 64", &args);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("limits.max_connections"), "{stderr}");
    assert!(stderr.contains("RLIMIT_NOFILE"), "{stderr}");
}

/// The soft open-file limit of process `pid`.
fn soft_file_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_low_soft_file_limit_is_raised_to_the_hard_limit() {
    let hard: u64 = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "ulimit -Hn"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap_or(u64::MAX);
    assert!(
        hard >= 2000,
        "this test needs a hard open-file limit of at least 2000 (ulimit -Hn); it is {hard}"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "max_connections = 1000");
    let server = Server::start_with_ulimit("-Sn 400", &["--config", config.to_str().unwrap()]);
    assert!(soft_file_limit(server.pid()) >= 1000);
    let log = server.log.lock().unwrap().join("\n");
    assert!(!log.contains("max_connections"), "{log}");
}

#[tokio::test]
async fn a_connection_limit_beyond_the_hard_file_limit_is_lowered_and_never_runs_out_of_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        "max_connections_per_address = 0\nheader_read_timeout_seconds = 60",
    );
    let server = Server::start_with_ulimit("-n 400", &["--config", config.to_str().unwrap()]);
    let warning = server
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("WARN") && l.contains("limits.max_connections"))
        .cloned();
    let warning = warning.expect("a warning that max_connections was lowered");
    assert!(warning.contains("RLIMIT_NOFILE"), "{warning}");

    let mut idle = Vec::new();
    for _ in 0..420 {
        idle.push(connect_from("127.0.0.1", &server).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = server.log.lock().unwrap().join("\n");
    assert!(!log.contains("Too many open files"), "{log}");
    drop(idle);
    wait_for_status(
        &impatient_client(),
        &server.key_url("id=after-the-crowd"),
        200,
        Duration::from_secs(10),
    )
    .await;
}

/// Silent connections from a few addresses can keep the main port's reserve busy; a health
/// port of its own answers probes whatever the key port's clients do.
#[tokio::test]
async fn a_health_port_answers_probes_while_silent_connections_fill_the_key_port() {
    let dir = tempfile::tempdir().unwrap();
    let health_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = config(
        dir.path(),
        "max_connections = 2\nmax_connections_per_address = 0\nheader_read_timeout_seconds = 60",
    );
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("[server]\nhealth_port = {health_port}\n{text}"),
    )
    .unwrap();
    let server = Server::start(&["--config", path.to_str().unwrap()]);
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(connect_from("127.0.0.1", &server).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = impatient_client();
    let health = format!("http://127.0.0.1:{health_port}");
    for probe in ["/healthz", "/readyz"] {
        let response = client
            .get(format!("{health}{probe}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{probe} on the health port: {e}"));
        assert_eq!(response.status(), 200, "{probe}");
    }
    let response = client
        .get(format!("{health}/api/v1/key?id=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404, "the health port serves no keys");
    drop(silent);
}
