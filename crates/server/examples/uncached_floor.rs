//! The floor under RKMS's uncached GET, for `scripts/load.py --floor`: the two calls an
//! uncached GET of an existing id makes, and nothing else. It opens the store and the KMS
//! regions from a server configuration file with the server's own code (`rkms_server::backends`,
//! so the same SDK clients with the same timeouts and retries), then for `--seconds` keeps
//! `--concurrency` tasks each reading a record (`Store::get`), decoding it and unwrapping its
//! current version's copy in the first region (`Kms::decrypt_under`), over the ids in `--ids`
//! in turn. No HTTP server, authentication, service, cache, hedging, breaker, metrics or audit
//! line: what remains is the store's and the KMS's clients, the network and the runtime.
//! Original Go RKMS items are read as the server reads them (wrapped without context).
//!
//! With `--plain` the same two calls go out without the AWS SDK: the same JSON requests
//! (DynamoDB `GetItem` with a consistent read, KMS `Decrypt` naming the key, with the context)
//! posted by a plain HTTP client (reqwest, over hyper like the SDK's own), the answers parsed
//! and decoded the same way, unsigned. So it runs against the emulators only (moto does not check
//! signatures, and the table must hold RKMS's own items); the difference between the two is the
//! SDK's own work. The plain client gives up after the KMS operation timeout, and never retries.
//!
//! Prints `floor calls=N seconds=S per_second=R cpu_us=C`, C the process's CPU time (user and
//! system, `CLOCK_PROCESS_CPUTIME_ID`) per read-and-unwrap.
//!
//! `cargo run --release -p rkms-server --features dynamodb --example uncached_floor --
//! --config FILE --ids FILE [--seconds N] [--concurrency N] [--plain]`

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rkms_core::{EncryptionContext, KeyId, Kms, Record, Store};
use rkms_server::backends;
use rkms_server::config::{KmsSettings, Settings, StoreSettings};
use rustix::time::{clock_gettime, ClockId};
use serde_json::{json, Value};

/// The server's allocator, so that both spend the same on the SDK's allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str =
    "usage: uncached_floor --config FILE --ids FILE [--seconds N] [--concurrency N] [--plain]";

/// How the two calls go out.
enum Calls {
    /// Through the server's store and KMS clients.
    Clients {
        store: Arc<dyn Store>,
        kms: Arc<dyn Kms>,
        region: String,
    },
    /// The same requests, unsigned, by a plain HTTP client.
    Plain {
        http: reqwest::Client,
        table: String,
        dynamodb: Endpoint,
        kms: Endpoint,
        key_id: String,
        region: String,
    },
}

/// An emulator's URL, and the region its requests name (moto reads it from the credential
/// scope in `Authorization`).
struct Endpoint {
    url: String,
    authorization: String,
}

impl Endpoint {
    fn new(url: Option<&str>, region: &str, service: &str) -> Result<Self, String> {
        Ok(Self {
            url: url
                .ok_or("--plain needs endpoint URLs (emulators)")?
                .to_owned(),
            authorization: format!(
                "AWS4-HMAC-SHA256 Credential=test/20260101/{region}/{service}/aws4_request, \
                 SignedHeaders=host, Signature=0"
            ),
        })
    }

    async fn post(
        &self,
        http: &reqwest::Client,
        content_type: &str,
        target: &str,
        body: &Value,
    ) -> Result<Value, String> {
        let response = http
            .post(&self.url)
            .header("content-type", content_type)
            .header("x-amz-target", target)
            .header("authorization", &self.authorization)
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{target}: {}", response.status()));
        }
        response.json().await.map_err(|e| e.to_string())
    }
}

/// `record`'s current copy in `region` and the context it was wrapped under, as the server
/// reads them (an original Go RKMS item, `legacy`, was wrapped without context).
fn current_copy<'r>(
    id: &KeyId,
    record: &'r Record,
    legacy: bool,
    region: &str,
) -> Result<(&'r [u8], EncryptionContext), String> {
    let version = record.current();
    let copy = version
        .copies
        .get(region)
        .ok_or_else(|| format!("{id} has no copy in {region}"))?;
    let context = if legacy {
        EncryptionContext::empty()
    } else {
        EncryptionContext::for_version(id, version.number)
    };
    Ok((&copy.ciphertext, context))
}

fn base64_field(value: &Value, pointer: &str) -> Result<Vec<u8>, String> {
    let text = value
        .pointer(pointer)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no {pointer} in the answer"))?;
    BASE64.decode(text).map_err(|e| e.to_string())
}

impl Calls {
    async fn open(settings: &Settings, plain: bool) -> Result<Self, String> {
        let first = &settings.regions[0];
        if !plain {
            let store = backends::open_store(&settings.store).await?;
            let regions =
                backends::open_regions(&settings.kms, &settings.regions, store.as_ref()).await?;
            return Ok(Self::Clients {
                store,
                kms: Arc::clone(&regions[0]),
                region: first.name.clone(),
            });
        }
        let (
            StoreSettings::DynamoDb {
                table_name,
                region,
                endpoint,
                ..
            },
            KmsSettings::Aws {
                operation_timeout, ..
            },
        ) = (&settings.store, &settings.kms)
        else {
            return Err("--plain needs the DynamoDB store and AWS KMS".into());
        };
        let http = reqwest::Client::builder()
            .timeout(*operation_timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self::Plain {
            http,
            table: table_name.clone(),
            dynamodb: Endpoint::new(endpoint.as_deref(), region, "dynamodb")?,
            kms: Endpoint::new(first.endpoint.as_deref(), &first.name, "kms")?,
            key_id: first.key_id.clone(),
            region: first.name.clone(),
        })
    }

    /// Reads `id`'s record and unwraps its current version in the first region.
    async fn read_and_unwrap(&self, id: &KeyId) -> Result<(), String> {
        match self {
            Self::Clients { store, kms, region } => {
                let stored = store
                    .get(id)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{id} has no record"))?;
                let record = Record::decode(&stored.bytes).map_err(|e| e.to_string())?;
                let (ciphertext, context) = current_copy(id, &record, stored.legacy, region)?;
                kms.decrypt_under(kms.master_key(), ciphertext, &context)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Self::Plain {
                http,
                table,
                dynamodb,
                kms,
                key_id,
                region,
            } => {
                let item = dynamodb
                    .post(
                        http,
                        "application/x-amz-json-1.0",
                        "DynamoDB_20120810.GetItem",
                        &json!({
                            "TableName": table,
                            "Key": { "id": { "S": id.as_str() } },
                            "ConsistentRead": true,
                        }),
                    )
                    .await?;
                // RKMS's own items only: the original Go RKMS's have no `record`.
                let record = Record::decode(&base64_field(&item, "/Item/record/B")?)
                    .map_err(|e| e.to_string())?;
                let (ciphertext, context) = current_copy(id, &record, false, region)?;
                let answer = kms
                    .post(
                        http,
                        "application/x-amz-json-1.1",
                        "TrentService.Decrypt",
                        &json!({
                            "CiphertextBlob": BASE64.encode(ciphertext),
                            "EncryptionContext": context.entries(),
                            "KeyId": key_id,
                        }),
                    )
                    .await?;
                base64_field(&answer, "/Plaintext")?;
            }
        }
        Ok(())
    }
}

fn cpu_time() -> Duration {
    let now = clock_gettime(ClockId::ProcessCPUTime);
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let (mut config, mut ids, mut seconds, mut concurrency, mut plain) =
        (None, None, 10u64, 8usize, false);
    while let Some(arg) = args.next() {
        if arg == "--plain" {
            plain = true;
            continue;
        }
        let value = args.next().ok_or(USAGE)?;
        match arg.as_str() {
            "--config" => config = Some(PathBuf::from(value)),
            "--ids" => ids = Some(value),
            "--seconds" => seconds = value.parse().map_err(|_| USAGE)?,
            "--concurrency" => concurrency = value.parse().map_err(|_| USAGE)?,
            _ => return Err(USAGE.into()),
        }
    }
    let config = config.ok_or(USAGE)?;
    let ids = std::fs::read_to_string(ids.ok_or(USAGE)?).map_err(|e| e.to_string())?;
    let ids: Vec<KeyId> = ids
        .lines()
        .map(|id| KeyId::parse(id).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    if ids.is_empty() || concurrency == 0 {
        return Err(USAGE.into());
    }

    let data_dir = config.parent().unwrap_or(Path::new("."));
    let settings = Settings::from_file(&config, data_dir).map_err(|e| e.to_string())?;
    let calls = Arc::new(Calls::open(&settings, plain).await?);
    let ids = Arc::new(ids);

    // Every id once, so that connections are open and credentials resolved before the count.
    for id in ids.iter() {
        calls.read_and_unwrap(id).await?;
    }

    let next = Arc::new(AtomicUsize::new(0));
    let (started, cpu_before) = (Instant::now(), cpu_time());
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (calls, ids, next) = (Arc::clone(&calls), Arc::clone(&ids), Arc::clone(&next));
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let id = &ids[next.fetch_add(1, Ordering::Relaxed) % ids.len()];
                    calls.read_and_unwrap(id).await?;
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    let (elapsed, cpu) = (started.elapsed(), cpu_time() - cpu_before);
    let calls = next.load(Ordering::Relaxed);
    println!(
        "floor calls={calls} seconds={:.2} per_second={:.0} cpu_us={:.1}",
        elapsed.as_secs_f64(),
        calls as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / calls.max(1) as f64,
    );
    Ok(())
}
