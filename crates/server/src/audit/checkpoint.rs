//! Checkpoints: signed lines that anchor the chains to a key the file's editor does not hold.
//!
//! A checkpoint is a line of its writer's chain, like any other, with the body
//! `"checkpoint":{"key":ID,"reason":R}`, ending in `,"sig":"<base64 Ed25519 signature>"}`.
//! The signature covers [`DOMAIN`] and then every byte of the line as it would be without its
//! `sig` field: its `prev` (so the writer's whole chain up to it) and its time. It vouches
//! for its own writer's lines alone: anyone who can write the file can append lines under
//! any writer id, so signing what other writers appended would sign forgeries.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::keys::SigningKey;

/// Put before the line in the signed message, so that the signature means nothing elsewhere.
const DOMAIN: &[u8] = b"rkms audit checkpoint v1\n";

/// How a checkpoint line ends, up to the signature.
const SIG_FIELD: &[u8] = b",\"sig\":\"";

/// How often a writer checkpoints its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoints {
    /// After this many lines since the last checkpoint.
    pub every_lines: u64,
    /// And this long after the last one, if a line was written since.
    pub interval: Duration,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Self {
            every_lines: 1000,
            interval: Duration::from_secs(60),
        }
    }
}

/// Why a checkpoint was written (for the reader; verification does not depend on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Reason {
    /// `every_lines` lines since the last one.
    Lines,
    /// `interval` since the last one.
    Interval,
    /// The file is about to be left for a new one at its path (SIGHUP).
    Reopen,
    /// The server is stopping.
    Shutdown,
}

/// A checkpoint line's body.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Checkpoint {
    /// The id of the public key that checks the signature.
    pub(super) key: String,
    pub(super) reason: Reason,
}

/// Appends `,"sig":"..."` to `line`, a JSON object without its newline.
pub(super) fn sign(line: &mut Vec<u8>, key: &SigningKey) {
    let signature = key.sign(&[DOMAIN, line.as_slice()].concat());
    line.pop();
    line.extend_from_slice(SIG_FIELD);
    line.extend_from_slice(signature.as_bytes());
    line.extend_from_slice(b"\"}");
}

/// The message a signed line's signature covers, and the signature; `None` when the line
/// does not end in a `sig` field.
pub(super) fn signed_part(line: &[u8]) -> Option<(Vec<u8>, &str)> {
    let at = line
        .windows(SIG_FIELD.len())
        .rposition(|w| w == SIG_FIELD)?;
    let signature = line[at + SIG_FIELD.len()..].strip_suffix(b"\"}")?;
    let message = [DOMAIN, &line[..at], b"}"].concat();
    Some((message, std::str::from_utf8(signature).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_every_byte_before_it() {
        let key = SigningKey::generate();
        let public = key.public();
        let mut line = br#"{"time_ms":1,"checkpoint":{},"prev":"00"}"#.to_vec();
        sign(&mut line, &key);
        let (message, signature) = signed_part(&line).unwrap();
        assert!(public.verifies(&message, signature));
        for at in 0..line.len() - signature.len() - 2 {
            let mut changed = line.clone();
            changed[at] ^= 1;
            let verifies = signed_part(&changed).is_some_and(|(m, s)| public.verifies(&m, s));
            assert!(!verifies, "a change at byte {at} went unnoticed");
        }
        assert!(signed_part(br#"{"prev":"00"}"#).is_none());
    }
}
