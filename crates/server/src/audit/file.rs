//! Opening the audit file: created private, appended to, and read back only at its end, to
//! find the line a new writer chains to and whether a crash left that end torn.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, FileExt as _, OpenOptionsExt as _};
use std::path::Path;

use super::writer::ChainHash;
use super::AuditSync;

/// How much of the file's end is read at first; doubled until a whole line is in view.
const TAIL_WINDOW: u64 = 64 * 1024;

/// An audit file opened for appending.
pub(super) struct Opened {
    pub(super) file: File,
    /// The hash of the last complete, non-empty line; `None` when there is none.
    pub(super) last: Option<ChainHash>,
    /// The file ends in a line without its newline.
    pub(super) torn: bool,
}

/// Opens (or creates, mode 0600, in directories created 0700) the file at `path` for
/// appending. With [`AuditSync::Always`] the directory entry is synced too, so that a new
/// file survives a crash of the machine along with its lines.
pub(super) fn open(path: &Path, sync: AuditSync) -> io::Result<Opened> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    if sync == AuditSync::Always {
        File::open(dir.unwrap_or(Path::new(".")))?.sync_all()?;
    }
    let (last, torn) = tail(&file)?;
    Ok(Opened {
        file,
        last: last.map(|line| ChainHash::of(&line)),
        torn,
    })
}

/// The last complete, non-empty line of `file` (without its newline), and whether the file
/// ends in a torn line. Reads backwards from the end, never the whole file unless it must.
fn tail(file: &File) -> io::Result<(Option<Vec<u8>>, bool)> {
    let len = file.metadata()?.len();
    let mut window = TAIL_WINDOW;
    loop {
        let start = len.saturating_sub(window);
        let mut buf = vec![0; usize::try_from(len - start).map_err(io::Error::other)?];
        file.read_exact_at(&mut buf, start)?;
        let torn = buf.last().is_some_and(|b| *b != b'\n');
        let newline = |to: usize| buf[..to].iter().rposition(|b| *b == b'\n');
        // `end` is the newline that closes the line looked at.
        let mut end = newline(buf.len());
        while let Some(stop) = end {
            match newline(stop) {
                Some(begin) if begin + 1 == stop => end = Some(begin),
                Some(begin) => return Ok((Some(buf[begin + 1..stop].to_vec()), torn)),
                None if start == 0 => return Ok(((stop > 0).then(|| buf[..stop].to_vec()), torn)),
                None => break,
            }
        }
        if start == 0 {
            return Ok((None, torn));
        }
        window = window.saturating_mul(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn tail_of(content: &[u8]) -> (Option<Vec<u8>>, bool) {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(content).unwrap();
        tail(&file).unwrap()
    }

    #[test]
    fn the_last_complete_line_is_found_past_empty_and_torn_ends() {
        let some = |s: &str| Some(s.as_bytes().to_vec());
        assert_eq!(tail_of(b""), (None, false));
        assert_eq!(tail_of(b"\n\n"), (None, false));
        assert_eq!(tail_of(b"torn"), (None, true));
        assert_eq!(tail_of(b"a\n"), (some("a"), false));
        assert_eq!(tail_of(b"a\nb\n"), (some("b"), false));
        assert_eq!(tail_of(b"a\nb\n\n"), (some("b"), false));
        assert_eq!(tail_of(b"a\nb\ntor"), (some("b"), true));
        assert_eq!(tail_of(b"a\n\ntor"), (some("a"), true));
    }

    #[test]
    fn a_last_line_longer_than_the_first_window_is_read_whole() {
        let long = "x".repeat(usize::try_from(TAIL_WINDOW).unwrap() * 3);
        let content = format!("first\n{long}\ntorn");
        assert_eq!(tail_of(content.as_bytes()), (Some(long.into_bytes()), true));
    }
}
