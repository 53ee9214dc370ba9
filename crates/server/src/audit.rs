//! The audit log: one JSON line per key operation, chained by hashes.
//!
//! Each line carries `prev`, the SHA-256 (hex) of the line before it (64 zeros for the first),
//! so editing or removing a line breaks the chain at the next one; [`verify`] finds the break.
//! Removing lines only at the end leaves a valid, shorter chain: ship the log off the host
//! (or keep the last hash elsewhere) to detect truncation. No line ever holds key material.
//!
//! One thread of the log's own writes the lines, a batch of waiting requests at a time with
//! one write and flush, so that the file's I/O never blocks the server's async workers and
//! a busy server pays one system call per batch rather than per request.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};

/// The `prev` of the first line.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How long a request waits for its line to be written before it fails (and hands out no
/// key): a stalled disk fails requests instead of hanging them.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Lines waiting for the writer; past this, requests wait to queue (within the timeout).
const QUEUE: usize = 4096;

/// Most lines written with one system call.
const MAX_BATCH: usize = 256;

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    /// Standard output (the server's logs go to standard error).
    Stdout,
    /// A file, appended to; its chain is continued across restarts.
    File(PathBuf),
}

/// One key operation, as audited.
#[derive(Debug, Serialize)]
pub struct AuditEvent<'a> {
    /// Per-request id, also sent to the client in the `x-request-id` header.
    pub request_id: &'a str,
    /// Who asked.
    pub principal: &'a str,
    /// `get` (existing key) or `create` (this request created it); when refused or failed, what
    /// was attempted (`get_or_create` when the principal could do either).
    pub operation: &'a str,
    /// The key id.
    pub id: &'a str,
    /// `ok`, `denied` (403), or the error type answered.
    pub outcome: &'a str,
    /// The region that generated or unwrapped the key.
    pub region: Option<&'a str>,
    /// Whether the key came from the cache.
    pub cache_hit: bool,
    /// Whether this request created the key.
    pub created: bool,
}

/// A line without its `prev`, which only the writer knows.
#[derive(Serialize)]
struct Stamped<'a> {
    time_ms: u128,
    #[serde(flatten)]
    event: &'a AuditEvent<'a>,
}

/// A line waiting for the writer: a JSON object without `prev`, and who waits for it.
struct Entry {
    stamped: Vec<u8>,
    written: oneshot::Sender<Result<(), (io::ErrorKind, String)>>,
}

/// The end of the file and the hash of its last line; owned by the writer thread.
struct Chain {
    out: Box<dyn io::Write + Send>,
    prev: String,
}

/// An open audit log; see the module documentation.
#[derive(Debug)]
pub struct AuditLog {
    queue: mpsc::Sender<Entry>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("prev", &self.prev)
            .finish_non_exhaustive()
    }
}

fn hash(line: &[u8]) -> String {
    use std::fmt::Write as _;
    Sha256::digest(line)
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

impl AuditLog {
    /// Opens the target; a file is created (0600) or continued from its last line.
    pub fn open(target: &AuditTarget) -> io::Result<Self> {
        let (out, prev): (Box<dyn io::Write + Send>, String) = match target {
            AuditTarget::Stdout => (Box::new(io::stdout()), GENESIS.to_owned()),
            AuditTarget::File(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let prev = match File::open(path) {
                    Ok(file) => BufReader::new(file)
                        .split(b'\n')
                        .filter_map(Result::ok)
                        .filter(|line| !line.is_empty())
                        .last()
                        .map_or_else(|| GENESIS.to_owned(), |line| hash(&line)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => GENESIS.to_owned(),
                    Err(e) => return Err(e),
                };
                let file = {
                    use std::os::unix::fs::OpenOptionsExt as _;
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .mode(0o600)
                        .open(path)?
                };
                (Box::new(file), prev)
            }
        };
        let (queue, waiting) = mpsc::channel(QUEUE);
        let chain = Chain { out, prev };
        std::thread::Builder::new()
            .name("rkms-audit".into())
            .spawn(move || chain.write_batches(waiting))?;
        Ok(Self { queue })
    }

    /// Appends one event and returns once it is written and flushed. An audit line that
    /// cannot be written (or not within 5 s) is an error the caller must not ignore: a key
    /// service that cannot audit should not hand out keys.
    pub async fn record(&self, event: &AuditEvent<'_>) -> io::Result<()> {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let stamped = serde_json::to_vec(&Stamped { time_ms, event }).map_err(io::Error::other)?;
        let stopped = || io::Error::other("the audit writer has stopped");
        let (written, done) = oneshot::channel();
        let wait = async {
            self.queue
                .send(Entry { stamped, written })
                .await
                .map_err(|_| stopped())?;
            done.await
                .map_err(|_| stopped())?
                .map_err(|(kind, message)| io::Error::new(kind, message))
        };
        tokio::time::timeout(WRITE_TIMEOUT, wait)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the audit line was not written within {WRITE_TIMEOUT:?}"),
                )
            })?
    }
}

impl Chain {
    /// The writer thread: takes what is waiting, up to [`MAX_BATCH`] lines, writes it, tells
    /// each waiter; ends when the log is dropped.
    fn write_batches(mut self, mut waiting: mpsc::Receiver<Entry>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = waiting.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match waiting.try_recv() {
                    Ok(entry) => batch.push(entry),
                    Err(_) => break,
                }
            }
            let result = self.append(&batch).map_err(|e| (e.kind(), e.to_string()));
            for entry in batch.drain(..) {
                let _ = entry.written.send(result.clone());
            }
        }
    }

    /// Chains and writes `entries` with one write and flush; the chain moves on only if
    /// that succeeds.
    fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        let mut prev = self.prev.clone();
        let mut lines = Vec::with_capacity(entries.iter().map(|e| e.stamped.len() + 80).sum());
        for entry in entries {
            let start = lines.len();
            let open = entry.stamped.strip_suffix(b"}").ok_or_else(|| {
                io::Error::other("an audit event did not serialise to a JSON object")
            })?;
            lines.extend_from_slice(open);
            lines.extend_from_slice(b",\"prev\":\"");
            lines.extend_from_slice(prev.as_bytes());
            lines.extend_from_slice(b"\"}");
            prev = hash(&lines[start..]);
            lines.push(b'\n');
        }
        self.out.write_all(&lines)?;
        self.out.flush()?;
        self.prev = prev;
        Ok(())
    }
}

/// Why a log failed verification.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A line is not a JSON object with a `prev` hash.
    #[error("line {line}: not an audit line")]
    Malformed {
        /// 1-based line number.
        line: usize,
    },
    /// A line's `prev` is not the hash of the line before it.
    #[error("line {line}: the chain is broken (a line before it was edited, removed or inserted)")]
    Broken {
        /// 1-based line number.
        line: usize,
    },
}

/// Checks the chain of the log at `path`; returns the number of lines.
pub fn verify(path: &Path) -> Result<usize, VerifyError> {
    let read = |source| VerifyError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read)?;
    let mut expected = GENESIS.to_owned();
    let mut count = 0;
    for (index, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(read)?;
        let number = index + 1;
        let value: serde_json::Value =
            serde_json::from_slice(&line).map_err(|_| VerifyError::Malformed { line: number })?;
        let prev = value
            .get("prev")
            .and_then(|p| p.as_str())
            .ok_or(VerifyError::Malformed { line: number })?;
        if prev != expected {
            return Err(VerifyError::Broken { line: number });
        }
        expected = hash(&line);
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(id: &'a str) -> AuditEvent<'a> {
        AuditEvent {
            request_id: "r1",
            principal: "anonymous",
            operation: "get",
            id,
            outcome: "ok",
            region: Some("us-east-1"),
            cache_hit: false,
            created: false,
        }
    }

    async fn write(path: &Path, ids: &[&str]) {
        let log = AuditLog::open(&AuditTarget::File(path.to_owned())).unwrap();
        for id in ids {
            log.record(&event(id)).await.unwrap();
        }
    }

    #[tokio::test]
    async fn the_chain_verifies_and_continues_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write(&path, &["a", "b"]).await;
        write(&path, &["c"]).await;
        assert_eq!(verify(&path).unwrap(), 3);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_records_are_all_written_in_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = std::sync::Arc::new(AuditLog::open(&AuditTarget::File(path.clone())).unwrap());
        let tasks: Vec<_> = (0..1000)
            .map(|n| {
                let log = std::sync::Arc::clone(&log);
                tokio::spawn(async move { log.record(&event(&n.to_string())).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(verify(&path).unwrap(), 1000);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut ids: Vec<u32> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|l| l["id"].as_str().unwrap().parse().unwrap())
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..1000).collect::<Vec<_>>());
        let first = text.lines().next().unwrap();
        assert!(first.starts_with("{\"time_ms\":"), "{first}");
        assert!(
            first.contains(&format!(",\"prev\":\"{GENESIS}\"}}")),
            "{first}"
        );
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

        let mut lines: Vec<&str> = original.lines().collect();
        lines.remove(1);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
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
}
