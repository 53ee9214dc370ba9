//! The Prometheus recorder keeps every histogram sample until a scrape or an upkeep folds it
//! into its buckets: a server nobody scrapes must still not grow by every request it answers.
//! Measured with dhat's heap statistics, in a test binary of its own so that nothing else
//! allocates meanwhile.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use rkms_server::telemetry::keep_up;

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// Bytes allocated and not yet freed, by anything in this process.
fn live_bytes() -> usize {
    dhat::HeapStats::get().curr_bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_samples_are_folded_into_buckets_without_a_scrape() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.01, 0.1, 1.0])
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();
    let seconds =
        metrics::with_local_recorder(&recorder, || metrics::histogram!("rkms_test_seconds"));
    let before = live_bytes();
    for _ in 0..500_000 {
        seconds.record(0.005);
    }
    let grown = live_bytes().saturating_sub(before);
    dhat::assert!(
        grown > 2_000_000,
        "half a million samples took only {grown} bytes"
    );

    let upkeep = tokio::spawn(keep_up(handle.clone(), Duration::from_millis(20)));
    let mut held = grown;
    for _ in 0..250 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Freed blocks wait for an epoch to pass; a recording moves it on.
        seconds.record(0.005);
        held = live_bytes().saturating_sub(before);
        if held < grown / 10 {
            break;
        }
    }
    upkeep.abort();
    dhat::assert!(
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
        count >= 500_000,
        "the samples were lost, not counted:\n{text}"
    );
}
