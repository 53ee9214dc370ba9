//! The envelope header: what key the body is sealed under, and the randomness that makes
//! each envelope's chunk keys and nonces its own.

use std::io::Read;

use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};

use crate::EnvelopeError;

/// The first bytes of every envelope.
pub(crate) const MAGIC: [u8; 8] = *b"RKMSENV\0";
/// The format version this build writes and reads.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// AES-256-GCM, STREAM with a 32-bit big-endian counter, HKDF-SHA256 chunk key.
pub(crate) const ALGORITHM: u8 = 1;
/// Random salt for the chunk key.
pub(crate) const SALT_LEN: usize = 32;
/// Random part of every chunk's nonce (the STREAM counter and flag take the other 5 bytes).
pub(crate) const NONCE_PREFIX_LEN: usize = 7;
/// Longest key id in a header: room beyond RKMS's own ids (256 bytes) for other users of the
/// format.
const MAX_ID_LEN: usize = 1024;

/// Plaintext bytes per chunk unless chosen otherwise: large enough that the per-chunk cost
/// (16-byte tag, one AEAD call) is small, small enough to keep memory flat.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// Smallest chunk size a header may name.
pub const MIN_CHUNK_SIZE: u32 = 1024;
/// Largest chunk size a header may name: a reader holds one chunk in memory.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;

/// The fields of an envelope header. Not `Clone`, and consumed by [`crate::encrypt`]: its
/// salt and nonce prefix must seal one envelope only, since a second envelope under the same
/// data key and header would reuse every nonce.
#[derive(PartialEq, Eq)]
pub struct Header {
    id: String,
    version: u32,
    chunk_size: u32,
    pub(crate) salt: [u8; SALT_LEN],
    pub(crate) nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Header")
            .field("id", &self.id)
            .field("version", &self.version)
            .field("chunk_size", &self.chunk_size)
            .finish_non_exhaustive()
    }
}

impl Header {
    /// A header for a new envelope under version `version` of key `id`, with fresh random
    /// salt and nonce prefix and the default chunk size.
    pub fn new(id: &str, version: u32) -> Result<Self, EnvelopeError> {
        let mut salt = [0; SALT_LEN];
        let mut nonce_prefix = [0; NONCE_PREFIX_LEN];
        let random = SystemRandom::new();
        random
            .fill(&mut salt)
            .and_then(|()| random.fill(&mut nonce_prefix))
            .map_err(|_| {
                EnvelopeError::Io(std::io::Error::other("the system's random source failed"))
            })?;
        Self::from_parts(id, version, DEFAULT_CHUNK_SIZE, salt, nonce_prefix)
    }

    /// A header with every field given, randomness included: for test vectors and for
    /// other implementations checking theirs, never for a new envelope (a chosen salt and
    /// prefix, used twice under one key, reuse nonces). A new envelope takes [`Header::new`].
    pub fn from_parts(
        id: &str,
        version: u32,
        chunk_size: u32,
        salt: [u8; SALT_LEN],
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
    ) -> Result<Self, EnvelopeError> {
        let header = Self {
            id: id.to_owned(),
            version,
            chunk_size,
            salt,
            nonce_prefix,
        };
        header.check()?;
        Ok(header)
    }

    /// The same header with another chunk size.
    pub fn with_chunk_size(mut self, chunk_size: u32) -> Result<Self, EnvelopeError> {
        self.chunk_size = chunk_size;
        self.check()?;
        Ok(self)
    }

    /// The RKMS key id the body is sealed under.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key's version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Plaintext bytes per chunk.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    fn check(&self) -> Result<(), EnvelopeError> {
        let bad = |message: String| Err(EnvelopeError::BadHeader(message));
        if self.id.is_empty() || self.id.len() > MAX_ID_LEN {
            return bad(format!("the key id must be 1 to {MAX_ID_LEN} bytes"));
        }
        if self.version == 0 {
            return bad("the key version must be at least 1".into());
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return bad(format!(
                "the chunk size must be {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes"
            ));
        }
        Ok(())
    }

    /// The header's bytes, as written at the start of the envelope and authenticated by
    /// every chunk.
    pub fn encode(&self) -> Vec<u8> {
        let id = self.id.as_bytes();
        let mut out = Vec::with_capacity(20 + id.len() + SALT_LEN + NONCE_PREFIX_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.push(ALGORITHM);
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        // `check` bounds the id to MAX_ID_LEN, which fits.
        out.extend_from_slice(&(id.len() as u16).to_be_bytes());
        out.extend_from_slice(id);
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.nonce_prefix);
        out
    }

    /// Reads a header from the start of `input`, leaving `input` at the first chunk.
    pub fn read(input: &mut impl Read) -> Result<ParsedHeader, EnvelopeError> {
        let mut raw = Vec::with_capacity(20);
        input.take(MAGIC.len() as u64).read_to_end(&mut raw)?;
        if raw[..] != MAGIC[..raw.len()] || raw.is_empty() {
            return Err(EnvelopeError::NotAnEnvelope);
        }
        let magic_read = raw.len();
        raw.resize(20, 0);
        read_exact(input, &mut raw[magic_read..])?;
        let (version, algorithm) = (raw[8], raw[9]);
        if version != FORMAT_VERSION || algorithm != ALGORITHM {
            return Err(EnvelopeError::Unsupported { version, algorithm });
        }
        let be32 = |at: usize| u32::from_be_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        let (chunk_size, key_version) = (be32(10), be32(14));
        let id_len = usize::from(u16::from_be_bytes([raw[18], raw[19]]));
        if id_len == 0 || id_len > MAX_ID_LEN {
            return Err(EnvelopeError::BadHeader(format!(
                "the key id must be 1 to {MAX_ID_LEN} bytes"
            )));
        }
        raw.resize(20 + id_len + SALT_LEN + NONCE_PREFIX_LEN, 0);
        read_exact(input, &mut raw[20..])?;
        let id = std::str::from_utf8(&raw[20..20 + id_len])
            .map_err(|_| EnvelopeError::BadHeader("the key id is not UTF-8".into()))?;
        let mut salt = [0; SALT_LEN];
        salt.copy_from_slice(&raw[20 + id_len..20 + id_len + SALT_LEN]);
        let mut nonce_prefix = [0; NONCE_PREFIX_LEN];
        nonce_prefix.copy_from_slice(&raw[20 + id_len + SALT_LEN..]);
        let header = Header::from_parts(id, key_version, chunk_size, salt, nonce_prefix)?;
        Ok(ParsedHeader { header, raw })
    }
}

/// A header as read from an envelope, with its exact bytes, which every chunk authenticates.
#[derive(Debug)]
pub struct ParsedHeader {
    /// The fields.
    pub header: Header,
    pub(crate) raw: Vec<u8>,
}

/// `read_exact`, with an end of input inside the header reported as such.
fn read_exact(input: &mut impl Read, buffer: &mut [u8]) -> Result<(), EnvelopeError> {
    input.read_exact(buffer).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => EnvelopeError::TruncatedHeader,
        _ => EnvelopeError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_as_written() {
        let header = Header::new("orders/eu", 3).unwrap();
        let bytes = header.encode();
        assert_eq!(bytes.len(), 20 + 9 + SALT_LEN + NONCE_PREFIX_LEN);
        let mut input = &bytes[..];
        let parsed = Header::read(&mut input).unwrap();
        assert_eq!(parsed.header, header);
        assert_eq!(parsed.raw, bytes);
        assert!(input.is_empty());
    }

    #[test]
    fn bad_headers_are_refused_by_name() {
        let bytes = Header::new("x", 1).unwrap().encode();
        let read = |bytes: &[u8]| Header::read(&mut &bytes[..]).map(|p| p.header);
        assert!(matches!(
            read(b"PK\x03\x04 zip"),
            Err(EnvelopeError::NotAnEnvelope)
        ));
        assert!(matches!(read(b""), Err(EnvelopeError::NotAnEnvelope)));
        assert!(matches!(read(b"RKMS"), Err(EnvelopeError::TruncatedHeader)));
        assert!(matches!(
            read(b"RKMSENV\0\x01\x01\x00\x01"),
            Err(EnvelopeError::TruncatedHeader)
        ));
        let mut other = bytes.clone();
        other[0] = b'X';
        assert!(matches!(read(&other), Err(EnvelopeError::NotAnEnvelope)));
        let mut newer = bytes.clone();
        newer[8] = 2;
        assert!(matches!(
            read(&newer),
            Err(EnvelopeError::Unsupported { version: 2, .. })
        ));
        let mut tiny_chunks = bytes.clone();
        tiny_chunks[10..14].copy_from_slice(&16_u32.to_be_bytes());
        assert!(matches!(
            read(&tiny_chunks),
            Err(EnvelopeError::BadHeader(_))
        ));
        let mut no_version = bytes.clone();
        no_version[14..18].copy_from_slice(&0_u32.to_be_bytes());
        assert!(matches!(
            read(&no_version),
            Err(EnvelopeError::BadHeader(_))
        ));
        assert!(matches!(
            read(&bytes[..bytes.len() - 1]),
            Err(EnvelopeError::TruncatedHeader)
        ));
        assert!(Header::new("", 1).is_err());
        assert!(!format!("{:?}", Header::new("x", 1).unwrap()).contains("salt"));
    }
}
