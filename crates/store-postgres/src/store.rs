//! `PostgresStore`: the `Store` trait over a PostgreSQL table.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use rkms_core::{
    within_limit, KeyId, ListCursor, ListPage, PutOutcome, Store, StoreError, Stored, Version,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::error::{from_sqlx, STORE};
use crate::schema::{migrate, quoted_schema};
use crate::PostgresConfig;

/// SQL text of every statement, with the schema filled in once at open.
#[derive(Debug)]
struct Statements {
    get: String,
    insert: String,
    update: String,
    delete: String,
    list: String,
}

impl Statements {
    fn for_table(table: &str) -> Self {
        Self {
            get: format!("SELECT record, version FROM {table} WHERE id = $1"),
            // A random positive start version: see the crate documentation.
            insert: format!(
                "INSERT INTO {table} (id, record, version)
                 VALUES ($1, $2, floor(random() * 4611686018427387903)::bigint + 1)
                 ON CONFLICT (id) DO NOTHING RETURNING version"
            ),
            update: format!(
                "UPDATE {table} SET record = $1, version = version + 1
                 WHERE id = $2 AND version = $3 RETURNING version"
            ),
            delete: format!("DELETE FROM {table} WHERE id = $1"),
            list: format!("SELECT id FROM {table} WHERE id > $1 ORDER BY id LIMIT $2"),
        }
    }
}

/// A [`Store`] in one PostgreSQL table. See the crate documentation.
#[derive(Debug)]
pub struct PostgresStore {
    pool: PgPool,
    sql: Statements,
    timeout: Duration,
}

impl PostgresStore {
    /// Connects, creates the schema and applies migrations.
    pub async fn open(config: &PostgresConfig) -> Result<Self, StoreError> {
        let table = format!("{}.rkms_keys", quoted_schema(&config.schema)?);
        let options: PgConnectOptions = config.url.parse().map_err(|e| StoreError::Other {
            store: STORE,
            source: format!("invalid PostgreSQL URL: {e}").into(),
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.operation_timeout)
            .connect_lazy_with(options);
        let store = Self {
            pool,
            sql: Statements::for_table(&table),
            timeout: config.operation_timeout,
        };
        store.bounded(migrate(&store.pool, &config.schema)).await?;
        Ok(store)
    }

    /// Closes the pool, waiting for connections in use.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs `call` within the operation timeout.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        within_limit(STORE, self.timeout, call).await
    }

    async fn read(&self, id: &KeyId) -> Result<Option<Stored>, StoreError> {
        let row: Option<(Vec<u8>, i64)> = sqlx::query_as(&self.sql.get)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(from_sqlx)?;
        row.map(|(bytes, version)| Ok(Stored::new(bytes, Version::from_signed(STORE, version)?)))
            .transpose()
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn get(&self, id: &KeyId) -> Result<Option<Stored>, StoreError> {
        self.bounded(self.read(id)).await
    }

    async fn put_if_absent(&self, id: &KeyId, bytes: Vec<u8>) -> Result<PutOutcome, StoreError> {
        self.bounded(async {
            loop {
                let inserted: Option<i64> = sqlx::query_scalar(&self.sql.insert)
                    .bind(id.as_str())
                    .bind(&bytes)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(from_sqlx)?;
                if let Some(version) = inserted {
                    return Ok(PutOutcome::Created(Version::from_signed(STORE, version)?));
                }
                // Another writer's record is there; return it. If it was deleted meanwhile, retry.
                if let Some(existing) = self.read(id).await? {
                    return Ok(PutOutcome::Exists(existing));
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
        let Ok(raw) = i64::try_from(expected.get()) else {
            return Err(StoreError::PreconditionFailed { expected });
        };
        self.bounded(async {
            let updated: Option<i64> = sqlx::query_scalar(&self.sql.update)
                .bind(&bytes)
                .bind(id.as_str())
                .bind(raw)
                .fetch_optional(&self.pool)
                .await
                .map_err(from_sqlx)?;
            match updated {
                Some(version) => Version::from_signed(STORE, version),
                None => Err(StoreError::PreconditionFailed { expected }),
            }
        })
        .await
    }

    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        self.bounded(async {
            let result = sqlx::query(&self.sql.delete)
                .bind(id.as_str())
                .execute(&self.pool)
                .await
                .map_err(from_sqlx)?;
            Ok(result.rows_affected() > 0)
        })
        .await
    }

    /// Pages in byte order (keyset paging on the primary key, collation "C"); the cursor is the
    /// last id examined.
    async fn list(
        &self,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        if limit == 0 {
            return Ok(ListPage::default());
        }
        let after = cursor.map(|c| c.text_position(STORE)).transpose()?;
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
        self.bounded(async {
            let rows: Vec<String> = sqlx::query_scalar(&self.sql.list)
                .bind(after.unwrap_or_default())
                .bind(fetch)
                .fetch_all(&self.pool)
                .await
                .map_err(from_sqlx)?;
            Ok(ListPage::from_overfetched(STORE, rows, limit))
        })
        .await
    }
}
