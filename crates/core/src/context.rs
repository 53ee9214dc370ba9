//! The encryption context every KMS call carries.

use std::collections::BTreeMap;

/// Name of the context entry that binds a wrapped copy to its id.
pub const ID_CONTEXT_KEY: &str = "rkms:id";

/// Additional authenticated data for a KMS call (AWS KMS's `EncryptionContext`).
///
/// A copy wrapped under one context decrypts only under the same context. RKMS always uses
/// `{"rkms:id": <id>}`, so a wrapped copy moved under another id does not decrypt.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// The context RKMS uses for every call about `id`.
    pub fn for_id(id: &crate::KeyId) -> Self {
        Self(BTreeMap::from([(
            ID_CONTEXT_KEY.to_owned(),
            id.as_str().to_owned(),
        )]))
    }

    /// An empty context, as the original Go RKMS used.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The entries, sorted by key.
    pub fn entries(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// An unambiguous byte encoding (length-prefixed, sorted), for software KMSs that feed the
    /// context to an AEAD as associated data.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in &self.0 {
            for part in [k, v] {
                out.extend_from_slice(&(part.len() as u64).to_be_bytes());
                out.extend_from_slice(part.as_bytes());
            }
        }
        out
    }
}
