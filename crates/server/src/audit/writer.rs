//! One writer's side of the log: its chain, its line count, and how a line is written.

use std::fs::File;
use std::io::{self, Write as _};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::checkpoint::{self, Checkpoint};
use super::keys::SigningKey;
use super::{hash, GENESIS};

#[derive(Serialize)]
struct Line<'a, B> {
    time_ms: u128,
    writer: &'a str,
    /// `torn` on the first line after a torn one.
    #[serde(rename = "break", skip_serializing_if = "Option::is_none")]
    restart: Option<&'static str>,
    /// An [`AuditEvent`](super::AuditEvent) or a [`CheckpointLine`].
    #[serde(flatten)]
    body: &'a B,
    prev: &'a str,
}

#[derive(Serialize)]
pub(super) struct CheckpointLine {
    pub(super) checkpoint: Checkpoint,
}

/// Where this process's lines go now.
pub(super) enum Sink {
    Stdout,
    File(Arc<File>),
}

/// The writer's position: its file, its chain, and how many lines it has written.
pub(super) struct Writer {
    pub(super) sink: Sink,
    pub(super) id: String,
    prev: String,
    /// The file may end in a torn line: the next line starts with a newline and is marked.
    torn: bool,
    /// Lines written since the log was opened, across reopens; a line's number is its place.
    pub(super) written: u64,
    /// Files replaced by a reopen, with the number of the last line written to each, until a
    /// sync covers them.
    pub(super) retired: Vec<(Arc<File>, u64)>,
    /// Event lines written since this writer's last checkpoint.
    pub(super) since_checkpoint: u64,
}

impl Writer {
    /// A new writer whose first line follows `last` (the hash of the file's last complete
    /// line).
    pub(super) fn starting(sink: Sink, last: Option<String>, torn: bool) -> Self {
        Self {
            sink,
            id: new_writer_id(),
            prev: last.unwrap_or_else(|| GENESIS.to_owned()),
            torn,
            written: 0,
            retired: Vec::new(),
            since_checkpoint: 0,
        }
    }

    /// Goes on as a new writer on `sink`, keeping the line count; returns the old sink.
    pub(super) fn restart(&mut self, sink: Sink, last: Option<String>, torn: bool) -> Sink {
        self.id = new_writer_id();
        self.prev = last.unwrap_or_else(|| GENESIS.to_owned());
        self.torn = torn;
        self.since_checkpoint = 0;
        std::mem::replace(&mut self.sink, sink)
    }

    /// Chains and writes one line with one write, signed when `key` is given; returns its
    /// number.
    pub(super) fn append<B: Serialize>(
        &mut self,
        body: &B,
        key: Option<&SigningKey>,
    ) -> io::Result<u64> {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut bytes = Vec::with_capacity(320);
        if self.torn {
            bytes.push(b'\n');
        }
        let start = bytes.len();
        serde_json::to_writer(
            &mut bytes,
            &Line {
                time_ms,
                writer: &self.id,
                restart: self.torn.then_some("torn"),
                body,
                prev: &self.prev,
            },
        )
        .map_err(io::Error::other)?;
        if let Some(key) = key {
            let mut line = bytes.split_off(start);
            checkpoint::sign(&mut line, key);
            bytes.append(&mut line);
        }
        let next = hash(&bytes[start..]);
        bytes.push(b'\n');
        match &self.sink {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&bytes)?;
                out.flush()?;
            }
            Sink::File(file) => {
                let written = (&**file).write(&bytes)?;
                if written < bytes.len() {
                    // Part of the line is in the file: the next one completes and marks it.
                    self.torn = true;
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
        self.prev = next;
        self.torn = false;
        self.written += 1;
        Ok(self.written)
    }
}

fn new_writer_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}
