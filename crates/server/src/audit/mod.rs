//! The audit log: one JSON line per key operation, chained by hashes per writer.
//!
//! A *writer* is one opening of the log by one process (a start, or a reopen on SIGHUP); its
//! lines carry `writer`, a random id, and `prev`, the SHA-256 (hex) of that writer's previous
//! line. A writer's first line chains to the last complete line in the file when it opened
//! (64 zeros for an empty file), so a single server's log is one unbroken chain across
//! restarts, and several servers sharing one data directory append to one file without
//! breaking each other's chains: each line goes out with one `O_APPEND` write, and
//! [`verify`] follows every writer's chain through the file. Editing or removing a line
//! breaks its writer's chain at that writer's next line. Removing a writer's last lines
//! leaves valid, shorter chains: ship the log off the host (or keep the last hashes
//! elsewhere) to detect truncation. No line ever holds key material.
//!
//! A crash can leave the file ending in a torn line (no newline). The next writer to open it
//! completes that line with a newline and marks its own first line `"break":"torn"`, which
//! [`verify`] reports as a restart rather than as corruption.
//!
//! With [`AuditSync::Always`], [`AuditLog::record`] returns only after an fsync that covers
//! its line; requests waiting at the same time share one fsync (see `commit`). After a
//! failed fsync no further line is confirmed until the server restarts.

use std::fs::File;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

mod commit;
mod file;
mod verify;

pub use verify::{verify, Verified, VerifyError};

use commit::GroupCommit;

/// The `prev` of a writer's first line in an empty file.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    /// Standard output (the server's logs go to standard error).
    Stdout,
    /// A file, appended to; each opening continues the chain from its last line.
    File(PathBuf),
}

/// When a line must be on disk before its key is handed out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditSync {
    /// Written to the operating system: survives a crash of the server, not of the machine.
    #[default]
    Os,
    /// Written and fsynced: survives a crash of the machine. Concurrent requests share one
    /// fsync.
    Always,
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
    /// `ok`, `denied` (403), `IntegrityFailure` (a record every region refused, answered as a
    /// 500), or the error type answered.
    pub outcome: &'a str,
    /// The region that generated or unwrapped the key.
    pub region: Option<&'a str>,
    /// Whether the key came from the cache.
    pub cache_hit: bool,
    /// Whether this request created the key.
    pub created: bool,
    /// Whether the key was served past its cache TTL because the regions or the store could
    /// not serve it (written only when true).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
}

#[derive(Serialize)]
struct Line<'a> {
    time_ms: u128,
    writer: &'a str,
    /// `torn` on the first line after a torn one.
    #[serde(rename = "break", skip_serializing_if = "Option::is_none")]
    restart: Option<&'static str>,
    #[serde(flatten)]
    event: &'a AuditEvent<'a>,
    prev: &'a str,
}

/// Where this process's lines go now.
enum Sink {
    Stdout,
    File(Arc<File>),
}

/// The writer's position: its file, its chain, and how many lines it has written.
struct Writer {
    sink: Sink,
    id: String,
    prev: String,
    /// The file may end in a torn line: the next line starts with a newline and is marked.
    torn: bool,
    /// Lines written since the log was opened, across reopens; a line's number is its place.
    written: u64,
    /// Files replaced by a reopen, with the number of the last line written to each, until a
    /// sync covers them.
    retired: Vec<(Arc<File>, u64)>,
}

/// An open audit log; see the module documentation.
pub struct AuditLog {
    target: AuditTarget,
    sync: AuditSync,
    writer: Mutex<Writer>,
    commit: GroupCommit,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("target", &self.target)
            .field("sync", &self.sync)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a line, as `prev` writes it.
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
    /// Opens the target as a new writer; a file is created (0600) or continued from its last
    /// complete line, and a torn last line is completed by this writer's first line.
    pub fn open(target: &AuditTarget, sync: AuditSync) -> io::Result<Self> {
        let writer = match target {
            AuditTarget::Stdout if sync == AuditSync::Always => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "sync = \"always\" needs an audit file, not standard output",
                ));
            }
            AuditTarget::Stdout => Writer::starting(Sink::Stdout, None, false),
            AuditTarget::File(path) => {
                let opened = file::open(path, sync)?;
                Writer::starting(Sink::File(Arc::new(opened.file)), opened.last, opened.torn)
            }
        };
        Ok(Self {
            target: target.clone(),
            sync,
            writer: Mutex::new(writer),
            commit: GroupCommit::default(),
        })
    }

    /// Opens the file at the target's path again, as a new writer, after log rotation moved
    /// the old one away (SIGHUP). On failure the current file stays in use.
    pub fn reopen(&self) -> io::Result<()> {
        let AuditTarget::File(path) = &self.target else {
            return Ok(());
        };
        let opened = file::open(path, self.sync)?;
        let mut writer = self.lock();
        let old = writer.restart(Sink::File(Arc::new(opened.file)), opened.last, opened.torn);
        if let (Sink::File(old), AuditSync::Always) = (old, self.sync) {
            let last = writer.written;
            writer.retired.push((old, last));
        }
        Ok(())
    }

    /// Appends one event; with [`AuditSync::Always`], returns once an fsync covers it. An
    /// audit line that cannot be written is an error the caller must not ignore: a key
    /// service that cannot audit should not hand out keys.
    pub async fn record(&self, event: &AuditEvent<'_>) -> io::Result<()> {
        let number = self.append(event)?;
        match self.sync {
            AuditSync::Os => Ok(()),
            AuditSync::Always => {
                self.commit
                    .cover(number, |synced| self.files_to_sync(synced))
                    .await
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Chains and writes one line with one write; returns its number.
    fn append(&self, event: &AuditEvent<'_>) -> io::Result<u64> {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut writer = self.lock();
        let mut bytes = Vec::with_capacity(320);
        if writer.torn {
            bytes.push(b'\n');
        }
        let start = bytes.len();
        serde_json::to_writer(
            &mut bytes,
            &Line {
                time_ms,
                writer: &writer.id,
                restart: writer.torn.then_some("torn"),
                event,
                prev: &writer.prev,
            },
        )
        .map_err(io::Error::other)?;
        let next = hash(&bytes[start..]);
        bytes.push(b'\n');
        match &writer.sink {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&bytes)?;
                out.flush()?;
            }
            Sink::File(file) => {
                let written = (&**file).write(&bytes)?;
                if written < bytes.len() {
                    // Part of the line is in the file: the next one completes and marks it.
                    writer.torn = true;
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!(
                            "short write to the audit log ({written} of {} bytes)",
                            bytes.len()
                        ),
                    ));
                }
            }
        }
        writer.prev = next;
        writer.torn = false;
        writer.written += 1;
        Ok(writer.written)
    }

    /// For a group commit: the number of the last line written, and the fsync that makes
    /// every line up to it durable (retired files not yet covered, then the current one).
    fn files_to_sync(
        &self,
        synced: u64,
    ) -> (u64, impl FnOnce() -> io::Result<()> + Send + 'static) {
        let mut writer = self.lock();
        writer.retired.retain(|(_, last)| *last > synced);
        let mut files: Vec<Arc<File>> = writer.retired.iter().map(|(f, _)| Arc::clone(f)).collect();
        if let Sink::File(file) = &writer.sink {
            files.push(Arc::clone(file));
        }
        let upto = writer.written;
        (upto, move || files.iter().try_for_each(|f| f.sync_data()))
    }
}

impl Writer {
    /// A new writer whose first line follows `last` (the hash of the file's last complete
    /// line).
    fn starting(sink: Sink, last: Option<String>, torn: bool) -> Self {
        Self {
            sink,
            id: new_writer_id(),
            prev: last.unwrap_or_else(|| GENESIS.to_owned()),
            torn,
            written: 0,
            retired: Vec::new(),
        }
    }

    /// Goes on as a new writer on `sink`, keeping the line count; returns the old sink.
    fn restart(&mut self, sink: Sink, last: Option<String>, torn: bool) -> Sink {
        self.id = new_writer_id();
        self.prev = last.unwrap_or_else(|| GENESIS.to_owned());
        self.torn = torn;
        std::mem::replace(&mut self.sink, sink)
    }
}

fn new_writer_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests;
