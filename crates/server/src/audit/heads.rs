//! Other writers' progress in a shared file: the hash of each one's last complete line
//! appended since this writer last looked, for its next checkpoint to name.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;

use serde::Deserialize;

use super::hash;

/// How much is read at a time; grown while a single line does not fit.
const CHUNK: usize = 64 * 1024;

/// Lines read so far, and the heads not yet named by a checkpoint.
#[derive(Debug)]
pub(super) struct Heads {
    /// Where the next read starts: just past the last complete line read.
    offset: u64,
    latest: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow)]
    writer: Option<Cow<'a, str>>,
}

impl Heads {
    /// Starts reading at `offset`: what came before is anchored by the line the writer's
    /// chain starts from, or by the other writers' own checkpoints.
    pub(super) fn from(offset: u64) -> Self {
        Self {
            offset,
            latest: BTreeMap::new(),
        }
    }

    /// Reads the complete lines appended to `file` since the last read, up to its length
    /// now. Lines that are not whole audit lines (torn, glued) are passed over: their
    /// writer's next line names them.
    pub(super) fn read(&mut self, file: &File) -> io::Result<()> {
        let end = file.metadata()?.len();
        let mut buf = vec![0; CHUNK];
        while self.offset < end {
            let want = buf
                .len()
                .min(usize::try_from(end - self.offset).unwrap_or(usize::MAX));
            file.read_exact_at(&mut buf[..want], self.offset)?;
            match buf[..want].iter().rposition(|b| *b == b'\n') {
                Some(last) => {
                    for line in buf[..last].split(|b| *b == b'\n') {
                        self.note(line);
                    }
                    self.offset += last as u64 + 1;
                }
                None if want == buf.len() => buf.resize(buf.len() * 2, 0),
                None => break,
            }
        }
        Ok(())
    }

    fn note(&mut self, line: &[u8]) {
        if let Ok(Named {
            writer: Some(writer),
        }) = serde_json::from_slice(line)
        {
            self.latest.insert(writer.into_owned(), hash(line));
        }
    }

    /// The heads for a checkpoint of writer `own`.
    pub(super) fn pending(&self, own: &str) -> BTreeMap<String, String> {
        let mut heads = self.latest.clone();
        heads.remove(own);
        heads
    }

    /// Forgets the heads a checkpoint has named.
    pub(super) fn named(&mut self) {
        self.latest.clear();
    }
}
