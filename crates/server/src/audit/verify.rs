//! `audit verify`: follows every writer's chain through a log file.
//!
//! A line whose writer was seen before must chain to that writer's previous line; a writer's
//! first line must chain to an earlier line of the file, or start an empty file. Lines
//! written before writers were named (no `writer` field) form one chain. A torn line (a
//! crash mid-write) is accepted where the next writer marked it (`"break":"torn"`), or where
//! a complete line follows it on the same line, and is reported as a restart.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead as _, BufReader};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// How every line of an audit file begins.
const LINE_START: &[u8] = b"{\"time_ms\":";

/// What a log that verified holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Audit lines, each on its writer's chain.
    pub lines: usize,
    /// Writers (server starts and reopens) that wrote them.
    pub writers: usize,
    /// Numbers of torn lines after which the chains continue (1-based).
    pub restarts: Vec<usize>,
    /// The file ends in a line still being written, or torn by a crash that the next writer
    /// will complete.
    pub torn_tail: bool,
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
    /// A line is not an audit line, and no marked restart follows it.
    #[error("line {line}: not an audit line")]
    Malformed {
        /// 1-based line number.
        line: usize,
    },
    /// A line's `prev` is not the hash of its writer's previous line.
    #[error("line {line}: the chain is broken (a line before it was edited, removed or inserted)")]
    Broken {
        /// 1-based line number.
        line: usize,
    },
}

/// Checks every writer's chain in the log at `path`. Holds 32 bytes per line in memory.
pub fn verify(path: &Path) -> Result<Verified, VerifyError> {
    let read = |source| VerifyError::Read {
        path: path.to_owned(),
        source,
    };
    let mut input = BufReader::new(File::open(path).map_err(read)?);
    let mut chains = Chains::default();
    let mut report = Verified {
        lines: 0,
        writers: 0,
        restarts: Vec::new(),
        torn_tail: false,
    };
    // Lines that are not audit lines, waiting to see whether a marked restart follows.
    let mut unexplained: Vec<usize> = Vec::new();
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        if input.read_until(b'\n', &mut line).map_err(read)? == 0 {
            break;
        }
        if line.pop() != Some(b'\n') {
            report.torn_tail = true;
            break;
        }
        chains.seen.insert(Sha256::digest(&line).into());
        let (entry, glued) = match parse(&line) {
            Some(entry) => (entry, false),
            None => match glued_line(&line) {
                Some(entry) => (entry, true),
                None => {
                    unexplained.push(number);
                    continue;
                }
            },
        };
        if !unexplained.is_empty() {
            if !entry.marks_break {
                return Err(VerifyError::Malformed {
                    line: unexplained[0],
                });
            }
            report.restarts.append(&mut unexplained);
        }
        if glued {
            report.restarts.push(number);
        }
        if !chains.follow(&entry) {
            return Err(VerifyError::Broken { line: number });
        }
        report.lines += 1;
    }
    if let Some(&line) = unexplained.first() {
        return Err(VerifyError::Malformed { line });
    }
    report.writers = chains.tips.len();
    Ok(report)
}

/// One audit line, as far as its chain is concerned.
struct Entry {
    writer: String,
    prev: [u8; 32],
    hash: [u8; 32],
    marks_break: bool,
}

fn parse(line: &[u8]) -> Option<Entry> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    let object = value.as_object()?;
    let writer = match object.get("writer") {
        None => String::new(),
        Some(writer) => writer.as_str()?.to_owned(),
    };
    Some(Entry {
        writer,
        prev: from_hex(object.get("prev")?.as_str()?)?,
        hash: Sha256::digest(line).into(),
        marks_break: object.get("break").is_some_and(|b| b == "torn"),
    })
}

/// A torn line with another writer's complete line appended to it: the complete one is
/// the last part that starts like an audit line and parses.
fn glued_line(line: &[u8]) -> Option<Entry> {
    let at = line
        .windows(LINE_START.len())
        .rposition(|w| w == LINE_START)
        .filter(|at| *at > 0)?;
    parse(&line[at..])
}

fn from_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0; 32];
    if text.len() != 64 {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// Each writer's last line, and every line seen so far (where a new writer may start).
#[derive(Default)]
struct Chains {
    tips: HashMap<String, [u8; 32]>,
    seen: HashSet<[u8; 32]>,
}

impl Chains {
    /// Whether `entry` continues its writer's chain (or starts one where it may); if so it
    /// becomes its writer's last line.
    fn follow(&mut self, entry: &Entry) -> bool {
        let follows = match self.tips.get(&entry.writer) {
            Some(tip) => entry.prev == *tip,
            None => entry.prev == [0; 32] || self.seen.contains(&entry.prev),
        };
        if follows {
            self.tips.insert(entry.writer.clone(), entry.hash);
        }
        follows
    }
}
