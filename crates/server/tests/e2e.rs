//! End to end: the built server binary on the embedded default (SQLite and local regions).

mod support;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use support::lifecycle::{assert_key_commands, assert_lifecycle, LIFECYCLE_SECTIONS};
use support::{
    assert_servers_converge, get_json, key, regions_status, Server, ANONYMOUS_PRINCIPAL,
};

#[tokio::test]
async fn same_id_same_key_and_different_ids_different_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::development(dir.path());
    let client = reqwest::Client::new();
    let first = key(&client, &server, "orders").await;
    assert_eq!(key(&client, &server, "orders").await, first);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&first)
        .unwrap();
    assert_eq!(decoded.len(), 32);
    assert_ne!(key(&client, &server, "invoices").await, first);
    let response = client
        .get(server.key_url("id=orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["content-type"], "application/json");
}

#[tokio::test]
async fn keys_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let server = Server::development(dir.path());
    let before = key(&client, &server, "durable").await;
    assert!(server.stop().success(), "graceful shutdown exits 0");
    let server = Server::development(dir.path());
    assert_eq!(key(&client, &server, "durable").await, before);
}

#[tokio::test]
async fn a_lost_keyring_is_not_replaced_while_the_store_holds_records() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let server = Server::development(dir.path());
    key(&client, &server, "wrapped-under-the-lost-keyring").await;
    assert!(server.stop().success());
    let keyring = dir.path().join("keyring.json");
    std::fs::remove_file(&keyring).unwrap();

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rkms-server"))
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = (0..500).find_map(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        child.try_wait().unwrap()
    });
    if exited.is_none() {
        child.kill().unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        exited.is_some_and(|status| !status.success()),
        "the server must refuse to start with a new keyring over existing records; its log:\n{stderr}"
    );
    assert!(
        stderr.contains("keyring") && stderr.contains("wrapped-under-the-lost-keyring"),
        "{stderr}"
    );
    assert!(!keyring.exists(), "no new keyring was written");
}

#[tokio::test]
async fn three_servers_sharing_a_data_directory_converge_on_one_key_per_id() {
    let dir = tempfile::tempdir().unwrap();
    // Started together, so they also race to create the keyring and the database.
    let servers = Server::start_together(3, &["--data-dir", dir.path().to_str().unwrap()]);
    assert_servers_converge(&servers, "fresh").await;
}

/// The embedded default's store and regions (a SQLite file and local regions in one data
/// directory), shared by three servers and the `rkms-server key` commands.
#[tokio::test]
async fn a_key_lives_through_its_lifecycle_on_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rkms.toml");
    std::fs::write(
        &config,
        format!(
            "[kms]\nprovider = \"local\"\nregions = [\"local-1\", \"local-2\", \"local-3\"]\n{LIFECYCLE_SECTIONS}{ANONYMOUS_PRINCIPAL}"
        ),
    )
    .unwrap();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        dir.path().to_str().unwrap(),
    ];
    let servers = Server::start_together(3, &args);
    assert_lifecycle(&servers, "orders-lifecycle").await;
    key(&reqwest::Client::new(), &servers[0], "by-command").await;
    assert_key_commands(&config, dir.path(), "by-command");
}

/// With no configuration at all, the development principal may use every operation.
#[tokio::test]
async fn the_development_default_rotates_deletes_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::development(dir.path());
    let client = reqwest::Client::new();
    let first = key(&client, &server, "dev").await;
    for (method, path, expected) in [
        ("POST", "/rotate", 200),
        ("DELETE", "", 200),
        ("GET", "", 410),
        ("POST", "/restore", 200),
        ("GET", "/info", 200),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let url = format!("{}/api/v1/key{path}?id=dev", server.base);
        let status = client
            .request(method.clone(), &url)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), expected, "{method} {url}");
    }
    assert_ne!(key(&client, &server, "dev").await, first, "rotated");
}

#[tokio::test]
async fn malformed_requests_get_4xx_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::development(dir.path());
    let client = reqwest::Client::new();
    let long = "x".repeat(300);
    for query in [
        "",
        "id=",
        "id=a%20b",
        "id=%C3%A9",
        "id=a&id=b",
        "id=%",
        "id=a;b",
        long.as_str(),
    ] {
        let (status, body) = get_json(&client, &server.key_url(query)).await;
        assert_eq!(status, 400, "query {query:?}: {body}");
        assert_eq!(body["error_type"], "BadRequest");
    }
    let (status, body) = get_json(&client, &server.key_url(&format!("id={long}"))).await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (400, Some("BadRequest"))
    );
    let response = client
        .post(server.key_url("id=a"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["error_type"],
        "MethodNotAllowed"
    );
    let (status, _) = get_json(&client, &format!("{}/api/v9/key?id=a", server.base)).await;
    assert_eq!(status, 404);
    // The server is still serving after all of that.
    key(&client, &server, "still-fine").await;
}

#[tokio::test]
async fn a_config_file_is_used_and_a_bad_one_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rkms.toml");
    let db = dir.path().join("keys.db");
    let keyring = dir.path().join("ring.json");
    std::fs::write(
        &config,
        format!(
            "[server]\napi_version = \"v1\"\n[kms]\nprovider = \"local\"\nregions = [\"eu\", \"us\"]\nkeyring_path = {keyring:?}\n\
             [store]\nbackend = \"sqlite\"\npath = {db:?}\n{ANONYMOUS_PRINCIPAL}"
        ),
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let client = reqwest::Client::new();
    key(&client, &server, "from-config").await;
    assert!(db.exists() && keyring.exists());
    drop(server);

    std::fs::write(
        &config,
        "[kms]\nprovider = \"local\"\nregions = [\"eu\"]\nmystery = 1\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rkms-server"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("mystery"));
}

#[tokio::test]
async fn the_development_default_warns_and_answers_health_checks() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::development(dir.path());
    let client = reqwest::Client::new();
    let (status, _) = get_json(&client, &format!("{}/healthz", server.base)).await;
    assert_eq!(status, 200);
    let (status, body) = get_json(&client, &format!("{}/readyz", server.base)).await;
    assert_eq!(status, 200, "{body}");
    assert!(server
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("DEVELOPMENT MODE")));
}

#[tokio::test]
async fn every_key_operation_is_audited_in_a_verifiable_chain_without_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let server = Server::development(dir.path());
    let mut handed_out = Vec::new();
    for id in ["audited-1", "audited-2", "audited-1"] {
        handed_out.push(key(&client, &server, id).await);
    }
    let (status, _) = get_json(&client, &server.key_url("id=bad%20id")).await;
    assert_eq!(status, 400);
    let log = server.log.lock().unwrap().join("\n");
    assert!(server.stop().success());

    let audit_path = dir.path().join("audit.log");
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let operations: Vec<(&str, &str, bool)> = lines
        .iter()
        .map(|l| {
            (
                l["operation"].as_str().unwrap(),
                l["id"].as_str().unwrap(),
                l["cache_hit"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        operations,
        [
            ("create", "audited-1", false),
            ("create", "audited-2", false),
            ("get", "audited-1", true)
        ],
        "one line per key operation; malformed requests are not key operations"
    );
    for line in &lines {
        assert_eq!(line["principal"], "anonymous");
        assert_eq!(line["outcome"], "ok");
        assert!(line["request_id"].as_str().is_some_and(|r| r.len() == 16));
    }
    for key in &handed_out {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(key)
            .unwrap();
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        for text in [&audit, &log] {
            assert!(
                !text.contains(key.as_str()) && !text.contains(&hex),
                "a handed-out key leaked"
            );
        }
    }

    let verify = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rkms-server"))
            .args(["audit", "verify", path.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let intact = verify(&audit_path);
    assert!(
        intact.status.success(),
        "{}",
        String::from_utf8_lossy(&intact.stderr)
    );
    assert!(String::from_utf8_lossy(&intact.stdout)
        .contains("3 lines, writers: 1; the chains are consistent"));
    std::fs::write(&audit_path, audit.replacen("audited-2", "audited-9", 1)).unwrap();
    let edited = verify(&audit_path);
    assert_eq!(edited.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&edited.stderr).contains("line 3"));
    let without_second: Vec<&str> = audit
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&audit_path, without_second.join("\n") + "\n").unwrap();
    let removed = verify(&audit_path);
    assert_eq!(removed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&removed.stderr).contains("line 2"));
}

/// Every duration at its largest accepted value still serves: none overflows a clock reading
/// (a header timeout of `u64::MAX` seconds once panicked every connection).
#[tokio::test]
async fn the_longest_accepted_durations_still_serve() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rkms.toml");
    let month: u64 = 30 * 24 * 3600;
    std::fs::write(
        &config,
        format!(
            "[kms]\nprovider = \"local\"\nregions = [\"eu\", \"us\"]\nkeyring_path = {:?}\n\
             [kms.breaker]\nopen_ms = {}\n[store]\nbackend = \"sqlite\"\npath = {:?}\n\
             [limits]\nheader_read_timeout_seconds = {month}\n\
             [cache]\nttl_seconds = {month}\nstale_grace_seconds = {month}\n\
             [repair]\ninterval_seconds = {month}\nsweep_interval_seconds = {month}\n{ANONYMOUS_PRINCIPAL}",
            dir.path().join("ring.json"),
            month * 1000,
            dir.path().join("keys.db"),
        ),
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let client = reqwest::Client::new();
    let first = key(&client, &server, "long-durations").await;
    assert_eq!(key(&client, &server, "long-durations").await, first);
    let (status, _) = get_json(&client, &format!("{}/healthz", server.base)).await;
    assert_eq!(status, 200);
}

/// The `rkms_store_calls_total{op="get"}` counter from `/metrics`.
async fn store_gets(client: &reqwest::Client, server: &Server) -> f64 {
    server
        .metric_total(client, "rkms_store_calls_total", "op=\"get\"")
        .await
}

#[tokio::test]
async fn readiness_probes_read_nothing_reveal_no_latency_and_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::development(dir.path());
    let client = reqwest::Client::new();
    key(&client, &server, "warm").await;
    let before = store_gets(&client, &server).await;
    for _ in 0..30 {
        let (status, body) = get_json(&client, &format!("{}/readyz", server.base)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["store"], "up", "{body}");
        for region in body["regions"].as_array().unwrap() {
            assert_eq!(
                region.as_object().unwrap().keys().collect::<Vec<_>>(),
                ["name", "state", "unhealthy_since"],
                "a name, up or down, and since when down; no latency: {body}"
            );
            assert_eq!(region["unhealthy_since"], serde_json::Value::Null, "{body}");
            assert_eq!(region["state"], "up", "{body}");
        }
    }
    let probe_reads = store_gets(&client, &server).await - before;
    assert!(
        probe_reads <= 5.0,
        "30 probes made {probe_reads} store reads: a probe must not read the store"
    );
    let mut limited = None;
    for _ in 0..500 {
        let response = client
            .get(format!("{}/healthz", server.base))
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            limited = Some(response.json::<serde_json::Value>().await.unwrap());
            break;
        }
    }
    let limited = limited.expect("500 probes from one address in a burst are rate limited");
    assert_eq!(limited["error_type"], "TooManyRequests", "{limited}");
}

#[tokio::test]
async fn local_state_is_private_to_the_server_user_and_the_local_provider_is_warned_of() {
    use std::os::unix::fs::PermissionsExt as _;
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    let server = Server::development(&data);
    key(&reqwest::Client::new(), &server, "private").await;
    let mode = |name: &str| {
        std::fs::metadata(data.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700, "the data directory");
    for file in std::fs::read_dir(&data).unwrap() {
        let name = file.unwrap().file_name().into_string().unwrap();
        assert_eq!(mode(&name), 0o600, "{name}");
    }
    assert!(server
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("WARN") && l.contains("local KMS provider")));
}

/// Every size and count at its largest accepted value still serves: none overflows or sizes
/// something absurd (a connection limit no semaphore holds once panicked the server).
#[tokio::test]
async fn the_largest_accepted_sizes_still_serve() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rkms.toml");
    std::fs::write(
        &config,
        format!(
            "[kms]\nprovider = \"local\"\nregions = [\"eu\", \"us\"]\nkeyring_path = {:?}\n\
             min_regions = 2\ndata_key_size_in_bytes = 1024\n\
             [kms.hedge]\nfactor = 1000\n[kms.breaker]\nfailure_threshold = 1000\n\
             [store]\nbackend = \"sqlite\"\npath = {:?}\nmax_connections = 1000\n\
             [limits]\nmax_uri_bytes = 65536\nmax_header_bytes = 1048576\n\
             max_connections = 100000\nrate_limit_per_second = 1000000\nrate_limit_burst = 1000000\n\
             [cache]\nmax_entries = 10000000\n\
             [repair]\nmax_pending = 10000000\nkms_calls_per_second = 100000\nconcurrency = 1000\n\
             {ANONYMOUS_PRINCIPAL}",
            dir.path().join("ring.json"),
            dir.path().join("keys.db"),
        ),
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let client = reqwest::Client::new();
    let first = key(&client, &server, "large-sizes").await;
    assert_eq!(key(&client, &server, "large-sizes").await, first);
    let long_id = "i".repeat(200);
    let (status, body) = get_json(
        &client,
        &server.key_url(&format!("id={long_id}&pad={}", "p".repeat(60_000))),
    )
    .await;
    assert!(status == 200 || status == 400, "{status}: {body}");
    let status = client
        .get(format!("{}/healthz", server.base))
        .header("x-filler", "f".repeat(1_000_000))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn regions_status_counts_each_regions_copies_and_fails_below_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rkms.toml");
    let local = |regions: &str, extra: &str| {
        format!("[kms]\nprovider = \"local\"\nregions = [{regions}]\n{extra}{ANONYMOUS_PRINCIPAL}")
    };
    std::fs::write(&config, local("\"local-1\", \"local-2\", \"local-3\"", "")).unwrap();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        dir.path().to_str().unwrap(),
    ];
    let server = Server::start(&args);
    let client = reqwest::Client::new();
    for id in ["a", "b", "c"] {
        key(&client, &server, id).await;
    }
    let (ok, out) = regions_status(&config, dir.path());
    assert!(ok, "{out}");
    assert!(out.contains("records: 3"), "{out}");
    let row = |out: &str, region: &str| {
        out.lines()
            .find(|l| l.starts_with(region))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
    };
    assert_eq!(row(&out, "local-1").as_deref(), Some("3 0 0 0"), "{out}");

    // A fourth region joins: every record lacks its copy, and the quorum still holds.
    std::fs::write(
        &config,
        local(
            "\"local-1\", \"local-2\", \"local-3\", \"local-4\"",
            "key_ids = { local-1 = \"rkms-local-1\", local-2 = \"rkms-local-2\", local-3 = \"rkms-local-3\", local-4 = \"rkms-local-1\" }\n",
        ),
    )
    .unwrap();
    let (ok, out) = regions_status(&config, dir.path());
    assert!(ok, "{out}");
    assert_eq!(row(&out, "local-4").as_deref(), Some("0 0 0 3"), "{out}");

    // Only one region with copies is left configured: below the quorum of two.
    std::fs::write(
        &config,
        local(
            "\"local-1\", \"local-4\"",
            "key_ids = { local-1 = \"rkms-local-1\", local-4 = \"rkms-local-1\" }\n",
        ),
    )
    .unwrap();
    let (ok, out) = regions_status(&config, dir.path());
    assert!(!ok, "below quorum must fail: {out}");
    assert!(
        out.contains("below quorum (fewer than 2 current copies): 3"),
        "{out}"
    );
    assert!(
        out.contains("copies of local-2, no longer configured: 3"),
        "{out}"
    );
}

/// Runs `rkms-server keyring ACTION REGION` on `config`; returns whether it succeeded and
/// its standard output and error.
fn keyring(action: &str, region: &str, config: &Path, data_dir: &Path) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rkms-server"))
        .args(["keyring", action, region, "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[tokio::test]
async fn a_local_keyring_rotation_rewraps_every_copy_after_sighup_and_retire_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rkms.toml");
    std::fs::write(
        &config,
        format!(
            "[kms]\nprovider = \"local\"\nregions = [\"local-1\", \"local-2\", \"local-3\"]\n\
             [cache]\nenabled = false\n[repair]\ninterval_seconds = 1\n{ANONYMOUS_PRINCIPAL}"
        ),
    )
    .unwrap();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        dir.path().to_str().unwrap(),
    ];
    let server = Server::start(&args);
    let client = reqwest::Client::new();
    let mut keys = Vec::new();
    for id in ["a", "b", "c", "d", "e"] {
        keys.push((id, key(&client, &server, id).await));
    }
    let rotated = client
        .post(format!("{}/api/v1/key/rotate?id=a", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    let first_of_a = keys[0].1.clone();
    keys[0].1 = key(&client, &server, "a").await;

    let (ok, out) = keyring("rotate", "local-1", &config, dir.path());
    assert!(ok && out.contains("\"rkms-local-1-2-"), "{out}");
    let (ok, out) = keyring("retire", "local-1", &config, dir.path());
    assert!(
        !ok,
        "retire is refused while copies need the old key: {out}"
    );
    assert!(out.contains("refused: 5 records"), "{out}");

    let outcome = server.reload();
    assert!(outcome.contains("configuration reloaded"), "{outcome}");
    let row = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("local-1"))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
    };
    let started = std::time::Instant::now();
    loop {
        let (_, out) = regions_status(&config, dir.path());
        if row(&out).as_deref() == Some("5 0 0 0") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "local-1's copies are not all rewrapped: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (id, expected) in &keys {
        assert_eq!(&key(&client, &server, id).await, expected);
    }

    let (ok, out) = keyring("retire", "local-1", &config, dir.path());
    assert!(ok, "{out}");
    assert!(out.contains("[\"rkms-local-1\"]"), "{out}");
    let keyring_text = std::fs::read_to_string(dir.path().join("keyring.json")).unwrap();
    assert!(
        !keyring_text.contains("\"rkms-local-1\": \""),
        "the old key is gone"
    );

    // Without the old key, after a reload and after a restart, every version still reads.
    let outcome = server.reload();
    assert!(outcome.contains("configuration reloaded"), "{outcome}");
    for (id, expected) in &keys {
        assert_eq!(&key(&client, &server, id).await, expected);
    }
    assert!(server.stop().success());
    let server = Server::start(&args);
    for (id, expected) in &keys {
        assert_eq!(&key(&client, &server, id).await, expected);
    }
    let (status, old) = get_json(&client, &server.key_url("id=a&version=1")).await;
    assert_eq!(
        (status, old["key"].as_str()),
        (200, Some(first_of_a.as_str()))
    );
}

#[tokio::test]
async fn a_reload_puts_new_limits_in_force_and_keeps_restart_only_settings_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rkms.toml");
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[kms]\nprovider = \"local\"\nregions = [\"local-1\", \"local-2\"]\n\
                 {extra}{ANONYMOUS_PRINCIPAL}"
            ),
        )
        .unwrap();
    };
    write("[limits]\nmax_header_bytes = 8192\n");
    let server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let client = reqwest::Client::new();
    let kept = key(&client, &server, "kept").await;
    let padded = || {
        client
            .get(format!("{}/healthz", server.base))
            .header("x-padding", "p".repeat(3000))
            .send()
    };
    assert_eq!(padded().await.unwrap().status(), 200);

    write(&format!(
        "[limits]\nmax_header_bytes = 2048\n[store]\nbackend = \"sqlite\"\npath = {:?}\n",
        dir.path().join("elsewhere.sqlite3")
    ));
    let outcome = server.reload();
    assert!(outcome.contains("configuration reloaded"), "{outcome}");
    assert!(
        server
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("[store] changed in the configuration file; it is restart-only")),
        "the kept store is named in the log"
    );
    assert_eq!(padded().await.unwrap().status(), 431);
    assert_eq!(
        key(&client, &server, "kept").await,
        kept,
        "the store in force is the one opened at start"
    );
    assert!(!dir.path().join("elsewhere.sqlite3").exists());
}

#[tokio::test]
async fn more_connection_slots_from_a_reload_serve_at_once_while_every_slot_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rkms.toml");
    let write = |slots: usize| {
        std::fs::write(
            &config,
            format!(
                "[kms]\nprovider = \"local\"\nregions = [\"local-1\", \"local-2\"]\n\
                 [limits]\nmax_connections = {slots}\nmax_connections_per_address = 0\n\
                 {ANONYMOUS_PRINCIPAL}"
            ),
        )
        .unwrap();
    };
    write(2);
    let server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    // Two silent connections hold both slots.
    let _held: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(&server.addr).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let (status, _) = get_json(&fresh(), &server.key_url("id=slots")).await;
    assert_eq!(status, 503, "every slot is taken");

    write(4);
    let outcome = server.reload();
    assert!(outcome.contains("configuration reloaded"), "{outcome}");
    let (status, body) = get_json(&fresh(), &server.key_url("id=slots")).await;
    assert_eq!(status, 200, "{body}");
}
