//! The original Go RKMS's DynamoDB items, end to end: served while `legacy_records = "serve"`,
//! upgraded by `rkms-server legacy upgrade` (dry run, real run, rerun) and refused once
//! `legacy_records = "refuse"`. Emulated DynamoDB and KMS regions (moto).
//!
//! Needs the test services: `scripts/services.sh start && source .test-services/env`.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rkms_core::{DataKey, EncryptionContext, Kms};
use rkms_kms_aws::{AwsKms, AwsKmsConfig};
use support::{emulated_regions, get_json, required_env, unique, Server, ANONYMOUS_PRINCIPAL};

struct Table {
    dir: tempfile::TempDir,
    name: String,
    client: aws_sdk_dynamodb::Client,
    regions: Vec<Arc<AwsKms>>,
}

impl Table {
    async fn new() -> Self {
        let endpoint = required_env("RKMS_TEST_DYNAMODB_ENDPOINT");
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&endpoint)
            .load()
            .await;
        let mut regions = Vec::new();
        for (region, kms_endpoint) in emulated_regions() {
            let mut config = AwsKmsConfig::new(&region, format!("alias/rkms-{region}"));
            config.endpoint = Some(kms_endpoint);
            regions.push(Arc::new(AwsKms::connect(&config).await));
        }
        let table = Self {
            dir: tempfile::tempdir().unwrap(),
            name: unique("rkms_legacy_e2e_"),
            client: aws_sdk_dynamodb::Client::new(&sdk),
            regions,
        };
        table.write_config("serve");
        table
    }

    fn config_path(&self) -> String {
        self.dir
            .path()
            .join("rkms.toml")
            .to_str()
            .unwrap()
            .to_owned()
    }

    fn write_config(&self, legacy_records: &str) {
        let regions: Vec<String> = self
            .regions
            .iter()
            .map(|k| format!("{:?}", k.region()))
            .collect();
        let key_ids: Vec<String> = self
            .regions
            .iter()
            .map(|k| format!("{0} = \"alias/rkms-{0}\"", k.region()))
            .collect();
        let endpoints: Vec<String> = emulated_regions()
            .iter()
            .map(|(r, e)| format!("{r} = {e:?}"))
            .collect();
        let config = format!(
            "[kms]\nprovider = \"aws\"\nregions = [{}]\nkey_ids = {{ {} }}\n[kms.endpoints]\n{}\n\
             [store]\nbackend = \"dynamodb\"\ntable_name = {:?}\nregion = \"us-east-1\"\nendpoint = {:?}\n\
             create_table = true\nlegacy_records = {legacy_records:?}\n[cache]\nenabled = false\n{}",
            regions.join(", "),
            key_ids.join(", "),
            endpoints.join("\n"),
            self.name,
            required_env("RKMS_TEST_DYNAMODB_ENDPOINT"),
            ANONYMOUS_PRINCIPAL,
        );
        std::fs::write(self.config_path(), config).unwrap();
    }

    /// Writes an item as the original Go RKMS did: `key` wrapped with no encryption context
    /// in every region.
    async fn put_original(&self, id: &str, key: &DataKey) {
        let mut keys = HashMap::new();
        for kms in &self.regions {
            let ciphertext = kms.encrypt(key, &EncryptionContext::empty()).await.unwrap();
            keys.insert(
                kms.region().to_owned(),
                AttributeValue::S(BASE64.encode(ciphertext)),
            );
        }
        self.client
            .put_item()
            .table_name(&self.name)
            .item("id", AttributeValue::S(id.into()))
            .item("keys", AttributeValue::M(keys))
            .send()
            .await
            .unwrap();
    }

    async fn item(&self, id: &str) -> HashMap<String, AttributeValue> {
        self.client
            .get_item()
            .table_name(&self.name)
            .key("id", AttributeValue::S(id.into()))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
            .unwrap()
    }

    /// Runs `rkms-server legacy upgrade` with `args`; returns success and standard output.
    fn upgrade(&self, args: &[&str]) -> (bool, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_rkms-server"))
            .args(["legacy", "upgrade", "--config", &self.config_path()])
            .args(args)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success() || !stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), stdout)
    }

    async fn drop_table(self) {
        let _ = self
            .client
            .delete_table()
            .table_name(&self.name)
            .send()
            .await;
    }
}

async fn key_of(client: &reqwest::Client, server: &Server, id: &str) -> (u16, serde_json::Value) {
    get_json(client, &server.key_url(&format!("id={id}"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_items_are_served_upgraded_by_the_command_then_refused_when_configured() {
    let table = Table::new().await;
    let client = reqwest::Client::new();
    let server = Server::start(&["--config", &table.config_path()]);
    // The server made the table; RKMS's own record sits beside the originals.
    let (status, _) = key_of(&client, &server, "native").await;
    assert_eq!(status, 200);
    let originals = [
        ("orders", DataKey::new(vec![1; 32])),
        ("payments", DataKey::new(vec![2; 32])),
    ];
    for (id, key) in &originals {
        table.put_original(id, key).await;
    }
    for (id, key) in &originals {
        let (status, body) = key_of(&client, &server, id).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["key"], BASE64.encode(key.expose_secret()));
    }
    server.stop();

    let (ok, out) = table.upgrade(&["--dry-run"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("3 items scanned: would upgrade 2, already current 1, failed 0"),
        "{out}"
    );
    assert!(
        !table.item("orders").await.contains_key("record"),
        "a dry run writes nothing"
    );

    let (ok, out) = table.upgrade(&[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("3 items scanned: upgraded 2, already current 1, failed 0"),
        "{out}"
    );
    for (id, _) in &originals {
        let item = table.item(id).await;
        assert!(item.contains_key("record") && item.contains_key("version"));
        assert!(
            item.contains_key("keys"),
            "the original's keys stay for Go servers"
        );
    }
    let (ok, out) = table.upgrade(&[]);
    assert!(ok && out.contains("upgraded 0, already current 3"), "{out}");

    table.write_config("refuse");
    table.put_original("late", &DataKey::new(vec![3; 32])).await;
    let server = Server::start(&["--config", &table.config_path()]);
    for (id, key) in &originals {
        let (status, body) = key_of(&client, &server, id).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["key"],
            BASE64.encode(key.expose_secret()),
            "the same key after the upgrade"
        );
    }
    let (status, body) = key_of(&client, &server, "late").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error_type"], "InternalError");
    server.stop();
    table.drop_table().await;
}
