//! End to end for every production store: three server processes sharing one store, hit
//! concurrently for the same fresh ids, converge on exactly one key per id; a key lives
//! through its whole lifecycle across them; and the `rkms-server key` commands work on the
//! same store.
//!
//! Needs the test services: `scripts/services.sh start && source .test-services/env`. The
//! servers use local KMS regions over one shared keyring, so the store is what is under test.

mod support;

use support::lifecycle::{assert_key_commands, assert_lifecycle, LIFECYCLE_SECTIONS};
use support::{assert_servers_converge, key, required_env, unique, Server, ANONYMOUS_PRINCIPAL};

async fn three_servers_converge(store_section: String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rkms.toml");
    std::fs::write(
        &config,
        format!(
            "[kms]\nprovider = \"local\"\nregions = [\"local-1\", \"local-2\", \"local-3\"]\nkeyring_path = {:?}\n\n[store]\n{store_section}\n{LIFECYCLE_SECTIONS}{ANONYMOUS_PRINCIPAL}",
            dir.path().join("keyring.json")
        ),
    )
    .unwrap();
    let servers = Server::start_together(3, &["--config", config.to_str().unwrap()]);
    assert_servers_converge(&servers, &unique("fresh")).await;
    assert_lifecycle(&servers, &(unique("life") + "-key")).await;
    let id = unique("command") + "-key";
    key(&reqwest::Client::new(), &servers[0], &id).await;
    assert_key_commands(&config, dir.path(), &id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_postgres_converge() {
    let url = required_env("RKMS_TEST_POSTGRES_URL");
    let schema = unique("rkms_e2e_");
    three_servers_converge(format!(
        "backend = \"postgres\"\nurl = {url:?}\nschema = {schema:?}\nmax_connections = 4"
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_redis_converge() {
    let url = required_env("RKMS_TEST_REDIS_URL");
    let prefix = unique("rkms-e2e-") + ":";
    three_servers_converge(format!(
        "backend = \"redis\"\nurl = {url:?}\nprefix = {prefix:?}"
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_etcd_converge() {
    let endpoints: Vec<String> = required_env("RKMS_TEST_ETCD_ENDPOINTS")
        .split(',')
        .map(str::to_owned)
        .collect();
    let prefix = unique("rkms-e2e-") + "/";
    three_servers_converge(format!(
        "backend = \"etcd\"\nendpoints = {endpoints:?}\nprefix = {prefix:?}"
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_dynamodb_converge() {
    let endpoint = required_env("RKMS_TEST_DYNAMODB_ENDPOINT");
    let table = unique("rkms_e2e_");
    three_servers_converge(format!(
        "backend = \"dynamodb\"\ntable_name = {table:?}\nregion = \"us-east-1\"\nendpoint = {endpoint:?}\ncreate_table = true\ntimeout_ms = 5000"
    ))
    .await;
}
