//! Sealing and opening the body: one AES-256-GCM call per chunk, STREAM nonces, the header as
//! associated data. One chunk (and one byte of look-ahead) is in memory at a time.

use std::io::{Read, Write};

use aead::stream::{NewStream as _, StreamBE32, StreamPrimitive as _};
use aes_gcm::{Aes256Gcm, Key, KeyInit as _};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize as _, Zeroizing};

use crate::header::{Header, ParsedHeader};
use crate::EnvelopeError;

/// AES-GCM's tag, after every chunk.
const TAG_LEN: usize = 16;
/// HKDF's `info` for the chunk key.
const CHUNK_KEY_INFO: &[u8] = b"rkms envelope v1 chunk key";

/// The STREAM cipher of one envelope: its chunk key is HKDF-SHA256 of the data key with the
/// header's salt, so no two envelopes share a key (and so no nonce is ever reused), whatever
/// their nonce prefixes.
fn chunk_cipher(data_key: &[u8], header: &Header) -> Result<StreamBE32<Aes256Gcm>, EnvelopeError> {
    if data_key.len() != 32 {
        return Err(EnvelopeError::KeyLength(data_key.len()));
    }
    let mut chunk_key = Zeroizing::new([0; 32]);
    Hkdf::<Sha256>::new(Some(&header.salt), data_key)
        .expand(CHUNK_KEY_INFO, &mut chunk_key[..])
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    let aead = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&chunk_key[..]));
    Ok(StreamBE32::from_aead(aead, (&header.nonce_prefix).into()))
}

/// Writes the envelope of everything `input` holds to `output`: `header`, then the sealed
/// chunks. Returns the plaintext bytes read.
pub fn encrypt(
    data_key: &[u8],
    header: &Header,
    mut input: impl Read,
    mut output: impl Write,
) -> Result<u64, EnvelopeError> {
    let stream = chunk_cipher(data_key, header)?;
    let aad = header.encode();
    output.write_all(&aad)?;
    let size = header.chunk_size as usize;
    let mut chunk = Zeroizing::new(Vec::with_capacity(size + TAG_LEN));
    let mut reader = LookAhead::default();
    let mut position = 0_u32;
    let mut total = 0_u64;
    loop {
        let last = reader.next_chunk(&mut input, &mut chunk, size)?;
        total += chunk.len() as u64;
        stream
            .encrypt_in_place(position, last, &aad, &mut *chunk)
            .map_err(|_| EnvelopeError::TooLong)?;
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
    let stream = chunk_cipher(data_key, &header.header)?;
    let sealed = header.header.chunk_size as usize + TAG_LEN;
    let mut chunk = Zeroizing::new(Vec::with_capacity(sealed));
    let mut reader = LookAhead::default();
    let mut position = 0_u32;
    let mut total = 0_u64;
    loop {
        let last = reader.next_chunk(&mut input, &mut chunk, sealed)?;
        stream
            .decrypt_in_place(position, last, &header.raw, &mut *chunk)
            .map_err(|_| EnvelopeError::Authentication {
                chunk: u64::from(position),
            })?;
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
