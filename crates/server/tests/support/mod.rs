//! Running the built `rkms-server` binary for end-to-end tests.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// A running server process, killed on drop.
pub(crate) struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
    /// Every log line the server wrote so far.
    pub(crate) log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts the server with `args` (plus `--listen 127.0.0.1:0`) and waits until it listens.
    pub(crate) fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rkms-server"))
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the rkms-server binary starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("rkms-server listening") {
                    let addr = line
                        .split("addr=")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next());
                    let _ = addr_tx.send(addr.map(str::to_owned));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match addr_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(addr)) => addr,
            _ => {
                let _ = child.kill();
                panic!(
                    "rkms-server did not start; its log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Self {
            child,
            base: format!("http://{addr}"),
            log,
        }
    }

    /// Starts the embedded development default over `data_dir`.
    pub(crate) fn development(data_dir: &Path) -> Self {
        Self::start(&["--data-dir", data_dir.to_str().unwrap()])
    }

    /// The key endpoint's URL for a raw (already encoded) query.
    pub(crate) fn key_url(&self, query: &str) -> String {
        format!("{}/api/v1/key?{query}", self.base)
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub(crate) fn stop(mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("rkms-server did not stop within 6 s of SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GETs `url` and returns the status and the JSON body.
pub(crate) async fn get_json(client: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let response = client.get(url).send().await.expect("the server answers");
    let status = response.status().as_u16();
    let body = response.json().await.expect("a JSON body");
    (status, body)
}

/// GETs the key for `id` and returns its base64 text.
pub(crate) async fn key(client: &reqwest::Client, server: &Server, id: &str) -> String {
    let (status, body) = get_json(client, &server.key_url(&format!("id={id}"))).await;
    assert_eq!(status, 200, "GET key {id}: {body}");
    assert_eq!(body["id"], id);
    body["key"].as_str().unwrap().to_owned()
}
