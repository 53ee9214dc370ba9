//! The envelope format end to end: round trips across chunk boundaries, every kind of
//! tampering refused, the committed test vectors, and the decoder fuzzed (proptest).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rkms_envelope::{decrypt, encrypt, EnvelopeError, Header};
use serde_json::Value;

const KEY: [u8; 32] = [7; 32];
const SMALL: u32 = 1024;

fn seal(plaintext: &[u8], header: Header) -> Vec<u8> {
    let mut out = Vec::new();
    let read = encrypt(&KEY, header, plaintext, &mut out).unwrap();
    assert_eq!(read, plaintext.len() as u64);
    out
}

fn open_with(key: &[u8], envelope: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let mut input = envelope;
    let header = Header::read(&mut input)?;
    let mut out = Vec::new();
    decrypt(key, &header, input, &mut out)?;
    Ok(out)
}

fn open(envelope: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    open_with(&KEY, envelope)
}

fn small_header() -> Header {
    Header::new("orders", 1)
        .unwrap()
        .with_chunk_size(SMALL)
        .unwrap()
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn refused_as_tampered(result: Result<Vec<u8>, EnvelopeError>) -> bool {
    matches!(result, Err(EnvelopeError::Authentication { .. }))
}

#[test]
fn every_length_around_the_chunk_boundaries_round_trips() {
    let size = SMALL as usize;
    for len in [
        0,
        1,
        size - 1,
        size,
        size + 1,
        2 * size,
        2 * size + 1,
        5 * size - 3,
    ] {
        let plaintext = data(len);
        let header = small_header();
        let header_len = header.encode().len();
        let envelope = seal(&plaintext, header);
        // Empty input is one empty chunk; otherwise the last chunk holds 1 to `size` bytes.
        let chunks = len.div_ceil(size).max(1);
        assert_eq!(
            envelope.len(),
            header_len + len + 16 * chunks,
            "length {len}"
        );
        assert_eq!(open(&envelope).unwrap(), plaintext, "length {len}");
    }
}

#[test]
fn truncation_at_any_chunk_boundary_or_byte_is_refused() {
    let plaintext = data(3 * SMALL as usize + 100);
    let header = small_header();
    let header_len = header.encode().len();
    let envelope = seal(&plaintext, header);
    let sealed = SMALL as usize + 16;
    for cut in [1, 16, 17, 100] {
        assert!(
            refused_as_tampered(open(&envelope[..envelope.len() - cut])),
            "cut {cut}"
        );
    }
    for chunks in 0..=3 {
        let boundary = header_len + chunks * sealed;
        assert!(
            refused_as_tampered(open(&envelope[..boundary])),
            "cut after {chunks} chunks"
        );
    }
}

#[test]
fn reordered_duplicated_and_appended_chunks_are_refused() {
    let header = small_header();
    let header_len = header.encode().len();
    let envelope = seal(&data(3 * SMALL as usize + 10), header);
    let sealed = SMALL as usize + 16;
    let chunk = |i: usize| &envelope[header_len + i * sealed..header_len + (i + 1) * sealed];
    let mut swapped = envelope[..header_len].to_vec();
    for i in [1, 0, 2] {
        swapped.extend_from_slice(chunk(i));
    }
    swapped.extend_from_slice(&envelope[header_len + 3 * sealed..]);
    assert!(refused_as_tampered(open(&swapped)));
    let mut doubled = envelope[..header_len + sealed].to_vec();
    doubled.extend_from_slice(&envelope[header_len..]);
    assert!(refused_as_tampered(open(&doubled)));
    let mut appended = envelope.clone();
    appended.push(0);
    assert!(refused_as_tampered(open(&appended)));
}

#[test]
fn a_header_moved_to_another_body_or_changed_is_refused() {
    let (first, second) = (small_header(), small_header());
    let header_len = first.encode().len();
    let a = seal(&data(2000), first);
    let b = seal(&data(2000), second);
    let mut mixed = b[..header_len].to_vec();
    mixed.extend_from_slice(&a[header_len..]);
    assert!(refused_as_tampered(open(&mixed)));
    // Another key version named in the header: the same key no longer opens it.
    let mut relabelled = a.clone();
    relabelled[17] ^= 2;
    assert!(refused_as_tampered(open(&relabelled)));
    assert!(refused_as_tampered(open_with(&[8; 32], &a)));
    assert!(matches!(
        open_with(&[8; 16], &a),
        Err(EnvelopeError::KeyLength(16))
    ));
}

/// A reader that hands out one byte per call, as a slow pipe may.
struct Trickle<'a>(&'a [u8]);

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let Some((first, rest)) = self.0.split_first() else {
            return Ok(0);
        };
        match buffer.first_mut() {
            Some(slot) => {
                *slot = *first;
                self.0 = rest;
                Ok(1)
            }
            None => Ok(0),
        }
    }
}

#[test]
fn a_reader_that_trickles_byte_by_byte_reads_the_same() {
    let plaintext = data(2 * SMALL as usize);
    let mut envelope = Vec::new();
    encrypt(&KEY, small_header(), Trickle(&plaintext), &mut envelope).unwrap();
    assert_eq!(open(&envelope).unwrap(), plaintext);
    let mut input = Trickle(&envelope);
    let header = Header::read(&mut input).unwrap();
    let mut out = Vec::new();
    decrypt(&KEY, &header, input, &mut out).unwrap();
    assert_eq!(out, plaintext);
}

#[test]
fn every_single_bit_flip_is_refused() {
    let header = Header::new("x", 1).unwrap().with_chunk_size(SMALL).unwrap();
    let envelope = seal(&data(1500), header);
    for byte in 0..envelope.len() {
        let mut flipped = envelope.clone();
        flipped[byte] ^= 0x10;
        assert!(
            open(&flipped).is_err(),
            "a flip at byte {byte} went unnoticed"
        );
    }
}

#[test]
fn the_committed_test_vectors_hold() {
    let vectors: Value =
        serde_json::from_str(include_str!("../../../docs/envelope-vectors.json")).unwrap();
    let hex = |v: &Value| decode_hex(v.as_str().unwrap());
    let vectors = vectors["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 4);
    for vector in vectors {
        let key = hex(&vector["data_key"]);
        let header = Header::from_parts(
            vector["id"].as_str().unwrap(),
            u32::try_from(vector["version"].as_u64().unwrap()).unwrap(),
            u32::try_from(vector["chunk_size"].as_u64().unwrap()).unwrap(),
            hex(&vector["salt"]).try_into().unwrap(),
            hex(&vector["nonce_prefix"]).try_into().unwrap(),
        )
        .unwrap();
        let plaintext = hex(&vector["plaintext"]);
        let mut sealed = Vec::new();
        encrypt(&key, header, &plaintext[..], &mut sealed).unwrap();
        assert_eq!(
            encode_hex(&sealed),
            vector["envelope"].as_str().unwrap(),
            "{}",
            vector["name"]
        );
        assert_eq!(open_with(&key, &sealed).unwrap(), plaintext);
    }
}

fn decode_hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn runner() -> TestRunner {
    let cases = std::env::var("RKMS_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Fuzz target: the decoder never panics on any input, and a changed envelope never opens
/// to anything but an error (or, for a change it cannot see, the true plaintext: there is
/// none, since every byte is authenticated).
#[test]
fn fuzz_the_decoder() {
    let header = small_header();
    let plaintext = data(2 * SMALL as usize + 77);
    let envelope = seal(&plaintext, header);
    let edits =
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3_u8), 1..8);
    runner()
        .run(&(edits, any::<prop::sample::Index>()), |(edits, cut)| {
            let mut changed = envelope.clone();
            for (at, byte, kind) in edits {
                let at = at.index(changed.len().max(1));
                match kind {
                    0 if at < changed.len() => changed[at] ^= byte | 1,
                    1 => changed.insert(at.min(changed.len()), byte),
                    _ if at < changed.len() => {
                        changed.remove(at);
                    }
                    _ => {}
                }
            }
            let cut = cut.index(changed.len() + 1);
            for candidate in [&changed[..], &changed[..cut]] {
                if let Ok(opened) = open(candidate) {
                    prop_assert_eq!(candidate, &envelope[..], "a changed envelope opened");
                    prop_assert_eq!(opened, plaintext.clone());
                }
            }
            Ok(())
        })
        .unwrap();
    runner()
        .run(&proptest::collection::vec(any::<u8>(), 0..4096), |bytes| {
            let mut garbage = b"RKMSENV\0\x01\x01".to_vec();
            garbage.extend_from_slice(&bytes);
            prop_assert!(open(&garbage).is_err());
            prop_assert!(open(&bytes).is_err());
            Ok(())
        })
        .unwrap();
}
