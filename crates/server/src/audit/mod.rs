//! The audit log: one JSON line per key operation, chained by hashes per writer.
//!
//! A *writer* is one opening of the log by one process (a start, or a reopen on SIGHUP); its
//! lines carry `writer`, a random id, and `prev`, the SHA-256 (hex) of that writer's previous
//! line. A writer's first line chains to the last complete line in the file when it opened
//! (64 zeros for an empty file), so a single server's log is one unbroken chain across
//! restarts, and several servers sharing one data directory append to one file without
//! breaking each other's chains: each line goes out with one `O_APPEND` write, and
//! [`verify`] follows every writer's chain through the file. Editing or removing a line
//! breaks its writer's chain at that writer's next line, but whoever can write the file can
//! also recompute every later `prev`: the chain alone shows accidents, not forgery.
//!
//! With a signing key, each writer also writes signed checkpoints (see `checkpoint`): after
//! [`Checkpoints::every_lines`] lines, [`Checkpoints::interval`] after its last one when it
//! has written since, before leaving a file on [`AuditLog::reopen`], and on
//! [`AuditLog::close`]. A checkpoint signs the writer's chain head and the last lines other
//! writers appended since its previous one, so it anchors every line that leads to those;
//! [`verify_signed`] with the public key refuses an anchored line that was changed, removed or
//! inserted, and reports the lines no checkpoint covers yet (those after the last one). No
//! line ever holds key material.
//!
//! A crash can leave the file ending in a torn line (no newline). The next writer to open it
//! completes that line with a newline and marks its own first line `"break":"torn"`, which
//! [`verify`] reports as a restart rather than as corruption.
//!
//! With [`AuditSync::Always`], [`AuditLog::record`] returns only after an fsync that covers
//! its line; requests waiting at the same time share one fsync (see `commit`). After a
//! failed fsync no further line is confirmed until the server restarts.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

mod checkpoint;
mod commit;
mod file;
mod keys;
mod verify;
mod writer;

pub use checkpoint::Checkpoints;
pub use keys::{generate_key_pair, KeyError, PublicKey, SigningKey};
pub use verify::{verify, verify_signed, Unanchored, Verified, VerifyError};

use checkpoint::{Checkpoint, Reason};
use commit::GroupCommit;
use writer::{Body, CheckpointLine, Settled, Sink, Turn, Writer};

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
    /// The front end the request came through: `http`, `grpc` or `command`.
    pub transport: &'a str,
    /// Who asked.
    pub principal: &'a str,
    /// `get` (existing key) or `create` (this request created it); when refused or failed, what
    /// was attempted (`get_or_create` when the principal could do either); or a lifecycle
    /// operation: `rotate`, `delete`, `restore`, `describe`, `list` (whose id is the prefix
    /// listed).
    pub operation: &'a str,
    /// The key id.
    pub id: &'a str,
    /// `ok`, `denied` (403), `IntegrityFailure` (a record every region refused, answered as a
    /// 500), or the error type answered.
    pub outcome: &'a str,
    /// The region that generated or unwrapped the key.
    pub region: Option<&'a str>,
    /// The key version handed out, or made by a rotation (written only when there is one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Whether the key came from the cache.
    pub cache_hit: bool,
    /// Whether this request created the key.
    pub created: bool,
    /// Whether the key was served past its cache TTL because the regions or the store could
    /// not serve it (written only when true).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
}

/// The key that signs checkpoints, and how often.
#[derive(Debug)]
struct Signing {
    key: SigningKey,
    every: Checkpoints,
}

/// An open audit log; see the module documentation.
pub struct AuditLog {
    target: AuditTarget,
    sync: AuditSync,
    writer: Mutex<Writer>,
    /// Signalled when a request's write of queued lines is done and none are left.
    idle: Condvar,
    commit: GroupCommit,
    signing: Option<Signing>,
    /// Woken when the writer has written `every_lines` lines since its last checkpoint.
    due: tokio::sync::Notify,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("target", &self.target)
            .field("sync", &self.sync)
            .field("signing", &self.signing)
            .finish_non_exhaustive()
    }
}

/// Whether [`AuditLog::open`] could open the file at `path` for appending, checked without
/// opening or creating it: the file, if it exists, or else its directory, must be writable
/// by this process.
pub fn check_writable(path: &Path) -> io::Result<()> {
    use rustix::fs::{access, Access};
    let target = if path.exists() {
        path
    } else {
        match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    };
    access(target, Access::WRITE_OK).map_err(io::Error::from)
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
                let sink = Sink::File(Arc::new(opened.file));
                Writer::starting(sink, opened.last, opened.torn)
            }
        };
        Ok(Self {
            target: target.clone(),
            sync,
            writer: Mutex::new(writer),
            idle: Condvar::new(),
            commit: GroupCommit::default(),
            signing: None,
            due: tokio::sync::Notify::new(),
        })
    }

    /// Signs checkpoints with `key`, as often as `every` says (see the module documentation);
    /// [`AuditLog::write_checkpoints`] must run for the periodic ones.
    pub fn with_checkpoints(mut self, key: SigningKey, every: Checkpoints) -> Self {
        self.signing = Some(Signing { key, every });
        self
    }

    /// Opens the file at the target's path again, as a new writer, after log rotation moved
    /// the old one away (SIGHUP). A checkpoint ends the writer's chain in the old file first
    /// (a failed one is logged, and does not stop the reopen). On failure to open, the
    /// current file stays in use.
    pub fn reopen(&self) -> io::Result<()> {
        let AuditTarget::File(path) = &self.target else {
            return Ok(());
        };
        let opened = file::open(path, self.sync)?;
        let mut writer = self.exclusive();
        if let Err(e) = self.checkpoint_locked(&mut writer, Reason::Reopen) {
            tracing::error!(error = %e, "cannot write the audit checkpoint before the reopen");
        }
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
        let number = self.append(event).await?;
        match self.sync {
            AuditSync::Os => Ok(()),
            // Boxed: the group commit's future would otherwise make every key request's
            // future larger, and every await moves it.
            AuditSync::Always => Box::pin(self.cover(number)).await,
        }
    }

    /// Writes the checkpoints that fall due while the server runs: after `every_lines` lines,
    /// and `interval` after the last one when a line was written since. Returns at once
    /// without a signing key.
    pub async fn write_checkpoints(self: Arc<Self>) {
        let Some(interval) = self.signing.as_ref().map(|s| s.every.interval) else {
            return;
        };
        loop {
            let reason = tokio::select! {
                () = tokio::time::sleep(interval) => Reason::Interval,
                () = self.due.notified() => Reason::Lines,
            };
            let log = Arc::clone(&self);
            let written = tokio::task::spawn_blocking(move || log.checkpoint(reason))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)));
            if let Err(e) = written {
                tracing::error!(error = %e, "cannot write an audit checkpoint");
            }
        }
    }

    /// Ends the writer at shutdown: a last checkpoint, made durable with
    /// [`AuditSync::Always`].
    pub async fn close(&self) -> io::Result<()> {
        self.checkpoint(Reason::Shutdown)?;
        match self.sync {
            AuditSync::Os => Ok(()),
            AuditSync::Always => {
                let written = self.lock().written;
                self.cover(written).await
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer with nothing queued and no request writing: for the writes outside
    /// requests (checkpoints, reopen), which then write with the lock held. Takes the turn
    /// from a request that is writing at its next batch, and writes what was queued.
    fn exclusive(&self) -> MutexGuard<'_, Writer> {
        let mut writer = self.lock();
        while writer.writing {
            writer.idle_wanted = true;
            writer = self.idle.wait(writer).unwrap_or_else(|e| e.into_inner());
        }
        // The lines' requests learn how their write went; the caller's own write follows.
        writer.write_queued();
        writer
    }

    /// Returns once line `number` is on disk.
    async fn cover(&self, number: u64) -> io::Result<()> {
        self.commit
            .cover(number, |synced| self.files_to_sync(synced))
            .await
    }

    /// Chains one event line and returns its number once it is written: by this caller, with
    /// the lines queued meanwhile, or by the caller already writing (see `writer`).
    async fn append(&self, event: &AuditEvent<'_>) -> io::Result<u64> {
        let body = Body::of(event)?;
        let (number, turn) = {
            let mut writer = self.lock();
            let number = writer.queue(&body, None)?;
            writer.since_checkpoint += 1;
            if self
                .signing
                .as_ref()
                .is_some_and(|s| writer.since_checkpoint == s.every.every_lines)
            {
                self.due.notify_one();
            }
            (number, writer.turn())
        };
        let settled = match turn {
            Turn::Write(batch) => self.write_from(batch),
            Turn::Wait(outcome) => outcome.wait().await,
        };
        settled.of(number)?;
        Ok(number)
    }

    /// Writes `batch`, then each batch queued while the last was written, until none is
    /// left or a write outside requests waits for its turn (it then writes what is queued);
    /// returns how the first went.
    fn write_from(&self, first: writer::Batch) -> Settled {
        let wrote = first.write();
        let mut writer = self.lock();
        let settled = writer.settle(first, wrote);
        while !writer.idle_wanted {
            let Some(batch) = writer.take() else {
                return settled;
            };
            drop(writer);
            let wrote = batch.write();
            writer = self.lock();
            writer.settle(batch, wrote);
        }
        writer.idle_wanted = false;
        writer.writing = false;
        // Only now: a notification is a system call.
        self.idle.notify_all();
        settled
    }

    /// Writes a checkpoint if there is a signing key and the writer has written lines since
    /// its last one. Blocks on file I/O.
    fn checkpoint(&self, reason: Reason) -> io::Result<()> {
        self.checkpoint_locked(&mut self.exclusive(), reason)
    }

    fn checkpoint_locked(&self, writer: &mut Writer, reason: Reason) -> io::Result<()> {
        let Some(signing) = &self.signing else {
            return Ok(());
        };
        if writer.since_checkpoint == 0 {
            return Ok(());
        }
        let line = CheckpointLine {
            checkpoint: Checkpoint {
                key: signing.key.id().to_owned(),
                reason,
            },
        };
        let number = writer.queue(&Body::of(&line)?, Some(&signing.key))?;
        writer.write_queued().of(number)?;
        writer.since_checkpoint = 0;
        Ok(())
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

#[cfg(test)]
mod tests;
