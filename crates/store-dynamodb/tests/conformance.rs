//! The shared conformance suite against DynamoDB (moto's server, or DynamoDB Local): every
//! namespace is a fresh table.
//!
//! Finds the endpoint through `RKMS_TEST_DYNAMODB_ENDPOINT` (set by `scripts/services.sh`), else
//! starts DynamoDB Local with testcontainers where a Docker engine runs, else fails saying how
//! to start it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use rkms_conformance::services::{endpoint, ServiceSpec};
use rkms_conformance::{unique_name, Backend, Namespace, NativeBackend, NetworkBackend};
use rkms_core::Store;
use rkms_store_dynamodb::{DynamoDbConfig, DynamoDbStore};

const DYNAMODB: ServiceSpec = ServiceSpec {
    env_var: "RKMS_TEST_DYNAMODB_ENDPOINT",
    image: ("amazon/dynamodb-local", "2.5.4"),
    port: 8000,
    container_env: &[],
    container_cmd: &[],
    ready_message: "Initializing DynamoDB Local",
    ready_on_stderr: false,
    url: |addr| format!("http://{addr}"),
};

struct DynamoDbBackend {
    endpoint: String,
}

struct DynamoDbNamespace {
    endpoint: String,
    direct: String,
    table: String,
}

impl DynamoDbNamespace {
    fn config(&self, endpoint: &str) -> DynamoDbConfig {
        let mut config = DynamoDbConfig::new(&self.table, "us-east-1");
        config.endpoint = Some(endpoint.to_owned());
        config.create_table = true;
        config.operation_timeout = Duration::from_secs(3);
        config
    }
}

#[async_trait]
impl Backend for DynamoDbBackend {
    async fn namespace(&self) -> Box<dyn Namespace> {
        let ns = DynamoDbNamespace {
            endpoint: self.endpoint.clone(),
            direct: self.endpoint.clone(),
            table: unique_name("rkms_t_"),
        };
        DynamoDbStore::open(&ns.config(&ns.direct))
            .await
            .expect("DynamoDB answers");
        Box::new(ns)
    }
}

#[async_trait]
impl NetworkBackend for DynamoDbBackend {
    fn service_addr(&self) -> SocketAddr {
        let host_port = self
            .endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/');
        std::net::ToSocketAddrs::to_socket_addrs(host_port)
            .unwrap()
            .next()
            .unwrap()
    }

    async fn namespace_via(&self, via: SocketAddr) -> Box<dyn Namespace> {
        let ns = DynamoDbNamespace {
            endpoint: format!("http://{via}"),
            direct: self.endpoint.clone(),
            table: unique_name("rkms_t_"),
        };
        DynamoDbStore::open(&ns.config(&ns.direct))
            .await
            .expect("DynamoDB answers");
        Box::new(ns)
    }
}

#[async_trait]
impl NativeBackend for DynamoDbBackend {
    async fn namespace_with_raw_ids(&self, raw_ids: &[&str]) -> Box<dyn Namespace> {
        let ns = DynamoDbNamespace {
            endpoint: self.endpoint.clone(),
            direct: self.endpoint.clone(),
            table: unique_name("rkms_t_"),
        };
        DynamoDbStore::open(&ns.config(&ns.direct))
            .await
            .expect("DynamoDB answers");
        let client = sdk_client(&self.endpoint).await;
        for raw in raw_ids {
            client
                .put_item()
                .table_name(&ns.table)
                .item("id", AttributeValue::S((*raw).to_owned()))
                .item("record", AttributeValue::B(vec![0].into()))
                .item("version", AttributeValue::N("1".into()))
                .send()
                .await
                .unwrap();
        }
        Box::new(ns)
    }
}

async fn sdk_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&sdk)
}

#[async_trait]
impl Namespace for DynamoDbNamespace {
    async fn connect(&self) -> Arc<dyn Store> {
        let mut config = self.config(&self.endpoint);
        config.create_table = false;
        Arc::new(
            DynamoDbStore::open(&config)
                .await
                .expect("DynamoDB answers"),
        )
    }

    async fn cleanup(self: Box<Self>) {
        sdk_client(&self.direct)
            .await
            .delete_table()
            .table_name(&self.table)
            .send()
            .await
            .expect("the test table is deleted");
    }
}

async fn dynamodb_backend() -> DynamoDbBackend {
    DynamoDbBackend {
        endpoint: endpoint(&DYNAMODB),
    }
}

rkms_conformance::conformance_suite!(dynamodb_backend);
