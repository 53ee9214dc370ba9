//! The `rkms` command against an RKMS server running in this process (the server's own
//! router and connection loop over MemoryStore and local regions): key operations, and files
//! encrypted, a key rotated, more encrypted, and all of them decrypted back.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use rkms_core::{KeyService, Kms, LocalKeyring, MemoryStore};
use rkms_server::access::AppState;
use rkms_server::auth::{Authenticator, IdPattern, Operations, Policy, PrincipalSpec, Rule};
use rkms_server::limits::Limits;
use rkms_server::live::LiveService;
use rkms_server::routes::app;

/// Starts a server whose anonymous callers may do anything; returns its URL.
async fn server() -> String {
    let ring = LocalKeyring::generate(&["k1", "k2"]).unwrap();
    let service = [("r1", "k1"), ("r2", "k2")]
        .iter()
        .fold(
            KeyService::builder(Arc::new(MemoryStore::new())),
            |b, (r, k)| b.region(Arc::new(ring.region(r, k).unwrap()) as Arc<dyn Kms>),
        )
        .build()
        .unwrap();
    let anyone = PrincipalSpec {
        name: "anyone".into(),
        tokens: Vec::new(),
        certificate_names: Vec::new(),
        anonymous: true,
        metrics: false,
        policy: Policy::new(vec![Rule {
            ids: vec![IdPattern::parse("*").unwrap()],
            operations: Operations::all(),
        }]),
        rate_limit: None,
        create_rate: None,
    };
    let router = app(
        AppState {
            service: Arc::new(LiveService::new(service)),
            metrics: None,
            audit: None,
            auth: Arc::new(Authenticator::new(&[anyone])),
        },
        "/api/v1/key",
        Limits::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(rkms_server::serve::serve(
        listener,
        router,
        None,
        Limits::default(),
        std::future::pending(),
    ));
    url
}

fn rkms(url: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rkms"));
    command.args(["--url", url]).args(args);
    let Some(input) = stdin else {
        return command.output().unwrap();
    };
    use std::io::Write as _;
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// The standard output of a run that must have succeeded.
fn succeeded(output: &Output) -> Vec<u8> {
    assert!(
        output.status.success(),
        "rkms failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout.clone()
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_encrypted_before_and_after_a_rotation_both_decrypt() {
    let url = server().await;
    let dir = tempfile::tempdir().unwrap();
    let first: Vec<u8> = (0..300_000_u32).map(|i| (i % 253) as u8).collect();
    let second = b"written after the rotation".to_vec();
    std::fs::write(dir.path().join("first"), &first).unwrap();
    std::fs::write(dir.path().join("second"), &second).unwrap();
    let root = dir.path().to_owned();
    let p = |n: &str| -> String { path(&root, n) };
    let u = url.clone();
    let run = move |args: Vec<String>| {
        let u = u.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            rkms(&u, &args, None)
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    succeeded(
        &run(args(&[
            "encrypt",
            "--id",
            "files",
            "-i",
            &p("first"),
            "-o",
            &p("first.rkms"),
        ]))
        .await
        .unwrap(),
    );
    let rotated = succeeded(
        &run(args(&[
            "key", "rotate", "--id", "files", "--output", "json",
        ]))
        .await
        .unwrap(),
    );
    let rotated: serde_json::Value = serde_json::from_slice(&rotated).unwrap();
    assert_eq!(rotated["version"], 2);
    succeeded(
        &run(args(&[
            "encrypt",
            "--id",
            "files",
            "-i",
            &p("second"),
            "-o",
            &p("second.rkms"),
        ]))
        .await
        .unwrap(),
    );
    for (name, plaintext) in [("first", &first), ("second", &second)] {
        let out = p(&format!("{name}.back"));
        succeeded(
            &run(args(&[
                "decrypt",
                "-i",
                &p(&format!("{name}.rkms")),
                "-o",
                &out,
            ]))
            .await
            .unwrap(),
        );
        assert_eq!(&std::fs::read(&out).unwrap(), plaintext, "{name}");
    }
    let info = succeeded(
        &run(args(&["key", "info", "--id", "files", "--output", "json"]))
            .await
            .unwrap(),
    );
    let info: serde_json::Value = serde_json::from_slice(&info).unwrap();
    assert_eq!(info["current_version"], 2);

    // Pipes: standard input to standard output, both ways.
    let url2 = url.clone();
    let piped = tokio::task::spawn_blocking(move || {
        let sealed = succeeded(&rkms(
            &url2,
            &["encrypt", "--id", "pipes"],
            Some(b"through a pipe"),
        ));
        let sealed = rkms(&url2, &["decrypt"], Some(&sealed));
        succeeded(&sealed)
    })
    .await
    .unwrap();
    assert_eq!(piped, b"through a pipe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_envelope_leaves_no_plaintext_behind() {
    let url = server().await;
    let dir = tempfile::tempdir().unwrap();
    let plaintext: Vec<u8> = (0..200_000_u32).map(|i| (i % 7) as u8).collect();
    std::fs::write(dir.path().join("plain"), &plaintext).unwrap();
    let d = dir.path().to_owned();
    let (decrypted, entries) = tokio::task::spawn_blocking(move || {
        let p = |n: &str| path(&d, n);
        succeeded(&rkms(
            &url,
            &[
                "encrypt",
                "--id",
                "x",
                "-i",
                &p("plain"),
                "-o",
                &p("sealed"),
            ],
            None,
        ));
        let mut sealed = std::fs::read(p("sealed")).unwrap();
        let at = sealed.len() - 10;
        sealed[at] ^= 1;
        std::fs::write(p("sealed"), &sealed).unwrap();
        let out = rkms(
            &url,
            &["decrypt", "-i", &p("sealed"), "-o", &p("opened")],
            None,
        );
        assert!(!out.status.success());
        let message = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(message.contains("does not authenticate"), "{message}");
        let entries: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        (d.join("opened").exists(), entries)
    })
    .await
    .unwrap();
    assert!(!decrypted, "no output file after a failed decryption");
    let mut entries = entries;
    entries.sort();
    assert_eq!(entries, ["plain", "sealed"], "no temporary file left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_leaves_no_partial_file() {
    let url = server().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let (status, entries) = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let out = path(&d, "out");
        let mut child = Command::new(env!("CARGO_BIN_EXE_rkms"))
            .args(["--url", &url, "encrypt", "--id", "slow", "-o", &out])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Some input, and the pipe left open: the run waits with its temporary file.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&[7; 300_000]).unwrap();
        let started = std::time::Instant::now();
        while std::fs::read_dir(&d).unwrap().count() == 0 {
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = child.wait().unwrap();
        drop(stdin);
        let entries: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        (status, entries)
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(entries, Vec::<String>::new(), "nothing left behind");
}
