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
//! - [`Record`]: an id's lifecycle state and, for each version of its data key, every
//!   region's wrapped copy. No plaintext is ever stored.
//! - [`KeyService`]: the protocol below.
//! - [`MemoryStore`] and [`LocalKms`]: an in-memory store and software master keys, for
//!   development, embedding and tests. Neither is a production key store.
//!
//! # The get-or-create protocol
//!
//! [`KeyService::get_or_create`] for an id:
//!
//! 1. The id was validated when the [`KeyId`] was made (length and characters), before any I/O.
//! 2. Every KMS call below carries the encryption context `{"rkms:id": id}`, and from key
//!    version 2 on also `{"rkms:version": n}` ([`EncryptionContext::for_version`]).
//! 3. **Cache:** a key cached less than the TTL ago is returned at once; one asked for in the
//!    last tenth of its TTL is also refreshed once in the background. Concurrent misses for one
//!    id share a single fetch (one store read, one KMS call). A reader's fetch
//!    ([`KeyService::get_existing`]) never creates.
//! 4. **Read** the record with [`Store::get`].
//! 5. **Found:** decode it; an id pending deletion or deleted is refused here
//!    ([`ServiceError::PendingDeletion`], [`ServiceError::Deleted`]; one whose window has
//!    ended is also completed in the background). Decrypt a copy of the current version,
//!    starting with the best region: regions whose
//!    circuit breaker is open go last, then lower observed latency, then configured order. If
//!    that region has not answered within its hedge delay, the next one is asked too; a failure
//!    moves on at once. The first success wins; the other calls are cancelled. A region with an
//!    open breaker is still asked when no other is left, by one probe that concurrent callers
//!    share. A record that
//!    lacks a configured region's copy is repaired in the background. A record of the original
//!    Go RKMS (only as its store translated it, [`Stored::legacy`]) is decrypted with an empty
//!    context and upgraded in the background.
//! 6. **Absent:** call `generate_data_key` in the best region that answers, hedged as in step
//!    5; `encrypt` the key in every other region concurrently (regions with open breakers once
//!    the quorum cannot be had without them). Once `min_regions` copies exist (default 2),
//!    stragglers get [`ServiceOptions::straggler_wait`] more; regions still without a copy are listed in the
//!    record's `missing`. Fewer than `min_regions` copies: nothing is written, the call fails.
//! 7. **Store** the record with [`Store::put_if_absent`]. If this call created it, return the
//!    new key. If another caller created one first, drop the new key (it is zeroized and was
//!    never handed out) and unwrap the winner's record as in step 5.
//! 8. **Repair:** [`KeyService::repair`] adds missing copies when their regions answer again
//!    (and wraps again a copy under a master key its region no longer wraps with),
//!    by [`Store::compare_and_swap`] on the version it read; a lost race re-reads and retries.
//!    [`KeyService::run_repairer`] retries known gaps every `repair.interval` (backing off per
//!    id), and [`KeyService::repair_sweep`] walks the whole store. Repair calls KMS only when a
//!    region it needs may be called, and at most `repair.kms_calls_per_second`.
//!
//! # The lifecycle
//!
//! An id has versions 1, 2, ... (the last is current: what get-or-create answers) and a state
//! ([`KeyState`]): active, pending deletion until a time, or deleted (a tombstone). Each
//! change below reads the record, decides from its state, and writes it back by
//! [`Store::compare_and_swap`] on the version it read; a lost race reads again and decides
//! again (up to five times, then [`ServiceError::Conflict`]). The process that made a change
//! drops its cached key at once; other processes see it within their cache TTL, or at once
//! with [`LifecycleOptions::check_state_on_hit`]. A record of the original Go RKMS is
//! upgraded first, as repair does.
//!
//! - [`KeyService::rotate`]: makes version n+1 like a create (generate, wrap, the same
//!   quorum), then appends it if the record is still active at version n. A concurrent
//!   rotation that appended n+1 first makes this one [`ServiceError::Conflict`]: two
//!   rotations never make one version twice.
//! - [`KeyService::get_version`]: version n's key; never creates; refused like a read while
//!   the id is not active.
//! - [`KeyService::schedule_deletion`]: active → pending deletion at now +
//!   [`LifecycleOptions::deletion_window`]; again while pending keeps the first time.
//! - [`KeyService::restore`]: pending → active, before the window ends.
//! - [`KeyService::complete_deletion`]: once the window has ended, destroys every version's
//!   copies and leaves a tombstone. Run by the process that scheduled the deletion (its
//!   repairer), by any read after the window, and by every [`KeyService::repair_sweep`]. An
//!   id is deleted from the window's end on, whether or not its copies are destroyed yet;
//!   a restore racing the completion has one winner, by compare-and-set.
//! - [`KeyService::describe`], [`KeyService::list_keys`]: metadata, no KMS call.
//!
//! A tombstone is never replaced: creates use [`Store::put_if_absent`], which never
//! overwrites, so a deleted id is never silently created again with another key.
//!
//! # Guarantees
//!
//! - **First write wins.** Once any caller was handed a key for an id and version, every
//!   later caller, through any service sharing the store, gets the same key for it: records
//!   are only created by `put_if_absent`, a loser returns the winner's key, never its own, and
//!   every change (repair, rotation, deletion) is a compare-and-set that keeps the copies of
//!   every existing version or destroys them all.
//! - **No plaintext at rest.** The store holds only wrapped copies. [`DataKey`] is zeroized on
//!   drop (also when the cache evicts it) and prints as `[REDACTED]`.
//! - **Copies are bound to their id and region.** A copy moved under another id fails to
//!   decrypt (the context differs); a copy wrapped under a foreign master key is refused.
//!   The one exception is a record of the original Go RKMS, which only its store may hand
//!   over ([`Stored::legacy`]): nothing but the store key binds its copies, until it is
//!   upgraded. A key that changes under an id this process has cached is refused
//!   ([`ServiceError::KeyChanged`]).
//! - **Bounded failure.** Each KMS and store call has a timeout and the whole call a deadline
//!   ([`ServiceOptions`]); a region that keeps failing is asked last, by its circuit breaker.
//! - **A breaker never refuses on its own.** While enough regions answer, a request succeeds,
//!   however recently a region failed: open breakers order the regions, and a region is
//!   asked whenever no other can serve.
//!
//! # Failure cases
//!
//! - Some region holding a copy fails, times out or has an open breaker, and none succeeds:
//!   [`ServiceError::RegionsUnavailable`] (`Decrypt`); retry later. With a stale grace
//!   configured ([`CacheOptions::stale_grace`]), a key fetched within TTL + grace is served
//!   instead, marked [`IssuedKey::stale`]; likewise when the store is unavailable.
//! - Every region holding a copy answers and refuses it: [`ServiceError::IntegrityFailure`].
//!   The record was tampered with or damaged; it is never answered with a stale key.
//! - No region can generate, or fewer than `min_regions` hold a copy:
//!   `RegionsUnavailable` (`Generate` or `Wrap`) and nothing is written.
//! - The store fails or is slow: [`ServiceError::Store`] or [`ServiceError::StoreTimeout`].
//! - The stored bytes do not decode, or claim to be wrapped without context:
//!   [`ServiceError::CorruptRecord`]; other ids are unaffected.
//! - The record holds copies only for regions that are not configured:
//!   [`ServiceError::NoCopyForConfiguredRegions`].
//! - The id is pending deletion or deleted: [`ServiceError::PendingDeletion`] or
//!   [`ServiceError::Deleted`], never a stale key. An operation that never creates finds no
//!   record, or no such version: [`ServiceError::NotFound`], [`ServiceError::VersionNotFound`].
//!
//! Metrics are recorded through the `metrics` facade under the names in [`telemetry`].

mod cache;
mod context;
mod health;
mod id;
mod keyring_rotation;
mod kms;
mod list;
mod local_kms;
mod memory;
mod record;
mod redact;
mod secret;
mod service;
mod store;
pub mod telemetry;

pub use cache::CacheOptions;
pub use context::{EncryptionContext, ID_CONTEXT_KEY, VERSION_CONTEXT_KEY};
pub use health::{BreakerOptions, BreakerState};
pub use id::{InvalidId, KeyId, ID_PUNCTUATION, MAX_ID_LEN};
pub use kms::{GeneratedKey, Kms, KmsError};
pub use list::{listed_id, ListCursor, ListPage};
pub use local_kms::{KeyringError, LocalKeyring, LocalKms};
pub use memory::MemoryStore;
pub use record::{
    KeyState, KeyVersion, Record, RecordError, WrappedCopy, MAX_VERSIONS, RECORD_FORMAT,
};
pub use redact::redact_url_password;
pub use secret::DataKey;
pub use service::{
    BuildError, Clock, CopiesReport, HedgeOptions, IssuedKey, KeyInfo, KeyListing, KeyService,
    KeyServiceBuilder, KmsAction, LifecycleOptions, ListedKey, RegionCopies, RegionStatus,
    RepairOptions, RepairOutcome, RepairSweep, ServiceError, ServiceOptions, SweepSchedule,
    VersionInfo, MAX_DATA_KEY_LEN,
};
pub use store::{within_limit, PutOutcome, Store, StoreError, Stored, Version};
