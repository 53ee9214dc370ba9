//! Opening the configured store and KMS regions. Cargo features choose what is compiled in.

use std::path::Path;
use std::sync::Arc;

use rkms_core::{KeyService, Kms, LocalKeyring, Store};
use tracing::warn;

#[cfg(feature = "dynamodb")]
use crate::config::LegacyRecords;
use crate::config::{KmsSettings, RegionSettings, Settings, StoreSettings};

/// Opens the configured store. A store whose cargo feature is off is refused by name.
pub async fn open_store(settings: &StoreSettings) -> Result<Arc<dyn Store>, String> {
    match settings {
        #[cfg(feature = "sqlite")]
        StoreSettings::Sqlite {
            path,
            busy_timeout,
            max_connections,
        } => {
            let mut config = rkms_store_sqlite::SqliteConfig::new(path);
            config.busy_timeout = *busy_timeout;
            config.max_connections = *max_connections;
            opened(
                settings,
                rkms_store_sqlite::SqliteStore::open(&config).await,
            )
        }
        #[cfg(feature = "postgres")]
        StoreSettings::Postgres {
            url,
            schema,
            max_connections,
            timeout,
        } => {
            let mut config = rkms_store_postgres::PostgresConfig::new(url.expose());
            config.schema = schema.clone();
            config.max_connections = *max_connections;
            config.operation_timeout = *timeout;
            opened(
                settings,
                rkms_store_postgres::PostgresStore::open(&config).await,
            )
        }
        #[cfg(feature = "redis")]
        StoreSettings::Redis {
            url,
            prefix,
            timeout,
            relaxed_durability,
            replicas,
        } => {
            let mut config = rkms_store_redis::RedisConfig::new(url.expose());
            config.prefix = prefix.clone();
            config.operation_timeout = *timeout;
            if *relaxed_durability {
                config.durability = rkms_store_redis::Durability::Relaxed;
            }
            config.replicas = *replicas;
            opened(settings, rkms_store_redis::RedisStore::open(&config).await)
        }
        #[cfg(feature = "etcd")]
        StoreSettings::Etcd {
            endpoints,
            prefix,
            timeout,
        } => {
            let mut config = rkms_store_etcd::EtcdConfig::new(endpoints.clone());
            config.prefix = prefix.clone();
            config.operation_timeout = *timeout;
            opened(settings, rkms_store_etcd::EtcdStore::open(&config).await)
        }
        #[cfg(feature = "dynamodb")]
        StoreSettings::DynamoDb {
            table_name,
            region,
            endpoint,
            create_table,
            timeout,
            legacy_records,
        } => {
            let mut config = rkms_store_dynamodb::DynamoDbConfig::new(table_name, region);
            config.endpoint = endpoint.clone();
            config.create_table = *create_table;
            config.operation_timeout = *timeout;
            config.legacy_records = match legacy_records {
                LegacyRecords::Serve => rkms_store_dynamodb::LegacyRecords::Serve,
                LegacyRecords::Refuse => rkms_store_dynamodb::LegacyRecords::Refuse,
            };
            opened(
                settings,
                rkms_store_dynamodb::DynamoDbStore::open(&config).await,
            )
        }
        #[allow(
            unreachable_patterns,
            reason = "reached only when some store feature is off"
        )]
        other => Err(not_compiled_in("store", other.feature())),
    }
}

#[allow(dead_code, reason = "unused only when every store feature is off")]
fn opened<S: Store + 'static>(
    settings: &StoreSettings,
    result: Result<S, rkms_core::StoreError>,
) -> Result<Arc<dyn Store>, String> {
    match result {
        Ok(store) => Ok(Arc::new(store)),
        Err(e) => Err(format!("cannot open the {} store: {e}", settings.feature())),
    }
}

/// What [`open_regions`] would refuse in an existing local keyring (unreadable, malformed,
/// open to other users, or without a configured key), reading it only; a missing keyring is
/// made at start.
pub fn check_keyring(kms: &KmsSettings, regions: &[RegionSettings]) -> Result<(), String> {
    let KmsSettings::Local { keyring_path } = kms else {
        return Ok(());
    };
    if !keyring_path.exists() {
        return Ok(());
    }
    let keyring = LocalKeyring::open(keyring_path).map_err(|e| e.to_string())?;
    for region in regions {
        let previous: Vec<&str> = region.previous_key_ids.iter().map(String::as_str).collect();
        keyring
            .region_with_previous(&region.name, &region.key_id, &previous)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The backends this build holds, by cargo feature.
const COMPILED_IN: &[&str] = &[
    #[cfg(feature = "sqlite")]
    "sqlite",
    #[cfg(feature = "postgres")]
    "postgres",
    #[cfg(feature = "redis")]
    "redis",
    #[cfg(feature = "etcd")]
    "etcd",
    #[cfg(feature = "dynamodb")]
    "dynamodb",
    #[cfg(feature = "aws")]
    "aws",
];

/// Refuses settings that name a store or KMS provider this build was compiled without, as
/// opening them would, without opening anything.
pub fn check_compiled_in(store: &StoreSettings, kms: &KmsSettings) -> Result<(), String> {
    let compiled = |feature: &str| COMPILED_IN.contains(&feature);
    if !compiled(store.feature()) {
        return Err(not_compiled_in("store", store.feature()));
    }
    if matches!(kms, KmsSettings::Aws { .. }) && !compiled("aws") {
        return Err(not_compiled_in("KMS provider", "aws"));
    }
    Ok(())
}

fn not_compiled_in(what: &str, feature: &str) -> String {
    format!("the {feature} {what} is not compiled into this build; rebuild rkms-server with `--features {feature}` (or `--features full`)")
}

/// Opens one KMS client per configured region, in order of preference. `store` is the
/// opened store: a missing local keyring is created only while it holds no record.
pub async fn open_regions(
    kms: &KmsSettings,
    regions: &[RegionSettings],
    store: &dyn Store,
) -> Result<Vec<Arc<dyn Kms>>, String> {
    match kms {
        KmsSettings::Local { keyring_path } => {
            warn!(
                keyring = %keyring_path.display(),
                "the local KMS provider serves: its master keys sit unprotected in the keyring \
                 file, on the same disk as the records, and whoever reads both has every key. \
                 Use it for development, or where that disk is the boundary you trust"
            );
            refuse_new_keyring_over_records(keyring_path, store).await?;
            let names: Vec<&str> = regions.iter().map(|r| r.key_id.as_str()).collect();
            let keyring =
                LocalKeyring::open_or_create(keyring_path, &names).map_err(|e| e.to_string())?;
            regions
                .iter()
                .map(|r| {
                    let previous: Vec<&str> =
                        r.previous_key_ids.iter().map(String::as_str).collect();
                    let kms = keyring
                        .region_with_previous(&r.name, &r.key_id, &previous)
                        .map_err(|e| e.to_string())?;
                    Ok(Arc::new(kms) as Arc<dyn Kms>)
                })
                .collect()
        }
        #[cfg(feature = "aws")]
        KmsSettings::Aws {
            connect_timeout,
            operation_timeout,
            max_attempts,
        } => {
            let mut opened: Vec<Arc<dyn Kms>> = Vec::with_capacity(regions.len());
            for region in regions {
                let mut config = rkms_kms_aws::AwsKmsConfig::new(&region.name, &region.key_id);
                config.endpoint = region.endpoint.clone();
                config.previous_key_ids = region.previous_key_ids.clone();
                config.connect_timeout = *connect_timeout;
                config.operation_timeout = *operation_timeout;
                config.max_attempts = *max_attempts;
                opened.push(Arc::new(rkms_kms_aws::AwsKms::connect(&config).await));
            }
            Ok(opened)
        }
        #[cfg(not(feature = "aws"))]
        KmsSettings::Aws { .. } => Err(not_compiled_in("KMS provider", "aws")),
    }
}

/// Opens the configured regions over `store` and builds the protocol over them, as the
/// successor of `previous` when a reload replaces it (see
/// [`rkms_core::KeyServiceBuilder::succeeding`]).
pub async fn build_service(
    settings: &Settings,
    store: &Arc<dyn Store>,
    previous: Option<&KeyService>,
) -> Result<KeyService, String> {
    let regions = open_regions(&settings.kms, &settings.regions, store.as_ref()).await?;
    if regions.len() < 2 {
        warn!("only one KMS region is configured: keys are unavailable whenever it is");
    }
    let builder = regions
        .into_iter()
        .fold(KeyService::builder(Arc::clone(store)), |builder, kms| {
            builder.region(kms)
        })
        .options(settings.service.clone());
    match previous {
        Some(previous) => builder.succeeding(previous),
        None => builder,
    }
    .build()
    .map_err(|e| format!("invalid service settings: {e}"))
}

/// Refuses to let a missing keyring be created while the store holds records: they were
/// wrapped under the master keys of the keyring that is gone, and a new keyring would make
/// those ids fail forever instead of failing loudly now.
async fn refuse_new_keyring_over_records(path: &Path, store: &dyn Store) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot check the keyring {}: {e}", path.display())),
    }
    let page = store.list(None, 1).await.map_err(|e| {
        format!(
            "the keyring {} does not exist, and the store cannot be read to check that no record \
             needs its master keys: {e}",
            path.display()
        )
    })?;
    match page.ids.first() {
        None => Ok(()),
        Some(id) => Err(format!(
            "the keyring {} does not exist, but the store already holds records (such as id \
             {:?}) wrapped under its master keys; a new keyring could never unwrap them. Restore \
             the keyring file from a backup (or point [kms] keyring_path at it); a new keyring \
             is created only for a store without records",
            path.display(),
            id.as_str()
        )),
    }
}

/// Runs in builds without the postgres feature, such as `--no-default-features`.
#[cfg(all(test, not(feature = "postgres")))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_store_not_compiled_in_is_refused_by_feature_name() {
        let settings = StoreSettings::Postgres {
            url: crate::config::ConnectionUrl::from("postgres://db/keys"),
            schema: "public".into(),
            max_connections: 1,
            timeout: std::time::Duration::from_secs(1),
        };
        let message = open_store(&settings).await.expect_err("refused");
        assert!(message.contains("--features postgres"), "{message}");
    }
}
