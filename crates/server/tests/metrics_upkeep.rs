//! The Prometheus recorder keeps every histogram sample until a scrape or an upkeep folds it
//! into its buckets: a server nobody scrapes must still not grow by every request it answers.
//! Measured with a counting allocator, in a test binary of its own so that nothing else
//! allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use rkms_server::telemetry::keep_up;

/// Bytes allocated and not yet freed, by anything in this process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is passed on to the system allocator unchanged; only a count is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_samples_are_folded_into_buckets_without_a_scrape() {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.01, 0.1, 1.0])
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();
    let seconds =
        metrics::with_local_recorder(&recorder, || metrics::histogram!("rkms_test_seconds"));
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..1_000_000 {
        seconds.record(0.005);
    }
    let grown = LIVE.load(Ordering::Relaxed) - before;
    assert!(
        grown > 4_000_000,
        "a million samples took only {grown} bytes"
    );

    let upkeep = tokio::spawn(keep_up(handle.clone(), Duration::from_millis(20)));
    let mut held = grown;
    for _ in 0..250 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Freed blocks wait for an epoch to pass; a recording moves it on.
        seconds.record(0.005);
        held = LIVE.load(Ordering::Relaxed) - before;
        if held < grown / 10 {
            break;
        }
    }
    upkeep.abort();
    assert!(
        held < grown / 10,
        "{held} of the samples' {grown} bytes still held after 5 s of upkeep"
    );
    let text = handle.render();
    let count: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("rkms_test_seconds_count "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        count >= 1_000_000,
        "the samples were lost, not counted:\n{text}"
    );
}
