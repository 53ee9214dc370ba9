//! `DynamoDbStore`: the `Store` trait over one DynamoDB table.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;
use rkms_core::{
    listed_id, within_limit, KeyId, ListCursor, ListPage, PutOutcome, Store, StoreError, Stored,
    Version,
};

use crate::error::{code, from_sdk, CONDITIONAL_CHECK_FAILED, STORE};
use crate::item::{
    cursor_after, retires_original, start_key, stored_from_item, ID, LEGACY_KEYS, LEGACY_VERSION,
    RECORD, VERSION,
};
use crate::{DynamoDbConfig, LegacyRecords};

/// A [`Store`] in one DynamoDB table. See the crate documentation.
#[derive(Clone)]
pub struct DynamoDbStore {
    client: Client,
    table: String,
    timeout: Duration,
    legacy: LegacyRecords,
}

impl std::fmt::Debug for DynamoDbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDbStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// A random first version in 1..2^63; 0 is the original's items' version.
fn random_start() -> u64 {
    (rand::random::<u64>() >> 1).max(1)
}

fn key(id: &KeyId) -> AttributeValue {
    AttributeValue::S(id.as_str().to_owned())
}

impl DynamoDbStore {
    /// Builds the client, creates the table if asked to, and checks that the table exists.
    pub async fn open(config: &DynamoDbConfig) -> Result<Self, StoreError> {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(config.connect_timeout)
            .operation_timeout(config.operation_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(2));
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let client = Client::new(&loader.load().await);
        let store = Self {
            client,
            table: config.table_name.clone(),
            timeout: config.operation_timeout,
            legacy: config.legacy_records,
        };
        if config.create_table {
            store.bounded(store.create_table()).await?;
        }
        store
            .bounded(async {
                store
                    .client
                    .describe_table()
                    .table_name(&store.table)
                    .send()
                    .await
                    .map_err(from_sdk)
                    .map(drop)
            })
            .await?;
        Ok(store)
    }

    /// Creates the table with on-demand billing; an existing table is left alone.
    async fn create_table(&self) -> Result<(), StoreError> {
        let result = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(ID)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| StoreError::corrupt(STORE, e.to_string()))?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(ID)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(|e| StoreError::corrupt(STORE, e.to_string()))?,
            )
            .send()
            .await;
        match result {
            Ok(_) => {
                tracing::info!(table = %self.table, "created DynamoDB table");
                Ok(())
            }
            Err(e) if code(&e) == Some("ResourceInUseException") => Ok(()),
            Err(e) => Err(from_sdk(e)),
        }
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        within_limit(STORE, self.timeout, call).await
    }

    async fn read(&self, id: &KeyId) -> Result<Option<Stored>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(ID, key(id))
            .consistent_read(true)
            .send()
            .await
            .map_err(from_sdk)?;
        output
            .item
            .as_ref()
            .map(|item| stored_from_item(item, self.legacy))
            .transpose()
    }
}

#[async_trait]
impl Store for DynamoDbStore {
    async fn get(&self, id: &KeyId) -> Result<Option<Stored>, StoreError> {
        self.bounded(self.read(id)).await
    }

    async fn put_if_absent(&self, id: &KeyId, bytes: Vec<u8>) -> Result<PutOutcome, StoreError> {
        let version = random_start();
        self.bounded(async {
            loop {
                let result = self
                    .client
                    .put_item()
                    .table_name(&self.table)
                    .item(ID, key(id))
                    .item(RECORD, AttributeValue::B(bytes.clone().into()))
                    .item(VERSION, AttributeValue::N(version.to_string()))
                    .condition_expression("attribute_not_exists(#id)")
                    .expression_attribute_names("#id", ID)
                    .send()
                    .await;
                match result {
                    Ok(_) => return Ok(PutOutcome::Created(Version::new(version))),
                    Err(e) if code(&e) == Some(CONDITIONAL_CHECK_FAILED) => {
                        // Someone else's item is there; return it. If deleted meanwhile, retry.
                        if let Some(existing) = self.read(id).await? {
                            return Ok(PutOutcome::Exists(existing));
                        }
                    }
                    Err(e) => return Err(from_sdk(e)),
                }
            }
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        id: &KeyId,
        expected: Version,
        bytes: Vec<u8>,
    ) -> Result<Version, StoreError> {
        // An upgraded original's item starts at a random version, as a created one does, so
        // that an item deleted and written again by a Go server and then upgraded elsewhere
        // never repeats a version a stale compare-and-set expects.
        let next = if expected.get() == LEGACY_VERSION {
            random_start()
        } else {
            expected
                .get()
                .checked_add(1)
                .ok_or(StoreError::PreconditionFailed { expected })?
        };
        // An update, not a put: the original's `keys` stay for Go servers still reading them,
        // until the id is deleted.
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(ID, key(id));
        let request = if retires_original(&bytes) {
            request
                .update_expression("SET #record = :record, #version = :next REMOVE #keys")
                .expression_attribute_names("#keys", LEGACY_KEYS)
        } else {
            request.update_expression("SET #record = :record, #version = :next")
        };
        let request = request
            .expression_attribute_names("#record", RECORD)
            .expression_attribute_names("#version", VERSION)
            .expression_attribute_values(":record", AttributeValue::B(bytes.into()))
            .expression_attribute_values(":next", AttributeValue::N(next.to_string()));
        // The original's items have no version: they are upgraded only while they still have none.
        let request = if expected.get() == LEGACY_VERSION {
            request
                .condition_expression("attribute_exists(#id) AND attribute_not_exists(#version)")
                .expression_attribute_names("#id", ID)
        } else {
            request
                .condition_expression("#version = :expected")
                .expression_attribute_values(
                    ":expected",
                    AttributeValue::N(expected.get().to_string()),
                )
        };
        self.bounded(async {
            match request.send().await {
                Ok(_) => Ok(Version::new(next)),
                Err(e) if code(&e) == Some(CONDITIONAL_CHECK_FAILED) => {
                    Err(StoreError::PreconditionFailed { expected })
                }
                Err(e) => Err(from_sdk(e)),
            }
        })
        .await
    }

    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        self.bounded(async {
            let output = self
                .client
                .delete_item()
                .table_name(&self.table)
                .key(ID, key(id))
                .return_values(ReturnValue::AllOld)
                .send()
                .await
                .map_err(from_sdk)?;
            Ok(output.attributes.is_some_and(|a| !a.is_empty()))
        })
        .await
    }

    /// One Scan of at most `limit` items per page, continuing from DynamoDB's own
    /// `LastEvaluatedKey`: a page reads about a page of items, whatever the table's size.
    async fn list(
        &self,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        if limit == 0 {
            return Ok(ListPage::default());
        }
        let start = cursor.map(start_key).transpose()?;
        self.bounded(async {
            let output = self
                .client
                .scan()
                .table_name(&self.table)
                .projection_expression("#id")
                .expression_attribute_names("#id", ID)
                .consistent_read(true)
                .limit(i32::try_from(limit).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(from_sdk)?;
            let mut ids = Vec::with_capacity(output.items().len());
            for item in output.items() {
                let raw = item
                    .get(ID)
                    .and_then(|v| v.as_s().ok())
                    .ok_or_else(|| StoreError::corrupt(STORE, "an item without a string id"))?;
                ids.extend(listed_id(STORE, raw.as_bytes()));
            }
            let next = match &output.last_evaluated_key {
                Some(key) if !key.is_empty() => Some(cursor_after(key)?),
                _ => None,
            };
            Ok(ListPage { ids, next })
        })
        .await
    }
}
