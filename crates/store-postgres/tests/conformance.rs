//! The shared conformance suite against PostgreSQL: every namespace is a fresh schema.
//!
//! Finds the server through `RKMS_TEST_POSTGRES_URL` (set by `scripts/services.sh`), else starts
//! one with testcontainers where a Docker engine runs, else fails saying how to start it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rkms_conformance::services::{endpoint, ServiceSpec};
use rkms_conformance::{unique_name, Backend, Namespace, NativeBackend, NetworkBackend};
use rkms_core::Store;
use rkms_store_postgres::{PostgresConfig, PostgresStore};

const POSTGRES: ServiceSpec = ServiceSpec {
    env_var: "RKMS_TEST_POSTGRES_URL",
    image: ("postgres", "16-alpine"),
    port: 5432,
    container_env: &[("POSTGRES_HOST_AUTH_METHOD", "trust")],
    container_cmd: &[],
    ready_message: "database system is ready to accept connections",
    ready_on_stderr: true,
    url: |addr| format!("postgres://postgres@{addr}/postgres"),
};

struct PostgresBackend {
    url: String,
}

struct PostgresNamespace {
    url: String,
    schema: String,
}

/// `postgres://user@host:port/db` with `host:port` replaced by `addr`.
fn with_addr(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (credentials, rest) = rest.rsplit_once('@').map_or(("", rest), |(c, r)| (c, r));
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let at = if credentials.is_empty() { "" } else { "@" };
    format!("{scheme}://{credentials}{at}{addr}{path}")
}

impl PostgresBackend {
    fn namespace_at(&self, url: String) -> Box<dyn Namespace> {
        Box::new(PostgresNamespace {
            url,
            schema: unique_name("rkms_t"),
        })
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    async fn namespace(&self) -> Box<dyn Namespace> {
        self.namespace_at(self.url.clone())
    }
}

#[async_trait]
impl NetworkBackend for PostgresBackend {
    fn service_addr(&self) -> SocketAddr {
        let rest = self.url.split_once("://").unwrap().1;
        let host_port = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let host_port = host_port.split('/').next().unwrap();
        std::net::ToSocketAddrs::to_socket_addrs(host_port)
            .unwrap()
            .next()
            .unwrap()
    }

    async fn namespace_via(&self, via: SocketAddr) -> Box<dyn Namespace> {
        self.namespace_at(with_addr(&self.url, via))
    }
}

#[async_trait]
impl NativeBackend for PostgresBackend {
    async fn namespace_with_raw_ids(&self, raw_ids: &[&str]) -> Box<dyn Namespace> {
        let ns = PostgresNamespace {
            url: self.url.clone(),
            schema: unique_name("rkms_t"),
        };
        drop(ns.connect().await);
        let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
        for raw in raw_ids {
            sqlx::query(&format!(
                "INSERT INTO \"{}\".rkms_keys (id, record, version) VALUES ($1, '\\x00', 1)",
                ns.schema
            ))
            .bind(*raw)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
        Box::new(ns)
    }
}

impl PostgresNamespace {
    fn config(&self) -> PostgresConfig {
        let mut config = PostgresConfig::new(&self.url);
        config.schema = self.schema.clone();
        config.max_connections = 1;
        config.operation_timeout = Duration::from_secs(2);
        config
    }
}

#[async_trait]
impl Namespace for PostgresNamespace {
    async fn connect(&self) -> Arc<dyn Store> {
        Arc::new(
            PostgresStore::open(&self.config())
                .await
                .expect("PostgreSQL answers"),
        )
    }

    async fn cleanup(self: Box<Self>) {
        let pool = sqlx::PgPool::connect(&self.url)
            .await
            .expect("PostgreSQL answers");
        sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.schema
        ))
        .execute(&pool)
        .await
        .expect("the test schema is dropped");
        pool.close().await;
    }
}

async fn postgres_backend() -> PostgresBackend {
    PostgresBackend {
        url: endpoint(&POSTGRES),
    }
}

rkms_conformance::conformance_suite!(postgres_backend);

#[tokio::test]
async fn servers_starting_at_once_migrate_once() {
    let backend = postgres_backend().await;
    let ns = PostgresNamespace {
        url: backend.url.clone(),
        schema: unique_name("rkms_t"),
    };
    let config = ns.config();
    let stores = futures::future::join_all((0..8).map(|_| PostgresStore::open(&config))).await;
    assert!(
        stores.iter().all(Result::is_ok),
        "every concurrent open succeeds"
    );
    let pool = sqlx::PgPool::connect(&backend.url).await.unwrap();
    let applied: Vec<i32> = sqlx::query_scalar(&format!(
        "SELECT version FROM \"{}\".rkms_migrations ORDER BY version",
        ns.schema
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(applied, [1]);
    Box::new(ns).cleanup().await;
}

#[test]
fn addresses_are_replaced_in_urls() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    assert_eq!(
        with_addr("postgres://u:p@db:5432/keys", addr),
        "postgres://u:p@127.0.0.1:9/keys"
    );
    assert_eq!(
        with_addr("postgres://db/keys", addr),
        "postgres://127.0.0.1:9/keys"
    );
}
