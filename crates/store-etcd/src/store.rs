//! `EtcdStore`: the `Store` trait over etcd keys and transactions.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse,
};
use rkms_core::{
    within_limit, KeyId, ListCursor, ListPage, PutOutcome, Store, StoreError, Stored, Version,
};

use crate::error::{from_etcd, STORE};
use crate::EtcdConfig;

/// An [`Store`] on etcd. See the crate documentation.
#[derive(Clone)]
pub struct EtcdStore {
    kv: KvClient,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to the cluster; fails if no endpoint answers within the operation timeout.
    pub async fn open(config: &EtcdConfig) -> Result<Self, StoreError> {
        if config.prefix.is_empty() || !config.prefix.is_ascii() {
            return Err(StoreError::Other {
                store: crate::error::STORE,
                source: format!("key prefix {:?} must be non-empty ASCII", config.prefix).into(),
            });
        }
        let options = ConnectOptions::new()
            .with_timeout(config.operation_timeout)
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(Duration::from_secs(10), config.operation_timeout);
        let connect = async {
            Client::connect(&config.endpoints, Some(options))
                .await
                .map_err(from_etcd)
        };
        let client = tokio::time::timeout(config.operation_timeout, connect)
            .await
            .unwrap_or_else(|_| Err(StoreError::timed_out(STORE, config.operation_timeout)))?;
        let store = Self {
            kv: client.kv_client(),
            prefix: config.prefix.clone(),
            timeout: config.operation_timeout,
        };
        // Connecting is lazy; one read proves the cluster answers.
        store
            .get(&KeyId::parse("rkms-connect-check").expect("a valid id"))
            .await?;
        Ok(store)
    }

    fn key(&self, id: &KeyId) -> Vec<u8> {
        format!("{}{}", self.prefix, id.as_str()).into_bytes()
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        within_limit(STORE, self.timeout, call).await
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, id: &KeyId) -> Result<Option<Stored>, StoreError> {
        self.bounded(async {
            let response = self
                .kv
                .clone()
                .get(self.key(id), None)
                .await
                .map_err(from_etcd)?;
            response
                .kvs()
                .first()
                .map(|kv| {
                    Ok(Stored::new(
                        kv.value().to_vec(),
                        Version::from_signed(STORE, kv.mod_revision())?,
                    ))
                })
                .transpose()
        })
        .await
    }

    async fn put_if_absent(&self, id: &KeyId, bytes: Vec<u8>) -> Result<PutOutcome, StoreError> {
        let key = self.key(id);
        self.bounded(async {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), bytes, None)])
                .or_else([TxnOp::get(key, None)]);
            let response = self.kv.clone().txn(txn).await.map_err(from_etcd)?;
            if response.succeeded() {
                let revision = response
                    .header()
                    .map(|h| h.revision())
                    .ok_or_else(|| StoreError::corrupt(STORE, "transaction without a header"))?;
                return Ok(PutOutcome::Created(Version::from_signed(STORE, revision)?));
            }
            let existing = response.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(get) => get
                    .kvs()
                    .first()
                    .map(|kv| (kv.value().to_vec(), kv.mod_revision())),
                _ => None,
            });
            match existing {
                Some((bytes, revision)) => Ok(PutOutcome::Exists(Stored::new(
                    bytes,
                    Version::from_signed(STORE, revision)?,
                ))),
                None => Err(StoreError::corrupt(
                    STORE,
                    "the create lost to a record that could not be read back",
                )),
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
        let Ok(revision) = i64::try_from(expected.get()) else {
            return Err(StoreError::PreconditionFailed { expected });
        };
        let key = self.key(id);
        self.bounded(async {
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::put(key, bytes, None)]);
            let response = self.kv.clone().txn(txn).await.map_err(from_etcd)?;
            if !response.succeeded() {
                return Err(StoreError::PreconditionFailed { expected });
            }
            let revision = response
                .header()
                .map(|h| h.revision())
                .ok_or_else(|| StoreError::corrupt(STORE, "transaction without a header"))?;
            Version::from_signed(STORE, revision)
        })
        .await
    }

    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        self.bounded(async {
            let response = self
                .kv
                .clone()
                .delete(self.key(id), None)
                .await
                .map_err(from_etcd)?;
            Ok(response.deleted() > 0)
        })
        .await
    }

    /// Pages in key order; the cursor is the last id examined.
    async fn list(
        &self,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        if limit == 0 {
            return Ok(ListPage::default());
        }
        // Start just past the cursor's key (plus a zero byte), end at the prefix's successor.
        let start = match cursor {
            Some(cursor) => [self.prefix.as_bytes(), &cursor.position(STORE)?, &[0]].concat(),
            None => self.prefix.clone().into_bytes(),
        };
        let mut end = self.prefix.clone().into_bytes();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
        self.bounded(async {
            let options = GetOptions::new()
                .with_range(end)
                .with_limit(fetch)
                .with_keys_only();
            let response = self
                .kv
                .clone()
                .get(start, Some(options))
                .await
                .map_err(from_etcd)?;
            let ids = response
                .kvs()
                .iter()
                .map(|kv| {
                    kv.key()
                        .strip_prefix(self.prefix.as_bytes())
                        .ok_or_else(|| StoreError::corrupt(STORE, "a key outside the prefix"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ListPage::from_overfetched(STORE, ids, limit))
        })
        .await
    }
}
