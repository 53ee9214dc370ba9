//! RKMS core: data keys kept wrapped in several KMS regions, handed out by id.
//!
//! This crate holds the protocol and the two traits it runs on. It depends on no store backend
//! and no cloud SDK, so an application can embed [`KeyService`] over a [`Store`] of its own
//! (see `examples/embed.rs`).
//!
//! - [`Store`]: one opaque, versioned record per id, with a first-write-wins create
//!   ([`Store::put_if_absent`]) and a compare-and-set update ([`Store::compare_and_swap`]).
//! - [`Kms`]: one KMS region with one master key: generate, encrypt, decrypt, each under an
//!   [`EncryptionContext`].
//! - [`Record`]: every region's wrapped copy of one data key. No plaintext is ever stored.
//! - [`KeyService`]: the protocol below.
//! - [`MemoryStore`] and [`LocalKms`]: an in-memory store and software master keys, for
//!   development, embedding and tests. Neither is a production key store.
//!
//! # The get-or-create protocol
//!
//! [`KeyService::get_or_create`] for an id:
//!
//! 1. The id was validated when the [`KeyId`] was made (length and characters), before any I/O.
//! 2. Every KMS call below carries the encryption context `{"rkms:id": id}`.
//! 3. **Read** the record with [`Store::get`].
//! 4. **Found:** decode it; in each configured region, in order of preference, that holds a
//!    copy, call `decrypt`; the first success is the answer. A region that errors or does not
//!    answer within the KMS timeout is skipped for the next.
//! 5. **Absent:** call `generate_data_key` in the first region, in order of preference, that
//!    answers. Wrap the new key with `encrypt` in every other region, concurrently. Every region
//!    must succeed for now; otherwise nothing is written and the call fails.
//! 6. **Store** the record with [`Store::put_if_absent`]. If this call created it, return the
//!    new key. If another caller created one first, drop the new key (it is zeroized and was
//!    never handed out) and unwrap the winner's record as in step 4.
//!
//! # Guarantees
//!
//! - **First write wins.** Once any caller was handed a key for an id, every later caller,
//!   through any service sharing the store, gets the same key: records are only created by
//!   `put_if_absent`, and a loser returns the winner's key, never its own.
//! - **No plaintext at rest.** The store holds only wrapped copies. [`DataKey`] is zeroized on
//!   drop and prints as `[REDACTED]`.
//! - **Copies are bound to their id and region.** A copy moved under another id fails to
//!   decrypt (the context differs); a copy wrapped under a foreign master key is refused.
//! - **Bounded failure.** Each KMS and store call has a timeout and the whole call a deadline
//!   ([`ServiceOptions`]).
//!
//! # Failure cases
//!
//! - Every region holding a copy fails or times out: [`ServiceError::RegionsUnavailable`]
//!   (`Decrypt`); retry later.
//! - No region can generate, or some region cannot wrap: `RegionsUnavailable` (`Generate` or
//!   `Wrap`) and nothing is written.
//! - The store fails or is slow: [`ServiceError::Store`] or [`ServiceError::StoreTimeout`].
//! - The stored bytes do not decode: [`ServiceError::CorruptRecord`]; other ids are unaffected.
//! - The record holds copies only for regions that are not configured:
//!   [`ServiceError::NoCopyForConfiguredRegions`].

mod cache;
mod context;
mod health;
mod id;
mod kms;
mod local_kms;
mod memory;
mod record;
mod redact;
mod secret;
mod service;
mod store;
pub mod telemetry;

pub use cache::CacheOptions;
pub use context::{EncryptionContext, ID_CONTEXT_KEY};
pub use health::{BreakerOptions, BreakerState};
pub use id::{InvalidId, KeyId, ID_PUNCTUATION, MAX_ID_LEN};
pub use kms::{GeneratedKey, Kms, KmsError};
pub use local_kms::{KeyringError, LocalKeyring, LocalKms};
pub use memory::MemoryStore;
pub use record::{Record, RecordError, WrappedCopy, RECORD_FORMAT};
pub use redact::redact_url_password;
pub use secret::DataKey;
pub use service::{
    BuildError, HedgeOptions, IssuedKey, KeyService, KeyServiceBuilder, KmsAction, RegionStatus,
    RepairOutcome, RepairSweep, ServiceError, ServiceOptions, MAX_DATA_KEY_LEN,
};
pub use store::{ListPage, PutOutcome, Store, StoreError, Stored, Version};
