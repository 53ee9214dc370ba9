//! Sealing and opening the body: one AES-256-GCM call per chunk, STREAM nonces, the header as
//! associated data. One chunk (and one byte of look-ahead) is in memory at a time.

use std::io::{Read, Write};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::hkdf;
use zeroize::{Zeroize as _, Zeroizing};

use crate::header::{Header, ParsedHeader, NONCE_PREFIX_LEN};
use crate::EnvelopeError;

/// AES-GCM's tag, after every chunk.
const TAG_LEN: usize = 16;
/// HKDF's `info` for the chunk key.
const CHUNK_KEY_INFO: &[u8] = b"rkms envelope v1 chunk key";

/// One envelope's chunk cipher: AES-256-GCM under a chunk key that is HKDF-SHA256 of the
/// data key with the header's salt, so no two envelopes share a key (and so no nonce is ever
/// reused), whatever their nonce prefixes; and the STREAM nonces (Rogaway's STREAM with a
/// 32-bit big-endian counter, as RustCrypto's `aead::stream::StreamBE32`).
struct ChunkCipher {
    key: LessSafeKey,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl ChunkCipher {
    fn new(data_key: &[u8], header: &Header) -> Result<Self, EnvelopeError> {
        if data_key.len() != 32 {
            return Err(EnvelopeError::KeyLength(data_key.len()));
        }
        let mut chunk_key = Zeroizing::new([0; 32]);
        hkdf::Salt::new(hkdf::HKDF_SHA256, &header.salt)
            .extract(data_key)
            .expand(&[CHUNK_KEY_INFO], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut chunk_key[..]))
            .expect("32 bytes is HKDF-SHA256's own length");
        let key =
            UnboundKey::new(&AES_256_GCM, &chunk_key[..]).expect("a 32-byte key is an AES-256 key");
        Ok(Self {
            key: LessSafeKey::new(key),
            nonce_prefix: header.nonce_prefix,
        })
    }

    /// `prefix || position (big-endian) || last flag`.
    fn nonce(&self, position: u32, last: bool) -> Nonce {
        let mut nonce = [0; 12];
        nonce[..NONCE_PREFIX_LEN].copy_from_slice(&self.nonce_prefix);
        nonce[NONCE_PREFIX_LEN..11].copy_from_slice(&position.to_be_bytes());
        nonce[11] = u8::from(last);
        Nonce::assume_unique_for_key(nonce)
    }

    /// Seals `chunk` in place, appending its tag.
    fn seal(&self, position: u32, last: bool, aad: &[u8], chunk: &mut Vec<u8>) {
        self.key
            .seal_in_place_append_tag(self.nonce(position, last), Aad::from(aad), chunk)
            .expect("a chunk is far below AES-GCM's message limit");
    }

    /// Opens `chunk` in place, leaving the plaintext; false if it does not authenticate.
    fn open(&self, position: u32, last: bool, aad: &[u8], chunk: &mut Vec<u8>) -> bool {
        let opened = self
            .key
            .open_in_place(self.nonce(position, last), Aad::from(aad), chunk)
            .map(|plaintext| plaintext.len());
        match opened {
            Ok(len) => {
                chunk.truncate(len);
                true
            }
            Err(_) => false,
        }
    }
}

/// Writes the envelope of everything `input` holds to `output`: `header`, then the sealed
/// chunks. Returns the plaintext bytes read. The header is consumed: one header seals one
/// envelope.
pub fn encrypt(
    data_key: &[u8],
    header: Header,
    mut input: impl Read,
    mut output: impl Write,
) -> Result<u64, EnvelopeError> {
    let cipher = ChunkCipher::new(data_key, &header)?;
    let aad = header.encode();
    output.write_all(&aad)?;
    let size = header.chunk_size() as usize;
    let mut chunk = Zeroizing::new(Vec::with_capacity(size + TAG_LEN));
    let mut reader = LookAhead::default();
    let mut position = 0_u32;
    let mut total = 0_u64;
    loop {
        let last = reader.next_chunk(&mut input, &mut chunk, size)?;
        if position == u32::MAX && !last {
            return Err(EnvelopeError::TooLong);
        }
        total += chunk.len() as u64;
        cipher.seal(position, last, &aad, &mut chunk);
        output.write_all(&chunk)?;
        if last {
            output.flush()?;
            return Ok(total);
        }
        position = position.checked_add(1).ok_or(EnvelopeError::TooLong)?;
    }
}

/// Opens the body of an envelope whose header was read from `input` (see [`Header::read`])
/// and writes the plaintext to `output`, chunk by chunk as each authenticates. Returns the
/// plaintext bytes written. On an error, what was written so far is authentic but
/// incomplete: a caller that writes a file should write it elsewhere and move it into place
/// only on success.
pub fn decrypt(
    data_key: &[u8],
    header: &ParsedHeader,
    mut input: impl Read,
    mut output: impl Write,
) -> Result<u64, EnvelopeError> {
    let cipher = ChunkCipher::new(data_key, &header.header)?;
    let sealed = header.header.chunk_size() as usize + TAG_LEN;
    let mut chunk = Zeroizing::new(Vec::with_capacity(sealed));
    let mut reader = LookAhead::default();
    let mut position = 0_u32;
    let mut total = 0_u64;
    loop {
        let last = reader.next_chunk(&mut input, &mut chunk, sealed)?;
        if !cipher.open(position, last, &header.raw, &mut chunk) {
            return Err(EnvelopeError::Authentication {
                chunk: u64::from(position),
            });
        }
        output.write_all(&chunk)?;
        total += chunk.len() as u64;
        if last {
            output.flush()?;
            return Ok(total);
        }
        position = position
            .checked_add(1)
            .ok_or(EnvelopeError::Authentication {
                chunk: u64::from(position) + 1,
            })?;
    }
}

/// Reads chunks with one byte of look-ahead, so that a chunk is known to be the last one
/// (sealed as such) even when the input ends exactly at its end.
#[derive(Default)]
struct LookAhead {
    next: Option<u8>,
}

impl LookAhead {
    /// Fills `chunk` with the next `size` bytes (fewer at the end of input); returns whether
    /// it is the last chunk.
    fn next_chunk(
        &mut self,
        input: &mut impl Read,
        chunk: &mut Vec<u8>,
        size: usize,
    ) -> Result<bool, EnvelopeError> {
        chunk.clear();
        chunk.extend(self.next.take());
        let wanted = (size - chunk.len()) as u64;
        input.take(wanted).read_to_end(chunk)?;
        if chunk.len() < size {
            return Ok(true);
        }
        let mut byte = [0];
        let more = loop {
            match input.read(&mut byte) {
                Ok(n) => break n == 1,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        };
        if more {
            self.next = Some(byte[0]);
        }
        byte.zeroize();
        Ok(!more)
    }
}

impl Drop for LookAhead {
    fn drop(&mut self) {
        self.next.zeroize();
    }
}
