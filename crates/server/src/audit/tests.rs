use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;

use super::*;

/// The `prev` of a writer's first line in an empty file.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// SHA-256 of a line, as `prev` writes it.
fn hash(line: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    hex::encode(Sha256::digest(line))
}

fn event(id: &str) -> AuditEvent<'_> {
    AuditEvent {
        request_id: "r1",
        transport: "http",
        principal: "anonymous",
        operation: "get",
        id,
        outcome: "ok",
        region: Some("us-east-1"),
        version: Some(1),
        cache_hit: false,
        stale: false,
        created: false,
    }
}

fn open(path: &Path) -> AuditLog {
    AuditLog::open(&AuditTarget::File(path.to_owned()), AuditSync::Os).unwrap()
}

async fn write(path: &Path, ids: &[&str]) {
    let log = open(path);
    for id in ids {
        log.record(&event(id)).await.unwrap();
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn rewrite(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[tokio::test]
async fn the_chain_verifies_and_continues_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write(&path, &["a", "b"]).await;
    write(&path, &["c"]).await;
    let report = verify(&path).unwrap();
    assert_eq!((report.lines, report.writers), (3, 2));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let first = lines(&path).remove(0);
    assert!(first.starts_with("{\"time_ms\":"), "{first}");
    assert!(
        first.ends_with(&format!(",\"prev\":\"{GENESIS}\"}}")),
        "{first}"
    );
}

#[tokio::test]
async fn a_torn_last_line_is_completed_as_a_marked_break_and_verifies_as_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write(&path, &["a", "b"]).await;
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b"{\"time_ms\":17,\"request_id\":\"r")
        .unwrap();
    assert!(verify(&path).unwrap().torn_tail);
    write(&path, &["c", "d"]).await;
    let report = verify(&path).unwrap();
    assert_eq!((report.lines, report.restarts), (4, vec![3]));
    assert!(!report.torn_tail);
    let lines = lines(&path);
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert!(
        lines[2].ends_with("\"r"),
        "the torn line is completed as it was"
    );
    assert!(lines[3].contains("\"break\":\"torn\""), "{}", lines[3]);
    assert!(!lines[4].contains("break"), "{}", lines[4]);
}

#[tokio::test]
async fn writers_sharing_one_file_keep_their_own_chains() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let first = open(&path);
    first.record(&event("a1")).await.unwrap();
    let second = open(&path);
    let third = open(&path);
    for id in ["b1", "a2", "c1", "c2", "b2", "a3"] {
        let log = match id.as_bytes()[0] {
            b'a' => &first,
            b'b' => &second,
            _ => &third,
        };
        log.record(&event(id)).await.unwrap();
    }
    let report = verify(&path).unwrap();
    assert_eq!((report.lines, report.writers), (7, 3));

    let mut without_c1 = lines(&path);
    assert!(without_c1.remove(3).contains("\"c1\""));
    rewrite(&path, &without_c1);
    assert!(
        matches!(verify(&path), Err(VerifyError::Broken { line: 4 })),
        "removing c1 breaks the third writer's chain at c2"
    );
}

#[tokio::test]
async fn a_torn_line_that_another_writer_appended_to_is_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let first = open(&path);
    let second = open(&path);
    for (log, id) in [(&first, "a1"), (&second, "b1"), (&second, "b2")] {
        log.record(&event(id)).await.unwrap();
    }
    let mut glued = lines(&path);
    glued[1].insert_str(0, "{\"time_ms\":5,\"wri");
    rewrite(&path, &glued);
    let report = verify(&path).unwrap();
    assert_eq!((report.lines, report.restarts), (3, vec![2]));
}

#[tokio::test]
async fn lines_written_before_writers_were_named_form_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut prev = GENESIS.to_owned();
    let mut old = Vec::new();
    for id in ["x", "y"] {
        let line = format!("{{\"time_ms\":1,\"id\":\"{id}\",\"prev\":\"{prev}\"}}");
        prev = hash(line.as_bytes());
        old.push(line);
    }
    rewrite(&path, &old);
    write(&path, &["z"]).await;
    assert_eq!(verify(&path).unwrap().lines, 3);
    old.reverse();
    rewrite(&path, &old);
    assert!(matches!(
        verify(&path),
        Err(VerifyError::Broken { line: 1 })
    ));
}

#[tokio::test]
async fn reopening_moves_to_a_new_file_at_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let rotated = dir.path().join("audit.log.1");
    for sync in [AuditSync::Os, AuditSync::Always] {
        let log = AuditLog::open(&AuditTarget::File(path.clone()), sync).unwrap();
        log.record(&event("before")).await.unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen().unwrap();
        log.record(&event("after")).await.unwrap();
        for (file, id) in [(&rotated, "before"), (&path, "after")] {
            assert_eq!(verify(file).unwrap().lines, 1);
            assert!(lines(file)[0].contains(&format!("\"id\":\"{id}\"")));
        }
        std::fs::remove_file(&path).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_records_with_sync_always_are_all_written_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log =
        Arc::new(AuditLog::open(&AuditTarget::File(path.clone()), AuditSync::Always).unwrap());
    let tasks: Vec<_> = (0..300)
        .map(|n| {
            let log = Arc::clone(&log);
            tokio::spawn(async move { log.record(&event(&n.to_string())).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(verify(&path).unwrap().lines, 300);
    let unreachable = |_| -> (u64, fn() -> io::Result<()>) {
        panic!("every line is on disk once its record returned")
    };
    log.commit.cover(300, unreachable).await.unwrap();
}

#[test]
fn standard_output_cannot_be_synced() {
    let refused = AuditLog::open(&AuditTarget::Stdout, AuditSync::Always).unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn an_edited_or_removed_line_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write(&path, &["a", "b", "c", "d"]).await;
    let original = std::fs::read_to_string(&path).unwrap();

    std::fs::write(&path, original.replacen("\"id\":\"b\"", "\"id\":\"x\"", 1)).unwrap();
    assert!(matches!(
        verify(&path),
        Err(VerifyError::Broken { line: 3 })
    ));

    let mut without_b: Vec<String> = original.lines().map(str::to_owned).collect();
    without_b.remove(1);
    rewrite(&path, &without_b);
    assert!(matches!(
        verify(&path),
        Err(VerifyError::Broken { line: 2 })
    ));

    std::fs::write(&path, original.replacen('{', "[", 1)).unwrap();
    assert!(matches!(
        verify(&path),
        Err(VerifyError::Malformed { line: 1 })
    ));
}

const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

/// A key pair written as `audit keygen` writes it: the private key's path and the public key.
fn key_file(dir: &Path) -> (std::path::PathBuf, PublicKey) {
    let private = dir.join(format!("audit-{:x}.key", rand::random::<u32>()));
    let (public, _) = generate_key_pair(&private).unwrap();
    (private, PublicKey::load(&public).unwrap())
}

fn signed(path: &Path, key: &Path, every_lines: u64) -> AuditLog {
    open(path).with_checkpoints(
        SigningKey::load(key).unwrap(),
        Checkpoints {
            every_lines,
            interval: HOUR,
        },
    )
}

async fn record(log: &AuditLog, ids: &[&str]) {
    for id in ids {
        log.record(&event(id)).await.unwrap();
    }
}

/// The first and last line of each writer's unanchored lines.
fn unanchored(path: &Path, key: &PublicKey) -> Vec<(usize, usize)> {
    let report = verify_signed(path, std::slice::from_ref(key)).unwrap();
    let ranges = report.unanchored.unwrap();
    ranges.iter().map(|r| (r.first, r.last)).collect()
}

/// What a forger who can write the file does after an edit: every line's `prev` becomes the
/// hash of its writer's previous line as it now reads.
fn recompute(lines: &mut [String]) {
    let mut tips: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for line in lines.iter_mut() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let writer = value["writer"].as_str().unwrap().to_owned();
        if let Some(tip) = tips.get(&writer) {
            let at = line.find("\"prev\":\"").unwrap() + 8;
            line.replace_range(at..at + 64, tip);
        }
        tips.insert(writer, hash(line.as_bytes()));
    }
}

#[tokio::test]
async fn a_recomputed_chain_is_refused_by_the_checkpoint_after_the_edit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (key, public) = key_file(dir.path());
    let log = signed(&path, &key, 1000);
    record(&log, &["a", "b", "c"]).await;
    log.checkpoint(Reason::Lines).unwrap();
    record(&log, &["d"]).await;
    assert_eq!(unanchored(&path, &public), [(5, 5)]);
    let original = lines(&path);

    let mut forged = original.clone();
    forged[0] = forged[0].replacen("\"id\":\"a\"", "\"id\":\"forged\"", 1);
    recompute(&mut forged);
    rewrite(&path, &forged);
    assert!(verify(&path).is_ok(), "the chain alone cannot tell");
    assert!(matches!(
        verify_signed(&path, std::slice::from_ref(&public)),
        Err(VerifyError::BadSignature { line: 4 })
    ));

    let mut stripped: Vec<String> = original
        .into_iter()
        .filter(|l| !l.contains("\"checkpoint\""))
        .collect();
    stripped[0] = stripped[0].replacen("\"id\":\"a\"", "\"id\":\"forged\"", 1);
    recompute(&mut stripped);
    rewrite(&path, &stripped);
    assert_eq!(
        unanchored(&path, &public),
        [(1, 4)],
        "without its checkpoint no line is anchored"
    );
}

#[tokio::test]
async fn a_checkpoint_signed_by_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (key, public) = key_file(dir.path());
    let (other_key, other) = key_file(dir.path());
    let log = signed(&path, &key, 1000);
    record(&log, &["a"]).await;
    log.close().await.unwrap();
    match verify_signed(&path, std::slice::from_ref(&other)) {
        Err(VerifyError::UnknownKey { line: 2, key }) => assert_eq!(key, public.id()),
        other => panic!("{other:?}"),
    }

    // A forger signs with a key of their own, under the id of the real one.
    let mut forged = lines(&path);
    let unsigned = &forged[1][..forged[1].rfind(",\"sig\":\"").unwrap()];
    let mut line = format!("{unsigned}}}").into_bytes();
    checkpoint::sign(&mut line, &SigningKey::load(&other_key).unwrap());
    forged[1] = String::from_utf8(line).unwrap();
    rewrite(&path, &forged);
    assert!(verify(&path).is_ok());
    assert!(matches!(
        verify_signed(&path, &[public, other]),
        Err(VerifyError::BadSignature { line: 2 })
    ));
}

#[tokio::test]
async fn lines_after_the_last_checkpoint_are_reported_unanchored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (key, public) = key_file(dir.path());
    let log = signed(&path, &key, 1000);
    record(&log, &["a", "b"]).await;
    log.checkpoint(Reason::Interval).unwrap();
    record(&log, &["c", "d"]).await;
    let report = verify_signed(&path, std::slice::from_ref(&public)).unwrap();
    assert_eq!((report.lines, report.checkpoints), (5, 1));
    let writer = serde_json::from_str::<serde_json::Value>(&lines(&path)[0]).unwrap()["writer"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        report.unanchored.unwrap(),
        [Unanchored {
            writer,
            first: 4,
            last: 5,
            lines: 2
        }]
    );

    // What verification cannot see: a change there, with the chain recomputed. It stays
    // reported as unanchored, never as proven.
    let mut forged = lines(&path);
    forged[4] = forged[4].replacen("\"id\":\"d\"", "\"id\":\"forged\"", 1);
    recompute(&mut forged);
    rewrite(&path, &forged);
    assert_eq!(unanchored(&path, &public), [(4, 5)]);
}

#[tokio::test]
async fn several_writers_are_each_anchored_by_their_own_checkpoints_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (key, public) = key_file(dir.path());
    let first = signed(&path, &key, 1000);
    let second = signed(&path, &key, 1000);
    record(&first, &["a1"]).await;
    record(&second, &["b1"]).await;
    record(&first, &["a2"]).await;
    record(&second, &["b2"]).await;
    second.checkpoint(Reason::Lines).unwrap();
    record(&first, &["a3"]).await;
    assert_eq!(
        unanchored(&path, &public),
        [(1, 6)],
        "another writer's checkpoint vouches for none of the first writer's lines"
    );
    first.checkpoint(Reason::Lines).unwrap();
    assert_eq!(unanchored(&path, &public), []);
    let report = verify_signed(&path, std::slice::from_ref(&public)).unwrap();
    assert_eq!(
        (report.lines, report.writers, report.checkpoints),
        (7, 2, 2)
    );

    // The first writer's a1, changed and its chain recomputed: its checkpoint no longer
    // verifies.
    let mut forged = lines(&path);
    forged[0] = forged[0].replacen("\"id\":\"a1\"", "\"id\":\"forged\"", 1);
    recompute(&mut forged);
    rewrite(&path, &forged);
    assert!(matches!(
        verify_signed(&path, std::slice::from_ref(&public)),
        Err(VerifyError::BadSignature { line: 7 })
    ));
}

#[tokio::test]
async fn a_torn_tail_leaves_the_lines_before_it_anchored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (key, public) = key_file(dir.path());
    let log = signed(&path, &key, 1000);
    record(&log, &["a", "b"]).await;
    log.close().await.unwrap();
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b"{\"time_ms\":17,\"request_id\":\"r")
        .unwrap();
    let report = verify_signed(&path, std::slice::from_ref(&public)).unwrap();
    assert!(report.torn_tail);
    assert_eq!((report.lines, report.unanchored), (3, Some(Vec::new())));

    let next = signed(&path, &key, 1000);
    record(&next, &["c"]).await;
    next.close().await.unwrap();
    let report = verify_signed(&path, std::slice::from_ref(&public)).unwrap();
    assert_eq!((report.lines, report.restarts), (5, vec![4]));
    assert_eq!(
        unanchored(&path, &public),
        [(5, 5)],
        "the line that completes the torn one stands for its unsigned bytes"
    );
}

#[tokio::test]
async fn a_checkpoint_ends_the_chain_at_shutdown_and_before_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let rotated = dir.path().join("audit.log.1");
    let (key, public) = key_file(dir.path());
    for sync in [AuditSync::Os, AuditSync::Always] {
        let log = AuditLog::open(&AuditTarget::File(path.clone()), sync)
            .unwrap()
            .with_checkpoints(SigningKey::load(&key).unwrap(), Checkpoints::default());
        record(&log, &["before"]).await;
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen().unwrap();
        record(&log, &["after"]).await;
        log.close().await.unwrap();
        log.close().await.unwrap();
        for (file, reason) in [(&rotated, "reopen"), (&path, "shutdown")] {
            let written = lines(file);
            assert_eq!(written.len(), 2, "{written:#?}");
            assert!(
                written[1].contains(&format!("\"reason\":\"{reason}\"")),
                "{}",
                written[1]
            );
            assert_eq!(unanchored(file, &public), []);
        }
        std::fs::remove_file(&path).unwrap();
    }
}

/// The log's lines once a checkpoint for `reason` is among them (a bounded wait).
async fn wait_for_checkpoint(path: &Path, reason: &str) -> Vec<String> {
    let wanted = format!("\"reason\":\"{reason}\"");
    for _ in 0..250 {
        let written = lines(path);
        if written.iter().any(|l| l.contains(&wanted)) {
            return written;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no checkpoint for {reason}: {:#?}", lines(path));
}

#[tokio::test]
async fn checkpoints_fall_due_after_every_lines_and_after_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = key_file(dir.path());
    let path = dir.path().join("lines.log");
    let log = Arc::new(signed(&path, &key, 3));
    let task = tokio::spawn(Arc::clone(&log).write_checkpoints());
    record(&log, &["a", "b", "c"]).await;
    let written = wait_for_checkpoint(&path, "lines").await;
    assert!(written[3].contains("\"checkpoint\""), "{written:#?}");
    task.abort();

    let path = dir.path().join("interval.log");
    let log = Arc::new(open(&path).with_checkpoints(
        SigningKey::load(&key).unwrap(),
        Checkpoints {
            every_lines: 1000,
            interval: std::time::Duration::from_millis(50),
        },
    ));
    let task = tokio::spawn(Arc::clone(&log).write_checkpoints());
    record(&log, &["quiet"]).await;
    let written = wait_for_checkpoint(&path, "interval").await;
    assert_eq!(written.len(), 2, "one line, one checkpoint: {written:#?}");
    task.abort();
}

#[tokio::test]
async fn without_a_signing_key_no_line_is_anchored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (_, public) = key_file(dir.path());
    let log = open(&path);
    record(&log, &["a", "b"]).await;
    log.close().await.unwrap();
    assert_eq!(lines(&path).len(), 2);
    assert_eq!(unanchored(&path, &public), [(1, 2)]);
}

#[test]
fn the_signing_key_is_private_to_its_owner_and_never_printed() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("audit.key");
    let (public, key) = generate_key_pair(&private).unwrap();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&private), mode(&public)), (0o600, 0o644));
    assert_eq!(PublicKey::load(&public).unwrap().id(), key.id());
    let loaded = SigningKey::load(&private).unwrap();
    assert_eq!(loaded.id(), key.id());
    let secret = std::fs::read_to_string(&private).unwrap();
    let debug = format!("{loaded:?}");
    assert!(debug.contains(key.id()), "{debug}");
    for line in secret.lines().filter(|l| !l.starts_with("-----")) {
        assert!(
            !debug.contains(line) && !debug.contains(&line[..16]),
            "{debug}"
        );
    }

    assert!(matches!(
        generate_key_pair(&private),
        Err(KeyError::Io { .. })
    ));
    assert_eq!(std::fs::read_to_string(&private).unwrap(), secret, "kept");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(matches!(
        SigningKey::load(&private),
        Err(KeyError::Exposed { mode: 0o640, .. })
    ));
    assert!(matches!(
        PublicKey::load(&private),
        Err(KeyError::Malformed { kind: "public", .. })
    ));
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        SigningKey::load(&public),
        Err(KeyError::Malformed {
            kind: "private",
            ..
        })
    ));
}

#[test]
fn a_directory_made_for_the_log_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new/audit.log");
    open(&path);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("new")), 0o700);
    assert_eq!(mode(&path), 0o600);
}

/// A line the file's editor appends as a writer of their own, chained to the file's last line.
fn forge_after(path: &Path, writer: &str, id: &str) {
    let last = lines(path).pop().unwrap();
    let forged = format!(
        "{{\"time_ms\":1,\"writer\":\"{writer}\",\"request_id\":\"r\",\"principal\":\"app\",\
         \"operation\":\"get\",\"id\":\"{id}\",\"outcome\":\"ok\",\"prev\":\"{}\"}}\n",
        hash(last.as_bytes())
    );
    let mut file = OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(forged.as_bytes()).unwrap();
}

#[tokio::test]
async fn a_forged_writers_line_is_never_anchored_by_another_writers_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (key, public) = key_file(dir.path());
    let server = signed(&path, &key, 1000);
    record(&server, &["a"]).await;
    forge_after(&path, "deadbeefdeadbeef", "payroll/ceo");
    record(&server, &["b"]).await;
    server.checkpoint(Reason::Lines).unwrap();
    assert_eq!(unanchored(&path, &public), [(2, 2)], "the forged line");

    // A server that starts after the forgery chains its first line to it: still unanchored.
    forge_after(&path, "feedfacefeedface", "payroll/cfo");
    let next = signed(&path, &key, 1000);
    record(&next, &["c"]).await;
    next.checkpoint(Reason::Lines).unwrap();
    assert_eq!(unanchored(&path, &public), [(2, 2), (5, 5)]);
}

#[tokio::test]
async fn a_signed_segment_replayed_from_another_file_is_not_anchored() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = key_file(dir.path());
    let old = dir.path().join("old.log");
    let log = signed(&old, &key, 1000);
    record(&log, &["old-release"]).await;
    log.close().await.unwrap();
    let path = dir.path().join("audit.log");
    let log = signed(&path, &key, 1000);
    record(&log, &["a", "b"]).await;
    log.close().await.unwrap();
    let mut forged = lines(&path);
    let replayed = lines(&old);
    forged.splice(2..2, replayed);
    rewrite(&path, &forged);
    assert_eq!(
        unanchored(&path, &public),
        [(3, 4)],
        "the replayed lines, whose chain starts afresh mid-file"
    );
}

#[tokio::test]
async fn text_glued_before_a_line_is_never_proven() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let (key, public) = key_file(dir.path());
    let log = signed(&path, &key, 1000);
    record(&log, &["a", "b"]).await;
    log.close().await.unwrap();
    let mut forged = lines(&path);
    forged[1].insert_str(
        0,
        "{\"time_ms\":1,\"writer\":\"x\",\"id\":\"payroll/cfo\",\"outcome\":\"ok\"}",
    );
    rewrite(&path, &forged);
    assert_eq!(unanchored(&path, &public), [(2, 2)], "the glued text");
}

#[test]
fn prev_is_the_lines_sha256_in_lowercase_hex() {
    // FIPS 180-2's example: SHA-256 of "abc".
    assert_eq!(
        hash(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

/// A write that does not return (a stalled disk, here a full pipe) holds up the requests whose
/// lines wait for it, but not the server's other work: the second request's line waits for
/// its turn without taking a worker thread.
#[test]
fn a_stalled_write_holds_up_the_lines_behind_it_but_no_worker() {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.fifo");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &path,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
    )
    .unwrap();
    // The log opens the pipe for reading and writing, so it never lacks a reader; filling it
    // makes the log's next write block until the pipe is read.
    let log = Arc::new(open(&path));
    let mut filler = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(&path)
        .unwrap();
    let mut filled = 0;
    while let Ok(n) = filler.write(&[b'x'; 4096]) {
        filled += n;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let record = |id: &'static str| {
        let log = Arc::clone(&log);
        runtime.spawn(async move { log.record(&event(id)).await })
    };
    let first = record("first");
    std::thread::sleep(Duration::from_millis(200));
    let second = record("second");
    std::thread::sleep(Duration::from_millis(200));
    let (ran, other_work) = std::sync::mpsc::channel();
    runtime.spawn(async move { ran.send(()).unwrap() });
    let other_work_ran = other_work.recv_timeout(Duration::from_secs(2)).is_ok();
    assert!(
        !first.is_finished() && !second.is_finished(),
        "no record returns before its line is written"
    );

    let mut reader = File::open(&path).unwrap();
    let drain = std::thread::spawn(move || {
        let mut read = Vec::new();
        let mut buf = [0; 65536];
        while let Ok(n) = reader.read(&mut buf) {
            read.extend_from_slice(&buf[..n]);
            if read.iter().filter(|b| **b == b'\n').count() == 2 {
                return read;
            }
        }
        read
    });
    runtime.block_on(async {
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
    });
    let read = drain.join().unwrap();
    assert!(
        other_work_ran,
        "a worker was blocked while a line waited for the stalled write"
    );
    let written = dir.path().join("audit.log");
    std::fs::write(&written, &read[filled..]).unwrap();
    assert_eq!(verify(&written).unwrap().lines, 2);
    let mut ids: Vec<String> = lines(&written)
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, [r#""first""#, r#""second""#]);
}
