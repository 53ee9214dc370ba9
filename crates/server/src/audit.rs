//! The audit log: one JSON line per key operation, chained by hashes.
//!
//! Each line carries `prev`, the SHA-256 (hex) of the line before it (64 zeros for the first),
//! so editing or removing a line breaks the chain at the next one; [`verify`] finds the break.
//! Removing lines only at the end leaves a valid, shorter chain: ship the log off the host
//! (or keep the last hash elsewhere) to detect truncation. No line ever holds key material.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// The `prev` of the first line.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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

#[derive(Serialize)]
struct Line<'a> {
    time_ms: u128,
    #[serde(flatten)]
    event: &'a AuditEvent<'a>,
    prev: &'a str,
}

struct Chain {
    out: Box<dyn io::Write + Send>,
    prev: String,
}

/// An open audit log. Writes are serialised; each line is flushed before the next.
#[derive(Debug)]
pub struct AuditLog {
    chain: Mutex<Chain>,
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
        Ok(Self {
            chain: Mutex::new(Chain { out, prev }),
        })
    }

    /// Appends one event. An audit line that cannot be written is an error the caller must
    /// not ignore: a key service that cannot audit should not hand out keys.
    pub fn record(&self, event: &AuditEvent<'_>) -> io::Result<()> {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut chain = self.chain.lock().unwrap_or_else(|e| e.into_inner());
        let mut line = serde_json::to_vec(&Line {
            time_ms,
            event,
            prev: &chain.prev,
        })
        .map_err(io::Error::other)?;
        let next = hash(&line);
        line.push(b'\n');
        chain.out.write_all(&line)?;
        chain.out.flush()?;
        chain.prev = next;
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

    fn write(path: &Path, ids: &[&str]) {
        let log = AuditLog::open(&AuditTarget::File(path.to_owned())).unwrap();
        for id in ids {
            log.record(&event(id)).unwrap();
        }
    }

    #[test]
    fn the_chain_verifies_and_continues_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write(&path, &["a", "b"]);
        write(&path, &["c"]);
        assert_eq!(verify(&path).unwrap(), 3);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn an_edited_or_removed_line_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write(&path, &["a", "b", "c", "d"]);
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
