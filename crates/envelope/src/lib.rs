//! RKMS's envelope format: data encrypted under an RKMS data key, in fixed-size chunks, so
//! that files of any size stream through in constant memory.
//!
//! An envelope is a header naming the key (id and version) followed by the body: the input
//! cut into chunks of `chunk_size` bytes (the last one shorter, or empty for empty input),
//! each sealed with AES-256-GCM in the STREAM construction (Hoang, Reyhanitabar, Rogaway and
//! Vizár): the nonce holds a random prefix, the chunk's number and a last-chunk flag. Every
//! chunk authenticates the whole header as associated data, under a key derived from the
//! data key and the header's random salt (HKDF-SHA256). Truncation (the new last chunk was
//! not sealed as last), appended or reordered chunks, a header moved to another body, and
//! any changed bit are all refused. `docs/envelope-format.md` gives the format byte by byte.
//! The cryptography is aws-lc-rs's (AES-GCM with AES-NI and carry-less multiplication, and
//! HKDF); the STREAM nonces are built here, as the format specifies.

mod header;
mod stream;

pub use header::{Header, ParsedHeader, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
pub use stream::{decrypt, encrypt};

/// Why an envelope could not be written or read. Never holds key material or plaintext.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The input does not start with the envelope's magic bytes.
    #[error("not an RKMS envelope (the magic bytes are missing)")]
    NotAnEnvelope,
    /// The envelope is of a format version or algorithm this build cannot read.
    #[error("envelope format {version}, algorithm {algorithm} is not supported by this build")]
    Unsupported {
        /// The format version byte.
        version: u8,
        /// The algorithm byte.
        algorithm: u8,
    },
    /// A header field is out of range.
    #[error("the envelope header is invalid: {0}")]
    BadHeader(String),
    /// The input ended inside the header.
    #[error("the envelope ends inside its header")]
    TruncatedHeader,
    /// A chunk failed to authenticate: the envelope was changed, cut short, extended or
    /// reordered, or the key is not the one it was sealed under.
    #[error("chunk {chunk} of the envelope does not authenticate: the data was changed, truncated or reordered, or the key is wrong")]
    Authentication {
        /// The chunk's number, from 0.
        chunk: u64,
    },
    /// The data key is not 32 bytes.
    #[error("the data key must be 32 bytes, not {0}")]
    KeyLength(usize),
    /// The input has more chunks than the STREAM counter can number.
    #[error("the input is too long for one envelope")]
    TooLong,
    /// Reading the input or writing the output failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
