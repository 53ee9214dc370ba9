//! A region's master key changes (its `key_ids` entry): reads go on from the regions whose
//! copies are current, and repair wraps every version's old copy again under the new key,
//! replacing it only in the compare-and-set that stores the new one.

mod support;

use std::sync::Arc;

use rkms_core::{
    EncryptionContext, KeyId, KeyService, Kms, LocalKeyring, MemoryStore, Record, Store,
};
use support::{FaultyKms, Mode, Regions};

fn id(s: &str) -> KeyId {
    KeyId::parse(s).unwrap()
}

fn service(store: Arc<MemoryStore>, regions: &[Arc<FaultyKms>]) -> KeyService {
    service_removing(store, regions, &[])
}

/// A service whose configuration names `removed` as regions taken out.
fn service_removing(
    store: Arc<MemoryStore>,
    regions: &[Arc<FaultyKms>],
    removed: &[&str],
) -> KeyService {
    regions
        .iter()
        .fold(KeyService::builder(store), |b, kms| {
            b.region(Arc::clone(kms) as Arc<dyn Kms>)
        })
        .options(rkms_core::ServiceOptions {
            removed_regions: removed.iter().map(|r| (*r).to_owned()).collect(),
            ..Regions::options().fit_to(regions.len())
        })
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_changed_master_key_is_read_around_and_every_copy_is_rewrapped_under_it() {
    let ring = LocalKeyring::generate(&["k1", "k2", "k3", "k2-new"]).unwrap();
    let region = |name: &str, key: &str| FaultyKms::new(ring.region(name, key).unwrap());
    let store = Arc::new(MemoryStore::new());
    let before = service(
        store.clone(),
        &[region("r1", "k1"), region("r2", "k2"), region("r3", "k3")],
    );
    let ids: Vec<KeyId> = (0..5).map(|i| id(&format!("k{i}"))).collect();
    let mut keys = Vec::new();
    for key_id in &ids {
        let first = before.get_or_create(key_id).await.unwrap().key;
        before.rotate(key_id).await.unwrap();
        let second = before.get_or_create(key_id).await.unwrap().key;
        keys.push((first, second));
    }

    // r2 now wraps under k2-new, k2 named as previous; r1 is down, so a read must come from
    // r3, not from r2's copy under the old key.
    let (r1, r2, r3) = (
        region("r1", "k1"),
        FaultyKms::new(ring.region_with_previous("r2", "k2-new", &["k2"]).unwrap()),
        region("r3", "k3"),
    );
    r1.set(Mode::Failing);
    let after = service(store.clone(), &[r1.clone(), r2.clone(), r3.clone()]);
    for (key_id, (first, second)) in ids.iter().zip(&keys) {
        assert_eq!(&after.get_version(key_id, 1).await.unwrap().key, first);
        assert_eq!(&after.get_version(key_id, 2).await.unwrap().key, second);
    }
    assert_eq!(
        r2.calls(),
        0,
        "a copy under the old key is asked last, not before a current one"
    );

    r1.set(Mode::Healthy);
    let sweep = after.repair_sweep().await.unwrap();
    assert_eq!(sweep.repaired, ids.len(), "{sweep:?}");
    let new_r2 = ring.region("r2", "k2-new").unwrap();
    for (key_id, (first, second)) in ids.iter().zip(&keys) {
        let record = Record::decode(&store.get(key_id).await.unwrap().unwrap().bytes).unwrap();
        for (version, key) in record.versions.iter().zip([first, second]) {
            let copy = &version.copies["r2"];
            assert_eq!(copy.master_key, "k2-new");
            let context = EncryptionContext::for_version(key_id, version.number);
            assert_eq!(
                &new_r2.decrypt(&copy.ciphertext, &context).await.unwrap(),
                key
            );
            assert_eq!(version.copies["r1"].master_key, "k1", "current copies stay");
        }
    }
    assert_eq!(
        after.repair_sweep().await.unwrap().repaired,
        0,
        "nothing is left to rewrap"
    );
}

#[tokio::test]
async fn an_old_copy_stays_until_its_new_one_can_be_made() {
    let ring = LocalKeyring::generate(&["k1", "k2", "k2-new"]).unwrap();
    let region = |name: &str, key: &str| FaultyKms::new(ring.region(name, key).unwrap());
    let store = Arc::new(MemoryStore::new());
    let before = service(store.clone(), &[region("r1", "k1"), region("r2", "k2")]);
    let key = before.get_or_create(&id("a")).await.unwrap().key;

    let r2 = FaultyKms::new(ring.region_with_previous("r2", "k2-new", &["k2"]).unwrap());
    r2.set(Mode::Failing);
    let after = service(store.clone(), &[region("r1", "k1"), r2.clone()]);
    after.repair(&id("a")).await.unwrap();
    let record = Record::decode(&store.get(&id("a")).await.unwrap().unwrap().bytes).unwrap();
    assert_eq!(
        record.current().copies["r2"].master_key,
        "k2",
        "the old copy is kept while the region cannot wrap"
    );

    r2.set(Mode::Healthy);
    after.repair(&id("a")).await.unwrap();
    let record = Record::decode(&store.get(&id("a")).await.unwrap().unwrap().bytes).unwrap();
    assert_eq!(record.current().copies["r2"].master_key, "k2-new");
    assert_eq!(after.get_or_create(&id("a")).await.unwrap().key, key);
}

#[tokio::test]
async fn copies_under_previous_keys_are_read_and_rewrapped_when_every_region_changed_key() {
    let ring = LocalKeyring::generate(&["k1", "k2", "k1-new", "k2-new"]).unwrap();
    let store = Arc::new(MemoryStore::new());
    let before = service(
        store.clone(),
        &[
            FaultyKms::new(ring.region("r1", "k1").unwrap()),
            FaultyKms::new(ring.region("r2", "k2").unwrap()),
        ],
    );
    let first = before.get_or_create(&id("a")).await.unwrap().key;
    before.rotate(&id("a")).await.unwrap();
    let second = before.get_or_create(&id("a")).await.unwrap().key;

    // Every region has a new key: without the previous ones nothing can be read, and no
    // other key is handed out either.
    let new_only = service(
        store.clone(),
        &[
            FaultyKms::new(ring.region("r1", "k1-new").unwrap()),
            FaultyKms::new(ring.region("r2", "k2-new").unwrap()),
        ],
    );
    assert!(new_only.get_version(&id("a"), 1).await.is_err());

    let changing = service(
        store.clone(),
        &[
            FaultyKms::new(ring.region_with_previous("r1", "k1-new", &["k1"]).unwrap()),
            FaultyKms::new(ring.region_with_previous("r2", "k2-new", &["k2"]).unwrap()),
        ],
    );
    assert_eq!(changing.get_version(&id("a"), 1).await.unwrap().key, first);
    assert_eq!(changing.get_version(&id("a"), 2).await.unwrap().key, second);
    changing.repair_sweep().await.unwrap();

    assert_eq!(new_only.get_version(&id("a"), 1).await.unwrap().key, first);
    assert_eq!(new_only.get_or_create(&id("a")).await.unwrap().key, second);
    let record = Record::decode(&store.get(&id("a")).await.unwrap().unwrap().bytes).unwrap();
    for version in &record.versions {
        assert_eq!(version.copies["r1"].master_key, "k1-new");
        assert_eq!(version.copies["r2"].master_key, "k2-new");
    }
}

#[tokio::test]
async fn a_copy_naming_a_key_the_region_was_not_given_is_refused_unopened() {
    let ring = LocalKeyring::generate(&["k1", "planted"]).unwrap();
    let store = Arc::new(MemoryStore::new());
    let honest = service(
        store.clone(),
        &[FaultyKms::new(ring.region("r1", "k1").unwrap())],
    );
    honest.get_or_create(&id("a")).await.unwrap();

    // Whoever writes the store replaces the copy by one of a key they know, wrapped under
    // another key the KMS holds, and names that key in the record.
    let known = rkms_core::DataKey::new(vec![7; 32]);
    let planted = ring.region("r1", "planted").unwrap();
    let context = EncryptionContext::for_id(&id("a"));
    let stored = store.get(&id("a")).await.unwrap().unwrap();
    let mut record = Record::decode(&stored.bytes).unwrap();
    record.versions[0].copies.insert(
        "r1".into(),
        rkms_core::WrappedCopy {
            master_key: "planted".into(),
            ciphertext: planted.encrypt(&known, &context).await.unwrap(),
        },
    );
    store
        .compare_and_swap(&id("a"), stored.version, record.encode())
        .await
        .unwrap();
    let refused = honest.get_or_create(&id("a")).await;
    assert!(
        matches!(
            refused,
            Err(rkms_core::ServiceError::IntegrityFailure { .. })
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_removed_regions_copies_are_dropped_only_where_a_quorum_remains() {
    let ring = LocalKeyring::generate(&["k1", "k2", "k3"]).unwrap();
    let (r1, r2, r3) = (
        FaultyKms::new(ring.region("r1", "k1").unwrap()),
        FaultyKms::new(ring.region("r2", "k2").unwrap()),
        FaultyKms::new(ring.region("r3", "k3").unwrap()),
    );
    let store = Arc::new(MemoryStore::new());
    let all = service(store.clone(), &[r1.clone(), r2.clone(), r3.clone()]);
    let full = all.get_or_create(&id("full")).await.unwrap().key;
    all.rotate(&id("full")).await.unwrap();
    // Made while r2 was down: copies in r1 and r3 only.
    r2.set(Mode::Failing);
    let partial = all.get_or_create(&id("partial")).await.unwrap().key;
    r2.set(Mode::Healthy);

    // A server that merely lacks r3 (during a rolling change) leaves its copies alone.
    r2.set(Mode::Failing);
    let unaware = service(store.clone(), &[r1.clone(), r2.clone()]);
    unaware.repair_sweep().await.unwrap();
    assert!(
        Record::decode(&store.get(&id("full")).await.unwrap().unwrap().bytes)
            .unwrap()
            .current()
            .copies
            .contains_key("r3"),
        "only a region named as removed loses its copies"
    );

    // r3 is taken out; r2 is down when the sweep runs.
    let kept = service_removing(store.clone(), &[r1.clone(), r2.clone()], &["r3"]);
    r2.set(Mode::Failing);
    kept.repair_sweep().await.unwrap();
    let record = |name: &'static str| {
        let store = store.clone();
        async move { Record::decode(&store.get(&id(name)).await.unwrap().unwrap().bytes).unwrap() }
    };
    for version in &record("full").await.versions {
        assert_eq!(
            version.copies.keys().collect::<Vec<_>>(),
            ["r1", "r2"],
            "two current copies remain: r3's goes"
        );
    }
    assert!(
        record("partial").await.current().copies.contains_key("r3"),
        "only r1 holds a copy in a configured region: r3's stays"
    );
    assert_eq!(kept.get_version(&id("full"), 1).await.unwrap().key, full);

    // r2 answers again: the record gains its copy, and only then loses r3's (the sweep
    // leaves the id to its backoff after the failed try; its repair runs now).
    r2.set(Mode::Healthy);
    kept.repair(&id("partial")).await.unwrap();
    let now = record("partial").await;
    assert_eq!(
        now.current().copies.keys().collect::<Vec<_>>(),
        ["r1", "r2"]
    );
    assert_eq!(
        kept.get_or_create(&id("partial")).await.unwrap().key,
        partial
    );

    // Added back by mistake: nothing it still held was lost, and repair wraps the rest.
    let again = service(store.clone(), &[r1, r2, r3]);
    again.repair_sweep().await.unwrap();
    assert_eq!(
        again.get_or_create(&id("partial")).await.unwrap().key,
        partial
    );
    assert_eq!(record("partial").await.current().copies.len(), 3);
}

#[tokio::test]
async fn the_copies_report_shows_how_far_a_change_has_got() {
    let ring = LocalKeyring::generate(&["k1", "k2", "k3", "k2-new"]).unwrap();
    let region = |name: &str, key: &str| FaultyKms::new(ring.region(name, key).unwrap());
    let store = Arc::new(MemoryStore::new());
    let before = service(
        store.clone(),
        &[region("r1", "k1"), region("r2", "k2"), region("r3", "k3")],
    );
    for i in 0..4 {
        before.get_or_create(&id(&format!("k{i}"))).await.unwrap();
    }
    // r2 changes key, r3 leaves, r4 joins; r4 is down.
    let r4 = FaultyKms::new(ring.region("r4", "k1").unwrap());
    r4.set(Mode::Failing);
    let after = service_removing(
        store.clone(),
        &[
            region("r1", "k1"),
            FaultyKms::new(ring.region_with_previous("r2", "k2-new", &["k2"]).unwrap()),
            r4.clone(),
        ],
        &["r3"],
    );
    let report = after.copies_report().await.unwrap();
    assert_eq!(report.records, 4);
    let counts: Vec<(&str, usize, usize, usize)> = report
        .regions
        .iter()
        .map(|r| (r.region.as_str(), r.current, r.old_key, r.missing))
        .collect();
    assert_eq!(counts, [("r1", 4, 0, 0), ("r2", 0, 4, 0), ("r4", 0, 0, 4)]);
    assert_eq!(report.unconfigured.get("r3"), Some(&4));
    assert_eq!(report.below_quorum, 4, "r1 alone is current: below two");

    r4.set(Mode::Healthy);
    after.repair_sweep().await.unwrap();
    let report = after.copies_report().await.unwrap();
    let counts: Vec<(usize, usize, usize)> = report
        .regions
        .iter()
        .map(|r| (r.current, r.old_key, r.missing))
        .collect();
    assert_eq!(counts, [(4, 0, 0), (4, 0, 0), (4, 0, 0)]);
    assert!(report.unconfigured.is_empty(), "{:?}", report.unconfigured);
    assert_eq!(report.below_quorum, 0);
}

/// A region whose new key may wrap but not unwrap (a key policy without Decrypt), while its
/// previous key still decrypts.
#[derive(Debug)]
struct WrapOnly(rkms_core::LocalKms);

#[async_trait::async_trait]
impl Kms for WrapOnly {
    fn region(&self) -> &str {
        self.0.region()
    }
    fn master_key(&self) -> &str {
        self.0.master_key()
    }
    async fn generate_data_key(
        &self,
        len: usize,
        context: &EncryptionContext,
    ) -> Result<rkms_core::GeneratedKey, rkms_core::KmsError> {
        self.0.generate_data_key(len, context).await
    }
    async fn encrypt(
        &self,
        key: &rkms_core::DataKey,
        context: &EncryptionContext,
    ) -> Result<Vec<u8>, rkms_core::KmsError> {
        self.0.encrypt(key, context).await
    }
    async fn decrypt(
        &self,
        _: &[u8],
        _: &EncryptionContext,
    ) -> Result<rkms_core::DataKey, rkms_core::KmsError> {
        Err(rkms_core::KmsError::Refused {
            region: self.region().into(),
            message: "AccessDeniedException: not authorized to kms:Decrypt".into(),
        })
    }
    fn previous_master_keys(&self) -> &[String] {
        self.0.previous_master_keys()
    }
    async fn decrypt_under(
        &self,
        master_key: &str,
        ciphertext: &[u8],
        context: &EncryptionContext,
    ) -> Result<rkms_core::DataKey, rkms_core::KmsError> {
        if master_key == self.master_key() {
            return self.decrypt(ciphertext, context).await;
        }
        self.0.decrypt_under(master_key, ciphertext, context).await
    }
}

#[tokio::test]
async fn a_new_key_that_cannot_decrypt_never_replaces_a_readable_copy() {
    let ring = LocalKeyring::generate(&["k1", "k2", "k2-new"]).unwrap();
    let store = Arc::new(MemoryStore::new());
    let before = service(
        store.clone(),
        &[
            FaultyKms::new(ring.region("r1", "k1").unwrap()),
            FaultyKms::new(ring.region("r2", "k2").unwrap()),
        ],
    );
    let key = before.get_or_create(&id("a")).await.unwrap().key;
    let after = KeyService::builder(store.clone())
        .region(Arc::new(ring.region("r1", "k1").unwrap()))
        .region(Arc::new(WrapOnly(
            ring.region_with_previous("r2", "k2-new", &["k2"]).unwrap(),
        )))
        .options(Regions::options())
        .build()
        .unwrap();
    after.repair(&id("a")).await.unwrap();
    let record = Record::decode(&store.get(&id("a")).await.unwrap().unwrap().bytes).unwrap();
    assert_eq!(
        record.current().copies["r2"].master_key,
        "k2",
        "the readable copy stays"
    );
    assert_eq!(after.get_or_create(&id("a")).await.unwrap().key, key);
}

#[tokio::test]
async fn a_version_that_fails_its_integrity_check_does_not_keep_the_others_from_repair() {
    let ring = LocalKeyring::generate(&["k1", "k2", "k3", "k4"]).unwrap();
    let region = |name: &str, key: &str| FaultyKms::new(ring.region(name, key).unwrap());
    let three = [region("r1", "k1"), region("r2", "k2"), region("r3", "k3")];
    let store = Arc::new(MemoryStore::new());
    let before = service(store.clone(), &three);
    before.get_or_create(&id("x")).await.unwrap();
    before.rotate(&id("x")).await.unwrap();
    let second = before.get_or_create(&id("x")).await.unwrap().key;
    before.get_or_create(&id("y")).await.unwrap();

    // Version 1 of x now holds y's copies: every region refuses them for x.
    let stored = store.get(&id("x")).await.unwrap().unwrap();
    let mut x = Record::decode(&stored.bytes).unwrap();
    let y = Record::decode(&store.get(&id("y")).await.unwrap().unwrap().bytes).unwrap();
    x.versions[0].copies = y.versions[0].copies.clone();
    store
        .compare_and_swap(&id("x"), stored.version, x.encode())
        .await
        .unwrap();

    // A fourth region joins: version 2 gains its copy although version 1 cannot be read.
    let four = [
        three[0].clone(),
        three[1].clone(),
        three[2].clone(),
        region("r4", "k4"),
    ];
    let after = service(store.clone(), &four);
    let outcome = after.repair(&id("x")).await.unwrap();
    assert!(
        matches!(&outcome, rkms_core::RepairOutcome::Repaired { added, still_missing, .. }
            if added == &["r4"] && still_missing == &["r4"]),
        "{outcome:?}"
    );
    let repaired = Record::decode(&store.get(&id("x")).await.unwrap().unwrap().bytes).unwrap();
    assert!(repaired.versions[1].copies.contains_key("r4"));
    assert!(!repaired.versions[0].copies.contains_key("r4"));
    assert_eq!(after.get_or_create(&id("x")).await.unwrap().key, second);
}

#[tokio::test]
async fn a_version_no_region_can_read_keeps_its_removed_regions_copy() {
    let ring = LocalKeyring::generate(&["k1", "k2", "k3", "k4"]).unwrap();
    let region = |name: &str, key: &str| FaultyKms::new(ring.region(name, key).unwrap());
    let (r1, r2, r3) = (region("r1", "k1"), region("r2", "k2"), region("r3", "k3"));
    let store = Arc::new(MemoryStore::new());
    let before = service(store.clone(), &[r1.clone(), r2.clone(), r3]);
    let first = before.get_or_create(&id("x")).await.unwrap().key;
    before.rotate(&id("x")).await.unwrap();
    before.get_or_create(&id("y")).await.unwrap();

    // Version 1's copies in r1 and r2 are y's: only r3's copy of it is good.
    let stored = store.get(&id("x")).await.unwrap().unwrap();
    let mut x = Record::decode(&stored.bytes).unwrap();
    let y = Record::decode(&store.get(&id("y")).await.unwrap().unwrap().bytes).unwrap();
    for name in ["r1", "r2"] {
        x.versions[0]
            .copies
            .insert(name.into(), y.versions[0].copies[name].clone());
    }
    store
        .compare_and_swap(&id("x"), stored.version, x.encode())
        .await
        .unwrap();

    // r3 leaves, r4 joins: version 2 gains r4's copy and drops r3's; version 1 keeps r3's.
    let after = service_removing(store.clone(), &[r1, r2, region("r4", "k4")], &["r3"]);
    after.repair(&id("x")).await.unwrap();
    let repaired = Record::decode(&store.get(&id("x")).await.unwrap().unwrap().bytes).unwrap();
    assert!(repaired.versions[1].copies.contains_key("r4"));
    assert!(!repaired.versions[1].copies.contains_key("r3"));
    assert!(
        repaired.versions[0].copies.contains_key("r3"),
        "the one good copy of version 1 is kept"
    );
    let r3_back = region("r3", "k3");
    let reader = service(store.clone(), &[r3_back]);
    assert_eq!(reader.get_version(&id("x"), 1).await.unwrap().key, first);
}
