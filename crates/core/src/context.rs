//! The encryption context every KMS call carries.

use std::collections::BTreeMap;

/// Name of the context entry that binds a wrapped copy to its id.
pub const ID_CONTEXT_KEY: &str = "rkms:id";

/// Name of the context entry that binds a wrapped copy to its key version, from version 2 on
/// (version 1 keeps the id alone, as every record made before versions was wrapped).
pub const VERSION_CONTEXT_KEY: &str = "rkms:version";

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

    /// The context for version `number` of `id`'s key: [`EncryptionContext::for_id`] for
    /// version 1, and the version number beside it from version 2 on, so that a copy moved
    /// between an id's versions does not decrypt either.
    pub fn for_version(id: &crate::KeyId, number: u32) -> Self {
        let mut context = Self::for_id(id);
        if number > 1 {
            context
                .0
                .insert(VERSION_CONTEXT_KEY.to_owned(), number.to_string());
        }
        context
    }

    /// The context that seals a listing cursor for `audience` (who listed) and `prefix`, so
    /// that a cursor opens only for the same caller and prefix.
    pub fn for_list_cursor(audience: &str, prefix: &str) -> Self {
        Self(BTreeMap::from([
            ("rkms:list-cursor".to_owned(), audience.to_owned()),
            ("rkms:prefix".to_owned(), prefix.to_owned()),
        ]))
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
