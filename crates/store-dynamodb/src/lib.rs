//! RKMS store on DynamoDB.
//!
//! One item per id in a table whose partition key is `id` (string): `record` (binary) and
//! `version` (number). Reads are strongly consistent.
//!
//! 1. Create is `PutItem` with the condition `attribute_not_exists(id)`; on
//!    `ConditionalCheckFailedException` the existing item is read and returned: first write wins.
//! 2. Compare-and-set is `PutItem` with the condition `version = :expected`.
//! 3. A new item starts at a random version, so a deleted and re-created id never repeats one.
//!
//! **Items of the original Go RKMS** (`id` plus a `keys` map of region to base64 ciphertext,
//! wrapped with no encryption context) are read as records marked `wrapped_without_context`,
//! at version 0, so an existing table keeps serving its keys. They are never written back in
//! that form.
//!
//! Listing is one consistent Scan per page with `Limit` set to the page size, continuing from
//! the previous page's `LastEvaluatedKey` (the list cursor carries it): a page reads about a
//! page of items whatever the table's size, and ids come in DynamoDB's hash order.
//! `create_table` (off by default) creates an on-demand table for development.

mod config;
mod error;
mod item;
mod store;

pub use config::DynamoDbConfig;
pub use store::DynamoDbStore;
