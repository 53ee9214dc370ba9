//! End to end: the audit log of the built server binary, with fsync per group of lines,
//! rotation on SIGHUP, and several servers writing one file.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use support::{assert_servers_converge, get_json, key, Server, ANONYMOUS_PRINCIPAL};

/// `rkms-server audit verify FILE`.
fn verify(path: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rkms-server"))
        .args(["audit", "verify", path.to_str().unwrap()])
        .output()
        .unwrap()
}

fn assert_intact(path: &Path) -> String {
    let output = verify(path);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{} does not verify: {stdout}{}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The value of an unlabelled counter in Prometheus text, 0 when absent.
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn sync_always_shares_one_fsync_among_concurrent_requests() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rkms.toml");
    std::fs::write(
        &config,
        format!(
            "[kms]\nprovider = \"local\"\nregions = [\"eu\", \"us\"]\n[audit]\nsync = \"always\"\n\
             {ANONYMOUS_PRINCIPAL}"
        ),
    )
    .unwrap();
    let server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let client = reqwest::Client::new();
    const REQUESTS: usize = 64;
    let ids: Vec<String> = (0..REQUESTS).map(|n| format!("synced-{}", n % 8)).collect();
    futures::future::join_all(ids.iter().map(|id| key(&client, &server, id))).await;

    let metrics = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let syncs = counter(&metrics, "rkms_audit_syncs_total");
    assert!(
        (1.0..REQUESTS as f64).contains(&syncs),
        "{REQUESTS} concurrent requests shared fewer fsyncs than lines, at least one: {syncs}"
    );
    assert!(server.stop().success());
    let audit = dir.path().join("audit.log");
    assert_eq!(audit_lines(&audit).len(), REQUESTS);
    assert_intact(&audit);
}

#[tokio::test]
async fn the_audit_log_is_reopened_on_sighup_for_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::development(dir.path());
    let client = reqwest::Client::new();
    key(&client, &server, "before-rotation").await;
    let audit = dir.path().join("audit.log");
    let rotated = dir.path().join("audit.log.1");
    std::fs::rename(&audit, &rotated).unwrap();
    server.signal("HUP");
    let reopened = || {
        let log = server.log.lock().unwrap();
        log.iter().any(|l| l.contains("audit log reopened"))
    };
    for _ in 0..250 {
        if reopened() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        reopened() && audit.exists(),
        "SIGHUP reopens the audit log at its path"
    );
    key(&client, &server, "after-rotation").await;
    let (status, _) = get_json(&client, &format!("{}/healthz", server.base)).await;
    assert_eq!(status, 200);
    assert!(server.stop().success());

    let ids = |path: &Path| -> Vec<String> {
        audit_lines(path)
            .iter()
            .map(|l| l["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&rotated), ["before-rotation"]);
    assert_eq!(ids(&audit), ["after-rotation"]);
    assert_intact(&rotated);
    assert_intact(&audit);
}

#[tokio::test]
async fn three_servers_sharing_a_data_directory_write_one_verifiable_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let servers = Server::start_together(3, &["--data-dir", dir.path().to_str().unwrap()]);
    assert_servers_converge(&servers, "audited").await;
    for server in servers {
        assert!(server.stop().success());
    }
    let audit = dir.path().join("audit.log");
    let report = assert_intact(&audit);
    let lines = audit_lines(&audit);
    assert!(
        report.contains(&format!("{} lines", lines.len())),
        "{report}"
    );
    let writers: std::collections::BTreeSet<&str> = lines
        .iter()
        .map(|l| l["writer"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(writers.len(), 3, "each server's lines name it");
}
