//! End to end: the audit log of the built server binary, with fsync per group of lines,
//! rotation on SIGHUP, several servers writing one file, and signed checkpoints.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use support::{assert_servers_converge, get_json, key, Server, ANONYMOUS_PRINCIPAL};

/// `rkms-server audit ARGS`.
fn audit(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rkms-server"))
        .arg("audit")
        .args(args)
        .output()
        .unwrap()
}

/// `rkms-server audit verify FILE`.
fn verify(path: &Path) -> Output {
    audit(&["verify", path.to_str().unwrap()])
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

    let metrics = server.metrics(&client).await;
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

/// What a forger who can write the file does after an edit to a one-writer log: every line's
/// `prev` becomes the SHA-256 of the line before it as it now reads.
fn recompute(lines: &mut [String]) {
    use sha2::{Digest as _, Sha256};
    for n in 1..lines.len() {
        let prev: String = Sha256::digest(lines[n - 1].as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let at = lines[n].find("\"prev\":\"").unwrap() + 8;
        lines[n].replace_range(at..at + 64, &prev);
    }
}

fn rewrite(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// A local-KMS configuration whose audit checkpoints are signed by `key`.
fn signed_config(dir: &Path, key: &Path) -> std::path::PathBuf {
    let config = dir.join("rkms.toml");
    std::fs::write(
        &config,
        format!(
            "[kms]\nprovider = \"local\"\nregions = [\"eu\", \"us\"]\n[audit]\nsigning_key = {key:?}\n\
             checkpoint_lines = 2\n{ANONYMOUS_PRINCIPAL}"
        ),
    )
    .unwrap();
    config
}

#[tokio::test]
async fn a_recomputed_chain_is_refused_with_the_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let signing_key = dir.path().join("audit.key");
    let made = audit(&["keygen", "--out", signing_key.to_str().unwrap()]);
    assert!(made.status.success(), "{made:?}");
    let public = dir.path().join("audit.key.pub");
    let config = signed_config(dir.path(), &signing_key);
    let server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let client = reqwest::Client::new();
    for id in ["a", "b", "c", "d", "e"] {
        key(&client, &server, id).await;
    }
    assert!(server.stop().success());
    let log = dir.path().join("audit.log");
    let signed_verify = || {
        audit(&[
            "verify",
            log.to_str().unwrap(),
            "--public-key",
            public.to_str().unwrap(),
        ])
    };
    let output = signed_verify();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("every line is anchored"), "{stdout}");
    let original: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    // The last line is a checkpoint: at shutdown, or after the last key when the line count
    // reached `checkpoint_lines` there, which leaves nothing for a shutdown checkpoint.
    assert!(
        original.last().unwrap().contains("\"checkpoint\""),
        "nothing is left unanchored when the server stops: {original:#?}"
    );

    // Issue 17's forgery: line 1's id changed, every later `prev` recomputed.
    let mut forged = original.clone();
    forged[0] = forged[0].replacen("\"id\":\"a\"", "\"id\":\"forged\"", 1);
    recompute(&mut forged);
    rewrite(&log, &forged);
    let unsigned = verify(&log);
    let stdout = String::from_utf8_lossy(&unsigned.stdout);
    assert!(
        stdout.contains("not proven") && !stdout.contains("intact"),
        "without the key, verify claims no more than consistency: {stdout}"
    );
    let refused = signed_verify();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("signature does not verify"), "{stderr}");

    // The same, with the checkpoints removed: nothing is anchored any more.
    let mut stripped: Vec<String> = forged
        .into_iter()
        .filter(|l| !l.contains("\"checkpoint\""))
        .collect();
    recompute(&mut stripped);
    rewrite(&log, &stripped);
    let refused = signed_verify();
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    let stdout = String::from_utf8_lossy(&refused.stdout);
    assert!(stdout.contains("unanchored: 5 lines"), "{stdout}");
}

#[test]
fn a_signing_key_others_may_read_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let signing_key = dir.path().join("audit.key");
    assert!(audit(&["keygen", "--out", signing_key.to_str().unwrap()])
        .status
        .success());
    std::fs::set_permissions(&signing_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = signed_config(dir.path(), &signing_key);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rkms-server"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("signing_key") && stderr.contains("chmod 600"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_audit_line_that_cannot_be_written_hands_out_no_key_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rkms.toml");
    // Every write to /dev/full fails (ENOSPC), as on a full disk.
    std::fs::write(
        &config,
        format!(
            "[audit]\npath = \"/dev/full\"\n[kms]\nprovider = \"local\"\nregions = [\"a\"]\n\
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
    let (status, body) = get_json(&client, &server.key_url("id=a")).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.get("key").is_none());
    assert_eq!(body["error_type"], "InternalError");
    let metrics = server.metrics(&client).await;
    assert_eq!(
        counter(&metrics, "rkms_audit_write_failures_total"),
        1.0,
        "{metrics}"
    );
}
