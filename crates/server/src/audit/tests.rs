use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;

use super::*;

fn event(id: &str) -> AuditEvent<'_> {
    AuditEvent {
        request_id: "r1",
        principal: "anonymous",
        operation: "get",
        id,
        outcome: "ok",
        region: Some("us-east-1"),
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
