//! Listing pages through the table with DynamoDB's own cursor: each page is one Scan that reads
//! about a page of items, never a scan of the whole table.
//!
//! A metering proxy sits between the store and the endpoint (moto, whose every answer closes
//! its connection, so one connection carries one request) and counts Scan requests and the
//! items they read (`ScannedCount`, what DynamoDB bills read capacity for).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use rkms_conformance::unique_name;
use rkms_core::Store;
use rkms_store_dynamodb::{DynamoDbConfig, DynamoDbStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn endpoint() -> String {
    std::env::var("RKMS_TEST_DYNAMODB_ENDPOINT").expect(
        "RKMS_TEST_DYNAMODB_ENDPOINT is not set: start the test services with \
         `scripts/services.sh start && source .test-services/env` (or run scripts/test.sh)",
    )
}

/// Counts Scan requests and the items they read, on their way to the real endpoint.
struct ScanMeter {
    addr: SocketAddr,
    scans: Arc<AtomicU64>,
    scanned: Arc<AtomicU64>,
}

impl ScanMeter {
    async fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream.trim_start_matches("http://").parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let meter = Self {
            addr: listener.local_addr().unwrap(),
            scans: Arc::default(),
            scanned: Arc::default(),
        };
        let (scans, scanned) = (meter.scans.clone(), meter.scanned.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (scans, scanned) = (scans.clone(), scanned.clone());
                tokio::spawn(async move {
                    let _ = relay(client, upstream, &scans, &scanned).await;
                });
            }
        });
        meter
    }

    /// Scan requests and items read since the last call.
    fn take(&self) -> (u64, u64) {
        (
            self.scans.swap(0, Ordering::SeqCst),
            self.scanned.swap(0, Ordering::SeqCst),
        )
    }
}

/// Passes one request on and its answer back, counting it if it is a Scan.
async fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    scans: &AtomicU64,
    scanned: &AtomicU64,
) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let body_start = loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&request, b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..body_start]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|line| line.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    let length: usize = header("content-length:").map_or(0, |v| v.parse().unwrap());
    while request.len() < body_start + length {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(&request).await?;
    let mut response = Vec::new();
    server.read_to_end(&mut response).await?;
    if header("x-amz-target:").is_some_and(|t| t.ends_with(".scan")) {
        let body = find(&response, b"\r\n\r\n").map_or(&[][..], |i| &response[i + 4..]);
        let answer: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        scans.fetch_add(1, Ordering::SeqCst);
        scanned.fetch_add(
            answer["ScannedCount"].as_u64().unwrap_or(0),
            Ordering::SeqCst,
        );
    }
    client.write_all(&response).await?;
    client.shutdown().await
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn sdk_client() -> aws_sdk_dynamodb::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint())
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&sdk)
}

/// A fresh table holding `items` items whose records are `record_len` bytes each.
async fn filled_table(items: usize, record_len: usize) -> String {
    let table = unique_name("rkms_paging_");
    let mut config = DynamoDbConfig::new(&table, "us-east-1");
    config.endpoint = Some(endpoint());
    config.create_table = true;
    DynamoDbStore::open(&config).await.unwrap();
    let client = sdk_client().await;
    let ids: Vec<usize> = (0..items).collect();
    for batch in ids.chunks(25) {
        let writes = batch
            .iter()
            .map(|i| {
                let put = PutRequest::builder()
                    .item("id", AttributeValue::S(format!("id-{i:07}")))
                    .item("record", AttributeValue::B(vec![7; record_len].into()))
                    .item("version", AttributeValue::N("1".into()))
                    .build()
                    .unwrap();
                WriteRequest::builder().put_request(put).build()
            })
            .collect();
        let output = client
            .batch_write_item()
            .request_items(&table, writes)
            .send()
            .await
            .unwrap();
        assert!(output.unprocessed_items().is_none_or(|u| u.is_empty()));
    }
    table
}

async fn drop_table(table: &str) {
    sdk_client()
        .await
        .delete_table()
        .table_name(table)
        .send()
        .await
        .unwrap();
}

async fn open_through(meter: &ScanMeter, table: &str) -> DynamoDbStore {
    let mut config = DynamoDbConfig::new(table, "us-east-1");
    config.endpoint = Some(format!("http://{}", meter.addr));
    config.operation_timeout = Duration::from_secs(30);
    DynamoDbStore::open(&config).await.unwrap()
}

/// Cost of one page: Scan requests, items read, and time.
struct PageCost {
    ids: usize,
    scans: u64,
    scanned: u64,
    took: Duration,
}

/// Walks the whole table in pages of `limit`, metering each page.
async fn walk(store: &DynamoDbStore, meter: &ScanMeter, limit: usize) -> Vec<PageCost> {
    meter.take();
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let started = Instant::now();
        let page = store.list(after.as_ref(), limit).await.unwrap();
        let took = started.elapsed();
        let (scans, scanned) = meter.take();
        pages.push(PageCost {
            ids: page.ids.len(),
            scans,
            scanned,
            took,
        });
        match page.next {
            Some(next) => after = Some(next),
            None => return pages,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_page_is_one_scan_reading_about_a_page_not_the_table() {
    const ITEMS: usize = 200;
    const LIMIT: usize = 10;
    // 8 KiB records: the table is larger than DynamoDB's 1 MB per Scan answer.
    let table = filled_table(ITEMS, 8 * 1024).await;
    let meter = ScanMeter::start(&endpoint()).await;
    let store = open_through(&meter, &table).await;
    let pages = walk(&store, &meter, LIMIT).await;
    drop_table(&table).await;
    assert_eq!(pages.iter().map(|p| p.ids).sum::<usize>(), ITEMS);
    for (n, page) in pages.iter().enumerate() {
        assert!(
            page.scans <= 1 && page.scanned <= LIMIT as u64,
            "page {n} of {LIMIT} ids cost {} Scan requests reading {} items",
            page.scans,
            page.scanned
        );
    }
}

/// The figures in BENCHMARKS.md: `RKMS_BENCH_ITEMS` (default 4000) items of 1 KiB, walked in
/// pages of 100 (the repair sweep's page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run by hand with --ignored --nocapture"]
async fn measure_a_list_walk() {
    let items: usize = std::env::var("RKMS_BENCH_ITEMS").map_or(4000, |n| n.parse().unwrap());
    let table = filled_table(items, 1024).await;
    let meter = ScanMeter::start(&endpoint()).await;
    let store = open_through(&meter, &table).await;
    let started = Instant::now();
    let pages = walk(&store, &meter, 100).await;
    let total = started.elapsed();
    drop_table(&table).await;
    let mut times: Vec<Duration> = pages.iter().map(|p| p.took).collect();
    times.sort();
    let count = pages.len() as u64;
    println!(
        "{items} items, {count} pages in {total:.2?}: per page {:.1?} mean, {:.1?} median, \
         {:.1?} max; {:.2} Scan requests and {} items read per page",
        total / u32::try_from(count).unwrap(),
        times[times.len() / 2],
        times[times.len() - 1],
        pages.iter().map(|p| p.scans).sum::<u64>() as f64 / count as f64,
        pages.iter().map(|p| p.scanned).sum::<u64>() / count,
    );
}
