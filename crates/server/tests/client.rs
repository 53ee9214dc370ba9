//! `rkms-client` against the built server, over HTTP and over gRPC: every operation typed, failover between servers
//! (one of them killed mid-run), retries that honour `Retry-After`, and no retry on a 4xx.

mod support;

use std::time::{Duration, Instant};

use rkms_client::{Client, ClientBuilder, Error, ErrorKind, KeyState};
use support::{Server, ANONYMOUS_PRINCIPAL};

/// Three servers over one SQLite store and keyring, as a fleet on one host.
fn fleet(dir: &std::path::Path, extra: &str) -> Vec<Server> {
    let config = dir.join("rkms.toml");
    std::fs::write(
        &config,
        format!(
            "[kms]\nprovider = \"local\"\nregions = [\"local-1\", \"local-2\", \"local-3\"]\n\
             {extra}{ANONYMOUS_PRINCIPAL}"
        ),
    )
    .unwrap();
    Server::start_together(
        3,
        &[
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            dir.to_str().unwrap(),
        ],
    )
}

/// HTTP or gRPC.
#[derive(Debug, Clone, Copy)]
enum Wire {
    Http,
    Grpc,
}

fn builder(wire: Wire) -> ClientBuilder {
    match wire {
        Wire::Http => Client::builder(),
        Wire::Grpc => Client::builder().grpc(),
    }
}

fn client_of(servers: &[&Server]) -> Client {
    client_over(Wire::Http, servers)
}

fn client_over(wire: Wire, servers: &[&Server]) -> Client {
    servers
        .iter()
        .fold(builder(wire), |b, s| b.url(&s.base))
        .backoff(Duration::from_millis(20))
        .build()
        .unwrap()
}

fn kind(result: Result<impl std::fmt::Debug, Error>) -> ErrorKind {
    result
        .expect_err("an API error")
        .kind()
        .cloned()
        .expect("an API error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_typed() {
    every_operation_answers_typed_over(Wire::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_typed_over_grpc() {
    every_operation_answers_typed_over(Wire::Grpc).await;
}

async fn every_operation_answers_typed_over(wire: Wire) {
    let dir = tempfile::tempdir().unwrap();
    let servers = fleet(dir.path(), "");
    let client = client_over(wire, &[&servers[0], &servers[1]]);

    let first = client.get_key("orders").await.unwrap();
    assert_eq!((first.id.as_str(), first.version), ("orders", 1));
    assert_eq!(first.expose_secret().len(), 32);
    assert!(!format!("{first:?}").contains(&format!("{:?}", first.expose_secret())));
    assert_eq!(client.rotate("orders").await.unwrap(), 2);
    let second = client.get_key("orders").await.unwrap();
    assert_eq!(second.version, 2);
    assert_ne!(second.expose_secret(), first.expose_secret());
    let old = client.get_key_version("orders", 1).await.unwrap();
    assert_eq!(old.expose_secret(), first.expose_secret());
    assert_eq!(
        kind(client.get_key_version("orders", 9).await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(client.get_key("no spaces").await),
        ErrorKind::BadRequest
    );

    let info = client.describe("orders").await.unwrap();
    assert_eq!((info.state, info.current_version), (KeyState::Active, 2));
    assert_eq!(info.versions.len(), 2);
    client.get_key("orders/eu").await.unwrap();
    let page = client.list("orders", None, 1).await.unwrap();
    assert_eq!(page.keys.len(), 1);
    let rest = client
        .list("orders", page.next.as_deref(), 10)
        .await
        .unwrap();
    assert_eq!(rest.keys[0].id, "orders/eu");

    assert_eq!(
        client.delete("orders").await.unwrap(),
        KeyState::PendingDeletion
    );
    assert_eq!(
        kind(client.get_key("orders").await),
        ErrorKind::KeyPendingDeletion
    );
    assert_eq!(client.restore("orders").await.unwrap(), KeyState::Active);
    assert_eq!(
        client.get_key("orders").await.unwrap().expose_secret(),
        second.expose_secret()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_a_server_is_killed_mid_run() {
    no_request_fails_while_a_server_is_killed_mid_run_over(Wire::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_grpc_request_fails_while_a_server_is_killed_mid_run() {
    no_request_fails_while_a_server_is_killed_mid_run_over(Wire::Grpc).await;
}

async fn no_request_fails_while_a_server_is_killed_mid_run_over(wire: Wire) {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = fleet(dir.path(), "");
    // A URL nothing listens on comes first: it is passed over.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", unused.local_addr().unwrap());
    drop(unused);
    let client = servers
        .iter()
        .fold(builder(wire).url(dead), |b, s| b.url(&s.base))
        .backoff(Duration::from_millis(20))
        .build()
        .unwrap();
    let run = |round: usize| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..60 {
                let id = format!("failover-{}", (round * 7 + i) % 40);
                if let Err(e) = client.get_key(&id).await {
                    failures.push(format!("{id}: {e}"));
                }
            }
            failures
        })
    };
    let runs: Vec<_> = (0..4).map(run).collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let killed = servers.remove(0);
    drop(killed);
    for run in runs {
        assert_eq!(run.await.unwrap(), Vec::<String>::new());
    }
    // Every id still has one key, whichever server answers.
    for id in (0..40).map(|i| format!("failover-{i}")) {
        let a = client_over(wire, &[&servers[0]])
            .get_key(&id)
            .await
            .unwrap();
        let b = client_over(wire, &[&servers[1]])
            .get_key(&id)
            .await
            .unwrap();
        assert_eq!(a.expose_secret(), b.expose_secret(), "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_call_waits_for_retry_after_and_a_refusal_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rkms.toml");
    std::fs::write(
        &config,
        "[kms]\nprovider = \"local\"\nregions = [\"local-1\", \"local-2\"]\n\
         [[principals]]\nname = \"slow\"\nanonymous = true\nrate_limit_per_second = 1\n\
         rate_limit_burst = 1\nallow = [{ ids = [\"open/*\"], operations = [\"get\", \"create\"] }]\n",
    )
    .unwrap();
    let server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let client = client_of(&[&server]);
    client.get_key("open/a").await.unwrap();
    let started = Instant::now();
    client.get_key("open/a").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the second call waited for the server's Retry-After"
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(kind(client.get_key("closed").await), ErrorKind::Forbidden);
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let asked = audit
        .lines()
        .filter(|l| l.contains("\"id\":\"closed\""))
        .count();
    assert_eq!(asked, 1, "a 403 is the answer, not retried:\n{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_answers_within_its_ttl_and_a_rotation_through_it_is_seen_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = fleet(dir.path(), "");
    let cached = |servers: &[Server]| {
        servers
            .iter()
            .fold(Client::builder(), |b, s| b.url(&s.base))
            .cache(Duration::from_secs(60), 100)
            .attempts(1)
            .build()
            .unwrap()
    };
    let client = cached(&servers[..1]);
    let first = client.get_key("cached").await.unwrap();
    assert_eq!(client.rotate("cached").await.unwrap(), 2);
    let second = client.get_key("cached").await.unwrap();
    assert_eq!(
        second.version, 2,
        "the rotation dropped the cached current key"
    );
    assert_ne!(second.expose_secret(), first.expose_secret());
    drop(servers.remove(0));
    let again = client.get_key("cached").await.unwrap();
    assert_eq!(
        again.expose_secret(),
        second.expose_secret(),
        "from the cache"
    );
    assert!(client.get_key("never-fetched").await.is_err());
}
