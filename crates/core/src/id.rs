//! Key ids: the names clients ask for, validated before any I/O.

use std::fmt;

/// Longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// Characters allowed in an id besides ASCII letters and digits.
pub const ID_PUNCTUATION: &str = "-_.:/@+=";

/// A validated key id.
///
/// An id is 1 to [`MAX_ID_LEN`] bytes of ASCII letters, digits and the characters in
/// [`ID_PUNCTUATION`]. The limits keep ids safe to use as a key in every store (SQL, Redis,
/// etcd, DynamoDB), in log lines and in URLs, and they are checked before any store or KMS call.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    /// The id is the empty string.
    #[error("id is empty")]
    Empty,
    /// The id is longer than [`MAX_ID_LEN`] bytes.
    #[error("id is {0} bytes long; at most {MAX_ID_LEN} are allowed")]
    TooLong(usize),
    /// The id contains a character outside the allowed set.
    #[error("id contains a character that is not allowed at byte {position}; allowed are ASCII letters, digits and {ID_PUNCTUATION:?}")]
    BadCharacter {
        /// Byte offset of the first refused character.
        position: usize,
    },
}

impl KeyId {
    /// Checks `id` against the documented limits.
    pub fn parse(id: &str) -> Result<Self, InvalidId> {
        if id.is_empty() {
            return Err(InvalidId::Empty);
        }
        if id.len() > MAX_ID_LEN {
            return Err(InvalidId::TooLong(id.len()));
        }
        if let Some(position) = id
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || ID_PUNCTUATION.as_bytes().contains(&b)))
        {
            return Err(InvalidId::BadCharacter { position });
        }
        Ok(Self(id.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Ids compare as their text, so a map keyed by id can be searched by `&str`.
impl std::borrow::Borrow<str> for KeyId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for KeyId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn limits_are_enforced() {
        assert_eq!(KeyId::parse(""), Err(InvalidId::Empty));
        assert!(KeyId::parse(&"a".repeat(MAX_ID_LEN)).is_ok());
        assert_eq!(
            KeyId::parse(&"a".repeat(MAX_ID_LEN + 1)),
            Err(InvalidId::TooLong(MAX_ID_LEN + 1))
        );
        assert_eq!(
            KeyId::parse("ab c"),
            Err(InvalidId::BadCharacter { position: 2 })
        );
        assert!(KeyId::parse("tenant-1/orders:2024@eu+x=y_z.v2").is_ok());
        assert!(KeyId::parse("é").is_err());
        assert!(KeyId::parse("a\0b").is_err());
    }

    proptest! {
        #[test]
        fn any_string_is_either_accepted_verbatim_or_refused(s in ".{0,300}") {
            if let Ok(id) = KeyId::parse(&s) {
                prop_assert_eq!(id.as_str(), s.as_str());
                prop_assert!(s.len() <= MAX_ID_LEN);
            }
        }
    }
}
