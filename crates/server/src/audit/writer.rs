//! One writer's side of the log: its chain, its line count, and how lines are written.
//!
//! Lines are chained and numbered under the log's lock, into a queue, and written outside
//! it: the caller that finds no write under way takes the queue and writes it with one
//! `write`, then every line queued meanwhile, until none is left; a caller that finds a write
//! under way waits for the batch that holds its line. Under load, a request whose audit line
//! waits gives its worker back instead of blocking it on the lock, and lines share writes.

use std::fs::File;
use std::io::{self, Write as _};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::checkpoint::{self, Checkpoint};
use super::keys::SigningKey;

/// A line's SHA-256, written in lowercase hex as the next line's `prev`; all zeros before a
/// writer's first line in an empty file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ChainHash(pub(super) [u8; 32]);

impl ChainHash {
    pub(super) fn of(line: &[u8]) -> Self {
        Self(Sha256::digest(line).into())
    }

    fn hex(&self) -> [u8; 64] {
        let mut digits = [0; 64];
        hex::encode_to_slice(self.0, &mut digits).expect("two digits a byte");
        digits
    }
}

/// A line's body, an [`AuditEvent`](super::AuditEvent) or a [`CheckpointLine`], as a JSON
/// object, made before the log's lock is taken. [`Writer::queue`] writes its members inside the
/// line: `{"time_ms":…,"writer":…,["break":"torn",]<members>,"prev":…}`.
pub(super) struct Body(Vec<u8>);

impl Body {
    pub(super) fn of<B: Serialize>(body: &B) -> io::Result<Self> {
        let mut json = Vec::with_capacity(LINE_CAPACITY);
        serde_json::to_writer(&mut json, body).map_err(io::Error::other)?;
        if json.len() < 2 || json[0] != b'{' || json[json.len() - 1] != b'}' {
            return Err(io::Error::other(
                "an audit line's body must be a JSON object",
            ));
        }
        Ok(Self(json))
    }

    fn members(&self) -> &[u8] {
        &self.0[1..self.0.len() - 1]
    }
}

#[derive(Serialize)]
pub(super) struct CheckpointLine {
    pub(super) checkpoint: Checkpoint,
}

/// Where this process's lines go now.
#[derive(Clone)]
pub(super) enum Sink {
    Stdout,
    File(Arc<File>),
}

/// Room for one line of a key operation, so that queuing it allocates once instead of growing
/// its buffer from nothing, a few bytes at a time.
const LINE_CAPACITY: usize = 512;

/// Lines chained and waiting for their write, and who waits for them.
#[derive(Default)]
struct Queue {
    bytes: Vec<u8>,
    lines: u64,
    /// `bytes` starts with the newline that completes a torn line.
    completes_torn: bool,
    /// Made by the first caller that waits for these lines.
    outcome: Option<Arc<Outcome>>,
}

/// Queued lines taken out to be written with one `write`.
pub(super) struct Batch {
    lines: Queue,
    sink: Sink,
    /// The hash of the batch's last line.
    head: ChainHash,
}

impl Batch {
    /// Writes the lines with one `write`; returns how many bytes went out (a short write is
    /// for [`Writer::settle`] to judge).
    pub(super) fn write(&self) -> io::Result<usize> {
        let bytes = &self.lines.bytes;
        match &self.sink {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()?;
                Ok(bytes.len())
            }
            Sink::File(file) => loop {
                match (&**file).write(bytes) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    wrote => return wrote,
                }
            },
        }
    }

    /// The lines complete among the first `written` bytes, and the hash of the last of them.
    fn complete_in(&self, written: usize) -> (u64, Option<ChainHash>) {
        let bytes = &self.lines.bytes[..written];
        let Some(cut) = bytes.iter().rposition(|b| *b == b'\n') else {
            return (0, None);
        };
        // Each newline ends a line, except the one completing a torn line.
        let mut complete = bytes[..cut].split(|b| *b == b'\n');
        let last = complete.next_back();
        let lines = complete.count() + 1 - usize::from(self.lines.completes_torn);
        let last = last.filter(|_| lines > 0).map(ChainHash::of);
        (lines as u64, last)
    }
}

/// How the write of a batch went: every line numbered up to `upto` is in the sink; the
/// batch's later lines are not, for `error`.
#[derive(Debug, Clone)]
pub(super) struct Settled {
    upto: u64,
    error: Option<(io::ErrorKind, String)>,
}

impl Settled {
    /// Whether line `number` was written.
    pub(super) fn of(&self, number: u64) -> io::Result<()> {
        if number <= self.upto {
            return Ok(());
        }
        let (kind, message) = self.error.clone().unwrap_or((
            io::ErrorKind::Other,
            "the audit line was not written".to_owned(),
        ));
        Err(io::Error::new(kind, message))
    }
}

/// Where callers wait for a batch to be written.
#[derive(Default)]
pub(super) struct Outcome {
    settled: OnceLock<Settled>,
    notify: tokio::sync::Notify,
}

impl Outcome {
    pub(super) async fn wait(&self) -> Settled {
        loop {
            let notified = self.notify.notified();
            if let Some(settled) = self.settled.get() {
                return settled.clone();
            }
            notified.await;
        }
    }

    fn settle(&self, settled: Settled) {
        let _ = self.settled.set(settled);
        self.notify.notify_waiters();
    }
}

/// What a caller that queued a line does next.
pub(super) enum Turn {
    /// No write was under way: it writes this batch, and those queued after it.
    Write(Batch),
    /// It waits for the batch its line is in.
    Wait(Arc<Outcome>),
}

/// The writer's position: its sink, its chain, how many lines it has written, and the lines
/// queued for the next write.
pub(super) struct Writer {
    pub(super) sink: Sink,
    pub(super) id: String,
    /// The hash of the last line queued: the next line's `prev`.
    head: ChainHash,
    /// The hash of the last line written: the chain goes on from it if queued lines are lost.
    written_head: ChainHash,
    /// The sink may end in a torn line: the next line queued starts with a newline and is
    /// marked.
    torn: bool,
    /// Lines written since the log was opened, across reopens; a line's number is its place.
    pub(super) written: u64,
    /// The number of the last line queued: lines being written and queued come after
    /// `written`.
    numbered: u64,
    queued: Queue,
    /// A caller took a batch to write it; until it is done, lines wait in `queued`. Without a
    /// write under way, lines are queued only while a write outside requests takes its turn
    /// (and writes them).
    pub(super) writing: bool,
    /// A write outside requests waits for its turn: the request writing hands it over.
    pub(super) idle_wanted: bool,
    /// Files replaced by a reopen, with the number of the last line written to each, until a
    /// sync covers them.
    pub(super) retired: Vec<(Arc<File>, u64)>,
    /// Event lines written since this writer's last checkpoint.
    pub(super) since_checkpoint: u64,
}

impl Writer {
    /// A new writer whose first line follows `last` (the hash of the file's last complete
    /// line).
    pub(super) fn starting(sink: Sink, last: Option<ChainHash>, torn: bool) -> Self {
        let head = last.unwrap_or_default();
        Self {
            sink,
            id: new_writer_id(),
            head,
            written_head: head,
            torn,
            written: 0,
            numbered: 0,
            queued: Queue::default(),
            writing: false,
            idle_wanted: false,
            retired: Vec::new(),
            since_checkpoint: 0,
        }
    }

    /// Goes on as a new writer on `sink`, keeping the line count; returns the old sink. Only
    /// with nothing queued.
    pub(super) fn restart(&mut self, sink: Sink, last: Option<ChainHash>, torn: bool) -> Sink {
        debug_assert!(!self.writing && self.queued.lines == 0);
        self.id = new_writer_id();
        self.head = last.unwrap_or_default();
        self.written_head = self.head;
        self.torn = torn;
        self.since_checkpoint = 0;
        std::mem::replace(&mut self.sink, sink)
    }

    /// Chains one line, signed when `key` is given, onto the queue; returns its number.
    pub(super) fn queue(&mut self, body: &Body, key: Option<&SigningKey>) -> io::Result<u64> {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let bytes = &mut self.queued.bytes;
        let before = bytes.len();
        if self.torn {
            bytes.push(b'\n');
        }
        let start = bytes.len();
        bytes.extend_from_slice(b"{\"time_ms\":");
        let written = serde_json::to_writer(&mut *bytes, &time_ms).and_then(|()| {
            bytes.extend_from_slice(b",\"writer\":");
            serde_json::to_writer(&mut *bytes, &self.id)
        });
        if let Err(e) = written {
            bytes.truncate(before);
            return Err(io::Error::other(e));
        }
        if self.torn {
            bytes.extend_from_slice(b",\"break\":\"torn\"");
        }
        if !body.members().is_empty() {
            bytes.push(b',');
            bytes.extend_from_slice(body.members());
        }
        bytes.extend_from_slice(b",\"prev\":\"");
        bytes.extend_from_slice(&self.head.hex());
        bytes.extend_from_slice(b"\"}");
        if let Some(key) = key {
            let mut line = bytes.split_off(start);
            checkpoint::sign(&mut line, key);
            bytes.append(&mut line);
        }
        self.head = ChainHash::of(&bytes[start..]);
        bytes.push(b'\n');
        self.queued.completes_torn |= self.torn;
        self.torn = false;
        self.queued.lines += 1;
        self.numbered += 1;
        Ok(self.numbered)
    }

    /// After a line was queued: the batch to write if no write is under way (the caller
    /// writes it), or where to wait.
    pub(super) fn turn(&mut self) -> Turn {
        if self.writing {
            let outcome = self.queued.outcome.get_or_insert_with(Arc::default);
            Turn::Wait(Arc::clone(outcome))
        } else {
            self.writing = true;
            Turn::Write(self.batch())
        }
    }

    /// Takes the queued lines out to be written; `None` when nothing is queued, and then no
    /// write is under way any more.
    pub(super) fn take(&mut self) -> Option<Batch> {
        self.writing = self.queued.lines > 0;
        self.writing.then(|| self.batch())
    }

    fn batch(&mut self) -> Batch {
        let empty = Queue {
            bytes: Vec::with_capacity(LINE_CAPACITY),
            ..Queue::default()
        };
        Batch {
            lines: std::mem::replace(&mut self.queued, empty),
            sink: self.sink.clone(),
            head: self.head,
        }
    }

    /// Writes what is queued with the lock held: for the writes outside requests, when no
    /// request is writing.
    pub(super) fn write_queued(&mut self) -> Settled {
        let Some(batch) = self.take() else {
            return Settled {
                upto: self.written,
                error: None,
            };
        };
        let wrote = batch.write();
        let settled = self.settle(batch, wrote);
        self.writing = false;
        settled
    }

    /// Notes how the write of `batch` went, and tells whoever waits for its lines. A short or
    /// failed write loses the batch's unwritten lines and every line queued after it (they
    /// chain to lost ones): the chain goes on from the last line in the sink, and a torn end
    /// is marked by the next line.
    pub(super) fn settle(&mut self, batch: Batch, wrote: io::Result<usize>) -> Settled {
        let len = batch.lines.bytes.len();
        let settled = match wrote {
            Ok(n) if n == len => {
                self.written += batch.lines.lines;
                self.written_head = batch.head;
                Settled {
                    upto: self.written,
                    error: None,
                }
            }
            failed => {
                let (n, error) = match failed {
                    Ok(n) => (
                        n,
                        (
                            io::ErrorKind::WriteZero,
                            format!("short write to the audit log ({n} of {len} bytes)"),
                        ),
                    ),
                    Err(e) => (0, (e.kind(), e.to_string())),
                };
                let (lines, last) = batch.complete_in(n);
                self.written += lines;
                self.numbered = self.written;
                self.written_head = last.unwrap_or(self.written_head);
                self.head = self.written_head;
                let cut_mid_line = n > 0 && batch.lines.bytes[n - 1] != b'\n';
                self.torn = cut_mid_line || (batch.lines.completes_torn && lines == 0);
                let settled = Settled {
                    upto: self.written,
                    error: Some(error),
                };
                if let Some(outcome) = std::mem::take(&mut self.queued).outcome {
                    outcome.settle(settled.clone());
                }
                settled
            }
        };
        if let Some(outcome) = &batch.lines.outcome {
            outcome.settle(settled.clone());
        }
        settled
    }
}

fn new_writer_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn writer(path: &Path) -> (Writer, Arc<File>) {
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .unwrap(),
        );
        (
            Writer::starting(Sink::File(Arc::clone(&file)), None, false),
            file,
        )
    }

    /// A line as serde wrote it before the frame was written by hand: the body flattened.
    #[derive(Serialize)]
    struct SerdeLine<'a, B> {
        time_ms: u128,
        writer: &'a str,
        #[serde(rename = "break", skip_serializing_if = "Option::is_none")]
        restart: Option<&'static str>,
        #[serde(flatten)]
        body: &'a B,
        prev: String,
    }

    /// Queues `body` and checks the line against serde's, and the chain against the line.
    fn queued_as_serde_wrote_it<B: Serialize>(body: &B, torn: bool) {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = writer(&dir.path().join("audit.log"));
        writer.head = ChainHash([0xab; 32]);
        writer.torn = torn;
        writer.queue(&Body::of(body).unwrap(), None).unwrap();
        let text = String::from_utf8(writer.queued.bytes.clone()).unwrap();
        let line = text.strip_suffix('\n').unwrap();
        let line = if torn {
            line.strip_prefix('\n').unwrap()
        } else {
            line
        };
        let time_ms = serde_json::from_str::<serde_json::Value>(line).unwrap()["time_ms"]
            .as_u64()
            .unwrap();
        let serde = serde_json::to_string(&SerdeLine {
            time_ms: time_ms.into(),
            writer: &writer.id,
            restart: torn.then_some("torn"),
            body,
            prev: "ab".repeat(32),
        })
        .unwrap();
        assert_eq!(line, serde);
        assert_eq!(writer.head, ChainHash::of(line.as_bytes()));
    }

    #[test]
    fn a_line_is_the_bytes_serde_wrote_with_the_body_flattened() {
        let event = |id, region, version, stale| super::super::AuditEvent {
            request_id: "0123456789abcdef",
            transport: "http",
            principal: "ops \"team\"\\é",
            operation: "get",
            id,
            outcome: "ok",
            region,
            version,
            cache_hit: true,
            created: false,
            stale,
        };
        for torn in [false, true] {
            queued_as_serde_wrote_it(&event("a", None, None, false), torn);
            queued_as_serde_wrote_it(&event("a\"b\\c\n\u{1f}é", Some("r1"), Some(3), true), torn);
            queued_as_serde_wrote_it(
                &CheckpointLine {
                    checkpoint: Checkpoint {
                        key: "k1".into(),
                        reason: checkpoint::Reason::Lines,
                    },
                },
                torn,
            );
            queued_as_serde_wrote_it(&serde_json::json!({}), torn);
        }
    }

    fn queue(writer: &mut Writer, id: &str) -> u64 {
        let body = Body::of(&serde_json::json!({ "id": id })).unwrap();
        writer.queue(&body, None).unwrap()
    }

    fn ids(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_short_write_keeps_the_whole_lines_and_the_next_line_marks_the_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (mut writer, file) = writer(&path);
        for id in ["a", "b", "c"] {
            queue(&mut writer, id);
        }
        let Turn::Write(batch) = writer.turn() else {
            panic!("no write was under way")
        };
        let cut = batch.lines.bytes.iter().position(|b| *b == b'\n').unwrap() + 10;
        (&*file).write_all(&batch.lines.bytes[..cut]).unwrap();
        let settled = writer.settle(batch, Ok(cut));
        assert!(settled.of(1).is_ok());
        for lost in [2, 3] {
            assert_eq!(
                settled.of(lost).unwrap_err().kind(),
                io::ErrorKind::WriteZero
            );
        }
        assert_eq!(
            queue(&mut writer, "d"),
            2,
            "numbers follow the lines in the file"
        );
        writer.write_queued().of(2).unwrap();
        let verified = super::super::verify(&path).unwrap();
        assert_eq!((verified.lines, verified.restarts), (2, vec![2]));
        assert_eq!(ids(&path), ["a", "d"]);
    }

    #[tokio::test]
    async fn a_failed_write_fails_the_lines_queued_behind_it_and_the_chain_goes_on_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (mut writer, _file) = writer(&path);
        queue(&mut writer, "a");
        writer.write_queued().of(1).unwrap();
        queue(&mut writer, "b");
        let Turn::Write(batch) = writer.turn() else {
            panic!("no write was under way")
        };
        let behind = queue(&mut writer, "c");
        let Turn::Wait(outcome) = writer.turn() else {
            panic!("a write was under way")
        };
        let failed = writer.settle(batch, Err(io::Error::other("the disk is gone")));
        assert!(failed.of(2).is_err());
        let waited = tokio::time::timeout(std::time::Duration::from_secs(5), outcome.wait())
            .await
            .expect("the lines queued behind a failed write are told")
            .of(behind)
            .unwrap_err();
        assert_eq!(waited.to_string(), "the disk is gone");
        assert!(
            writer.take().is_none(),
            "the lost lines are not written later"
        );
        assert_eq!(
            queue(&mut writer, "d"),
            2,
            "numbers follow the lines in the file"
        );
        writer.write_queued().of(2).unwrap();
        assert_eq!(super::super::verify(&path).unwrap().lines, 2);
        assert_eq!(ids(&path), ["a", "d"]);
    }

    #[test]
    fn a_line_queued_behind_a_write_is_numbered_by_its_place_and_told_when_its_batch_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (mut writer, _file) = writer(&path);
        assert_eq!(queue(&mut writer, "a"), 1);
        let Turn::Write(first) = writer.turn() else {
            panic!("no write was under way")
        };
        assert_eq!(
            queue(&mut writer, "b"),
            2,
            "the line after one being written"
        );
        let Turn::Wait(outcome) = writer.turn() else {
            panic!("a write was under way")
        };
        let wrote = first.write();
        writer.settle(first, wrote).of(1).unwrap();
        let second = writer.take().expect("the line queued meanwhile");
        writer.settle(second, Err(io::Error::other("the disk is gone")));
        let settled = outcome.settled.get().expect("told").clone();
        assert!(
            settled.of(2).is_err(),
            "a line that was not written is not confirmed"
        );
        assert_eq!(ids(&path), ["a"]);
    }
}
