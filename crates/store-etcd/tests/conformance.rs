//! The shared conformance suite against etcd: every namespace is a fresh key prefix.
//!
//! Finds the cluster through `RKMS_TEST_ETCD_ENDPOINTS` (comma-separated, set by
//! `scripts/services.sh`), else starts one with testcontainers where a Docker engine runs, else
//! fails saying how to start it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rkms_conformance::services::{endpoint, ServiceSpec};
use rkms_conformance::{unique_name, Backend, Namespace, NativeBackend, NetworkBackend};
use rkms_core::Store;
use rkms_store_etcd::{EtcdConfig, EtcdStore};

const ETCD: ServiceSpec = ServiceSpec {
    env_var: "RKMS_TEST_ETCD_ENDPOINTS",
    image: ("quay.io/coreos/etcd", "v3.5.17"),
    port: 2379,
    container_env: &[
        ("ETCD_LISTEN_CLIENT_URLS", "http://0.0.0.0:2379"),
        ("ETCD_ADVERTISE_CLIENT_URLS", "http://127.0.0.1:2379"),
    ],
    container_cmd: &["etcd"],
    ready_message: "serving client traffic",
    ready_on_stderr: true,
    url: |addr| format!("http://{addr}"),
};

struct EtcdBackend {
    endpoints: Vec<String>,
}

struct EtcdNamespace {
    endpoints: Vec<String>,
    direct: Vec<String>,
    prefix: String,
}

impl EtcdNamespace {
    async fn open(&self, endpoints: &[String]) -> EtcdStore {
        let mut config = EtcdConfig::new(endpoints.to_vec());
        config.prefix = self.prefix.clone();
        config.operation_timeout = Duration::from_secs(2);
        EtcdStore::open(&config).await.expect("etcd answers")
    }
}

#[async_trait]
impl Backend for EtcdBackend {
    async fn namespace(&self) -> Box<dyn Namespace> {
        Box::new(EtcdNamespace {
            endpoints: self.endpoints.clone(),
            direct: self.endpoints.clone(),
            prefix: unique_name("rkms-t-") + "/",
        })
    }
}

#[async_trait]
impl NetworkBackend for EtcdBackend {
    fn service_addr(&self) -> SocketAddr {
        let host_port = self.endpoints[0].trim_start_matches("http://");
        std::net::ToSocketAddrs::to_socket_addrs(host_port)
            .unwrap()
            .next()
            .unwrap()
    }

    async fn namespace_via(&self, via: SocketAddr) -> Box<dyn Namespace> {
        Box::new(EtcdNamespace {
            endpoints: vec![format!("http://{via}")],
            direct: self.endpoints.clone(),
            prefix: unique_name("rkms-t-") + "/",
        })
    }
}

#[async_trait]
impl NativeBackend for EtcdBackend {
    async fn namespace_with_raw_ids(&self, raw_ids: &[&str]) -> Box<dyn Namespace> {
        let prefix = unique_name("rkms-t-") + "/";
        let mut client = etcd_client::Client::connect(&self.endpoints, None)
            .await
            .unwrap();
        for raw in raw_ids {
            client
                .put(format!("{prefix}{raw}"), [0u8; 1].as_slice(), None)
                .await
                .unwrap();
        }
        Box::new(EtcdNamespace {
            endpoints: self.endpoints.clone(),
            direct: self.endpoints.clone(),
            prefix,
        })
    }
}

#[async_trait]
impl Namespace for EtcdNamespace {
    async fn connect(&self) -> Arc<dyn Store> {
        Arc::new(self.open(&self.endpoints).await)
    }

    async fn cleanup(self: Box<Self>) {
        let mut client = etcd_client::Client::connect(&self.direct, None)
            .await
            .unwrap();
        client
            .delete(
                self.prefix.as_str(),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .unwrap();
    }
}

async fn etcd_backend() -> EtcdBackend {
    EtcdBackend {
        endpoints: endpoint(&ETCD).split(',').map(str::to_owned).collect(),
    }
}

rkms_conformance::conformance_suite!(etcd_backend);
