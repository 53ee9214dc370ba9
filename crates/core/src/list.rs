//! Paging through a store's ids: the opaque cursor, the page, and ids that fail the id rules.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::store::StoreError;
use crate::{telemetry, KeyId};

/// Longest cursor token accepted, in characters; a longer one was not issued by a store.
const MAX_TOKEN_LEN: usize = 64 * 1024;

/// How many undecodable ids are remembered as already logged. Past it they are still skipped
/// and counted, just no longer logged one by one, so planted ids cannot grow memory.
const MAX_REPORTED: usize = 1024;

/// Where a listing continues: an opaque token from [`ListPage::next`].
///
/// Each backend decides what the token holds (the last key it examined, DynamoDB's
/// `LastEvaluatedKey`); callers only hand it back. It displays as plain text, so it can travel
/// through a client and come back ([`ListCursor::from_token`]): a store checks a token when it
/// reads it, and a token it did not issue is [`StoreError::InvalidCursor`], never a panic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListCursor(String);

impl ListCursor {
    /// A cursor that continues after `position`, a backend's own key.
    pub fn after(position: &[u8]) -> Self {
        Self(URL_SAFE_NO_PAD.encode(position))
    }

    /// A token as a client sent it back; checked when a store reads it.
    pub fn from_token(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The backend key this cursor continues after.
    pub fn position(&self, store: &'static str) -> Result<Vec<u8>, StoreError> {
        if self.0.len() > MAX_TOKEN_LEN {
            return Err(StoreError::invalid_cursor(store, "the token is too long"));
        }
        URL_SAFE_NO_PAD
            .decode(&self.0)
            .map_err(|_| StoreError::invalid_cursor(store, "the token is not base64url"))
    }

    /// [`ListCursor::position`] for backends whose keys are text.
    pub fn text_position(&self, store: &'static str) -> Result<String, StoreError> {
        String::from_utf8(self.position(store)?)
            .map_err(|_| StoreError::invalid_cursor(store, "the position is not UTF-8"))
    }
}

impl fmt::Display for ListCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One page of ids from [`crate::Store::list`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListPage {
    /// Ids, in the backend's order.
    pub ids: Vec<KeyId>,
    /// Pass back to get the next page; `None` on the last page.
    pub next: Option<ListCursor>,
}

impl ListPage {
    /// Builds a page from up to `limit + 1` keys fetched in the backend's key order after the
    /// cursor: the extra key only tells that more follow, and `next` continues after the last
    /// key kept. Keys that fail the id rules are skipped ([`listed_id`]); the cursor still
    /// moves past them.
    pub fn from_overfetched<K: AsRef<[u8]>>(
        store: &'static str,
        mut keys: Vec<K>,
        limit: usize,
    ) -> Self {
        let next = if keys.len() > limit {
            keys.truncate(limit);
            keys.last().map(|key| ListCursor::after(key.as_ref()))
        } else {
            None
        };
        let ids = keys
            .iter()
            .filter_map(|key| listed_id(store, key.as_ref()))
            .collect();
        Self { ids, next }
    }
}

/// Parses an id a backend listed. One that fails the id rules (written past RKMS, by hand or
/// by an old tool) is skipped rather than failing the whole listing and so every repair sweep:
/// it is counted in [`telemetry::STORE_UNDECODABLE_IDS`] each time, and logged the first time
/// this process sees it.
pub fn listed_id(store: &'static str, raw: &[u8]) -> Option<KeyId> {
    let reason = match std::str::from_utf8(raw) {
        Ok(text) => match KeyId::parse(text) {
            Ok(id) => return Some(id),
            Err(e) => e.to_string(),
        },
        Err(_) => "it is not UTF-8".to_owned(),
    };
    metrics::counter!(telemetry::STORE_UNDECODABLE_IDS, "store" => store).increment(1);
    if first_sight(store, raw) {
        let shown: String = String::from_utf8_lossy(raw).chars().take(80).collect();
        tracing::warn!(
            store,
            id = ?shown,
            bytes = raw.len(),
            %reason,
            "skipping a stored id that fails the id rules; listings and repair sweeps pass it by"
        );
    }
    None
}

/// True the first time this process reports `raw` from `store`.
fn first_sight(store: &'static str, raw: &[u8]) -> bool {
    static REPORTED: Mutex<BTreeSet<(&str, Vec<u8>)>> = Mutex::new(BTreeSet::new());
    let mut reported = REPORTED.lock().unwrap_or_else(|e| e.into_inner());
    if reported.len() >= MAX_REPORTED {
        return false;
    }
    reported.insert((store, raw.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_through_their_text() {
        let cursor = ListCursor::after(b"orders/2026");
        let back = ListCursor::from_token(cursor.to_string());
        assert_eq!(back.position("test").unwrap(), b"orders/2026");
        assert_eq!(back.text_position("test").unwrap(), "orders/2026");
    }

    #[test]
    fn malformed_tokens_are_invalid_cursors() {
        let long = "A".repeat(MAX_TOKEN_LEN + 1);
        for token in ["not base64!", "%%", long.as_str()] {
            let result = ListCursor::from_token(token).position("test");
            assert!(
                matches!(result, Err(StoreError::InvalidCursor { .. })),
                "{token:.20}: {result:?}"
            );
        }
        let not_text = ListCursor::after(&[0xff, 0xfe]).text_position("test");
        assert!(matches!(not_text, Err(StoreError::InvalidCursor { .. })));
    }

    #[test]
    fn pages_skip_undecodable_keys_but_move_past_them() {
        let page = ListPage::from_overfetched("test", vec!["a", "not valid", "b"], 2);
        assert_eq!(page.ids, [KeyId::parse("a").unwrap()]);
        assert_eq!(
            page.next.unwrap().position("test").unwrap(),
            b"not valid",
            "the next page starts after the skipped key"
        );
        let last = ListPage::from_overfetched("test", vec!["a", "b"], 2);
        assert_eq!((last.ids.len(), last.next), (2, None));
    }

    #[test]
    fn an_undecodable_id_is_logged_once() {
        assert!(first_sight("test", b"bad id once"));
        assert!(!first_sight("test", b"bad id once"));
        assert!(first_sight("other", b"bad id once"), "per store");
        assert_eq!(listed_id("test", &[0xff]), None);
    }
}
