//! The store opens only on a Redis that keeps every acknowledged write (AOF, `appendfsync
//! always`), unless durability is relaxed; with replicas configured, writes wait for them.
//!
//! Each test starts its own `redis-server` (Debian's `redis-server` package; `scripts/services.sh
//! install` installs it) on a free loopback port with a throwaway directory, since the
//! persistence settings are what is under test.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::AsyncCommands;
use rkms_core::{KeyId, PutOutcome, Store, StoreError};
use rkms_store_redis::{Durability, RedisConfig, RedisStore};

/// A `redis-server` of this test's own, stopped on drop.
struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs: install it with `scripts/services.sh install`");
        let mut server = Self {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..100 {
            if server.answers_ping() {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("redis-server on port {port} exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {port} did not answer PING");
    }

    fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut reply = [0u8; 5];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(url: &str, durability: Durability) -> RedisConfig {
    let mut config = RedisConfig::new(url);
    config.durability = durability;
    config
}

const DURABLE: [&str; 4] = ["--appendonly", "yes", "--appendfsync", "always"];

#[tokio::test]
async fn a_redis_that_can_lose_acknowledged_writes_is_refused_with_the_reason() {
    for (args, loses) in [
        (
            ["--appendonly", "no", "--appendfsync", "always"],
            "without AOF",
        ),
        (
            ["--appendonly", "yes", "--appendfsync", "everysec"],
            "about a second",
        ),
    ] {
        let server = Server::start(&args);
        let refused = RedisStore::open(&config(&server.url(), Durability::Strict))
            .await
            .expect_err("a Redis that can lose acknowledged writes is refused");
        let message = refused.to_string();
        assert!(message.contains(loses), "{message}");
        assert!(message.contains("durability = \"relaxed\""), "{message}");
    }
}

#[tokio::test]
async fn relaxed_durability_opens_a_redis_without_aof() {
    let server = Server::start(&["--appendonly", "no"]);
    let store = RedisStore::open(&config(&server.url(), Durability::Relaxed))
        .await
        .unwrap();
    let id = KeyId::parse("kept").unwrap();
    store.put_if_absent(&id, b"x".to_vec()).await.unwrap();
    assert_eq!(store.get(&id).await.unwrap().unwrap().bytes, b"x");
}

#[tokio::test]
async fn a_redis_with_aof_always_opens() {
    let server = Server::start(&DURABLE);
    let store = RedisStore::open(&config(&server.url(), Durability::Strict))
        .await
        .unwrap();
    let id = KeyId::parse("kept").unwrap();
    store.put_if_absent(&id, b"x".to_vec()).await.unwrap();
    assert_eq!(store.get(&id).await.unwrap().unwrap().bytes, b"x");
}

#[tokio::test]
async fn a_redis_that_refuses_config_opens_only_when_relaxed() {
    let server = Server::start(&DURABLE);
    let _: () = redis::cmd("ACL")
        .arg(
            &[
                "SETUSER", "rkms", "on", ">secret", "~*", "&*", "+@all", "-config",
            ][..],
        )
        .query_async(&mut server.connection().await)
        .await
        .unwrap();
    let url = format!("redis://rkms:secret@127.0.0.1:{}/", server.port);
    let refused = RedisStore::open(&config(&url, Durability::Strict))
        .await
        .expect_err("a Redis that will not show its persistence is refused");
    let message = refused.to_string();
    assert!(
        message.contains("CONFIG") && message.contains("durability = \"relaxed\""),
        "{message}"
    );
    RedisStore::open(&config(&url, Durability::Relaxed))
        .await
        .expect("relaxed durability opens it");
}

#[tokio::test]
async fn writes_wait_for_the_configured_replicas() {
    let primary = Server::start(&DURABLE);
    let replica = Server::start(&[
        "--replicaof",
        "127.0.0.1",
        &primary.port.to_string(),
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ]);
    let mut primary_connection = primary.connection().await;
    for _ in 0..100 {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut primary_connection)
            .await
            .unwrap();
        if info.contains("state=online") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut one = config(&primary.url(), Durability::Strict);
    one.replicas = 1;
    let store = RedisStore::open(&one).await.unwrap();
    let id = KeyId::parse("replicated").unwrap();
    let outcome = store.put_if_absent(&id, b"x".to_vec()).await.unwrap();
    assert!(matches!(outcome, PutOutcome::Created(_)));
    let copied: Option<Vec<u8>> = replica
        .connection()
        .await
        .get("rkms:key:replicated")
        .await
        .unwrap();
    assert!(
        copied.is_some(),
        "the replica had the record when the create returned"
    );

    let mut two = one.clone();
    two.replicas = 2;
    let store = RedisStore::open(&two).await.unwrap();
    let result = store
        .put_if_absent(&KeyId::parse("short").unwrap(), b"y".to_vec())
        .await;
    match result {
        Err(StoreError::Unavailable { source, .. }) => {
            assert!(source.to_string().contains("1 of 2 replicas"), "{source}");
        }
        other => panic!("a write two replicas did not acknowledge must fail, got {other:?}"),
    }
}
