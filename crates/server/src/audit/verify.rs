//! `audit verify`: follows every writer's chain through a log file and, given public keys,
//! checks the checkpoints and which lines they anchor.
//!
//! A line whose writer was seen before must chain to that writer's previous line; a writer's
//! first line must chain to an earlier line of the file, or start an empty file. Lines
//! written before writers were named (no `writer` field) form one chain. A torn line (a
//! crash mid-write) is accepted where the next writer marked it (`"break":"torn"`), or where
//! a complete line follows it on the same line, and is reported as a restart.
//!
//! That much anyone who can write the file can recompute. With public keys, every
//! checkpoint's signature must verify, and a line is *anchored* when a valid checkpoint of
//! its own writer leads back to it through `prev`s. A changed anchored line changes a signed
//! byte somewhere after it. Never anchored, whatever follows: another writer's lines (a
//! checkpoint vouches only for its own writer), a writer that starts afresh after the file's
//! opening lines (a chain copied in from another file), and torn text (a line's bytes before
//! the line glued to them, and lines awaiting a marked break).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead as _, BufReader};
use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use sha2::{Digest as _, Sha256};

use super::checkpoint::{signed_part, Checkpoint};
use super::keys::PublicKey;

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
    /// Checkpoint lines among `lines`.
    pub checkpoints: usize,
    /// With public keys, every checkpoint's signature verified, and these are the lines no
    /// checkpoint anchors, by writer; `None` without keys, when nothing is proven.
    pub unanchored: Option<Vec<Unanchored>>,
}

/// One writer's lines that no valid checkpoint anchors: the last ones it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unanchored {
    /// The writer (empty for lines written before writers were named).
    pub writer: String,
    /// The first such line (1-based).
    pub first: usize,
    /// The last such line.
    pub last: usize,
    /// How many lines.
    pub lines: usize,
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
    /// A line's `prev` is not the hash of its writer's previous line, or a checkpoint names
    /// a head that is not an earlier line of that writer.
    #[error("line {line}: the chain is broken (a line before it was edited, removed or inserted)")]
    Broken {
        /// 1-based line number.
        line: usize,
    },
    /// A checkpoint's signature does not verify.
    #[error(
        "line {line}: the checkpoint's signature does not verify (this line, or a line it \
         covers, was changed and the chain recomputed)"
    )]
    BadSignature {
        /// 1-based line number.
        line: usize,
    },
    /// A checkpoint names a key none of the public keys given is.
    #[error("line {line}: the checkpoint is signed by key {key}, which is none of the public keys given")]
    UnknownKey {
        /// 1-based line number.
        line: usize,
        /// The key id the checkpoint names.
        key: String,
    },
}

/// Checks that every writer's chain in the log at `path` holds together: consistency only,
/// which whoever can write the file can recompute (see [`verify_signed`]).
pub fn verify(path: &Path) -> Result<Verified, VerifyError> {
    verify_signed(path, &[])
}

/// [`verify`], and when `keys` are given, every checkpoint's signature and which lines the
/// checkpoints anchor. Holds about 170 bytes per line in memory at its peak.
pub fn verify_signed(path: &Path, keys: &[PublicKey]) -> Result<Verified, VerifyError> {
    let read = |source| VerifyError::Read {
        path: path.to_owned(),
        source,
    };
    let mut input = BufReader::new(File::open(path).map_err(read)?);
    let mut graph = Graph::default();
    let mut report = Verified {
        lines: 0,
        writers: 0,
        restarts: Vec::new(),
        torn_tail: false,
        checkpoints: 0,
        unanchored: None,
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
        graph.lines.push(Node::default());
        graph.index.insert(Sha256::digest(&line).into(), number);
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
            // The torn lines have no writer to report them under: the line that explains
            // them stands for them.
            graph.lines[number].torn = true;
            report.restarts.append(&mut unexplained);
        }
        if glued {
            report.restarts.push(number);
            graph.lines[number].torn = true;
        }
        if !graph.follow(number, &entry) {
            return Err(VerifyError::Broken { line: number });
        }
        if let Some(checkpoint) = &entry.checkpoint {
            report.checkpoints += 1;
            if !keys.is_empty() {
                check_signature(number, &line[entry.start..], checkpoint, keys)?;
                graph.lines[number].anchored = true;
            }
        }
        report.lines += 1;
    }
    if let Some(&line) = unexplained.first() {
        return Err(VerifyError::Malformed { line });
    }
    report.writers = graph.tips.len();
    if !keys.is_empty() {
        report.unanchored = Some(graph.unanchored());
    }
    Ok(report)
}

fn check_signature(
    number: usize,
    line: &[u8],
    checkpoint: &Checkpoint,
    keys: &[PublicKey],
) -> Result<(), VerifyError> {
    let key = keys
        .iter()
        .find(|k| k.id() == checkpoint.key)
        .ok_or_else(|| VerifyError::UnknownKey {
            line: number,
            key: checkpoint.key.clone(),
        })?;
    match signed_part(line) {
        Some((message, signature)) if key.verifies(&message, signature) => Ok(()),
        _ => Err(VerifyError::BadSignature { line: number }),
    }
}

/// One audit line, as far as its chain is concerned.
struct Entry {
    writer: String,
    prev: [u8; 32],
    hash: [u8; 32],
    marks_break: bool,
    checkpoint: Option<Checkpoint>,
    /// Where the entry starts in its line (after a torn line glued to it).
    start: usize,
}

fn parse(line: &[u8]) -> Option<Entry> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    let object = value.as_object()?;
    let writer = match object.get("writer") {
        None => String::new(),
        Some(writer) => writer.as_str()?.to_owned(),
    };
    let checkpoint = match object.get("checkpoint") {
        None => None,
        Some(body) => Some(Checkpoint::deserialize(body).ok()?),
    };
    Some(Entry {
        writer,
        prev: from_hex(object.get("prev")?.as_str()?)?,
        hash: Sha256::digest(line).into(),
        marks_break: object.get("break").is_some_and(|b| b == "torn"),
        checkpoint,
        start: 0,
    })
}

/// A torn line with another writer's complete line appended to it: the complete one is
/// the last part that starts like an audit line and parses.
fn glued_line(line: &[u8]) -> Option<Entry> {
    let at = line
        .windows(LINE_START.len())
        .rposition(|w| w == LINE_START)
        .filter(|at| *at > 0)?;
    let mut entry = parse(&line[at..])?;
    entry.start = at;
    Some(entry)
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

/// What a line leads back to, and whether a valid checkpoint leads to it.
#[derive(Default, Clone)]
struct Node {
    /// The writer's index in `Graph::tips`; `None` for a line that is not an audit line.
    writer: Option<usize>,
    /// The line its `prev` names (0: none).
    parent: usize,
    anchored: bool,
    /// Holds torn text, which nothing signs.
    torn: bool,
}

/// The lines read so far, by number, and what each writer's chain has reached.
struct Graph {
    /// Line number to its node; `lines[0]` is a placeholder.
    lines: Vec<Node>,
    /// Every line's hash to its number, where a new writer may start or a head may point.
    index: HashMap<[u8; 32], usize>,
    /// Writer id to its index and last line (hash, number).
    tips: HashMap<String, (usize, [u8; 32], usize)>,
    /// Writers that started afresh after a line had continued a chain: only the writers that
    /// open an empty file start at the genesis hash, so these chains came from elsewhere.
    foreign: Vec<usize>,
    /// Some line so far continued a chain.
    past_opening: bool,
}

impl Default for Graph {
    fn default() -> Self {
        Self {
            lines: vec![Node::default()],
            index: HashMap::new(),
            tips: HashMap::new(),
            foreign: Vec::new(),
            past_opening: false,
        }
    }
}

impl Graph {
    /// Whether `entry` (line `number`) continues its writer's chain, or starts one where it
    /// may; if so it becomes its writer's last line.
    fn follow(&mut self, number: usize, entry: &Entry) -> bool {
        let parent = match self.tips.get(&entry.writer) {
            Some((_, tip, line)) if entry.prev == *tip => *line,
            Some(_) => return false,
            None if entry.prev == [0; 32] => 0,
            None => match self.index.get(&entry.prev) {
                Some(line) if *line < number => *line,
                _ => return false,
            },
        };
        let next = self.tips.len();
        if parent == 0 && self.past_opening && !self.tips.contains_key(&entry.writer) {
            self.foreign.push(next);
        }
        self.past_opening |= parent != 0;
        let tip = self
            .tips
            .entry(entry.writer.clone())
            .or_insert((next, [0; 32], 0));
        (tip.1, tip.2) = (entry.hash, number);
        let node = &mut self.lines[number];
        node.writer = Some(tip.0);
        node.parent = parent;
        true
    }

    /// Marks what the valid checkpoints lead back to (every reference points to an earlier
    /// line, so one pass from the end suffices), and returns each writer's lines left over.
    fn unanchored(mut self) -> Vec<Unanchored> {
        for number in (1..self.lines.len()).rev() {
            if !self.lines[number].anchored {
                continue;
            }
            let parent = self.lines[number].parent;
            if self.lines[parent].writer == self.lines[number].writer {
                self.lines[parent].anchored = true;
            }
        }
        let mut names = vec![String::new(); self.tips.len()];
        for (name, (writer, _, _)) in self.tips {
            names[writer] = name;
        }
        let mut left: Vec<Option<Unanchored>> = vec![None; names.len()];
        for (number, node) in self.lines.iter().enumerate().skip(1) {
            let proven = node.anchored && !node.torn;
            let Some(writer) = node.writer.filter(|w| !proven || self.foreign.contains(w)) else {
                continue;
            };
            let range = left[writer].get_or_insert_with(|| Unanchored {
                writer: names[writer].clone(),
                first: number,
                last: number,
                lines: 0,
            });
            range.last = number;
            range.lines += 1;
        }
        let mut left: Vec<Unanchored> = left.into_iter().flatten().collect();
        left.sort_by_key(|range| range.first);
        left
    }
}
