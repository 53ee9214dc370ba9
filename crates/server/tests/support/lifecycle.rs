//! The key lifecycle end to end: through running servers sharing one store, and through the
//! `rkms-server key` commands on the same store.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{get_json, Server};

/// Configuration sections for lifecycle tests: a two-second deletion window, servers that
/// read the state on every cache hit, and a repairer that completes deletions every second.
pub(crate) const LIFECYCLE_SECTIONS: &str = "\n[lifecycle]\ndeletion_window_seconds = 2\n\
     check_state_on_hit = true\n\n[repair]\ninterval_seconds = 1\n";

async fn send(client: &reqwest::Client, method: &str, url: &str) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let response = client
        .request(method, url)
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

fn url(server: &Server, path: &str, id: &str) -> String {
    format!("{}/api/v1/key{path}?id={id}", server.base)
}

/// Runs `id` through its whole lifecycle across `servers` (at least three): create, rotate,
/// version reads, info, listing, deletion seen by every server at once, restore, and the
/// tombstone the window leaves, never created again.
pub(crate) async fn assert_lifecycle(servers: &[Server], id: &str) {
    let client = reqwest::Client::new();
    let [a, b, c] = &servers[..3] else {
        unreachable!()
    };

    let (status, first) = get_json(&client, &url(a, "", id)).await;
    assert_eq!(
        (status, &first["version"]),
        (200, &Value::from(1)),
        "{first}"
    );
    let (_, cached_on_c) = get_json(&client, &url(c, "", id)).await;
    assert_eq!(cached_on_c["key"], first["key"]);

    let (status, rotated) = send(&client, "POST", &url(a, "/rotate", id)).await;
    assert_eq!(
        (status, &rotated["version"]),
        (200, &Value::from(2)),
        "{rotated}"
    );
    let (_, current) = get_json(&client, &url(c, "", id)).await;
    assert_eq!(
        current["version"], 2,
        "another server sees the rotation at once"
    );
    assert_ne!(current["key"], first["key"]);
    let (status, old) = get_json(&client, &format!("{}&version=1", url(b, "", id))).await;
    assert_eq!((status, &old["key"]), (200, &first["key"]));
    let (status, _) = get_json(&client, &format!("{}&version=3", url(b, "", id))).await;
    assert_eq!(status, 404);

    let (status, info) = get_json(&client, &url(c, "/info", id)).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["current_version"], 2);
    assert_eq!(info["versions"].as_array().unwrap().len(), 2);
    assert!(info["versions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["regions"].as_array().unwrap().len() == 3));
    let prefix = id.rsplit_once('-').map_or(id, |(head, _)| head);
    let listed = list_all(&client, b, prefix).await;
    assert!(
        listed.contains(&serde_json::json!({"id": id, "state": "active"})),
        "{listed:?}"
    );

    let (status, pending) = send(&client, "DELETE", &url(a, "", id)).await;
    assert_eq!(
        (status, &pending["state"]),
        (200, &Value::from("pending_deletion")),
        "{pending}"
    );
    for server in servers {
        let (status, refused) = get_json(&client, &url(server, "", id)).await;
        assert_eq!(status, 410, "{refused}");
        assert_eq!(refused["error_type"], "KeyPendingDeletion");
    }
    let (status, _) = send(&client, "POST", &url(b, "/restore", id)).await;
    assert_eq!(status, 200);
    let (_, back) = get_json(&client, &url(c, "", id)).await;
    assert_eq!(back["key"], current["key"], "restored with the same key");

    let (status, _) = send(&client, "DELETE", &url(b, "", id)).await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, info) = get_json(&client, &url(a, "/info", id)).await;
        let destroyed = info["versions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["regions"].as_array().unwrap().is_empty());
        if info["state"] == "deleted" && destroyed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the copies are never destroyed: {info}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for server in servers {
        let (status, refused) = get_json(&client, &url(server, "", id)).await;
        assert_eq!(
            (status, &refused["error_type"]),
            (410, &Value::from("KeyDeleted")),
            "{refused}"
        );
    }
    let (status, refused) = send(&client, "POST", &url(c, "/restore", id)).await;
    assert_eq!(
        (status, &refused["error_type"]),
        (410, &Value::from("KeyDeleted"))
    );
}

/// Every id with `prefix` that `server` lists, following the cursor.
async fn list_all(client: &reqwest::Client, server: &Server, prefix: &str) -> Vec<Value> {
    let mut keys = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = get_json(
            client,
            &format!(
                "{}/api/v1/keys?prefix={prefix}&limit=50{after}",
                server.base
            ),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        keys.extend(page["keys"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return keys,
        }
    }
}

/// Runs `rkms-server key <args> --config <config> --data-dir <data_dir>`; returns whether it
/// succeeded and the JSON on its last line of standard output (or of standard error).
pub(crate) fn key_command(config: &Path, data_dir: &Path, args: &[&str]) -> (bool, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_rkms-server"))
        .arg("key")
        .args(args)
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("the rkms-server binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let answer = if output.status.success() {
        stdout.lines().last().unwrap_or_default().to_owned()
    } else {
        let last = stderr.lines().last().unwrap_or_default();
        last.split_once(": {")
            .map_or(String::new(), |(_, json)| format!("{{{json}"))
    };
    let value = serde_json::from_str(&answer)
        .unwrap_or_else(|e| panic!("key {args:?}: {e}\nstdout: {stdout}\nstderr: {stderr}"));
    (output.status.success(), value)
}

/// The `rkms-server key` commands on `id` (whose key a server made): rotate, info, list,
/// delete and restore, each audited as `local-admin` in `data_dir`'s audit log.
pub(crate) fn assert_key_commands(config: &Path, data_dir: &Path, id: &str) {
    let (ok, rotated) = key_command(config, data_dir, &["rotate", "--id", id]);
    assert!(ok, "{rotated}");
    assert_eq!(rotated["version"], 2);
    let (_, info) = key_command(config, data_dir, &["info", "--id", id]);
    assert_eq!(info["current_version"], 2, "{info}");
    let (_, listed) = key_command(config, data_dir, &["list", "--prefix", id]);
    assert_eq!(listed["keys"][0]["id"], id, "{listed}");
    let (ok, pending) = key_command(config, data_dir, &["delete", "--id", id]);
    assert!(ok && pending["state"] == "pending_deletion", "{pending}");
    let (ok, restored) = key_command(config, data_dir, &["restore", "--id", id]);
    assert!(ok && restored["state"] == "active", "{restored}");
    let (ok, refused) = key_command(config, data_dir, &["rotate", "--id", "not valid"]);
    assert!(!ok);
    assert_eq!(refused["error_type"], "BadRequest");
    let (ok, missing) = key_command(config, data_dir, &["info", "--id", "never-made"]);
    assert!(!ok);
    assert_eq!(missing["error_type"], "NotFound");

    let audit = std::fs::read_to_string(data_dir.join("audit.log")).unwrap();
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &Value| l.get("operation").is_some())
        .collect();
    for operation in ["rotate", "describe", "list", "delete", "restore"] {
        assert!(
            lines.iter().any(|l| l["operation"] == operation
                && l["principal"] == "local-admin"
                && l["outcome"] == "ok"),
            "{operation} audited as local-admin: {audit}"
        );
    }
    assert!(lines
        .iter()
        .any(|l| l["operation"] == "describe" && l["outcome"] == "NotFound"));
}
