//! The core's hot paths: a cache hit (also with `check_state_on_hit`, a store read and a
//! record decode per hit), a cache miss (store read and one decrypt), and a create (generate,
//! two wraps, one conditional write), over MemoryStore and LocalKms.
//!
//! `cargo bench -p rkms-core`. The figures and the machine are in BENCHMARKS.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use rkms_core::{
    CacheOptions, KeyId, KeyService, Kms, LifecycleOptions, LocalKeyring, MemoryStore,
    ServiceOptions,
};

fn service(cache: bool) -> KeyService {
    service_checking(cache, false)
}

fn service_checking(cache: bool, check_state_on_hit: bool) -> KeyService {
    let ring = LocalKeyring::generate(&["k1", "k2", "k3"]).unwrap();
    let options = ServiceOptions {
        cache: CacheOptions {
            enabled: cache,
            ..CacheOptions::default()
        },
        lifecycle: LifecycleOptions {
            check_state_on_hit,
            ..LifecycleOptions::default()
        },
        ..ServiceOptions::default()
    };
    [("r1", "k1"), ("r2", "k2"), ("r3", "k3")]
        .iter()
        .fold(
            KeyService::builder(Arc::new(MemoryStore::new())),
            |b, (region, key)| {
                b.region(Arc::new(ring.region(region, key).unwrap()) as Arc<dyn Kms>)
            },
        )
        .options(options)
        .build()
        .unwrap()
}

fn hot_paths(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let id = KeyId::parse("bench").unwrap();

    let cached = service(true);
    runtime.block_on(cached.get_or_create(&id)).unwrap();
    c.bench_function("get_or_create/cache_hit", |b| {
        b.to_async(&runtime)
            .iter(|| async { cached.get_or_create(&id).await.unwrap() })
    });

    let checking = service_checking(true, true);
    runtime.block_on(checking.get_or_create(&id)).unwrap();
    c.bench_function("get_or_create/cache_hit_check_state_on_hit", |b| {
        b.to_async(&runtime)
            .iter(|| async { checking.get_or_create(&id).await.unwrap() })
    });

    let uncached = service(false);
    runtime.block_on(uncached.get_or_create(&id)).unwrap();
    c.bench_function("get_or_create/cache_miss", |b| {
        b.to_async(&runtime)
            .iter(|| async { uncached.get_or_create(&id).await.unwrap() })
    });

    let creator = service(false);
    let counter = AtomicU64::new(0);
    c.bench_function("get_or_create/create", |b| {
        b.to_async(&runtime).iter(|| async {
            let id =
                KeyId::parse(&format!("new-{}", counter.fetch_add(1, Ordering::Relaxed))).unwrap();
            creator.get_or_create(&id).await.unwrap()
        })
    });
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
