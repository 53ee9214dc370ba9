//! Items as stored: RKMS's own (`record`, `version`) and the original Go RKMS's (`keys`).

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rkms_core::{
    KeyState, KeyVersion, ListCursor, Record, StoreError, Stored, Version, WrappedCopy,
};

use crate::error::STORE;
use crate::LegacyRecords;

pub(crate) const ID: &str = "id";
pub(crate) const RECORD: &str = "record";
pub(crate) const VERSION: &str = "version";
/// The original Go RKMS's map of region to base64 ciphertext.
pub(crate) const LEGACY_KEYS: &str = "keys";

/// The version reported for the original's items, which have none. RKMS never creates it.
pub(crate) const LEGACY_VERSION: u64 = 0;

/// DynamoDB's longest partition key, in bytes.
const MAX_KEY_LEN: usize = 2048;

/// A list cursor holding a Scan's `LastEvaluatedKey`, which for this table is `{id: string}`.
pub(crate) fn cursor_after(
    key: &HashMap<String, AttributeValue>,
) -> Result<ListCursor, StoreError> {
    match (key.len(), key.get(ID).and_then(|v| v.as_s().ok())) {
        (1, Some(id)) => Ok(ListCursor::after(id.as_bytes())),
        _ => Err(StoreError::corrupt(
            STORE,
            "a Scan's LastEvaluatedKey is not just a string `id`: is the table keyed on `id`?",
        )),
    }
}

/// The `ExclusiveStartKey` a list cursor continues from.
pub(crate) fn start_key(
    cursor: &ListCursor,
) -> Result<HashMap<String, AttributeValue>, StoreError> {
    let id = cursor.text_position(STORE)?;
    if id.is_empty() || id.len() > MAX_KEY_LEN {
        return Err(StoreError::invalid_cursor(
            STORE,
            format!("a start key must be 1 to {MAX_KEY_LEN} bytes"),
        ));
    }
    Ok(HashMap::from([(ID.to_owned(), AttributeValue::S(id))]))
}

/// Reads an item as a stored record; the original's items as `legacy` says.
pub(crate) fn stored_from_item(
    item: &HashMap<String, AttributeValue>,
    legacy: LegacyRecords,
) -> Result<Stored, StoreError> {
    match (item.get(RECORD), item.get(VERSION), item.get(LEGACY_KEYS)) {
        (Some(record), Some(version), _) => {
            let bytes = record
                .as_b()
                .map_err(|_| StoreError::corrupt(STORE, "`record` is not binary"))?
                .as_ref()
                .to_vec();
            let version = version
                .as_n()
                .ok()
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| {
                    StoreError::corrupt(STORE, "`version` is not a non-negative number")
                })?;
            Ok(Stored::new(bytes, Version::new(version)))
        }
        (None, None, Some(_)) if legacy == LegacyRecords::Refuse => Err(StoreError::corrupt(
            STORE,
            "an item of the original Go RKMS, wrapped without encryption context, and \
             legacy_records is \"refuse\"",
        )),
        (None, None, Some(keys)) => legacy_record(item, keys),
        _ => Err(StoreError::corrupt(
            STORE,
            "the item has neither `record` and `version` nor the original's `keys`",
        )),
    }
}

/// Translates an item of the original Go RKMS into a record.
fn legacy_record(
    item: &HashMap<String, AttributeValue>,
    keys: &AttributeValue,
) -> Result<Stored, StoreError> {
    let id = item
        .get(ID)
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| StoreError::corrupt(STORE, "a legacy item without a string `id`"))?;
    let keys = keys
        .as_m()
        .map_err(|_| StoreError::corrupt(STORE, "legacy `keys` is not a map"))?;
    let mut copies = BTreeMap::new();
    for (region, value) in keys {
        let text = value.as_s().map_err(|_| {
            StoreError::corrupt(STORE, format!("legacy copy for {region:?} is not a string"))
        })?;
        let ciphertext = BASE64.decode(text).map_err(|_| {
            StoreError::corrupt(STORE, format!("legacy copy for {region:?} is not base64"))
        })?;
        // The original did not record which master key wrapped a copy.
        copies.insert(
            region.clone(),
            WrappedCopy {
                master_key: String::new(),
                ciphertext,
            },
        );
    }
    // The `legacy` flag below, never encoded, is what tells the core how it was wrapped.
    let record = Record::new(
        id,
        KeyVersion {
            number: 1,
            created_at: 0,
            copies,
            missing: Vec::new(),
        },
    );
    Ok(Stored {
        bytes: record.encode(),
        version: Version::new(LEGACY_VERSION),
        legacy: true,
    })
}

/// True when `bytes` hold a record the original Go RKMS must stop serving: a rotated id (a Go
/// server would go on handing out version 1 as current), or one pending deletion or deleted
/// (no copy wrapped without context may outlive a deletion). The one place this store reads a
/// record: the original's `keys` are this store's own attribute, and they go with such a
/// write. Their going also takes away a store writer's shortcut back to version 1 (removing
/// `record` and `version` would leave the original's item).
pub(crate) fn retires_original(bytes: &[u8]) -> bool {
    Record::decode(bytes)
        .is_ok_and(|record| record.state != KeyState::Active || record.versions.len() > 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(pairs: Vec<(&str, AttributeValue)>) -> HashMap<String, AttributeValue> {
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    #[test]
    fn original_items_become_legacy_records() {
        let keys = HashMap::from([
            (
                "us-east-1".to_owned(),
                AttributeValue::S(BASE64.encode([1, 2, 3])),
            ),
            (
                "us-west-1".to_owned(),
                AttributeValue::S(BASE64.encode([4, 5])),
            ),
        ]);
        let stored = stored_from_item(
            &item(vec![
                ("id", AttributeValue::S("orders".into())),
                ("keys", AttributeValue::M(keys)),
            ]),
            LegacyRecords::Serve,
        )
        .unwrap();
        assert_eq!(stored.version, Version::new(LEGACY_VERSION));
        assert!(stored.legacy);
        let record = Record::decode(&stored.bytes).unwrap();
        assert_eq!(record.id, "orders");
        assert_eq!(record.current().copies["us-east-1"].ciphertext, [1, 2, 3]);
        assert_eq!(record.current().copies["us-west-1"].ciphertext, [4, 5]);
    }

    #[test]
    fn list_cursors_hold_the_start_key_and_are_checked() {
        let key = HashMap::from([(ID.to_owned(), AttributeValue::S("orders".into()))]);
        assert_eq!(start_key(&cursor_after(&key).unwrap()).unwrap(), key);
        let foreign = item(vec![
            ("id", AttributeValue::S("a".into())),
            ("sk", AttributeValue::S("b".into())),
        ]);
        assert!(matches!(
            cursor_after(&foreign),
            Err(StoreError::Corrupt { .. })
        ));
        let long = "x".repeat(MAX_KEY_LEN + 1);
        for bad in [ListCursor::after(b""), ListCursor::after(long.as_bytes())] {
            assert!(matches!(
                start_key(&bad),
                Err(StoreError::InvalidCursor { .. })
            ));
        }
    }

    #[test]
    fn malformed_items_are_corrupt() {
        let bad = [
            item(vec![("id", AttributeValue::S("x".into()))]),
            item(vec![
                ("id", AttributeValue::S("x".into())),
                ("keys", AttributeValue::S("no".into())),
            ]),
            item(vec![
                ("id", AttributeValue::S("x".into())),
                (
                    "keys",
                    AttributeValue::M(HashMap::from([(
                        "r".to_owned(),
                        AttributeValue::S("%%".into()),
                    )])),
                ),
            ]),
            item(vec![
                ("record", AttributeValue::S("text".into())),
                ("version", AttributeValue::N("1".into())),
            ]),
            item(vec![
                ("record", AttributeValue::B(vec![1].into())),
                ("version", AttributeValue::N("-1".into())),
            ]),
        ];
        for item in bad {
            assert!(
                matches!(
                    stored_from_item(&item, LegacyRecords::Serve),
                    Err(StoreError::Corrupt { .. })
                ),
                "{item:?}"
            );
        }
    }

    #[test]
    fn original_items_are_refused_when_configured_and_records_win_over_keys() {
        let keys = AttributeValue::M(HashMap::from([(
            "us-east-1".to_owned(),
            AttributeValue::S(BASE64.encode([1, 2, 3])),
        )]));
        let original = item(vec![
            ("id", AttributeValue::S("orders".into())),
            ("keys", keys.clone()),
        ]);
        assert!(matches!(
            stored_from_item(&original, LegacyRecords::Refuse),
            Err(StoreError::Corrupt { .. })
        ));
        let upgraded = item(vec![
            ("id", AttributeValue::S("orders".into())),
            ("keys", keys),
            ("record", AttributeValue::B(vec![7].into())),
            ("version", AttributeValue::N("1".into())),
        ]);
        for legacy in [LegacyRecords::Serve, LegacyRecords::Refuse] {
            let stored = stored_from_item(&upgraded, legacy).unwrap();
            assert!(!stored.legacy);
            assert_eq!(stored.bytes, [7]);
        }
    }
}
