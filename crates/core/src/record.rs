//! The record stored per id: its state and, for each version of its data key, every region's
//! wrapped copy.
//!
//! Encoded as JSON with a format number. A record is written in the oldest format that can
//! hold it: an active id with one version in format 1 (what every earlier build reads and
//! writes), anything else (a rotated id, a scheduled deletion, a tombstone) in format 2. So
//! during a rolling upgrade older servers keep serving every id no lifecycle operation has
//! touched, and refuse (never misread) the others: they know format 1 alone. Stores treat the
//! encoding as opaque bytes.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

/// The newest record format this build reads and writes.
pub const RECORD_FORMAT: u32 = 2;

/// Most versions one id may have: every version's copies live in one record, and stores cap a
/// record's size (DynamoDB at 400 KB).
pub const MAX_VERSIONS: u32 = 100;

/// One region's wrapped copy of a data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedCopy {
    /// The master key that wrapped it (key id, ARN or alias), for operators and rewrapping.
    pub master_key: String,
    /// The ciphertext KMS returned.
    #[serde(with = "base64_bytes")]
    pub ciphertext: Vec<u8>,
}

/// One version of an id's data key. Holds no plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersion {
    /// 1 for the key made on first use, one more for each rotation.
    pub number: u32,
    /// Creation time, seconds since the Unix epoch (0 when unknown, as for the original Go
    /// RKMS's items).
    pub created_at: u64,
    /// Wrapped copies by region name; empty once the id is deleted.
    pub copies: BTreeMap<String, WrappedCopy>,
    /// Configured regions that still lack a copy (filled in by a later repair).
    pub missing: Vec<String>,
}

/// Where an id is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Its keys are handed out.
    Active,
    /// Deletion is scheduled: no key is handed out, and at `deletion_time` (seconds since the
    /// Unix epoch) the id is deleted unless restored first.
    PendingDeletion {
        /// When the window ends.
        deletion_time: u64,
    },
    /// A tombstone: every wrapped copy is destroyed, and the id is never created again.
    Deleted {
        /// When the copies were destroyed (or the window ended), seconds since the Unix epoch.
        deleted_at: u64,
    },
}

impl KeyState {
    /// The state at `now` (seconds since the Unix epoch): a pending deletion whose window has
    /// ended is deleted, even before a sweep has destroyed its copies.
    pub fn at(self, now: u64) -> Self {
        match self {
            Self::PendingDeletion { deletion_time } if deletion_time <= now => Self::Deleted {
                deleted_at: deletion_time,
            },
            other => other,
        }
    }

    /// The state's name on the wire: `active`, `pending_deletion` or `deleted`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::PendingDeletion { .. } => "pending_deletion",
            Self::Deleted { .. } => "deleted",
        }
    }
}

/// Everything RKMS keeps about one id. Holds no plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The id this record belongs to, as the creator saw it.
    pub id: String,
    /// Its lifecycle state.
    pub state: KeyState,
    /// Every version, numbered from 1 without gaps; the last is the current one. Never empty.
    pub versions: Vec<KeyVersion>,
    /// True for records the original Go RKMS wrote: their copies were wrapped with no
    /// encryption context, so only the store key binds them to their id. Never encoded nor
    /// decoded: the core sets it only from [`crate::Stored::legacy`], so that bytes claiming it
    /// are refused as unreadable.
    pub wrapped_without_context: bool,
}

/// Why stored bytes are not a record this build can read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The bytes are not a well-formed record.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// The record was written in a format this build does not know (by a newer build).
    #[error("record format {0} is not supported (this build reads formats 1 to {RECORD_FORMAT})")]
    UnsupportedFormat(u32),
}

impl Record {
    /// A new id's record: version 1, active.
    pub fn new(id: &str, first: KeyVersion) -> Self {
        Self {
            id: id.to_owned(),
            state: KeyState::Active,
            versions: vec![first],
            wrapped_without_context: false,
        }
    }

    /// The current version: the one get-or-create hands out.
    pub fn current(&self) -> &KeyVersion {
        self.versions
            .last()
            .expect("a decoded record has a version")
    }

    /// Version `number`, if the record has it.
    pub fn version(&self, number: u32) -> Option<&KeyVersion> {
        let index = usize::try_from(number.checked_sub(1)?).ok()?;
        self.versions.get(index)
    }

    /// Encodes the record for a store, in the oldest format that holds it (see the module
    /// documentation).
    pub fn encode(&self) -> Vec<u8> {
        let encoded = match (self.state, self.versions.as_slice()) {
            (KeyState::Active, [only]) => serde_json::to_vec(&FormatOne {
                format: 1,
                id: self.id.clone(),
                created_at: only.created_at,
                copies: only.copies.clone(),
                missing: only.missing.clone(),
            }),
            _ => serde_json::to_vec(&FormatTwo::from(self)),
        };
        encoded.expect("a record always serialises")
    }

    /// Decodes stored bytes; never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        #[derive(Deserialize)]
        struct FormatOnly {
            format: u32,
        }
        let malformed = |e: serde_json::Error| RecordError::Malformed(describe(&e));
        let FormatOnly { format } = serde_json::from_slice(bytes).map_err(malformed)?;
        match format {
            1 => {
                let one: FormatOne = serde_json::from_slice(bytes).map_err(malformed)?;
                Ok(Self::new(
                    &one.id,
                    KeyVersion {
                        number: 1,
                        created_at: one.created_at,
                        copies: one.copies,
                        missing: one.missing,
                    },
                ))
            }
            2 => serde_json::from_slice::<FormatTwo>(bytes)
                .map_err(malformed)?
                .into_record(),
            other => Err(RecordError::UnsupportedFormat(other)),
        }
    }
}

/// Format 1: one version, active; what every build before versions wrote.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FormatOne {
    format: u32,
    id: String,
    created_at: u64,
    copies: BTreeMap<String, WrappedCopy>,
    #[serde(default)]
    missing: Vec<String>,
}

/// Format 2: versions and a state.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FormatTwo {
    format: u32,
    id: String,
    state: StateName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deletion_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deleted_at: Option<u64>,
    versions: Vec<VersionTwo>,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum StateName {
    Active,
    PendingDeletion,
    Deleted,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionTwo {
    version: u32,
    created_at: u64,
    copies: BTreeMap<String, WrappedCopy>,
    #[serde(default)]
    missing: Vec<String>,
}

impl From<&Record> for FormatTwo {
    fn from(record: &Record) -> Self {
        let (state, deletion_time, deleted_at) = match record.state {
            KeyState::Active => (StateName::Active, None, None),
            KeyState::PendingDeletion { deletion_time } => {
                (StateName::PendingDeletion, Some(deletion_time), None)
            }
            KeyState::Deleted { deleted_at } => (StateName::Deleted, None, Some(deleted_at)),
        };
        Self {
            format: 2,
            id: record.id.clone(),
            state,
            deletion_time,
            deleted_at,
            versions: record
                .versions
                .iter()
                .map(|v| VersionTwo {
                    version: v.number,
                    created_at: v.created_at,
                    copies: v.copies.clone(),
                    missing: v.missing.clone(),
                })
                .collect(),
        }
    }
}

impl FormatTwo {
    /// The record, once its parts are checked to fit together.
    fn into_record(self) -> Result<Record, RecordError> {
        let bad = |what: &str| Err(RecordError::Malformed(what.to_owned()));
        let state = match (self.state, self.deletion_time, self.deleted_at) {
            (StateName::Active, None, None) => KeyState::Active,
            (StateName::PendingDeletion, Some(deletion_time), None) => {
                KeyState::PendingDeletion { deletion_time }
            }
            (StateName::Deleted, None, Some(deleted_at)) => KeyState::Deleted { deleted_at },
            _ => return bad("the state and its times do not match"),
        };
        if self.versions.is_empty() || self.versions.len() > MAX_VERSIONS as usize {
            return bad("the number of versions is out of range");
        }
        let mut versions = Vec::with_capacity(self.versions.len());
        for (expected, v) in (1..).zip(self.versions) {
            if v.version != expected {
                return bad("versions are not numbered 1, 2, ... in order");
            }
            let destroyed = v.copies.is_empty() && v.missing.is_empty();
            if matches!(state, KeyState::Deleted { .. }) != destroyed {
                return bad("a deleted id must hold no copies, and only a deleted id may");
            }
            versions.push(KeyVersion {
                number: v.version,
                created_at: v.created_at,
                copies: v.copies,
                missing: v.missing,
            });
        }
        Ok(Record {
            id: self.id,
            state,
            versions,
            wrapped_without_context: false,
        })
    }
}

/// Describes a decoding error by position and category only: serde's messages can quote input.
fn describe(e: &serde_json::Error) -> String {
    format!(
        "{:?} error at line {} column {}",
        e.classify(),
        e.line(),
        e.column()
    )
}

mod base64_bytes {
    use super::BASE64;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        BASE64
            .decode(text)
            .map_err(|_| serde::de::Error::custom("ciphertext is not valid base64"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn version(number: u32) -> KeyVersion {
        KeyVersion {
            number,
            created_at: 1_700_000_000 + u64::from(number),
            copies: BTreeMap::from([(
                "local-1".into(),
                WrappedCopy {
                    master_key: "rkms-local-1".into(),
                    ciphertext: vec![1, 2, 3, number as u8],
                },
            )]),
            missing: vec!["local-2".into()],
        }
    }

    fn sample() -> Record {
        Record::new("orders", version(1))
    }

    fn format_of(bytes: &[u8]) -> u64 {
        serde_json::from_slice::<serde_json::Value>(bytes).unwrap()["format"]
            .as_u64()
            .unwrap()
    }

    #[test]
    fn an_active_id_with_one_version_is_written_in_format_1() {
        let record = sample();
        let bytes = record.encode();
        assert_eq!(format_of(&bytes), 1, "older servers can still read it");
        assert_eq!(Record::decode(&bytes).unwrap(), record);
    }

    #[test]
    fn what_format_1_cannot_hold_is_written_in_format_2_and_round_trips() {
        let mut rotated = sample();
        rotated.versions.push(version(2));
        let mut pending = sample();
        pending.state = KeyState::PendingDeletion { deletion_time: 99 };
        let mut deleted = sample();
        deleted.state = KeyState::Deleted { deleted_at: 100 };
        deleted.versions[0].copies.clear();
        deleted.versions[0].missing.clear();
        for record in [rotated, pending, deleted] {
            let bytes = record.encode();
            assert_eq!(format_of(&bytes), 2, "{record:?}");
            assert_eq!(Record::decode(&bytes).unwrap(), record);
        }
    }

    #[test]
    fn a_format_1_record_of_an_earlier_build_reads_as_version_1_active() {
        let bytes = br#"{"format":1,"id":"x","created_at":5,"copies":{"r1":{"master_key":"k","ciphertext":"AQI="}},"missing":["r2"]}"#;
        let record = Record::decode(bytes).unwrap();
        assert_eq!(record.state, KeyState::Active);
        assert_eq!(record.versions.len(), 1);
        let current = record.current();
        assert_eq!((current.number, current.created_at), (1, 5));
        assert_eq!(current.copies["r1"].ciphertext, [1, 2]);
        assert_eq!(current.missing, ["r2"]);
        assert_eq!(
            record.encode(),
            bytes,
            "rewritten unchanged when nothing changed"
        );
    }

    #[test]
    fn format_2_records_whose_parts_do_not_fit_are_refused() {
        let copies = r#"{"r1":{"master_key":"k","ciphertext":"AQI="}}"#;
        for bytes in [
            r#"{"format":2,"id":"x","state":"active","versions":[]}"#.to_owned(),
            format!(
                r#"{{"format":2,"id":"x","state":"active","versions":[{{"version":2,"created_at":0,"copies":{copies}}}]}}"#
            ),
            format!(
                r#"{{"format":2,"id":"x","state":"pending_deletion","versions":[{{"version":1,"created_at":0,"copies":{copies}}}]}}"#
            ),
            format!(
                r#"{{"format":2,"id":"x","state":"active","deleted_at":3,"versions":[{{"version":1,"created_at":0,"copies":{copies}}}]}}"#
            ),
            format!(
                r#"{{"format":2,"id":"x","state":"deleted","deleted_at":3,"versions":[{{"version":1,"created_at":0,"copies":{copies}}}]}}"#
            ),
            r#"{"format":2,"id":"x","state":"active","versions":[{"version":1,"created_at":0,"copies":{}}]}"#.to_owned(),
            format!(
                r#"{{"format":2,"id":"x","state":"gone","versions":[{{"version":1,"created_at":0,"copies":{copies}}}]}}"#
            ),
        ] {
            assert!(
                matches!(
                    Record::decode(bytes.as_bytes()),
                    Err(RecordError::Malformed(_))
                ),
                "{bytes}"
            );
        }
    }

    #[test]
    fn a_pending_deletion_is_deleted_once_its_window_ends() {
        let pending = KeyState::PendingDeletion { deletion_time: 10 };
        assert_eq!(pending.at(9), pending);
        assert_eq!(pending.at(10), KeyState::Deleted { deleted_at: 10 });
        assert_eq!(KeyState::Active.at(u64::MAX), KeyState::Active);
    }

    #[test]
    fn versions_are_looked_up_by_number() {
        let mut record = sample();
        record.versions.push(version(2));
        assert_eq!(record.version(2).unwrap().number, 2);
        assert_eq!(record.current().number, 2);
        assert!(record.version(0).is_none() && record.version(3).is_none());
    }

    #[test]
    fn a_legacy_flag_in_the_bytes_is_refused() {
        let bytes =
            br#"{"format":1,"id":"x","created_at":0,"copies":{},"wrapped_without_context":true}"#;
        assert!(matches!(
            Record::decode(bytes),
            Err(RecordError::Malformed(_))
        ));
        let mut legacy = sample();
        legacy.wrapped_without_context = true;
        assert!(
            !Record::decode(&legacy.encode())
                .unwrap()
                .wrapped_without_context
        );
    }

    #[test]
    fn unknown_format_is_refused() {
        let bytes = br#"{"format":3,"id":"x","created_at":0,"copies":{}}"#;
        assert!(matches!(
            Record::decode(bytes),
            Err(RecordError::UnsupportedFormat(3))
        ));
    }

    #[test]
    fn malformed_errors_do_not_quote_the_input() {
        let bytes = br#"{"format":1,"id":"x","created_at":0,"copies":{"r":{"master_key":"k","ciphertext":"SECRETSECRET!"}}}"#;
        let message = Record::decode(bytes).unwrap_err().to_string();
        assert!(!message.contains("SECRET"), "{message}");
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Record::decode(&bytes);
        }

        #[test]
        fn decoding_mutated_records_never_panics(index in 0usize..400, byte in any::<u8>(), rotated in any::<bool>()) {
            let mut record = sample();
            if rotated {
                record.versions.push(version(2));
            }
            let mut bytes = record.encode();
            let i = index % bytes.len();
            bytes[i] = byte;
            if let Ok(decoded) = Record::decode(&bytes) {
                prop_assert!(!decoded.versions.is_empty());
                let _ = decoded.current();
            }
        }
    }
}
