//! One operation as the failover loop sends it, whatever the transport, and what an attempt
//! at it came to.

use std::time::Duration;

use crate::error::{Error, ErrorKind};
use crate::model::{Key, KeyInfo, KeyListing, KeyState};

/// An operation and its arguments.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Call<'a> {
    /// The key of `id`: `version`, or the current one when 0.
    GetKey {
        id: &'a str,
        version: u32,
    },
    Rotate(&'a str),
    Delete(&'a str),
    Restore(&'a str),
    Describe(&'a str),
    List {
        prefix: &'a str,
        after: Option<&'a str>,
        limit: usize,
    },
}

/// A server's answer to a [`Call`].
#[derive(Debug)]
pub(crate) enum Answer {
    Key(Key),
    /// The version a rotation made.
    Rotated(u32),
    State(KeyState),
    Info(KeyInfo),
    Listing(KeyListing),
}

/// Whether an operation may be sent again after a failure that may have reached a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Repeating it changes nothing (reads, delete, restore).
    Idempotent,
    /// Only when it cannot have been acted on (rotate).
    UnlessSent,
}

/// What one attempt came to.
pub(crate) enum Attempt {
    Done(Result<Answer, Error>),
    /// Try another server, after at least this long.
    Next(String, Option<Duration>),
}

impl Attempt {
    /// What an error answer comes to: the next server when the server could not serve
    /// (`passing`: unavailable, or rate limited) and sending again is safe, else the answer.
    /// Only a rate limit refuses a rotation before it is acted on: an unavailable answer may
    /// follow a compare-and-set whose answer came too late, and a proxy's 502 or 504 may
    /// follow a rotation made.
    pub(crate) fn after_error(
        server: &str,
        error: Error,
        passing: bool,
        retry: Retry,
        retry_after: Option<Duration>,
    ) -> Self {
        let rate_limited = error.kind() == Some(&ErrorKind::TooManyRequests);
        if passing && (retry == Retry::Idempotent || rate_limited) {
            Self::Next(format!("{server}: {error}"), retry_after)
        } else {
            Self::Done(Err(error))
        }
    }
}

/// The key answered for `id`, refused unless it is the one asked for (version `asked`, or
/// any when 0).
pub(crate) fn checked_key(
    id: &str,
    asked: u32,
    answered_id: String,
    version: Option<u32>,
    bytes: Vec<u8>,
) -> Result<Key, Error> {
    let bytes = zeroize::Zeroizing::new(bytes);
    match version {
        Some(version) if answered_id == id && version > 0 && (asked == 0 || version == asked) => {
            Ok(Key {
                id: answered_id,
                version,
                bytes: std::sync::Arc::new(bytes),
            })
        }
        _ => Err(Error::InvalidResponse(format!(
            "an answer for id {answered_id:?} version {version:?}, not the key asked for"
        ))),
    }
}
