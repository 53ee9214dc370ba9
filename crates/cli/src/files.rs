//! `rkms encrypt` and `rkms decrypt`: files (or pipes) through the envelope format, in
//! constant memory. A file output is written beside its final name and renamed into place
//! only when complete, so a failure never leaves partial output, above all no partial
//! plaintext.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, IsTerminal as _, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use rkms_client::{Client, Key};
use rkms_envelope::Header;
use zeroize::Zeroizing;

/// The temporary file being written, so that an interrupted run (SIGINT, SIGTERM) removes
/// it before it exits: it may hold plaintext. A killed process (SIGKILL) cannot.
static PARTIAL: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Removes the temporary file of a run being interrupted.
pub(crate) fn remove_partial() {
    let partial = PARTIAL.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(path) = partial {
        let _ = std::fs::remove_file(path);
    }
}

/// I/O buffer on each side: a few chunks, so reads and writes are few and large.
const BUFFER: usize = 1024 * 1024;
/// Inputs at least this large show a progress bar on a terminal.
const PROGRESS_FROM: u64 = 64 * 1024 * 1024;

/// The key bytes as base64, wiped after use.
pub(crate) fn base64(bytes: &[u8]) -> Zeroizing<String> {
    use base64::Engine as _;
    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Encrypts `input` under the current version of `id` into `output`.
pub(crate) async fn encrypt(
    client: &Client,
    id: &str,
    input: Option<&Path>,
    output: Option<&Path>,
) -> Result<(), String> {
    // The input first: a missing file must not make a key for a mistyped id.
    let (reader, progress) = open_input(named(input).as_deref())?;
    let key = client.get_key(id).await.map_err(|e| e.to_string())?;
    let header = Header::new(id, key.version).map_err(|e| e.to_string())?;
    let output = named(output);
    tokio::task::spawn_blocking(move || {
        let written = write_output(output.as_deref(), |out| {
            rkms_envelope::encrypt(key.expose_secret(), header, reader, out)
                .map_err(|e| e.to_string())
        });
        progress.finish_and_clear();
        written
    })
    .await
    .map_err(|e| format!("the encryption stopped: {e}"))?
}

/// Decrypts the envelope in `input` into `output`, with the key its header names.
pub(crate) async fn decrypt(
    client: &Client,
    input: Option<&Path>,
    output: Option<&Path>,
) -> Result<(), String> {
    let (input, output) = (named(input), named(output));
    let (mut reader, progress) = open_input(input.as_deref())?;
    let parsed = Header::read(&mut reader).map_err(|e| e.to_string())?;
    let key: Key = client
        .get_key_version(parsed.header.id(), parsed.header.version())
        .await
        .map_err(|e| {
            format!(
                "the key of this envelope (id {:?}, version {}): {e}",
                parsed.header.id(),
                parsed.header.version()
            )
        })?;
    tokio::task::spawn_blocking(move || {
        let written = write_output(output.as_deref(), |out| {
            rkms_envelope::decrypt(key.expose_secret(), &parsed, reader, out)
                .map_err(|e| e.to_string())
        });
        progress.finish_and_clear();
        written
    })
    .await
    .map_err(|e| format!("the decryption stopped: {e}"))?
}

/// A path, unless it is absent or `-` (standard input or output).
fn named(path: Option<&Path>) -> Option<std::path::PathBuf> {
    path.filter(|p| p.as_os_str() != "-").map(Path::to_path_buf)
}

/// The input, buffered, with a progress bar on a terminal for a large file.
fn open_input(path: Option<&Path>) -> Result<(Box<dyn Read + Send>, ProgressBar), String> {
    let Some(path) = path else {
        return Ok((
            Box::new(BufReader::with_capacity(BUFFER, io::stdin())),
            ProgressBar::hidden(),
        ));
    };
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let progress = if io::stderr().is_terminal() && length >= PROGRESS_FROM {
        ProgressBar::new(length).with_style(
            ProgressStyle::with_template("{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} {eta}")
                .expect("a valid template"),
        )
    } else {
        ProgressBar::hidden()
    };
    let reader = progress.wrap_read(BufReader::with_capacity(BUFFER, file));
    Ok((Box::new(reader), progress))
}

/// Runs `write` into the output: standard output directly, or a temporary file beside
/// `path` that is renamed to it only when `write` succeeds (and is removed otherwise).
fn write_output(
    path: Option<&Path>,
    write: impl FnOnce(&mut dyn Write) -> Result<u64, String>,
) -> Result<(), String> {
    let Some(path) = path else {
        let mut out = BufWriter::with_capacity(BUFFER, io::stdout().lock());
        write(&mut out)?;
        return out.flush().map_err(|e| format!("standard output: {e}"));
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temporary = tempfile::Builder::new()
        .prefix(".rkms-")
        .tempfile_in(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    *PARTIAL.lock().unwrap_or_else(|e| e.into_inner()) = Some(temporary.path().to_owned());
    let mut out = BufWriter::with_capacity(BUFFER, temporary);
    let written = write(&mut out);
    PARTIAL.lock().unwrap_or_else(|e| e.into_inner()).take();
    written?;
    let temporary = out
        .into_inner()
        .map_err(|e| format!("{}: {}", path.display(), e.error()))?;
    temporary
        .as_file()
        .sync_all()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    temporary
        .persist(path)
        .map_err(|e| format!("{}: {}", path.display(), e.error))?;
    Ok(())
}
