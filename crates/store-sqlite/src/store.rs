//! `SqliteStore`: the `Store` trait over one SQLite file.

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rkms_core::{KeyId, ListCursor, ListPage, PutOutcome, Store, StoreError, Stored, Version};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row as _;

use crate::error::{from_sqlx, is_busy, STORE};
use crate::SqliteConfig;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS rkms_keys (
    id TEXT PRIMARY KEY NOT NULL,
    record BLOB NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID";

/// A [`Store`] in one SQLite file. See the crate documentation for the schema and guarantees.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database and its table.
    pub async fn open(config: &SqliteConfig) -> Result<Self, StoreError> {
        create_private(&config.path).map_err(|e| StoreError::Unavailable {
            store: STORE,
            source: Box::new(e),
        })?;
        // Switching a new file into WAL mode takes a lock that SQLite's busy timeout does not
        // wait for, so servers started together on a fresh directory retry here instead.
        let deadline = Instant::now() + config.busy_timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            match Self::connect(config).await {
                Err(e) if is_busy(&e) && Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                opened => return opened.map_err(from_sqlx),
            }
        }
    }

    async fn connect(config: &SqliteConfig) -> Result<Self, sqlx::Error> {
        let options = SqliteConnectOptions::new()
            .filename(&config.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(config.busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .connect_with(options)
            .await?;
        sqlx::query(SCHEMA).execute(&pool).await?;
        Ok(Self { pool })
    }

    /// Closes the pool, waiting for connections in use.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Creates the database file (and its directories) readable by this user alone: every local
/// user could otherwise list the ids. An existing file keeps its mode, with a warning if others
/// may read it. SQLite gives its `-wal` and `-shm` files the database file's mode.
fn create_private(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "the SQLite store is readable by other users, who can list every id; chmod 600 it"
                );
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn raw_version(version: Version) -> Option<i64> {
    i64::try_from(version.get()).ok()
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, id: &KeyId) -> Result<Option<Stored>, StoreError> {
        let row = sqlx::query("SELECT record, version FROM rkms_keys WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(from_sqlx)?;
        row.map(|row| {
            let bytes: Vec<u8> = row.try_get("record").map_err(|e| StoreError::Corrupt {
                store: STORE,
                message: format!("record column of {id:?}: {e}"),
            })?;
            let version = row.try_get::<i64, _>("version").map_err(from_sqlx)?;
            Ok(Stored::new(bytes, Version::from_signed(STORE, version)?))
        })
        .transpose()
    }

    async fn put_if_absent(&self, id: &KeyId, bytes: Vec<u8>) -> Result<PutOutcome, StoreError> {
        loop {
            // A random positive start version: see the crate documentation.
            let inserted: Option<i64> = sqlx::query_scalar(
                "INSERT INTO rkms_keys (id, record, version)
                 VALUES (?, ?, (random() & 0x3fffffffffffffff) + 1)
                 ON CONFLICT(id) DO NOTHING RETURNING version",
            )
            .bind(id.as_str())
            .bind(&bytes)
            .fetch_optional(&self.pool)
            .await
            .map_err(from_sqlx)?;
            if let Some(version) = inserted {
                return Ok(PutOutcome::Created(Version::from_signed(STORE, version)?));
            }
            // Someone else's record is there; return it. If it was deleted in between, retry.
            if let Some(existing) = self.get(id).await? {
                return Ok(PutOutcome::Exists(existing));
            }
        }
    }

    async fn compare_and_swap(
        &self,
        id: &KeyId,
        expected: Version,
        bytes: Vec<u8>,
    ) -> Result<Version, StoreError> {
        let Some(raw) = raw_version(expected) else {
            return Err(StoreError::PreconditionFailed { expected });
        };
        let updated: Option<i64> = sqlx::query_scalar(
            "UPDATE rkms_keys SET record = ?, version = version + 1
             WHERE id = ? AND version = ? RETURNING version",
        )
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
    }

    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM rkms_keys WHERE id = ?")
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .map_err(from_sqlx)?;
        Ok(result.rows_affected() > 0)
    }

    /// Pages in byte order (keyset paging on the primary key); the cursor is the last id
    /// examined.
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
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT id FROM rkms_keys WHERE id > ? ORDER BY id LIMIT ?")
                .bind(after.unwrap_or_default())
                .bind(fetch)
                .fetch_all(&self.pool)
                .await
                .map_err(from_sqlx)?;
        Ok(ListPage::from_overfetched(STORE, rows, limit))
    }
}
