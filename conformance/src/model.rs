//! The model test: random operation sequences against a store and a reference model.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rkms_core::{KeyId, PutOutcome, Store, StoreError, Version};

/// Ids per sequence: few, so that operations collide.
const IDS: u8 = 3;

#[derive(Debug, Clone)]
enum Op {
    Get(u8),
    Put(u8, u8),
    CasCurrent(u8, u8),
    CasStale(u8, u8),
    Delete(u8),
    List,
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..IDS;
    prop_oneof![
        slot.clone().prop_map(Op::Get),
        (slot.clone(), any::<u8>()).prop_map(|(i, b)| Op::Put(i, b)),
        (slot.clone(), any::<u8>()).prop_map(|(i, b)| Op::CasCurrent(i, b)),
        (slot.clone(), any::<u8>()).prop_map(|(i, b)| Op::CasStale(i, b)),
        slot.prop_map(Op::Delete),
        Just(Op::List),
    ]
}

#[derive(Default)]
struct Model {
    records: BTreeMap<u8, (Vec<u8>, Version)>,
    /// Every version each slot has had, for stale compare-and-sets.
    history: BTreeMap<u8, Vec<Version>>,
}

fn bytes(seed: u8) -> Vec<u8> {
    vec![seed; usize::from(seed % 7) + 1]
}

fn check(condition: bool, message: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if condition {
        Ok(())
    } else {
        Err(TestCaseError::fail(message()))
    }
}

async fn run(store: &dyn Store, sequence: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let prefix = format!("m{sequence}-");
    let key = |slot: u8| KeyId::parse(&format!("{prefix}{slot}")).expect("valid id");
    let fail = |e: StoreError| TestCaseError::fail(format!("store error: {e}"));
    let mut model = Model::default();
    for op in ops {
        match *op {
            Op::Get(i) => {
                let real = store.get(&key(i)).await.map_err(fail)?;
                let real = real.map(|s| (s.bytes, s.version));
                check(real.as_ref() == model.records.get(&i), || {
                    format!("{op:?}: store {real:?}, model {:?}", model.records.get(&i))
                })?;
            }
            Op::Put(i, seed) => match (
                store
                    .put_if_absent(&key(i), bytes(seed))
                    .await
                    .map_err(fail)?,
                model.records.get(&i),
            ) {
                (PutOutcome::Created(version), None) => {
                    model.records.insert(i, (bytes(seed), version));
                    model.history.entry(i).or_default().push(version);
                }
                (PutOutcome::Exists(existing), Some((b, v))) => {
                    check(&existing.bytes == b && existing.version == *v, || {
                        format!("{op:?}: returned another record")
                    })?;
                }
                (outcome, expected) => {
                    return Err(TestCaseError::fail(format!(
                        "{op:?}: store {outcome:?}, model {expected:?}"
                    )))
                }
            },
            Op::CasCurrent(i, seed) => {
                let expected = model.records.get(&i).map(|(_, v)| *v);
                let version =
                    expected.or_else(|| model.history.get(&i).and_then(|h| h.last().copied()));
                let Some(version) = version else { continue };
                match (
                    store.compare_and_swap(&key(i), version, bytes(seed)).await,
                    expected,
                ) {
                    (Ok(new), Some(old)) => {
                        check(new != old, || format!("{op:?}: the version did not change"))?;
                        model.records.insert(i, (bytes(seed), new));
                        model.history.entry(i).or_default().push(new);
                    }
                    (Err(StoreError::PreconditionFailed { .. }), None) => {}
                    (result, expected) => {
                        return Err(TestCaseError::fail(format!(
                            "{op:?}: store {result:?}, model expected {expected:?}"
                        )))
                    }
                }
            }
            Op::CasStale(i, seed) => {
                let current = model.records.get(&i).map(|(_, v)| *v);
                let stale = model
                    .history
                    .get(&i)
                    .and_then(|h| h.iter().rev().find(|v| Some(**v) != current).copied());
                let Some(stale) = stale else { continue };
                let result = store.compare_and_swap(&key(i), stale, bytes(seed)).await;
                check(
                    matches!(result, Err(StoreError::PreconditionFailed { .. })),
                    || format!("{op:?}: a stale version gave {result:?}"),
                )?;
            }
            Op::Delete(i) => {
                let existed = store.delete(&key(i)).await.map_err(fail)?;
                check(existed == model.records.remove(&i).is_some(), || {
                    format!("{op:?}: store said existed={existed}")
                })?;
            }
            Op::List => {
                let page = store.list(None, 1000).await.map_err(fail)?;
                let mut real: Vec<KeyId> = page
                    .ids
                    .into_iter()
                    .filter(|k| k.as_str().starts_with(&prefix))
                    .collect();
                real.sort();
                let mut expected: Vec<KeyId> = model.records.keys().map(|i| key(*i)).collect();
                expected.sort();
                check(real == expected, || {
                    format!("{op:?}: store {real:?}, model {expected:?}")
                })?;
            }
        }
    }
    Ok(())
}

/// Runs random sequences (each on its own ids) against `store`; panics with the shrunk
/// counterexample on a mismatch.
pub(crate) async fn check_against_model(store: Arc<dyn Store>) {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let config = Config {
            cases: 24,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        let sequence = AtomicUsize::new(0);
        let result = runner.run(&proptest::collection::vec(op(), 1..32), |ops| {
            let n = sequence.fetch_add(1, Ordering::Relaxed);
            handle.block_on(run(&*store, n, &ops))
        });
        if let Err(e) = result {
            panic!("the store departs from the model: {e}");
        }
    })
    .await
    .expect("the model test ran");
}
