//! The `Kms` trait: one KMS region that wraps and unwraps data keys under its master key.

use std::fmt;

use async_trait::async_trait;

use crate::{DataKey, EncryptionContext};

/// A data key fresh from [`Kms::generate_data_key`]: the plaintext and its wrapped copy.
#[derive(Debug)]
pub struct GeneratedKey {
    /// The plaintext key.
    pub plaintext: DataKey,
    /// The key wrapped under the generating region's master key.
    pub ciphertext: Vec<u8>,
}

/// Errors from one KMS region.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// The region could not be reached or did not answer in time.
    #[error("KMS region {region} is unavailable: {message}")]
    Unavailable {
        /// Which region.
        region: String,
        /// What happened.
        message: String,
    },
    /// The region answered that our request quota is spent (after the client's own retries
    /// with backoff). It is up: the request goes to another region, but the region's circuit
    /// breaker does not count it, or one caller's burst would shut the region for everyone.
    #[error("KMS region {region} is throttling requests: {message}")]
    Throttled {
        /// Which region.
        region: String,
        /// What it said.
        message: String,
    },
    /// The region answered and refused: wrong context, foreign master key, damaged ciphertext,
    /// disabled key, missing permission.
    #[error("KMS region {region} refused the request: {message}")]
    Refused {
        /// Which region.
        region: String,
        /// Why, as the region said it.
        message: String,
    },
}

impl KmsError {
    /// The region the error came from.
    pub fn region(&self) -> &str {
        match self {
            Self::Unavailable { region, .. }
            | Self::Throttled { region, .. }
            | Self::Refused { region, .. } => region,
        }
    }
}

/// One KMS region with one master key.
///
/// Every call carries an [`EncryptionContext`]; a ciphertext decrypts only with the context it
/// was made with, and only under this region's own master key.
#[async_trait]
pub trait Kms: Send + Sync + fmt::Debug {
    /// The region's name, as written in records and configuration.
    fn region(&self) -> &str;

    /// The master key this region wraps under (key id, ARN or alias), as recorded with copies.
    fn master_key(&self) -> &str;

    /// Generates a random data key of `len` bytes and wraps it under the master key.
    async fn generate_data_key(
        &self,
        len: usize,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError>;

    /// Wraps `key` under the master key.
    async fn encrypt(
        &self,
        key: &DataKey,
        context: &EncryptionContext,
    ) -> Result<Vec<u8>, KmsError>;

    /// Unwraps `ciphertext`, which must have been wrapped by this region's master key under
    /// the same `context`.
    async fn decrypt(
        &self,
        ciphertext: &[u8],
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError>;

    /// Master keys this region wrapped under before its current one and may still decrypt
    /// under, as configured, so that copies made before a key change stay readable until
    /// repair wraps them again. None by default.
    fn previous_master_keys(&self) -> &[String] {
        &[]
    }

    /// Unwraps `ciphertext` made under `master_key`, which must be this region's current key
    /// or one of [`Kms::previous_master_keys`]. Any other name is refused without a call: the
    /// name comes from a stored record, and whoever writes the store must not choose the key
    /// a copy is decrypted under.
    async fn decrypt_under(
        &self,
        master_key: &str,
        ciphertext: &[u8],
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        if master_key == self.master_key() {
            return self.decrypt(ciphertext, context).await;
        }
        Err(KmsError::Refused {
            region: self.region().to_owned(),
            message: format!(
                "master key {master_key:?} is neither this region's nor a configured previous one"
            ),
        })
    }
}
