//! The shared conformance suite against Redis: every namespace is a fresh key prefix.
//!
//! Finds the server through `RKMS_TEST_REDIS_URL` (set by `scripts/services.sh`), else starts
//! one with testcontainers where a Docker engine runs, else fails saying how to start it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use rkms_conformance::services::{endpoint, ServiceSpec};
use rkms_conformance::{unique_name, Backend, Namespace, NativeBackend, NetworkBackend};
use rkms_core::Store;
use rkms_store_redis::{Durability, RedisConfig, RedisStore};

const REDIS: ServiceSpec = ServiceSpec {
    env_var: "RKMS_TEST_REDIS_URL",
    image: ("redis", "7-alpine"),
    port: 6379,
    container_env: &[],
    container_cmd: &["redis-server", "--appendonly", "yes"],
    ready_message: "Ready to accept connections",
    ready_on_stderr: false,
    url: |addr| format!("redis://{addr}/"),
};

struct RedisBackend {
    url: String,
}

struct RedisNamespace {
    url: String,
    /// The real server, for cleanup even when `url` goes through a proxy.
    direct_url: String,
    prefix: String,
}

#[async_trait]
impl Backend for RedisBackend {
    async fn namespace(&self) -> Box<dyn Namespace> {
        Box::new(RedisNamespace {
            url: self.url.clone(),
            direct_url: self.url.clone(),
            prefix: unique_name("rkms-t-") + ":",
        })
    }
}

fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap()
}

#[async_trait]
impl NetworkBackend for RedisBackend {
    fn service_addr(&self) -> SocketAddr {
        std::net::ToSocketAddrs::to_socket_addrs(host_port(&self.url))
            .unwrap()
            .next()
            .unwrap()
    }

    async fn namespace_via(&self, via: SocketAddr) -> Box<dyn Namespace> {
        let url = self.url.replacen(host_port(&self.url), &via.to_string(), 1);
        Box::new(RedisNamespace {
            url,
            direct_url: self.url.clone(),
            prefix: unique_name("rkms-t-") + ":",
        })
    }
}

#[async_trait]
impl NativeBackend for RedisBackend {
    async fn namespace_with_raw_ids(&self, raw_ids: &[&str]) -> Box<dyn Namespace> {
        let prefix = unique_name("rkms-t-") + ":";
        let mut connection = direct(&self.url).await;
        for raw in raw_ids {
            let _: () = connection
                .set(format!("{prefix}key:{raw}"), [0u8; 9].as_slice())
                .await
                .unwrap();
            let _: () = connection
                .zadd(format!("{prefix}ids"), *raw, 0)
                .await
                .unwrap();
        }
        Box::new(RedisNamespace {
            url: self.url.clone(),
            direct_url: self.url.clone(),
            prefix,
        })
    }
}

#[async_trait]
impl Namespace for RedisNamespace {
    async fn connect(&self) -> Arc<dyn Store> {
        let mut config = RedisConfig::new(&self.url);
        config.prefix = self.prefix.clone();
        config.operation_timeout = Duration::from_secs(2);
        // The suite checks behaviour, not persistence (tests/durability.rs does), so it runs
        // on whatever Redis the environment names.
        config.durability = Durability::Relaxed;
        Arc::new(RedisStore::open(&config).await.expect("Redis answers"))
    }

    async fn cleanup(self: Box<Self>) {
        let mut connection = direct(&self.direct_url).await;
        let keys: Vec<String> = connection.keys(format!("{}*", self.prefix)).await.unwrap();
        if !keys.is_empty() {
            let _: () = connection.del(keys).await.unwrap();
        }
    }
}

/// A connection of the suite's own, for setup and cleanup. Patient: the redis crate's default
/// answer timeout (500 ms) is short for a busy 2-core machine and an fsync on every write.
async fn direct(url: &str) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap()
}

async fn redis_backend() -> RedisBackend {
    RedisBackend {
        url: endpoint(&REDIS),
    }
}

rkms_conformance::conformance_suite!(redis_backend);
