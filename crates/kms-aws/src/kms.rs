//! `AwsKms`: one AWS KMS region as a core `Kms`.

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::Client;
use rkms_core::{DataKey, EncryptionContext, GeneratedKey, Kms, KmsError, MAX_DATA_KEY_LEN};

use crate::error::from_sdk;
use crate::AwsKmsConfig;

/// One AWS KMS region wrapping under one master key.
#[derive(Clone)]
pub struct AwsKms {
    client: Client,
    region: String,
    key_id: String,
    previous_key_ids: Vec<String>,
}

impl fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKms")
            .field("region", &self.region)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl AwsKms {
    /// Builds the region's client. Credentials are resolved from the standard provider chain
    /// when first needed, so this does no network I/O.
    pub async fn connect(config: &AwsKmsConfig) -> Self {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(config.connect_timeout)
            .operation_timeout(config.operation_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts.max(1)));
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let sdk_config = loader.load().await;
        Self {
            client: Client::new(&sdk_config),
            region: config.region.clone(),
            key_id: config.key_id.clone(),
            previous_key_ids: config.previous_key_ids.clone(),
        }
    }

    /// The SDK client, for administration beyond the `Kms` trait.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn context(context: &EncryptionContext) -> Option<HashMap<String, String>> {
        let entries = context.entries();
        (!entries.is_empty()).then(|| {
            entries
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    /// A response without a field it must have: the region misbehaves, which is no verdict on
    /// the ciphertext.
    fn missing(&self, what: &str) -> KmsError {
        KmsError::Unavailable {
            region: self.region.clone(),
            message: format!("the response has no {what}"),
        }
    }
}

#[async_trait]
impl Kms for AwsKms {
    fn region(&self) -> &str {
        &self.region
    }

    fn master_key(&self) -> &str {
        &self.key_id
    }

    async fn generate_data_key(
        &self,
        len: usize,
        context: &EncryptionContext,
    ) -> Result<GeneratedKey, KmsError> {
        let bytes = i32::try_from(len)
            .ok()
            .filter(|_| (1..=MAX_DATA_KEY_LEN).contains(&len))
            .ok_or_else(|| KmsError::Refused {
                region: self.region.clone(),
                message: format!("data key length {len} is out of range"),
            })?;
        let output = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .number_of_bytes(bytes)
            .set_encryption_context(Self::context(context))
            .send()
            .await
            .map_err(|e| from_sdk(&self.region, e))?;
        let plaintext = output
            .plaintext
            .ok_or_else(|| self.missing("plaintext"))?
            .into_inner();
        let ciphertext = output
            .ciphertext_blob
            .ok_or_else(|| self.missing("ciphertext"))?
            .into_inner();
        Ok(GeneratedKey {
            plaintext: DataKey::new(plaintext),
            ciphertext,
        })
    }

    async fn encrypt(
        &self,
        key: &DataKey,
        context: &EncryptionContext,
    ) -> Result<Vec<u8>, KmsError> {
        let output = self
            .client
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(key.expose_secret()))
            .set_encryption_context(Self::context(context))
            .send()
            .await
            .map_err(|e| from_sdk(&self.region, e))?;
        Ok(output
            .ciphertext_blob
            .ok_or_else(|| self.missing("ciphertext"))?
            .into_inner())
    }

    async fn decrypt(
        &self,
        ciphertext: &[u8],
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        self.decrypt_named(&self.key_id, ciphertext, context).await
    }

    fn previous_master_keys(&self) -> &[String] {
        &self.previous_key_ids
    }

    async fn decrypt_under(
        &self,
        master_key: &str,
        ciphertext: &[u8],
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        if master_key != self.key_id && !self.previous_key_ids.iter().any(|k| k == master_key) {
            return Err(KmsError::Refused {
                region: self.region.clone(),
                message: format!(
                    "master key {master_key:?} is neither this region's nor a configured previous one"
                ),
            });
        }
        self.decrypt_named(master_key, ciphertext, context).await
    }
}

impl AwsKms {
    /// Decrypt naming `key_id`, so that a copy wrapped under any other key is refused.
    async fn decrypt_named(
        &self,
        key_id: &str,
        ciphertext: &[u8],
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        let output = self
            .client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(ciphertext))
            .set_encryption_context(Self::context(context))
            .send()
            .await
            .map_err(|e| from_sdk(&self.region, e))?;
        Ok(DataKey::new(
            output
                .plaintext
                .ok_or_else(|| self.missing("plaintext"))?
                .into_inner(),
        ))
    }
}
