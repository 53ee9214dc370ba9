//! Running the built `rkms-server` binary for end-to-end tests, and emulated KMS regions.

#![allow(
    dead_code,
    reason = "each test binary compiles this module and uses a different part of it"
)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use rkms_conformance::proxy::Proxy;

pub(crate) mod lifecycle;

/// A `[[principals]]` entry for test configurations: anonymous callers (the tests run on
/// loopback) may do anything with any id and read metrics, without a rate limit.
pub(crate) const ANONYMOUS_PRINCIPAL: &str = "\n[[principals]]\nname = \"tests\"\nanonymous = true\n\
     metrics = true\nrate_limit_per_second = 0\nallow = [{ ids = [\"*\"], operations = [\"get\", \"create\", \
     \"rotate\", \"delete\", \"restore\", \"describe\", \"list\"] }]\n";

/// A running server process, killed on drop.
pub(crate) struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
    /// `127.0.0.1:PORT`.
    pub(crate) addr: String,
    /// Every log line the server wrote so far.
    pub(crate) log: Arc<Mutex<Vec<String>>>,
    /// A data directory of its own (audit log, defaults) when the caller gave none.
    _data_dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts the server with `args` (plus `--listen 127.0.0.1:0`) and waits until it listens.
    pub(crate) fn start(args: &[&str]) -> Self {
        Self::start_logging(args, "info")
    }

    /// [`Server::start`] with `RUST_LOG` set to `log_level`.
    pub(crate) fn start_logging(args: &[&str], log_level: &str) -> Self {
        Self::launch(
            Command::new(env!("CARGO_BIN_EXE_rkms-server")),
            args,
            log_level,
        )
    }

    /// [`Server::start`] under the shell's `ulimit` with `limit` (`-n 400`, `-Sn 400`).
    pub(crate) fn start_with_ulimit(limit: &str, args: &[&str]) -> Self {
        Self::launch(ulimit_command(limit), args, "info")
    }

    fn launch(mut command: Command, args: &[&str], log_level: &str) -> Self {
        let own_data_dir = (!args.contains(&"--data-dir")).then(|| tempfile::tempdir().unwrap());
        if let Some(dir) = &own_data_dir {
            command.arg("--data-dir").arg(dir.path());
        }
        let mut child = command
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", log_level)
            // Never fall through to instance metadata, an address outside this machine.
            .env("AWS_EC2_METADATA_DISABLED", "true")
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
            addr,
            log,
            _data_dir: own_data_dir,
        }
    }

    /// Starts `count` servers with the same `args` at the same moment, so they race through
    /// start-up (keyring, schema, tables) as a fleet would.
    pub(crate) fn start_together(count: usize, args: &[&str]) -> Vec<Self> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..count).map(|_| s.spawn(|| Self::start(args))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// Starts the embedded development default over `data_dir`.
    pub(crate) fn development(data_dir: &Path) -> Self {
        Self::start(&["--data-dir", data_dir.to_str().unwrap()])
    }

    /// The Prometheus text of `/metrics`, as an anonymous caller (see
    /// [`ANONYMOUS_PRINCIPAL`]) reads it.
    pub(crate) async fn metrics(&self, client: &reqwest::Client) -> String {
        client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The sum of the samples of metric `name` whose labels contain `label` (`""` for all),
    /// from [`Server::metrics`].
    pub(crate) async fn metric_total(
        &self,
        client: &reqwest::Client,
        name: &str,
        label: &str,
    ) -> f64 {
        let (labelled, bare) = (format!("{name}{{"), format!("{name} "));
        self.metrics(client)
            .await
            .lines()
            .filter(|l| (l.starts_with(&labelled) || l.starts_with(&bare)) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The key endpoint's URL for a raw (already encoded) query.
    pub(crate) fn key_url(&self, query: &str) -> String {
        format!("{}/api/v1/key?{query}", self.base)
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`HUP`, `TERM`, ...) to the process.
    pub(crate) fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} failed");
    }

    /// Sends SIGHUP and waits for the server to say how the configuration reload went;
    /// returns that log line (it contains `configuration reloaded` or `refused`).
    pub(crate) fn reload(&self) -> String {
        let outcome = |line: &String| {
            line.contains("SIGHUP: configuration reloaded")
                || line.contains("SIGHUP: the configuration file is refused")
        };
        let before = self
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| outcome(l))
            .count();
        self.signal("HUP");
        for _ in 0..500 {
            if let Some(line) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|l| outcome(l))
                .nth(before)
            {
                return line.clone();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "rkms-server did not finish a reload within 10 s of SIGHUP; its log:\n{}",
            self.log.lock().unwrap().join("\n")
        );
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub(crate) fn stop(mut self) -> ExitStatus {
        self.signal("TERM");
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

/// A command that runs the server binary (with the arguments added to it) under the shell's
/// `ulimit` with `limit`.
pub(crate) fn ulimit_command(limit: &str) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("ulimit {limit} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_rkms-server"));
    command
}

/// Runs `rkms-server regions status` on `config`; returns whether it succeeded and its output.
pub(crate) fn regions_status(config: &Path, data_dir: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_rkms-server"))
        .args(["regions", "status", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
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

/// The emulated KMS regions from the environment the services script writes:
/// `(region, endpoint)` pairs in order.
pub(crate) fn emulated_regions() -> Vec<(String, String)> {
    let help = "RKMS_TEST_KMS_REGIONS / RKMS_TEST_KMS_ENDPOINTS are not set: start the emulated KMS \
                regions with `scripts/services.sh start && source .test-services/env` (or run scripts/test.sh)";
    let regions = std::env::var("RKMS_TEST_KMS_REGIONS").expect(help);
    let endpoints = std::env::var("RKMS_TEST_KMS_ENDPOINTS").expect(help);
    let pairs: Vec<(String, String)> = regions
        .split(',')
        .zip(endpoints.split(','))
        .map(|(r, e)| (r.to_owned(), e.to_owned()))
        .collect();
    assert!(pairs.len() >= 3, "{help} (three regions are needed)");
    pairs
}

/// A passing fault proxy in front of an emulated region's `endpoint` (`http://host:port`), so a
/// test can take the region away and give it back without restarting the emulator (which
/// would lose its keys). Configure `http://{proxy.addr()}` as the region's endpoint.
pub(crate) async fn region_proxy(endpoint: &str) -> Proxy {
    let upstream = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("region endpoint {endpoint:?} is not http://ip:port: {e}"));
    Proxy::start(upstream).await
}

/// Hits 20 fresh ids (named `<prefix>-<n>`) three times on every server, all at once, and
/// checks that each id got exactly one key everywhere, also when read back afterwards, and
/// that no two ids share a key.
pub(crate) async fn assert_servers_converge(servers: &[Server], prefix: &str) {
    let client = reqwest::Client::new();
    let ids: Vec<String> = (0..20).map(|i| format!("{prefix}-{i}")).collect();
    let requests = ids.iter().flat_map(|id| {
        servers
            .iter()
            .flat_map(move |server| (0..3).map(move |_| (id, server)))
    });
    let results = futures::future::join_all(requests.map(|(id, server)| {
        let client = client.clone();
        async move { (id.clone(), key(&client, server, id).await) }
    }))
    .await;
    let mut keys: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (id, key) in results {
        keys.entry(id).or_default().push(key);
    }
    assert_eq!(keys.len(), ids.len());
    for (id, seen) in &keys {
        assert_eq!(seen.len(), servers.len() * 3);
        assert!(
            seen.iter().all(|k| k == &seen[0]),
            "id {id} got different keys: {seen:?}"
        );
        for server in servers {
            assert_eq!(
                &key(&client, server, id).await,
                &seen[0],
                "id {id} read back later"
            );
        }
    }
    let distinct: std::collections::BTreeSet<&String> = keys.values().map(|v| &v[0]).collect();
    assert_eq!(distinct.len(), ids.len(), "every id has its own key");
}

/// A service's address from the environment the services script writes, or a panic that says
/// how to start it.
pub(crate) fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the test services with `scripts/services.sh start && \
             source .test-services/env` (or run scripts/test.sh)"
        )
    })
}

/// A name unique to this test run, for prefixes, schemas and tables.
pub(crate) fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{}_{nanos}", std::process::id())
}
