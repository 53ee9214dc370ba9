//! The order of safety when regions and master keys change (proptest): random sequences of
//! configuration changes (regions added and removed, a region's key changed, old keys named
//! or not), region failures, creates, rotations, reads and repairs, over MemoryStore. After
//! every step, every id still decrypts to its one key per version. Each change builds the
//! next service as a reload does, the successor of the one before (its cache, breakers and
//! pending repairs carried over). Repairs spawned by reads
//! run on in the background under the configuration they started with, as servers with
//! different configurations do during a rolling change.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use rkms_core::{KeyId, KeyService, Kms, LocalKeyring, MemoryStore, Record, Store};
use support::{FaultyKms, Mode, Regions};

const REGIONS: [&str; 3] = ["r1", "r2", "r3"];
const IDS: u8 = 3;

/// Which regions are configured, under which of their two keys, and whether the other key
/// is named as previous.
#[derive(Debug, Clone, Copy)]
struct Config {
    present: [bool; 3],
    new_key: [bool; 3],
    previous_named: bool,
}

impl Config {
    fn key(&self, region: usize) -> String {
        key_name(region, self.new_key[region])
    }
}

fn key_name(region: usize, new: bool) -> String {
    format!("{}{}", REGIONS[region], if new { "-new" } else { "" })
}

#[derive(Debug, Clone)]
enum Op {
    Configure(Config),
    Toggle(usize),
    Create(u8),
    Rotate(u8),
    Get(u8),
    Repair(u8),
    Sweep,
}

fn config() -> impl Strategy<Value = Config> {
    // Few regions configured at once more often: that is where a drop could go wrong.
    (
        prop_oneof![
            Just([true, false, false]),
            Just([false, true, false]),
            any::<[bool; 3]>(),
        ],
        any::<[bool; 3]>(),
        any::<bool>(),
    )
        .prop_filter("at least one region", |(present, _, _)| {
            present.iter().any(|p| *p)
        })
        .prop_map(|(present, new_key, previous_named)| Config {
            present,
            new_key,
            previous_named,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => config().prop_map(Op::Configure),
        3 => (0..3usize).prop_map(Op::Toggle),
        3 => (0..IDS).prop_map(Op::Create),
        2 => (0..IDS).prop_map(Op::Rotate),
        2 => (0..IDS).prop_map(Op::Get),
        3 => (0..IDS).prop_map(Op::Repair),
        2 => Just(Op::Sweep),
    ]
}

struct World {
    ring: LocalKeyring,
    store: Arc<MemoryStore>,
    down: [bool; 3],
    config: Config,
    /// Every key handed out, by id and version.
    keys: BTreeMap<(u8, u32), Vec<u8>>,
}

fn id(slot: u8) -> KeyId {
    KeyId::parse(&format!("id-{slot}")).unwrap()
}

impl World {
    /// A service as the current configuration builds it, its regions failing as told; the
    /// successor of `previous` when given, as a reload builds it.
    fn service(&self, previous: Option<&KeyService>) -> KeyService {
        let regions: Vec<Arc<FaultyKms>> = (0..3)
            .filter(|r| self.config.present[*r])
            .map(|r| {
                let previous = key_name(r, !self.config.new_key[r]);
                let previous: Vec<&str> = if self.config.previous_named {
                    vec![&previous]
                } else {
                    Vec::new()
                };
                let kms = FaultyKms::new(
                    self.ring
                        .region_with_previous(REGIONS[r], &self.config.key(r), &previous)
                        .unwrap(),
                );
                if self.down[r] {
                    kms.set(Mode::Failing);
                }
                kms
            })
            .collect();
        let count = regions.len();
        let builder = regions
            .into_iter()
            .fold(KeyService::builder(self.store.clone()), |b, kms| {
                b.region(kms as Arc<dyn Kms>)
            });
        match previous {
            Some(previous) => builder.succeeding(previous),
            None => builder,
        }
        .options(rkms_core::ServiceOptions {
            removed_regions: (0..3)
                .filter(|r| !self.config.present[*r])
                .map(|r| REGIONS[r].to_owned())
                .collect(),
            ..Regions::options().fit_to(count)
        })
        .build()
        .unwrap()
    }

    /// Every region, healthy, able to decrypt under both of its keys: what the store holds
    /// must always be readable by it.
    fn oracle(&self) -> KeyService {
        REGIONS
            .iter()
            .enumerate()
            .fold(KeyService::builder(self.store.clone()), |b, (r, region)| {
                let previous = key_name(r, true);
                let kms = self
                    .ring
                    .region_with_previous(region, &key_name(r, false), &[&previous])
                    .unwrap();
                b.region(Arc::new(kms) as Arc<dyn Kms>)
            })
            .options(Regions::options())
            .build()
            .unwrap()
    }

    async fn record(&self, slot: u8) -> Option<Record> {
        let stored = self.store.get(&id(slot)).await.unwrap()?;
        Some(Record::decode(&stored.bytes).unwrap())
    }

    fn remember(&mut self, slot: u8, version: u32, key: &[u8]) -> Result<(), TestCaseError> {
        let known = self
            .keys
            .entry((slot, version))
            .or_insert_with(|| key.to_vec());
        prop_assert_eq!(
            &known[..],
            key,
            "id {} version {} changed key",
            slot,
            version
        );
        Ok(())
    }

    /// Every id decrypts, through the oracle, to its one key per version.
    async fn check(&mut self) -> Result<(), TestCaseError> {
        let oracle = self.oracle();
        for slot in 0..IDS {
            let Some(record) = self.record(slot).await else {
                continue;
            };
            for version in &record.versions {
                let issued = oracle.get_version(&id(slot), version.number).await;
                let issued = issued.map_err(|e| {
                    TestCaseError::fail(format!(
                        "id {slot} version {} no longer decrypts: {e}; copies {:?}",
                        version.number,
                        version
                            .copies
                            .iter()
                            .map(|(r, c)| format!("{r}:{}", c.master_key))
                            .collect::<Vec<_>>()
                    ))
                })?;
                self.remember(slot, version.number, issued.key.expose_secret())?;
            }
        }
        Ok(())
    }
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut world = World {
        ring: LocalKeyring::generate(&["r1", "r2", "r3", "r1-new", "r2-new", "r3-new"]).unwrap(),
        store: Arc::new(MemoryStore::new()),
        down: [false; 3],
        config: Config {
            present: [true; 3],
            new_key: [false; 3],
            previous_named: false,
        },
        keys: BTreeMap::new(),
    };
    let mut service = world.service(None);
    for op in ops {
        match op {
            Op::Configure(config) => {
                world.config = config;
                service = world.service(Some(&service));
            }
            Op::Toggle(region) => {
                world.down[region] = !world.down[region];
                service = world.service(Some(&service));
            }
            Op::Create(slot) | Op::Get(slot) => {
                let issued = if matches!(op, Op::Create(_)) {
                    service.get_or_create(&id(slot)).await.map(Some)
                } else {
                    service.get_existing(&id(slot)).await
                };
                if let Ok(Some(issued)) = issued {
                    world.remember(slot, issued.version, issued.key.expose_secret())?;
                }
            }
            Op::Rotate(slot) => drop(service.rotate(&id(slot)).await),
            Op::Repair(slot) => drop(service.repair(&id(slot)).await),
            Op::Sweep => drop(service.repair_sweep().await),
        }
        world.check().await?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_id_keeps_its_one_key_through_region_and_key_changes(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run(ops))?;
    }
}
