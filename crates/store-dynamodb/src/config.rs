//! Settings of the DynamoDB store.

use std::time::Duration;

/// What to do with items of the original Go RKMS (`id` + `keys`, wrapped without encryption
/// context). Nothing but the item's key binds such a copy to its id, so whoever can write the
/// table could move one id's copies under another; serve them only until the table is upgraded
/// (`rkms-server legacy upgrade`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LegacyRecords {
    /// Read them as legacy records, so an existing table keeps working (the default).
    #[default]
    Serve,
    /// Treat them as unreadable: once every item carries RKMS's own record.
    Refuse,
}

/// Settings of a [`crate::DynamoDbStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoDbConfig {
    /// The table; its partition key must be the string attribute `id`.
    pub table_name: String,
    /// The AWS region of the table.
    pub region: String,
    /// An endpoint URL instead of the region's (DynamoDB Local, emulators, VPC endpoints).
    pub endpoint: Option<String>,
    /// Create the table (on-demand billing) if it does not exist. For development.
    pub create_table: bool,
    /// Longest one store call may take, retries included (default 2 s).
    pub operation_timeout: Duration,
    /// Longest wait to connect (default 1 s).
    pub connect_timeout: Duration,
    /// Items of the original Go RKMS: served (the default) or refused.
    pub legacy_records: LegacyRecords,
}

impl DynamoDbConfig {
    /// Defaults for `table_name` in `region`.
    pub fn new(table_name: impl Into<String>, region: impl Into<String>) -> Self {
        Self {
            table_name: table_name.into(),
            region: region.into(),
            endpoint: None,
            create_table: false,
            operation_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            legacy_records: LegacyRecords::Serve,
        }
    }
}
