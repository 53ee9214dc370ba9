//! The lifecycle model test: random sequences of key operations, some of them racing, by
//! several servers (each a `KeyService` on its own store connection) against a reference
//! model of what each id's state must be.
//!
//! A race runs two operations at once through two servers; it passes when the outcomes match
//! the model applied in one order or the other (or, for two rotations, one of them alone, the
//! other told to retry); the model keeps every state such orders leave. Every key handed out
//! for an id and version must be the same key, and no two versions of an id one key. One
//! server caches nothing, the others cache with `check_state_on_hit`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rkms_core::{
    CacheOptions, Clock, KeyId, KeyService, KeyState, Kms, LifecycleOptions, LocalKeyring,
    ServiceError, ServiceOptions, Store,
};

/// Ids per sequence: few, so that operations collide.
const IDS: u8 = 2;

/// Servers: each sequence step picks one (a race, two).
const ACTORS: usize = 3;

/// The deletion window, in seconds of the test's clock.
const WINDOW: u64 = 100;

#[derive(Debug, Clone, Copy)]
enum Call {
    GetOrCreate,
    GetExisting,
    GetVersion(u32),
    Rotate,
    Delete,
    Restore,
    Complete,
    Describe,
}

#[derive(Debug, Clone)]
enum Step {
    One(usize, Call, u8),
    Race((usize, Call, u8), (usize, Call, u8)),
    /// The clock moves past one deletion window.
    Tick,
}

fn call() -> impl Strategy<Value = Call> + Clone {
    prop_oneof![
        3 => Just(Call::GetOrCreate),
        1 => Just(Call::GetExisting),
        1 => (1u32..4).prop_map(Call::GetVersion),
        2 => Just(Call::Rotate),
        2 => Just(Call::Delete),
        2 => Just(Call::Restore),
        1 => Just(Call::Complete),
        1 => Just(Call::Describe),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let single = (0..ACTORS, call(), 0..IDS);
    prop_oneof![
        6 => single.clone().prop_map(|(a, c, i)| Step::One(a, c, i)),
        3 => (single.clone(), single)
            .prop_filter("a race is between two servers", |(a, b)| a.0 != b.0)
            .prop_map(|(a, b)| Step::Race(a, b)),
        1 => Just(Step::Tick),
    ]
}

/// Whether an id's copies are destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purged {
    No,
    /// A read found the window ended and completes the deletion in the background: it may
    /// have happened.
    Maybe,
    Yes,
}

/// What the model says an id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Absent,
    Live {
        versions: u32,
        state: KeyState,
        purged: Purged,
    },
}

/// An operation's outcome, without key material (keys are checked apart).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Key(u32),
    Absent,
    NotFound,
    VersionNotFound,
    Pending,
    Deleted,
    Conflict,
    Rotated(u32),
    State(&'static str),
    Completed(bool),
    Info(&'static str, usize, bool),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Model {
    now: u64,
    slots: [Slot; IDS as usize],
    /// Set by `apply_one` when the id's completion may have run in the background.
    maybe_completed: bool,
}

impl Model {
    fn state(&self, slot: u8) -> Option<(u32, KeyState, Purged)> {
        match self.slots[usize::from(slot)] {
            Slot::Absent => None,
            Slot::Live {
                versions,
                state,
                purged,
            } => Some((versions, state.at(self.now), purged)),
        }
    }

    /// Applies `call` to `slot`; returns what it may answer (one outcome, or two where a
    /// background completion may or may not have run).
    fn apply(&mut self, call: Call, slot: u8) -> Vec<Outcome> {
        let outcome = self.apply_one(call, slot);
        let Outcome::Info(state, versions, purged) = outcome else {
            return match outcome {
                Outcome::Completed(_) if self.maybe_completed => {
                    self.maybe_completed = false;
                    vec![Outcome::Completed(true), Outcome::Completed(false)]
                }
                other => vec![other],
            };
        };
        if self.maybe_completed {
            self.maybe_completed = false;
            return vec![
                Outcome::Info(state, versions, true),
                Outcome::Info(state, versions, false),
            ];
        }
        vec![Outcome::Info(state, versions, purged)]
    }

    fn apply_one(&mut self, call: Call, slot: u8) -> Outcome {
        let now = self.now;
        let refusal = |state: KeyState| match state {
            KeyState::PendingDeletion { .. } => Outcome::Pending,
            _ => Outcome::Deleted,
        };
        let Some((versions, state, purged)) = self.state(slot) else {
            return match call {
                Call::GetOrCreate => {
                    self.slots[usize::from(slot)] = Slot::Live {
                        versions: 1,
                        state: KeyState::Active,
                        purged: Purged::No,
                    };
                    Outcome::Key(1)
                }
                Call::GetExisting => Outcome::Absent,
                _ => Outcome::NotFound,
            };
        };
        let live = &mut self.slots[usize::from(slot)];
        let Slot::Live {
            versions: stored_versions,
            state: stored_state,
            purged: stored_purged,
        } = live
        else {
            unreachable!()
        };
        let active = state == KeyState::Active;
        self.maybe_completed = purged == Purged::Maybe;
        let deleted = matches!(state, KeyState::Deleted { .. });
        if deleted
            && purged == Purged::No
            && matches!(
                call,
                Call::GetOrCreate | Call::GetExisting | Call::GetVersion(_)
            )
        {
            *stored_purged = Purged::Maybe;
        }
        match call {
            Call::GetOrCreate | Call::GetExisting if active => Outcome::Key(versions),
            Call::GetVersion(v) if active && v <= versions => Outcome::Key(v),
            Call::GetVersion(_) if active => Outcome::VersionNotFound,
            Call::GetOrCreate | Call::GetExisting | Call::GetVersion(_) => refusal(state),
            Call::Rotate if active => {
                *stored_versions += 1;
                Outcome::Rotated(versions + 1)
            }
            Call::Rotate => refusal(state),
            Call::Delete if active => {
                *stored_state = KeyState::PendingDeletion {
                    deletion_time: now + WINDOW,
                };
                Outcome::State("pending_deletion")
            }
            Call::Delete => match state {
                KeyState::PendingDeletion { .. } => Outcome::State("pending_deletion"),
                _ => Outcome::Deleted,
            },
            Call::Restore => match state {
                KeyState::Active => Outcome::State("active"),
                KeyState::PendingDeletion { .. } => {
                    *stored_state = KeyState::Active;
                    Outcome::State("active")
                }
                KeyState::Deleted { .. } => Outcome::Deleted,
            },
            Call::Complete => {
                let due = deleted && purged != Purged::Yes;
                if due {
                    *stored_purged = Purged::Yes;
                    *stored_state = state;
                }
                Outcome::Completed(due)
            }
            Call::Describe => Outcome::Info(state.name(), versions as usize, purged == Purged::Yes),
        }
    }
}

/// Runs `call` through `service`; returns the outcome and any key handed out, by version.
async fn perform(service: &KeyService, call: Call, id: &KeyId) -> (Outcome, Option<Vec<u8>>) {
    let key = |issued: rkms_core::IssuedKey| {
        (
            Outcome::Key(issued.version),
            Some(issued.key.expose_secret().to_vec()),
        )
    };
    let result = match call {
        Call::GetOrCreate => service.get_or_create(id).await.map(key),
        Call::GetExisting => service
            .get_existing(id)
            .await
            .map(|found| found.map_or((Outcome::Absent, None), key)),
        Call::GetVersion(v) => service.get_version(id, v).await.map(key),
        Call::Rotate => service
            .rotate(id)
            .await
            .map(|v| (Outcome::Rotated(v), None)),
        Call::Delete => service
            .schedule_deletion(id)
            .await
            .map(|s| (Outcome::State(s.name()), None)),
        Call::Restore => service
            .restore(id)
            .await
            .map(|s| (Outcome::State(s.name()), None)),
        Call::Complete => service
            .complete_deletion(id)
            .await
            .map(|done| (Outcome::Completed(done), None)),
        Call::Describe => service.describe(id).await.map(|info| {
            let purged = info.versions.iter().all(|v| v.regions.is_empty());
            (
                Outcome::Info(info.state.name(), info.versions.len(), purged),
                None,
            )
        }),
    };
    result.unwrap_or_else(|e| {
        let outcome = match e.root() {
            ServiceError::NotFound { .. } => Outcome::NotFound,
            ServiceError::VersionNotFound { .. } => Outcome::VersionNotFound,
            ServiceError::PendingDeletion { .. } => Outcome::Pending,
            ServiceError::Deleted { .. } => Outcome::Deleted,
            ServiceError::Conflict { .. } => Outcome::Conflict,
            other => Outcome::Failed(other.to_string()),
        };
        (outcome, None)
    })
}

/// Every key handed out, by id slot and version: the first write wins, for good.
#[derive(Default)]
struct Keys(BTreeMap<(u8, u32), Vec<u8>>);

impl Keys {
    fn check(
        &mut self,
        slot: u8,
        outcome: &Outcome,
        key: Option<Vec<u8>>,
    ) -> Result<(), TestCaseError> {
        let (Outcome::Key(version), Some(key)) = (outcome, key) else {
            return Ok(());
        };
        if let Some(((_, other), _)) = self
            .0
            .iter()
            .find(|((s, v), k)| *s == slot && v != version && **k == key)
        {
            return Err(TestCaseError::fail(format!(
                "slot {slot} versions {other} and {version} were handed out as one key"
            )));
        }
        let known = self
            .0
            .entry((slot, *version))
            .or_insert_with(|| key.clone());
        if *known != key {
            return Err(TestCaseError::fail(format!(
                "slot {slot} version {version} was handed out as two different keys"
            )));
        }
        Ok(())
    }
}

struct Actors {
    services: Vec<KeyService>,
    now: Arc<AtomicU64>,
}

async fn run(actors: &Actors, sequence: usize, steps: &[Step]) -> Result<(), TestCaseError> {
    let id = |slot: u8| KeyId::parse(&format!("life{sequence}-{slot}")).expect("a valid id");
    // Every state the model may be in: two racing calls that both succeed in either order
    // (a deletion and a restore) leave the id in one of two states, known only later.
    let mut models = vec![Model {
        now: actors.now.load(Ordering::SeqCst),
        slots: [Slot::Absent; IDS as usize],
        maybe_completed: false,
    }];
    let mut keys = Keys::default();
    for step in steps {
        let before = models.clone();
        match *step {
            Step::Tick => {
                let now = actors.now.fetch_add(WINDOW, Ordering::SeqCst) + WINDOW;
                models.iter_mut().for_each(|m| m.now = now);
            }
            Step::One(actor, call, slot) => {
                let (outcome, key) = perform(&actors.services[actor], call, &id(slot)).await;
                models.retain_mut(|m| m.apply(call, slot).contains(&outcome));
                if models.is_empty() {
                    return Err(TestCaseError::fail(format!(
                        "{step:?}: got {outcome:?}, which no state the model allows explains: {before:?}"
                    )));
                }
                keys.check(slot, &outcome, key)?;
            }
            Step::Race((a, call_a, slot_a), (b, call_b, slot_b)) => {
                let (id_a, id_b) = (id(slot_a), id(slot_b));
                let ((got_a, key_a), (got_b, key_b)) = tokio::join!(
                    perform(&actors.services[a], call_a, &id_a),
                    perform(&actors.services[b], call_b, &id_b),
                );
                models = models
                    .iter()
                    .flat_map(|m| linearize(m, (call_a, slot_a, &got_a), (call_b, slot_b, &got_b)))
                    .collect();
                models.dedup();
                if models.is_empty() {
                    return Err(TestCaseError::fail(format!(
                        "{step:?}: got {got_a:?} and {got_b:?}, which no order of the two explains from {before:?}"
                    )));
                }
                keys.check(slot_a, &got_a, key_a)?;
                keys.check(slot_b, &got_b, key_b)?;
            }
        }
    }
    Ok(())
}

/// The models after two racing calls: each order of them (or, for two rotations, one alone,
/// the other told to retry) that explains both outcomes.
fn linearize(model: &Model, a: (Call, u8, &Outcome), b: (Call, u8, &Outcome)) -> Vec<Model> {
    let mut explained = Vec::new();
    for (first, second) in [(a, b), (b, a)] {
        let mut m = model.clone();
        if m.apply(first.0, first.1).contains(first.2)
            && m.apply(second.0, second.1).contains(second.2)
        {
            explained.push(m);
        }
        // Two rotations of one id: one may lose and be told to retry, changing nothing.
        let both_rotate = matches!((first.0, second.0), (Call::Rotate, Call::Rotate));
        if both_rotate && first.1 == second.1 && *second.2 == Outcome::Conflict {
            let mut m = model.clone();
            if m.apply(first.0, first.1).contains(first.2) {
                explained.push(m);
            }
        }
    }
    explained
}

/// Runs random sequences through three servers, each on its own connection to `connections`'
/// store, against the model; panics with the shrunk counterexample on a mismatch.
pub(crate) async fn check_lifecycle_against_model(connections: Vec<Arc<dyn Store>>) {
    let ring = LocalKeyring::generate(&["k1", "k2", "k3"]).expect("a keyring");
    let regions: Vec<Arc<dyn Kms>> = [("r1", "k1"), ("r2", "k2"), ("r3", "k3")]
        .iter()
        .map(|(region, key)| Arc::new(ring.region(region, key).expect("a region")) as Arc<dyn Kms>)
        .collect();
    let now = Arc::new(AtomicU64::new(1_800_000_000));
    // The first server caches nothing; the others cache keys and read the state on every hit,
    // so that every server sees every change at once and the cache's paths are in the test.
    let services = connections
        .into_iter()
        .enumerate()
        .map(|(actor, store)| {
            let clock = Arc::clone(&now);
            let options = ServiceOptions {
                cache: CacheOptions {
                    enabled: actor > 0,
                    ..CacheOptions::default()
                },
                lifecycle: LifecycleOptions {
                    deletion_window: Duration::from_secs(WINDOW),
                    check_state_on_hit: true,
                },
                clock: Clock::from_fn(move || clock.load(Ordering::SeqCst)),
                ..ServiceOptions::default()
            };
            regions
                .iter()
                .fold(KeyService::builder(store), |b, kms| {
                    b.region(Arc::clone(kms))
                })
                .options(options)
                .build()
                .expect("a service")
        })
        .collect();
    let actors = Arc::new(Actors { services, now });
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let config = Config {
            cases: 16,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        let sequence = AtomicUsize::new(0);
        let result = runner.run(&proptest::collection::vec(step(), 1..24), |steps| {
            let n = sequence.fetch_add(1, Ordering::Relaxed);
            handle.block_on(run(&actors, n, &steps))
        });
        if let Err(e) = result {
            panic!("the lifecycle departs from the model: {e}");
        }
    })
    .await
    .expect("the lifecycle model test ran");
}
