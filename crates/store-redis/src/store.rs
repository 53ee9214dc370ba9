//! `RedisStore`: the `Store` trait over Redis keys and two Lua scripts.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, RedisResult, Value};
use rkms_core::{
    within_limit, KeyId, ListCursor, ListPage, PutOutcome, Store, StoreError, Stored, Version,
};

use crate::error::{from_redis, replicated, STORE};
use crate::RedisConfig;

/// Bytes of the version that starts every stored value.
const VERSION_LEN: usize = 8;

/// SET NX, and on success add the id to the index. Returns 1 when it created the key, else the
/// existing value.
const CREATE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('ZADD', KEYS[2], 0, ARGV[2])
  return 1
end
return redis.call('GET', KEYS[1])";

/// Replace the value only if it still starts with the expected version. Returns 1 or 0.
const COMPARE_AND_SWAP: &str = r"
local current = redis.call('GET', KEYS[1])
if not current or string.sub(current, 1, 8) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
return 1";

/// Delete the key and its index entry. Returns the number of keys deleted.
const DELETE: &str = r"
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('DEL', KEYS[1])";

/// A [`Store`] on Redis. See the crate documentation.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
    /// Replicas that must acknowledge each write; 0 waits for none.
    replicas: u32,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to Redis and checks its persistence against `config.durability`; fails if it
    /// does not answer within the operation timeout.
    pub async fn open(config: &RedisConfig) -> Result<Self, StoreError> {
        let client = redis::Client::open(config.url.as_str()).map_err(from_redis)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.operation_timeout))
            .set_response_timeout(Some(config.operation_timeout))
            .set_number_of_retries(1);
        let connect = async {
            ConnectionManager::new_with_config(client, manager_config)
                .await
                .map_err(from_redis)
        };
        let connection = tokio::time::timeout(config.operation_timeout, connect)
            .await
            .unwrap_or_else(|_| Err(StoreError::timed_out(STORE, config.operation_timeout)))?;
        let store = Self {
            connection,
            prefix: config.prefix.clone(),
            timeout: config.operation_timeout,
            replicas: config.replicas,
        };
        store
            .bounded(config.durability.check(&mut store.connection.clone()))
            .await?;
        Ok(store)
    }

    /// Runs a write script. With replicas configured, `WAIT`s for them in the same pipeline,
    /// so the wait covers this write even if the connection is replaced meanwhile.
    async fn write(
        &self,
        script: &str,
        keys: &[String],
        args: &[&[u8]],
    ) -> Result<Value, StoreError> {
        let mut eval = redis::cmd("EVAL");
        eval.arg(script).arg(keys.len()).arg(keys).arg(args);
        let mut connection = self.connection.clone();
        if self.replicas == 0 {
            return eval.query_async(&mut connection).await.map_err(from_redis);
        }
        let wait_ms = u64::try_from(self.timeout.as_millis() / 2).unwrap_or(u64::MAX);
        let (reply, acked): (RedisResult<Value>, RedisResult<u32>) = redis::pipe()
            .ignore_errors()
            .add_command(eval)
            .cmd("WAIT")
            .arg(self.replicas)
            .arg(wait_ms)
            .query_async(&mut connection)
            .await
            .map_err(from_redis)?;
        let reply = reply.map_err(from_redis)?;
        replicated(acked.map_err(from_redis)?, self.replicas, wait_ms).map(|()| reply)
    }

    fn key(&self, id: &KeyId) -> String {
        format!("{}key:{}", self.prefix, id.as_str())
    }

    fn index(&self) -> String {
        format!("{}ids", self.prefix)
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        within_limit(STORE, self.timeout, call).await
    }
}

fn encode(version: u64, record: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(VERSION_LEN + record.len());
    value.extend_from_slice(&version.to_be_bytes());
    value.extend_from_slice(record);
    value
}

fn decode(id: &KeyId, value: Vec<u8>) -> Result<Stored, StoreError> {
    if value.len() < VERSION_LEN {
        return Err(StoreError::corrupt(
            STORE,
            format!("value of {id:?} is shorter than its version"),
        ));
    }
    let (version, record) = value.split_at(VERSION_LEN);
    let version = u64::from_be_bytes(version.try_into().expect("eight bytes"));
    Ok(Stored::new(record.to_vec(), Version::new(version)))
}

#[async_trait]
impl Store for RedisStore {
    async fn get(&self, id: &KeyId) -> Result<Option<Stored>, StoreError> {
        self.bounded(async {
            let value: Option<Vec<u8>> = self
                .connection
                .clone()
                .get(self.key(id))
                .await
                .map_err(from_redis)?;
            value.map(|v| decode(id, v)).transpose()
        })
        .await
    }

    async fn put_if_absent(&self, id: &KeyId, bytes: Vec<u8>) -> Result<PutOutcome, StoreError> {
        // A random start below 2^63, so that the version also fits stores with signed integers.
        let version = rand::random::<u64>() >> 1;
        self.bounded(async {
            let reply = self
                .write(
                    CREATE,
                    &[self.key(id), self.index()],
                    &[&encode(version, &bytes), id.as_str().as_bytes()],
                )
                .await?;
            match reply {
                Value::Int(1) => Ok(PutOutcome::Created(Version::new(version))),
                Value::BulkString(existing) => Ok(PutOutcome::Exists(decode(id, existing)?)),
                other => Err(StoreError::corrupt(
                    STORE,
                    format!("unexpected reply to create: {other:?}"),
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
        let next = expected.get().wrapping_add(1);
        self.bounded(async {
            let swapped = self
                .write(
                    COMPARE_AND_SWAP,
                    &[self.key(id)],
                    &[&expected.get().to_be_bytes(), &encode(next, &bytes)],
                )
                .await?;
            if swapped == Value::Int(1) {
                Ok(Version::new(next))
            } else {
                Err(StoreError::PreconditionFailed { expected })
            }
        })
        .await
    }

    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        self.bounded(async {
            let deleted = self
                .write(
                    DELETE,
                    &[self.key(id), self.index()],
                    &[id.as_str().as_bytes()],
                )
                .await?;
            Ok(matches!(deleted, Value::Int(n) if n > 0))
        })
        .await
    }

    /// Pages through the index in byte order; the cursor is the last id examined.
    async fn list(
        &self,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        if limit == 0 {
            return Ok(ListPage::default());
        }
        let min = match cursor {
            Some(cursor) => [b"(".as_slice(), &cursor.position(STORE)?].concat(),
            None => b"-".to_vec(),
        };
        let fetch = isize::try_from(limit).unwrap_or(isize::MAX - 1) + 1;
        self.bounded(async {
            let raw: Vec<Vec<u8>> = self
                .connection
                .clone()
                .zrangebylex_limit(self.index(), min, "+", 0, fetch)
                .await
                .map_err(from_redis)?;
            Ok(ListPage::from_overfetched(STORE, raw, limit))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_short_ones_are_corrupt() {
        let id = KeyId::parse("a").unwrap();
        let stored = decode(&id, encode(42, b"record")).unwrap();
        assert_eq!(
            (stored.bytes.as_slice(), stored.version),
            (&b"record"[..], Version::new(42))
        );
        assert!(matches!(
            decode(&id, vec![1, 2, 3]),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
