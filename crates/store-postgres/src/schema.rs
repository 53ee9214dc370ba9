//! Schema migrations, applied at start under an advisory lock.

use rkms_core::StoreError;
use sqlx::PgPool;

use crate::error::{from_sqlx, STORE};

/// The migrations, in order. Never edit one that has shipped: append a new one.
/// `{schema}` is replaced by the validated, quoted schema name.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    r#"CREATE TABLE IF NOT EXISTS {schema}.rkms_keys (
        id TEXT COLLATE "C" PRIMARY KEY,
        record BYTEA NOT NULL,
        version BIGINT NOT NULL
    )"#,
)];

/// Checks a schema name and returns it quoted for SQL.
pub(crate) fn quoted_schema(schema: &str) -> Result<String, StoreError> {
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit();
    if !valid {
        return Err(StoreError::Other {
            store: STORE,
            source: format!("schema name {schema:?} must be 1-63 lower-case letters, digits or '_', not starting with a digit").into(),
        });
    }
    Ok(format!("\"{schema}\""))
}

/// Creates the schema and applies missing migrations. Several processes may run this at once:
/// the transaction-scoped advisory lock lets one at a time in.
pub(crate) async fn migrate(pool: &PgPool, schema: &str) -> Result<(), StoreError> {
    let quoted = quoted_schema(schema)?;
    let mut tx = pool.begin().await.map_err(from_sqlx)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('rkms-migrate:' || $1))")
        .bind(schema)
        .execute(&mut *tx)
        .await
        .map_err(from_sqlx)?;
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {quoted}"))
        .execute(&mut *tx)
        .await
        .map_err(from_sqlx)?;
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {quoted}.rkms_migrations (
            version INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )"
    ))
    .execute(&mut *tx)
    .await
    .map_err(from_sqlx)?;
    let applied: Vec<i32> =
        sqlx::query_scalar(&format!("SELECT version FROM {quoted}.rkms_migrations"))
            .fetch_all(&mut *tx)
            .await
            .map_err(from_sqlx)?;
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        sqlx::query(&sql.replace("{schema}", &quoted))
            .execute(&mut *tx)
            .await
            .map_err(from_sqlx)?;
        sqlx::query(&format!(
            "INSERT INTO {quoted}.rkms_migrations (version) VALUES ($1)"
        ))
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        tracing::info!(schema, version, "applied PostgreSQL migration");
    }
    tx.commit().await.map_err(from_sqlx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        assert_eq!(quoted_schema("rkms_1").unwrap(), "\"rkms_1\"");
        for bad in [
            "",
            "Upper",
            "a-b",
            "1abc",
            "a\"; DROP TABLE x; --",
            &"a".repeat(64),
        ] {
            assert!(quoted_schema(bad).is_err(), "{bad:?}");
        }
    }
}
