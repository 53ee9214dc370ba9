//! Plaintext data keys: zeroized on drop, never printed.

use std::fmt;

use zeroize::Zeroizing;

/// A plaintext data key.
///
/// The bytes are wiped when the value is dropped, and `Debug` prints only the length, so a key
/// cannot leak through a log line, an error message or a panic message by accident. Read the
/// bytes with [`DataKey::expose_secret`] at the one place that must hand them out.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey(Zeroizing<Vec<u8>>);

impl DataKey {
    /// Takes ownership of key bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The key bytes. Every call site is a place where key material leaves RKMS's care.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Length of the key in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for a zero-length key.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKey([REDACTED; {} bytes])", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_bytes() {
        let key = DataKey::new(vec![0xAB; 32]);
        let printed = format!("{key:?} {key:#?}");
        assert!(printed.contains("REDACTED"));
        assert!(!printed.to_lowercase().contains("ab"));
        assert!(!printed.contains("171"));
    }
}
