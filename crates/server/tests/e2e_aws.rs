//! End to end with AWS KMS: the server binary, three emulated regions (moto, real AWS wire
//! protocol) behind proxies that can refuse or blackhole a region, and the SQLite store.
//!
//! Needs the emulated regions: `scripts/services.sh start && source .test-services/env`.

mod support;

use std::time::{Duration, Instant};

use rkms_conformance::proxy::{Proxy, ProxyMode};
use rkms_core::{KeyId, Record, Store};
use rkms_store_sqlite::{SqliteConfig, SqliteStore};
use support::{emulated_regions, get_json, key, region_proxy, Server, ANONYMOUS_PRINCIPAL};

/// The KMS operation timeout the tests configure.
const KMS_TIMEOUT: Duration = Duration::from_millis(1000);

struct Deployment {
    dir: tempfile::TempDir,
    proxies: Vec<Proxy>,
}

impl Deployment {
    /// Three regions behind proxies, the SQLite store, the cache off so that every request
    /// reaches KMS, and a repairer that runs every second.
    async fn new() -> Self {
        Self::with_cache("enabled = false").await
    }

    /// [`Deployment::new`] with these `[cache]` settings.
    async fn with_cache(cache: &str) -> Self {
        let regions = emulated_regions();
        let mut proxies = Vec::new();
        for (_, endpoint) in &regions {
            proxies.push(region_proxy(endpoint).await);
        }
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = regions.iter().map(|(r, _)| format!("{r:?}")).collect();
        let key_ids: Vec<String> = regions
            .iter()
            .map(|(r, _)| format!("{r} = \"alias/rkms-{r}\""))
            .collect();
        let endpoints: Vec<String> = regions
            .iter()
            .zip(&proxies)
            .map(|((r, _), p)| format!("{r} = \"http://{}\"", p.addr()))
            .collect();
        let config = format!(
            "[kms]\nprovider = \"aws\"\nregions = [{}]\nkey_ids = {{ {} }}\ntimeout_ms = {}\nconnect_timeout_ms = 300\n\
             [kms.endpoints]\n{}\n[store]\nbackend = \"sqlite\"\npath = {:?}\n\
             [cache]\n{}\n[repair]\ninterval_seconds = 1\n{}",
            names.join(", "),
            key_ids.join(", "),
            KMS_TIMEOUT.as_millis(),
            endpoints.join("\n"),
            dir.path().join("rkms.sqlite3"),
            cache,
            ANONYMOUS_PRINCIPAL,
        );
        std::fs::write(dir.path().join("rkms.toml"), config).unwrap();
        Self { dir, proxies }
    }

    fn server(&self) -> Server {
        Server::start(&[
            "--config",
            self.dir.path().join("rkms.toml").to_str().unwrap(),
        ])
    }

    async fn stored_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.records().await.into_iter().map(|r| r.id).collect();
        ids.sort();
        ids
    }

    async fn records(&self) -> Vec<Record> {
        let store = SqliteStore::open(&SqliteConfig::new(self.dir.path().join("rkms.sqlite3")))
            .await
            .unwrap();
        let page = store.list(None, 10_000).await.unwrap();
        let mut records = Vec::new();
        for id in &page.ids {
            let stored = store.get(id).await.unwrap().unwrap();
            records.push(Record::decode(&stored.bytes).unwrap());
        }
        store.close().await;
        records
    }

    /// Waits until no record lacks a copy; returns the ids still lacking one after `limit`.
    async fn wait_until_repaired(&self, limit: Duration) -> Vec<String> {
        let started = Instant::now();
        loop {
            let lacking: Vec<String> = self
                .records()
                .await
                .into_iter()
                .filter(|r| !r.current().missing.is_empty() || r.current().copies.len() < 3)
                .map(|r| r.id)
                .collect();
            if lacking.is_empty() || started.elapsed() > limit {
                return lacking;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_created_and_stable_across_restarts() {
    let deployment = Deployment::new().await;
    let client = reqwest::Client::new();
    let server = deployment.server();
    let first = key(&client, &server, "aws-stable").await;
    assert_eq!(key(&client, &server, "aws-stable").await, first);
    assert_ne!(key(&client, &server, "aws-other").await, first);
    assert!(server.stop().success());
    let server = deployment.server();
    assert_eq!(key(&client, &server, "aws-stable").await, first);
    assert_eq!(deployment.stored_ids().await, ["aws-other", "aws-stable"]);
    let store = SqliteStore::open(&SqliteConfig::new(
        deployment.dir.path().join("rkms.sqlite3"),
    ))
    .await
    .unwrap();
    let stored = store
        .get(&KeyId::parse("aws-stable").unwrap())
        .await
        .unwrap()
        .unwrap();
    let record = Record::decode(&stored.bytes).unwrap();
    let regions: Vec<String> = emulated_regions().into_iter().map(|(r, _)| r).collect();
    assert_eq!(
        record.current().copies.keys().cloned().collect::<Vec<_>>(),
        regions,
        "one copy per region"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_first_region_still_serves_existing_ids() {
    let deployment = Deployment::new().await;
    let client = reqwest::Client::new();
    let server = deployment.server();
    let before = key(&client, &server, "refused-existing").await;
    deployment.proxies[0].set(ProxyMode::Refuse).await;
    for _ in 0..3 {
        assert_eq!(key(&client, &server, "refused-existing").await, before);
    }
    // A create needs two of the three regions: it succeeds, and the record lists the
    // missing region until the repairer adds its copy once the region is back.
    let created = key(&client, &server, "refused-new").await;
    let record = deployment
        .records()
        .await
        .into_iter()
        .find(|r| r.id == "refused-new")
        .unwrap();
    assert_eq!(record.current().missing, [emulated_regions()[0].0.clone()]);
    deployment.proxies[0].set(ProxyMode::Pass).await;
    assert!(deployment
        .wait_until_repaired(Duration::from_secs(10))
        .await
        .is_empty());
    assert_eq!(key(&client, &server, "refused-new").await, created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_first_region_still_serves_existing_ids_within_the_bound() {
    let deployment = Deployment::new().await;
    let client = reqwest::Client::new();
    let server = deployment.server();
    let before = key(&client, &server, "blackholed-existing").await;
    deployment.proxies[0].set(ProxyMode::Blackhole).await;
    // The documented bound: the hedge delay (at most its 250 ms cap) plus a healthy region's
    // call; well under the KMS timeout, which the dead region would otherwise cost.
    let bound = Duration::from_millis(250) + Duration::from_millis(500);
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(key(&client, &server, "blackholed-existing").await, before);
        let took = started.elapsed();
        assert!(took < bound, "request took {took:?}, bound {bound:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_lost_and_restored_mid_run_loses_no_request_and_every_record_is_repaired() {
    let deployment = Deployment::new().await;
    let server = deployment.server();
    let client = reqwest::Client::new();
    let run = |phase: &'static str| {
        let (client, url) = (client.clone(), server.key_url(""));
        async move {
            let mut failures = Vec::new();
            for i in 0..30 {
                for id in [format!("{phase}-{i}"), format!("{phase}-{}", i / 2)] {
                    let response = client.get(format!("{url}id={id}")).send().await.unwrap();
                    if response.status() != 200 {
                        failures.push((id, response.status(), response.text().await.unwrap()));
                    }
                }
            }
            failures
        }
    };
    assert_eq!(run("before").await, []);
    deployment.proxies[0].set(ProxyMode::Refuse).await;
    assert_eq!(
        run("refused").await,
        [],
        "no request fails while the first region refuses"
    );
    deployment.proxies[0].set(ProxyMode::Blackhole).await;
    assert_eq!(
        run("blackholed").await,
        [],
        "no request fails while the first region hangs"
    );
    deployment.proxies[0].set(ProxyMode::Pass).await;
    assert_eq!(run("after").await, []);
    let lacking = deployment
        .wait_until_repaired(Duration::from_secs(15))
        .await;
    assert!(
        lacking.is_empty(),
        "records still lacking a copy: {lacking:?}"
    );
    let metrics = server.metrics(&client).await;
    for name in [
        "rkms_kms_calls_total",
        "rkms_repairs_total",
        "rkms_region_breaker_state",
        "rkms_store_calls_total",
    ] {
        assert!(metrics.contains(name), "/metrics has {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_region_down_gives_503_json_and_writes_nothing() {
    let deployment = Deployment::new().await;
    let client = reqwest::Client::new();
    let server = deployment.server();
    key(&client, &server, "down-existing").await;
    deployment.proxies[0].set(ProxyMode::Refuse).await;
    deployment.proxies[1].set(ProxyMode::Blackhole).await;
    deployment.proxies[2].set(ProxyMode::Refuse).await;
    for id in ["down-existing", "down-new"] {
        let (status, body) = get_json(&client, &server.key_url(&format!("id={id}"))).await;
        assert_eq!(status, 503, "{id}: {body}");
        assert_eq!(body["error_type"], "ServiceUnavailable");
        assert!(
            body["error_message"]
                .as_str()
                .unwrap()
                .contains("no KMS region"),
            "{body}"
        );
    }
    assert_eq!(deployment.stored_ids().await, ["down-existing"]);
    // One more failed request opens every region's breaker: not ready, and answers come fast.
    let (status, _) = get_json(&client, &server.key_url("id=down-existing")).await;
    assert_eq!(status, 503);
    let mut status = 0;
    for _ in 0..30 {
        status = get_json(&client, &format!("{}/readyz", server.base))
            .await
            .0;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 503, "not ready within 3 s of every breaker opening");
    // Every breaker is open. An open region is still asked when nothing else can serve, but
    // concurrent requests share one probe of it: ten requests answer within about one KMS
    // timeout, and the hanging region gets one call, not ten.
    let hanging = &emulated_regions()[1].0;
    let calls_before = kms_calls(&server, &client, hanging).await;
    let started = Instant::now();
    let url = server.key_url("id=down-existing");
    let answers = futures::future::join_all((0..10).map(|_| get_json(&client, &url))).await;
    let took = started.elapsed();
    for (status, body) in answers {
        assert_eq!(status, 503, "{body}");
    }
    assert!(took < KMS_TIMEOUT * 2, "ten requests took {took:?}");
    let calls = kms_calls(&server, &client, hanging).await - calls_before;
    assert!(
        calls <= 2,
        "{calls} calls to the hanging region for ten requests"
    );
}

/// KMS calls made to `region` so far, whatever their outcome, from `/metrics`.
async fn kms_calls(server: &Server, client: &reqwest::Client, region: &str) -> u64 {
    let label = format!("region=\"{region}\"");
    server
        .metric_total(client, "rkms_kms_calls_total", &label)
        .await as u64
}

/// On the real clock, as in production: a key fetched within `ttl + stale_grace` is served,
/// marked stale, while every region refuses connections, and not after the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_key_is_served_stale_within_the_grace_while_every_region_is_down() {
    let deployment = Deployment::with_cache("ttl_seconds = 1\nstale_grace_seconds = 3").await;
    let client = reqwest::Client::new();
    let data_dir = tempfile::tempdir().unwrap();
    let server = Server::start(&[
        "--config",
        deployment.dir.path().join("rkms.toml").to_str().unwrap(),
        "--data-dir",
        data_dir.path().to_str().unwrap(),
    ]);
    let first = key(&client, &server, "aws-stale").await;
    for proxy in &deployment.proxies {
        proxy.set(ProxyMode::Refuse).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        key(&client, &server, "aws-stale").await,
        first,
        "past the TTL, within the grace: served stale"
    );
    let (status, body) = get_json(&client, &server.key_url("id=aws-never-fetched")).await;
    assert_eq!(status, 503, "{body}");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let (status, body) = get_json(&client, &server.key_url("id=aws-stale")).await;
    assert_eq!(status, 503, "past the grace: {body}");
    assert!(
        server
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains("serving a stale cached key")),
        "the stale answer is logged"
    );
    let audit = std::fs::read_to_string(data_dir.path().join("audit.log")).unwrap();
    let stale_lines = audit
        .lines()
        .filter(|l| l.contains("\"id\":\"aws-stale\"") && l.contains("\"stale\":true"))
        .count();
    assert_eq!(
        stale_lines, 1,
        "the stale release is audited as stale:\n{audit}"
    );
}

/// Creates a new master key in emulated `region` (at `endpoint`) under `alias`.
async fn create_master_key(region: &str, endpoint: &str, alias: &str) {
    let mut config = rkms_kms_aws::AwsKmsConfig::new(region, alias);
    config.endpoint = Some(endpoint.to_owned());
    let kms = rkms_kms_aws::AwsKms::connect(&config).await;
    let created = kms.client().create_key().send().await.unwrap();
    let key_id = created.key_metadata().unwrap().key_id().to_owned();
    kms.client()
        .create_alias()
        .alias_name(alias)
        .target_key_id(key_id)
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_whose_key_changes_has_every_copy_rewrapped_while_the_old_key_still_exists() {
    let deployment = Deployment::new().await;
    let client = reqwest::Client::new();
    let server = deployment.server();
    let ids: Vec<String> = (0..6).map(|i| format!("rewrap-{i}")).collect();
    let mut keys = Vec::new();
    for id in &ids {
        keys.push(key(&client, &server, id).await);
    }
    let rotated = client
        .post(format!("{}/api/v1/key/rotate?id=rewrap-0", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    let rotated_key = key(&client, &server, "rewrap-0").await;
    assert!(server.stop().success());

    // Region 1's key changes; the old one stays, named as previous.
    let regions = emulated_regions();
    let (region, endpoint) = &regions[0];
    let new_alias = format!("alias/rkms-new-{}", std::process::id());
    create_master_key(region, endpoint, &new_alias).await;
    let path = deployment.dir.path().join("rkms.toml");
    let old_alias = format!("alias/rkms-{region}");
    let config = std::fs::read_to_string(&path).unwrap();
    let changed = config
        .replacen(
            &format!("{region} = \"{old_alias}\""),
            &format!("{region} = \"{new_alias}\""),
            1,
        )
        .replacen(
            "timeout_ms = ",
            &format!("previous_key_ids = {{ {region} = [\"{old_alias}\"] }}\ntimeout_ms = "),
            1,
        )
        .replacen(
            "interval_seconds = 1\n",
            "interval_seconds = 1\nfirst_sweep_after_seconds = 1\n",
            1,
        );
    assert_ne!(changed, config);
    std::fs::write(&path, &changed).unwrap();

    let server = deployment.server();
    let started = Instant::now();
    loop {
        for (id, expected) in ids.iter().zip(&keys).skip(1) {
            assert_eq!(
                &key(&client, &server, id).await,
                expected,
                "{id} while rewrapping"
            );
        }
        let records = deployment.records().await;
        let stale: Vec<(String, u32)> = records
            .iter()
            .flat_map(|r| {
                r.versions
                    .iter()
                    .filter(|v| v.copies[region.as_str()].master_key != new_alias)
                    .map(|v| (r.id.clone(), v.number))
            })
            .collect();
        if stale.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "copies still under the old key: {stale:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(server.stop().success());

    // The old key is no longer needed: without it every key still reads.
    let without_previous = changed.replacen(
        &format!("previous_key_ids = {{ {region} = [\"{old_alias}\"] }}\n"),
        "",
        1,
    );
    std::fs::write(&path, without_previous).unwrap();
    deployment.proxies[1].set(ProxyMode::Refuse).await;
    deployment.proxies[2].set(ProxyMode::Refuse).await;
    let server = deployment.server();
    for (id, expected) in ids.iter().zip(&keys).skip(1) {
        assert_eq!(
            &key(&client, &server, id).await,
            expected,
            "{id} from region 1 alone"
        );
    }
    assert_eq!(key(&client, &server, "rewrap-0").await, rotated_key);
    let (status, old) = get_json(&client, &server.key_url("id=rewrap-0&version=1")).await;
    assert_eq!(
        (status, old["key"].as_str().unwrap()),
        (200, keys[0].as_str())
    );
}

/// Edits the deployment's configuration file as TOML.
fn edit_config(deployment: &Deployment, edit: impl FnOnce(&mut toml::Table)) {
    let path = deployment.dir.path().join("rkms.toml");
    let mut config: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    edit(&mut config);
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
}

/// `[kms]` of a configuration.
fn kms_section(config: &mut toml::Table) -> &mut toml::Table {
    config["kms"].as_table_mut().unwrap()
}

/// Adds `region` with master key `key_id` at `endpoint` to a configuration.
fn add_region(config: &mut toml::Table, region: &str, key_id: &str, endpoint: &str) {
    let kms = kms_section(config);
    kms["regions"].as_array_mut().unwrap().push(region.into());
    kms["key_ids"]
        .as_table_mut()
        .unwrap()
        .insert(region.into(), key_id.into());
    kms["endpoints"]
        .as_table_mut()
        .unwrap()
        .insert(region.into(), endpoint.into());
}

/// Takes `region` out of a configuration and names it in `removed_regions`.
fn remove_region(config: &mut toml::Table, region: &str) {
    let kms = kms_section(config);
    kms["regions"]
        .as_array_mut()
        .unwrap()
        .retain(|r| r.as_str() != Some(region));
    kms["key_ids"].as_table_mut().unwrap().remove(region);
    kms["endpoints"].as_table_mut().unwrap().remove(region);
    kms.insert("removed_regions".into(), vec![region].into());
}

/// The ids and version numbers of stored versions without a copy of `region`.
fn without_copy(records: &[Record], region: &str) -> Vec<(String, u32)> {
    records
        .iter()
        .flat_map(|r| {
            r.versions
                .iter()
                .filter(|v| !v.copies.contains_key(region))
                .map(|v| (r.id.clone(), v.number))
        })
        .collect()
}

/// Reads every id in `ids` again and again until `stop` is set, and returns the requests
/// that did not get their key: keys must be served throughout a reload.
fn keep_reading(
    server: &Server,
    ids: Vec<(String, String)>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    let (client, url) = (reqwest::Client::new(), server.key_url(""));
    tokio::spawn(async move {
        let (mut served, mut failures) = (0, Vec::new());
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for (id, expected) in &ids {
                let (status, body) = get_json(&client, &format!("{url}id={id}")).await;
                if status != 200 || body["key"] != expected.as_str() {
                    failures.push(format!("{id}: {status} {body}"));
                }
                served += 1;
            }
        }
        (served, failures)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_added_and_removed_by_sighup_while_serving_and_a_refused_file_changes_nothing() {
    let deployment = Deployment::new().await;
    let client = reqwest::Client::new();
    let server = deployment.server();
    let regions = emulated_regions();
    let mut ids = Vec::new();
    for i in 0..8 {
        let id = format!("reload-{i}");
        let key = key(&client, &server, &id).await;
        ids.push((id, key));
    }
    let rotated = client
        .post(format!("{}/api/v1/key/rotate?id=reload-0", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    ids[0].1 = key(&client, &server, "reload-0").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = keep_reading(&server, ids.clone(), std::sync::Arc::clone(&stop));

    // A fourth region (moto serves any region; this one lives in the first emulator, behind
    // a proxy of its own) joins by SIGHUP: every version of every record gains its copy.
    let fourth = "eu-west-1";
    let alias = format!("alias/rkms-fourth-{}", std::process::id());
    create_master_key(fourth, &regions[0].1, &alias).await;
    let fourth_proxy = region_proxy(&regions[0].1).await;
    edit_config(&deployment, |config| {
        add_region(
            config,
            fourth,
            &alias,
            &format!("http://{}", fourth_proxy.addr()),
        );
    });
    let outcome = server.reload();
    assert!(outcome.contains("configuration reloaded"), "{outcome}");
    let started = Instant::now();
    loop {
        let lacking = without_copy(&deployment.records().await, fourth);
        if lacking.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "versions still without a {fourth} copy: {lacking:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let versions: usize = deployment
        .records()
        .await
        .iter()
        .map(|r| r.versions.len())
        .sum();
    let added = server
        .metric_total(
            &client,
            "rkms_copies_added_total",
            &format!("region=\"{fourth}\""),
        )
        .await;
    assert_eq!(added, versions as f64);
    // Readiness is checked once a second: the check after the reload lists the new region.
    let started = Instant::now();
    loop {
        let (status, ready) = get_json(&client, &format!("{}/readyz", server.base)).await;
        assert_eq!(status, 200);
        if ready["regions"].as_array().unwrap().len() == 4 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "readiness still without {fourth}: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A file that fails its checks changes nothing: the four regions stay.
    let path = deployment.dir.path().join("rkms.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    edit_config(&deployment, |config| {
        kms_section(config).insert("min_regions".into(), 9.into());
    });
    let outcome = server.reload();
    assert!(outcome.contains("refused"), "{outcome}");
    assert!(outcome.contains("min_regions"), "{outcome}");
    std::fs::write(&path, &good).unwrap();

    // A new id while the fourth region refuses: its copy is missing there.
    fourth_proxy.set(ProxyMode::Refuse).await;
    let thin = key(&client, &server, "reload-thin").await;

    // The third region leaves, with a quorum of three: its copies are dropped where the
    // three configured regions hold current copies, and kept on the thin record, which
    // `regions status` reports below quorum until the fourth region is back.
    let third = regions[2].0.clone();
    edit_config(&deployment, |config| {
        remove_region(config, &third);
        kms_section(config).insert("min_regions".into(), 3.into());
    });
    let outcome = server.reload();
    assert!(outcome.contains("configuration reloaded"), "{outcome}");
    let started = Instant::now();
    loop {
        let records = deployment.records().await;
        let holding: Vec<&str> = records
            .iter()
            .filter(|r| r.versions.iter().any(|v| v.copies.contains_key(&third)))
            .map(|r| r.id.as_str())
            .collect();
        if holding == ["reload-thin"] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "records holding a {third} copy: {holding:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let config_path = deployment.dir.path().join("rkms.toml");
    let (ok, out) = support::regions_status(&config_path, deployment.dir.path());
    assert!(!ok, "a record below quorum fails the status: {out}");
    assert!(
        out.contains("below quorum (fewer than 3 current copies): 1"),
        "{out}"
    );
    assert!(out.contains("reload-thin"), "{out}");
    assert_eq!(key(&client, &server, "reload-thin").await, thin);

    fourth_proxy.set(ProxyMode::Pass).await;
    let started = Instant::now();
    loop {
        let records = deployment.records().await;
        if without_copy(&records, fourth).is_empty()
            && without_copy(&records, &third).len()
                == records.iter().map(|r| r.versions.len()).sum::<usize>()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the thin record did not gain its {fourth} copy and drop its {third} one"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (ok, out) = support::regions_status(&config_path, deployment.dir.path());
    assert!(ok, "{out}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, failures) = reader.await.unwrap();
    assert!(served > 0);
    assert_eq!(failures, Vec::<String>::new(), "keys served throughout");
    assert_eq!(key(&client, &server, "reload-thin").await, thin);
    assert!(server.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrap_waits_for_a_blackholed_region_and_resumes_while_reads_stay_within_the_bound() {
    let deployment = Deployment::new().await;
    let client = reqwest::Client::new();
    let server = deployment.server();
    let mut ids = Vec::new();
    for i in 0..12 {
        let id = format!("paused-{i}");
        let key = key(&client, &server, &id).await;
        ids.push((id, key));
    }
    let regions = emulated_regions();
    let (region, endpoint) = &regions[0];
    let old_alias = format!("alias/rkms-{region}");
    let new_alias = format!("alias/rkms-paused-{}", std::process::id());
    create_master_key(region, endpoint, &new_alias).await;

    // The first region's key changes while that region hangs: nothing can be rewrapped there.
    deployment.proxies[0].set(ProxyMode::Blackhole).await;
    edit_config(&deployment, |config| {
        let kms = kms_section(config);
        kms["key_ids"]
            .as_table_mut()
            .unwrap()
            .insert(region.clone(), new_alias.clone().into());
        let mut previous = toml::Table::new();
        previous.insert(region.clone(), vec![old_alias.clone()].into());
        kms.insert("previous_key_ids".into(), previous.into());
    });
    let outcome = server.reload();
    assert!(outcome.contains("configuration reloaded"), "{outcome}");
    let bound = Duration::from_millis(250) + Duration::from_millis(500);
    let mut took = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        for (id, expected) in &ids {
            let at = Instant::now();
            assert_eq!(&key(&client, &server, id).await, expected);
            took.push(at.elapsed());
        }
    }
    took.sort();
    let p99 = took[(took.len() * 99).div_ceil(100) - 1];
    assert!(
        p99 < bound,
        "p99 {p99:?} over {} reads, bound {bound:?}",
        took.len()
    );
    let records = deployment.records().await;
    for record in &records {
        let copy = &record.current().copies[region.as_str()];
        assert_eq!(
            copy.master_key, old_alias,
            "{} moved while its region hung",
            record.id
        );
        assert_eq!(
            record.current().copies.len(),
            3,
            "{} lost a copy",
            record.id
        );
    }

    deployment.proxies[0].set(ProxyMode::Pass).await;
    let started = Instant::now();
    loop {
        let waiting: Vec<String> = deployment
            .records()
            .await
            .into_iter()
            .filter(|r| r.current().copies[region.as_str()].master_key != new_alias)
            .map(|r| r.id)
            .collect();
        if waiting.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not rewrapped after the region came back: {waiting:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for (id, expected) in &ids {
        assert_eq!(&key(&client, &server, id).await, expected);
    }
}
