//! RKMS store on DynamoDB.
//!
//! One item per id in a table whose partition key is `id` (string): `record` (binary) and
//! `version` (number). Reads are strongly consistent.
//!
//! 1. Create is `PutItem` with the condition `attribute_not_exists(id)`; on
//!    `ConditionalCheckFailedException` the existing item is read and returned: first write wins.
//! 2. Compare-and-set is `UpdateItem` setting `record` and `version` with the condition
//!    `version = :expected`; it touches no other attribute.
//! 3. A new item starts at a random version, so a deleted and re-created id never repeats one.
//!
//! **Items of the original Go RKMS** (`id` plus a `keys` map of region to base64 ciphertext,
//! wrapped with no encryption context) are translated into records at version 0 and handed to
//! the core marked [`rkms_core::Stored::legacy`], beside the bytes, so that an existing table
//! keeps serving its keys while [`LegacyRecords::Serve`] is configured. Nothing in any stored
//! bytes can claim that status. Upgrading one (the core's repair, or `rkms-server legacy
//! upgrade`) is a compare-and-set from version 0, allowed only while the item still has no
//! `version`; it adds `record` and `version` and keeps `keys`, so Go servers still running
//! during a migration keep reading it. An item with a `record` is always read from it.
//! With [`LegacyRecords::Refuse`] an item that has only `keys` is unreadable.
//!
//! Listing is one consistent Scan per page with `Limit` set to the page size, continuing from
//! the previous page's `LastEvaluatedKey` (the list cursor carries it): a page reads about a
//! page of items whatever the table's size, and ids come in DynamoDB's hash order.
//! `create_table` (off by default) creates an on-demand table for development.

mod config;
mod error;
mod item;
mod store;

pub use config::{DynamoDbConfig, LegacyRecords};
pub use store::DynamoDbStore;
