//! Opening the configured store and KMS regions. Cargo features choose what is compiled in.

use std::sync::Arc;

use rkms_core::{Kms, LocalKeyring, Store};

use crate::config::{KmsSettings, RegionSettings, StoreSettings};

/// Opens the configured store.
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
            let store = rkms_store_sqlite::SqliteStore::open(&config)
                .await
                .map_err(|e| format!("cannot open the SQLite store at {}: {e}", path.display()))?;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "sqlite"))]
        StoreSettings::Sqlite { .. } => Err(
            "the sqlite store is not compiled into this build; rebuild with `--features sqlite`"
                .into(),
        ),
    }
}

/// Opens one KMS client per configured region, in order of preference.
pub async fn open_regions(
    kms: &KmsSettings,
    regions: &[RegionSettings],
) -> Result<Vec<Arc<dyn Kms>>, String> {
    match kms {
        KmsSettings::Local { keyring_path } => {
            let names: Vec<&str> = regions.iter().map(|r| r.key_id.as_str()).collect();
            let keyring =
                LocalKeyring::open_or_create(keyring_path, &names).map_err(|e| e.to_string())?;
            regions
                .iter()
                .map(|r| {
                    let kms = keyring
                        .region(&r.name, &r.key_id)
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
                config.connect_timeout = *connect_timeout;
                config.operation_timeout = *operation_timeout;
                config.max_attempts = *max_attempts;
                opened.push(Arc::new(rkms_kms_aws::AwsKms::connect(&config).await));
            }
            Ok(opened)
        }
        #[cfg(not(feature = "aws"))]
        KmsSettings::Aws { .. } => Err(
            "the aws KMS provider is not compiled into this build; rebuild with `--features aws`"
                .into(),
        ),
    }
}
