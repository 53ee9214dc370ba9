//! The record stored per id: every region's wrapped copy of the data key.
//!
//! Encoded as JSON with a format number so that later formats can be read side by side. Stores
//! treat the encoding as opaque bytes.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

/// The record format this build writes.
pub const RECORD_FORMAT: u32 = 1;

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

/// Everything RKMS keeps about one id. Holds no plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Encoding format; [`RECORD_FORMAT`] for records this build writes.
    pub format: u32,
    /// The id this record belongs to, as the creator saw it.
    pub id: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
    /// Wrapped copies by region name.
    pub copies: BTreeMap<String, WrappedCopy>,
    /// Configured regions that still lack a copy (filled in by a later repair).
    #[serde(default)]
    pub missing: Vec<String>,
    /// True for records the original Go RKMS wrote: their copies were wrapped with no
    /// encryption context, so only the store key binds them to their id. Never encoded nor
    /// decoded: the core sets it only from [`crate::Stored::legacy`], so that bytes claiming it
    /// are refused as unreadable.
    #[serde(skip)]
    pub wrapped_without_context: bool,
}

/// Why stored bytes are not a record this build can read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The bytes are not a well-formed record.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// The record was written in a format this build does not know.
    #[error("record format {0} is not supported (this build reads format {RECORD_FORMAT})")]
    UnsupportedFormat(u32),
}

impl Record {
    /// Encodes the record for a store.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record always serialises")
    }

    /// Decodes stored bytes; never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        #[derive(Deserialize)]
        struct FormatOnly {
            format: u32,
        }
        let FormatOnly { format } =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed(describe(&e)))?;
        if format != RECORD_FORMAT {
            return Err(RecordError::UnsupportedFormat(format));
        }
        serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed(describe(&e)))
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

    fn sample() -> Record {
        Record {
            format: RECORD_FORMAT,
            id: "orders".into(),
            created_at: 1_700_000_000,
            copies: BTreeMap::from([(
                "local-1".into(),
                WrappedCopy {
                    master_key: "rkms-local-1".into(),
                    ciphertext: vec![1, 2, 3],
                },
            )]),
            missing: vec!["local-2".into()],
            wrapped_without_context: false,
        }
    }

    #[test]
    fn round_trips() {
        let record = sample();
        assert_eq!(Record::decode(&record.encode()).unwrap(), record);
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
        let bytes = br#"{"format":99,"id":"x","created_at":0,"copies":{}}"#;
        assert!(matches!(
            Record::decode(bytes),
            Err(RecordError::UnsupportedFormat(99))
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
        fn decoding_mutated_records_never_panics(index in 0usize..200, byte in any::<u8>()) {
            let mut bytes = sample().encode();
            let i = index % bytes.len();
            bytes[i] = byte;
            let _ = Record::decode(&bytes);
        }
    }
}
