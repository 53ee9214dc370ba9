//! The `rkms-server` binary: command line, logging, start-up and graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use metrics_exporter_prometheus::PrometheusBuilder;
use rkms_core::{KeyService, LocalKeyring, Store};
use rkms_server::access::AppState;
use rkms_server::access::{self, Caller, KeyOperations};
use rkms_server::audit::{self, AuditLog, AuditTarget};
use rkms_server::auth::{self, Authenticator, TokenHash};
use rkms_server::backends::{self, build_service, open_store};
use rkms_server::config::{
    ConfigError, KmsSettings, LegacyRecords, LogFormat, NewToken, Settings, StoreSettings,
};
use rkms_server::legacy;
use rkms_server::limits::{Limits, LiveLimits};
use rkms_server::live::LiveService;
use rkms_server::reload::Reloader;
use rkms_server::render;
use rkms_server::routes::{app, health_app};
use rkms_server::serve::{check_open_file_limit, fit_open_file_limit, serve};
use rkms_server::telemetry;
use rkms_server::tls::TlsConfig;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Reliable Key Management Service: data keys kept wrapped in several KMS regions.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file. Without one, the server runs the embedded development default
    /// (SQLite and three local software KMS regions under --data-dir).
    #[arg(long, env = "RKMS_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address and port to listen on; overrides the configuration file. Port 0 picks a free port.
    #[arg(long, env = "RKMS_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory for the default SQLite file and keyring.
    #[arg(
        long,
        env = "RKMS_DATA_DIR",
        default_value = "./rkms-data",
        global = true
    )]
    data_dir: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Bearer token tools.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Items of the original Go RKMS (DynamoDB).
    Legacy {
        #[command(subcommand)]
        action: LegacyAction,
    },
    /// The configured regions' share of the store.
    Regions {
        #[command(subcommand)]
        action: RegionsAction,
    },
    /// The local KMS provider's master keys.
    Keyring {
        #[command(subcommand)]
        action: KeyringAction,
    },
    /// Loads and checks the configuration as start-up does, without serving, connecting or
    /// writing anything: prints the resolved settings (secrets redacted) and exits 0, or names
    /// the problems found and exits 2 (within the file itself, the first).
    CheckConfig,
    /// Key lifecycle operations on the configured store, as principal `local-admin`,
    /// audited like the HTTP API. Prints the HTTP API's JSON answer as the last line.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
}

#[derive(Debug, clap::Subcommand)]
enum RegionsAction {
    /// Walks the store and prints, per configured region, the records with a copy under its
    /// current key, under an old key, and without one; copies of regions no longer
    /// configured; and the records below `min_regions`. Exit 1 while any record is below.
    Status,
}

#[derive(Debug, clap::Subcommand)]
enum KeyringAction {
    /// Gives REGION a new master key in the keyring. Each server wraps under it from its next
    /// reload (SIGHUP) or start, and its repairer rewraps the region's copies; the old key
    /// stays for decrypting until `keyring retire`.
    Rotate {
        /// The region, as configured.
        region: String,
    },
    /// Removes REGION's previous master keys from the keyring, for good. Refused while any
    /// record still holds a copy under one of them (`regions status`, column "old key"):
    /// run it once every server has reloaded and the rewrap is done.
    Retire {
        /// The region, as configured.
        region: String,
    },
}

#[derive(Debug, clap::Subcommand)]
enum KeyAction {
    /// Makes a new current version of the id's key (older versions stay readable).
    Rotate {
        /// The key id.
        #[arg(long)]
        id: String,
    },
    /// Schedules the id's deletion after `[lifecycle] deletion_window_seconds`.
    Delete {
        /// The key id.
        #[arg(long)]
        id: String,
    },
    /// Cancels the id's scheduled deletion.
    Restore {
        /// The key id.
        #[arg(long)]
        id: String,
    },
    /// The id's state, versions and regions; never key material.
    Info {
        /// The key id.
        #[arg(long)]
        id: String,
    },
    /// Ids with their states, one page; pass the printed `next` as --after for the next.
    List {
        /// Only ids that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Where to go on (a previous page's `next`).
        #[arg(long)]
        after: Option<String>,
        /// Most ids on the page.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Debug, clap::Subcommand)]
enum LegacyAction {
    /// Wraps every legacy item's key again under its id's encryption context in every
    /// configured region and stores RKMS's own record beside the original's `keys`. Safe to
    /// rerun and to run while servers serve. Then set `legacy_records = "refuse"`.
    Upgrade {
        /// Only count the items that would be upgraded.
        #[arg(long)]
        dry_run: bool,
        /// KMS calls per second the upgrade may make (default: `[repair] kms_calls_per_second`).
        #[arg(long)]
        kms_calls_per_second: Option<u32>,
    },
}

#[derive(Debug, clap::Subcommand)]
enum TokenAction {
    /// Makes a random token: the token goes to its client, the hash into `token_sha256`.
    New,
    /// Reads a token from standard input and prints its hash for `token_sha256`; refuses
    /// tokens shorter than 32 characters.
    Hash,
}

#[derive(Debug, clap::Subcommand)]
enum AuditAction {
    /// Checks an audit log. With --public-key: exit 0 when signed checkpoints anchor every
    /// line, 1 at the first line that fails (broken chain, bad signature), 3 when some lines
    /// are not anchored yet. Without: only checks that the lines chain together (exit 0 or
    /// 1), which whoever can write the file can recompute.
    Verify {
        /// The audit log file.
        file: PathBuf,
        /// PEM public key whose checkpoints to check (`audit keygen` writes it); repeat for
        /// a file that spans a key change.
        #[arg(long = "public-key", value_name = "FILE")]
        public_keys: Vec<PathBuf>,
    },
    /// Makes a key pair for `[audit] signing_key`: the private key at FILE (mode 0600), the
    /// public key at FILE.pub, for `audit verify --public-key`.
    Keygen {
        /// Where to write the private key; neither it nor FILE.pub may exist.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// `audit verify`'s exit code when the chains hold and the signatures verify, but some
/// lines are not anchored by any checkpoint.
const UNANCHORED: u8 = 3;

/// Histogram buckets for call latencies, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

/// mimalloc instead of the C library's allocator: memory freed on another thread than the one
/// that allocated it (a request moved between workers, an audit batch written by another
/// request) is handed back without taking a lock shared by all threads (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Audit { action }) => return audit_command(action),
        Some(Command::Token { action }) => return token_command(action),
        Some(Command::CheckConfig) => return check_config(&cli),
        Some(
            Command::Legacy { .. }
            | Command::Key { .. }
            | Command::Regions { .. }
            | Command::Keyring { .. },
        )
        | None => {}
    }
    let mut settings = match &cli.config {
        Some(path) => match Settings::from_file(path, &cli.data_dir) {
            Ok(settings) => settings,
            Err(e) => {
                eprintln!("rkms-server: {e}");
                return ExitCode::from(2);
            }
        },
        None => Settings::development(&cli.data_dir),
    };
    if let Some(Command::Legacy {
        action:
            LegacyAction::Upgrade {
                dry_run,
                kms_calls_per_second,
            },
    }) = &cli.command
    {
        init_logging(&settings);
        return legacy_upgrade(settings, *dry_run, *kms_calls_per_second).await;
    }
    if let Some(Command::Regions {
        action: RegionsAction::Status,
    }) = &cli.command
    {
        init_logging(&settings);
        return regions_status(&settings).await;
    }
    if let Some(Command::Key { action }) = &cli.command {
        init_logging(&settings);
        return key_command(&settings, action).await;
    }
    if let Some(Command::Keyring { action }) = &cli.command {
        init_logging(&settings);
        return match keyring_command(&settings, action).await {
            Ok(said) => {
                println!("{said}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("rkms-server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(listen) = cli.listen {
        settings.listen = listen;
    }
    let exposure_warnings = match settings.check_exposure() {
        Ok(warnings) => warnings,
        Err(e) => {
            eprintln!("rkms-server: {e}");
            return ExitCode::from(2);
        }
    };
    settings.notices.extend(exposure_warnings);
    match settings.load_generated_tokens() {
        Ok(made) => made.iter().for_each(show_new_token),
        Err(e) => {
            eprintln!("rkms-server: {e}");
            return ExitCode::from(2);
        }
    }
    let store_pool = settings.store.pool_size();
    match fit_open_file_limit(&mut settings.limits, store_pool) {
        Ok(warning) => settings.notices.extend(warning),
        Err(e) => {
            eprintln!("rkms-server: {e}");
            return ExitCode::from(2);
        }
    }
    init_logging(&settings);
    let reload = ReloadSource {
        file: cli.config.clone().map(|path| (path, cli.data_dir.clone())),
        listen: cli.listen,
    };
    match run(settings, reload).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "rkms-server stopped");
            eprintln!("rkms-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `rkms-server check-config`: the checks start-up makes before it opens the store and the
/// regions, made without changing anything: existing token files and keyring are read, not
/// made; the audit log's place is checked, not opened; the open-file limit is computed as
/// start-up would raise it, not raised.
fn check_config(cli: &Cli) -> ExitCode {
    let loaded = match &cli.config {
        Some(path) => Settings::from_file(path, &cli.data_dir),
        None => Ok(Settings::development(&cli.data_dir)),
    };
    let mut settings = match loaded {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("rkms-server: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(listen) = cli.listen {
        settings.listen = listen;
    }
    let mut problems = Vec::new();
    match settings.check_exposure() {
        Ok(warnings) => settings.notices.extend(warnings),
        Err(e) => problems.push(e.to_string()),
    }
    if let Err(e) = backends::check_compiled_in(&settings.store, &settings.kms) {
        problems.push(e);
    }
    if let Some(tls) = &settings.tls {
        if let Err(e) = TlsConfig::load(tls.clone()) {
            problems.push(e.to_string());
        }
    }
    if let Some(path) = &settings.audit_signing_key {
        if let Err(e) = audit::SigningKey::load(path) {
            problems.push(format!("[audit] signing_key: {e}"));
        }
    }
    if let Err(e) = backends::check_keyring(&settings.kms, &settings.regions) {
        problems.push(e);
    }
    problems.extend(
        settings
            .check_generated_tokens()
            .iter()
            .map(ToString::to_string),
    );
    if let AuditTarget::File(path) = &settings.audit {
        if let Err(e) = audit::check_writable(path) {
            problems.push(format!("cannot open the audit log {}: {e}", path.display()));
        }
    }
    if let Err(e) = check_open_file_limit(&settings.limits, settings.store.pool_size()) {
        problems.push(e);
    }
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("rkms-server: {problem}");
        }
        return ExitCode::from(2);
    }
    for notice in &settings.notices {
        eprintln!("rkms-server: warning: {notice}");
    }
    // `Debug` of the settings redacts passwords in store URLs and shows token hashes only.
    println!("{settings:#?}");
    ExitCode::SUCCESS
}

fn token_command(action: &TokenAction) -> ExitCode {
    match action {
        TokenAction::New => {
            let token = auth::new_token();
            println!("token:        {}", token.as_str());
            println!("token_sha256: {}", TokenHash::of(&token).to_hex());
            ExitCode::SUCCESS
        }
        TokenAction::Hash => {
            let mut line = zeroize::Zeroizing::new(String::new());
            if let Err(e) = std::io::stdin().read_line(&mut line) {
                eprintln!("rkms-server: cannot read a token from standard input: {e}");
                return ExitCode::FAILURE;
            }
            let token = line.trim();
            if token.is_empty() {
                eprintln!("rkms-server: no token on standard input");
                return ExitCode::FAILURE;
            }
            if let Err(e) = auth::check_chosen_token(token) {
                eprintln!("rkms-server: {e}");
                return ExitCode::FAILURE;
            }
            println!("{}", TokenHash::of(token).to_hex());
            ExitCode::SUCCESS
        }
    }
}

/// Prints a token the server made, on standard error, where the operator starting it looks;
/// it is never shown again.
fn show_new_token(made: &NewToken) {
    eprintln!(
        "rkms-server: made a token for principal {:?}; it is shown only this once (its hash is \
         kept in {}; delete that file and restart for a new one):\n{}",
        made.principal,
        made.file.display(),
        made.token.as_str()
    );
}

/// `rkms-server legacy upgrade`: see [`rkms_server::legacy`].
async fn legacy_upgrade(
    mut settings: Settings,
    dry_run: bool,
    kms_calls_per_second: Option<u32>,
) -> ExitCode {
    // The command must read the items it upgrades, whatever serving is set to do with them.
    if let StoreSettings::DynamoDb { legacy_records, .. } = &mut settings.store {
        *legacy_records = LegacyRecords::Serve;
    }
    if let Some(rate) = kms_calls_per_second {
        settings.service.repair.kms_calls_per_second = rate;
    }
    let (store, service) = match open_service(&settings).await {
        Ok(opened) => opened,
        Err(e) => {
            eprintln!("rkms-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let concurrency = settings.service.repair.concurrency;
    let verb = if dry_run { "would upgrade" } else { "upgraded" };
    let result = legacy::upgrade(&store, &service, dry_run, concurrency, |s| {
        eprintln!(
            "scanned {}: {verb} {}, already current {}, failed {}",
            s.scanned,
            s.upgraded,
            s.already_current,
            s.failed.len()
        );
    })
    .await;
    match result {
        Ok(summary) => {
            for (id, reason) in &summary.failed {
                println!("failed {id}: {reason}");
            }
            println!(
                "{} items scanned: {verb} {}, already current {}, failed {}",
                summary.scanned,
                summary.upgraded,
                summary.already_current,
                summary.failed.len()
            );
            if summary.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("rkms-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `rkms-server key ...`: one lifecycle operation through the same checks, core calls and
/// audit lines as the HTTP API.
async fn key_command(settings: &Settings, action: &KeyAction) -> ExitCode {
    let opened = match (open_service(settings).await, open_audit(settings)) {
        (Ok((_, service)), Ok(audit)) => KeyOperations {
            service: Arc::new(service),
            audit: Some(audit),
        },
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("rkms-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let caller = Caller::local_admin();
    let parse = access::key_id;
    let answer = match action {
        KeyAction::Rotate { id } => match parse(id) {
            Ok(id) => opened
                .rotate(&caller, &id)
                .await
                .map(|v| render::rotated_body(&id, v)),
            Err(e) => Err(e),
        },
        KeyAction::Delete { id } => match parse(id) {
            Ok(id) => opened
                .delete(&caller, &id)
                .await
                .map(|s| render::state_body(&id, s)),
            Err(e) => Err(e),
        },
        KeyAction::Restore { id } => match parse(id) {
            Ok(id) => opened
                .restore(&caller, &id)
                .await
                .map(|s| render::state_body(&id, s)),
            Err(e) => Err(e),
        },
        KeyAction::Info { id } => match parse(id) {
            Ok(id) => opened
                .describe(&caller, &id)
                .await
                .map(|i| render::info_body(&i)),
            Err(e) => Err(e),
        },
        KeyAction::List {
            prefix,
            after,
            limit,
        } => opened
            .list(&caller, prefix, after.as_deref(), *limit)
            .await
            .map(|page| render::list_body(&page)),
    };
    if let Some(Err(e)) = match &opened.audit {
        Some(audit) => Some(audit.close().await),
        None => None,
    } {
        eprintln!("rkms-server: closing the audit log: {e}");
        return ExitCode::FAILURE;
    }
    match answer {
        Ok(body) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let (status, body) = e.status_and_body();
            eprintln!("rkms-server: {status}: {body}");
            ExitCode::FAILURE
        }
    }
}

/// `rkms-server regions status`: see [`rkms_core::KeyService::copies_report`].
async fn regions_status(settings: &Settings) -> ExitCode {
    let report = match open_service(settings).await {
        Ok((_, service)) => service.copies_report().await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            eprintln!("rkms-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "records: {} (deleted {}, unreadable {})",
        report.records, report.deleted, report.unreadable
    );
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>10}",
        "region", "current", "old key", "other key", "missing"
    );
    for region in &report.regions {
        println!(
            "{:<24} {:>10} {:>10} {:>10} {:>10}",
            region.region, region.current, region.old_key, region.other_key, region.missing
        );
    }
    for (region, copies) in &report.unconfigured {
        println!("copies of {region}, no longer configured: {copies}");
    }
    println!(
        "below quorum (fewer than {} current copies): {}",
        settings.service.min_regions, report.below_quorum
    );
    for id in &report.below_quorum_ids {
        println!("  {id}");
    }
    if report.below_quorum > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `rkms-server keyring rotate|retire REGION`: see [`LocalKeyring::rotate`] and
/// [`LocalKeyring::retire`]. Returns what to print.
async fn keyring_command(settings: &Settings, action: &KeyringAction) -> Result<String, String> {
    let KmsSettings::Local { keyring_path } = &settings.kms else {
        return Err("keyring commands are for the local KMS provider; with AWS KMS, change the                     region's key_ids and name the old key in previous_key_ids (README,                     \"Operating regions and master keys\")"
            .into());
    };
    let (KeyringAction::Rotate { region } | KeyringAction::Retire { region }) = action;
    let configured = settings
        .regions
        .iter()
        .find(|r| &r.name == region)
        .ok_or_else(|| format!("region {region:?} is not configured"))?;
    match action {
        KeyringAction::Rotate { .. } => {
            let name = LocalKeyring::rotate(keyring_path, region, &configured.key_id)
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "region {region}: new master key {name:?}. Each server wraps under it from its                  next reload (SIGHUP) or start, and rewraps the region's copies; then `keyring                  retire {region}` removes the old key"
            ))
        }
        KeyringAction::Retire { .. } => {
            // Read before the walk: only keys already previous then are checked, whatever a
            // rotation meanwhile adds.
            let before = LocalKeyring::open(keyring_path).map_err(|e| e.to_string())?;
            let checked = before.previous_keys(region).to_vec();
            let (_, service) = open_service(settings).await?;
            let report = service.copies_report().await.map_err(|e| e.to_string())?;
            let old = report
                .regions
                .iter()
                .find(|r| &r.region == region)
                .map_or(0, |r| r.old_key);
            if old > 0 || report.unreadable > 0 {
                return Err(format!(
                    "refused: {old} records still hold a copy of region {region} under a                      previous master key, and {} records are unreadable; wait for the rewrap                      (`regions status`) after every server has reloaded",
                    report.unreadable
                ));
            }
            let keep: Vec<&str> = settings
                .regions
                .iter()
                .filter(|r| &r.name != region)
                .map(|r| before.rotated_key(&r.name).unwrap_or(&r.key_id))
                .chain(
                    settings
                        .regions
                        .iter()
                        .flat_map(|r| r.previous_key_ids.iter().map(String::as_str)),
                )
                .collect();
            let retired = LocalKeyring::retire(keyring_path, region, &checked, &keep)
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "region {region}: retired master keys {retired:?} ({} records checked)",
                report.records
            ))
        }
    }
}

/// Opens the configured store and regions and builds the protocol over them.
async fn open_service(settings: &Settings) -> Result<(Arc<dyn Store>, KeyService), String> {
    let store = open_store(&settings.store).await?;
    let service = build_service(settings, &store, None).await?;
    Ok((store, service))
}

fn audit_command(action: &AuditAction) -> ExitCode {
    match action {
        AuditAction::Keygen { out } => match audit::generate_key_pair(out) {
            Ok((public, key)) => {
                println!(
                    "private key: {} (mode 0600; set [audit] signing_key to it)",
                    out.display()
                );
                println!(
                    "public key:  {} (key id {}; for audit verify --public-key)",
                    public.display(),
                    key.id()
                );
                print!("{}", key.public_pem());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("rkms-server: {e}");
                ExitCode::FAILURE
            }
        },
        AuditAction::Verify { file, public_keys } => {
            let keys = match public_keys
                .iter()
                .map(|path| audit::PublicKey::load(path))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(keys) => keys,
                Err(e) => {
                    eprintln!("rkms-server: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match audit::verify_signed(file, &keys) {
                Ok(report) => print_verified(file, &report, &keys),
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Prints what `audit verify` found in a log whose chains hold, saying what is proven and
/// what is not; returns the exit code.
fn print_verified(
    file: &std::path::Path,
    report: &audit::Verified,
    keys: &[audit::PublicKey],
) -> ExitCode {
    println!(
        "{}: {} lines, writers: {}; the chains are consistent",
        file.display(),
        report.lines,
        report.writers
    );
    let code = match &report.unanchored {
        None => {
            println!(
                "not proven: without --public-key this checks only that the lines chain \
                 together, which whoever can write the file can recompute ({} checkpoints \
                 not checked)",
                report.checkpoints
            );
            ExitCode::SUCCESS
        }
        Some(unanchored) => {
            let ids: Vec<&str> = keys.iter().map(audit::PublicKey::id).collect();
            match report.checkpoints {
                0 => println!(
                    "no checkpoints: nothing here is signed (written without [audit] \
                     signing_key, or the checkpoints were removed)"
                ),
                n => println!(
                    "checkpoints: {n}, every signature valid (keys {})",
                    ids.join(", ")
                ),
            }
            for range in unanchored {
                let writer = match range.writer.as_str() {
                    "" => "(unnamed)",
                    id => id,
                };
                println!(
                    "unanchored: {} lines of writer {writer}, lines {} to {}: no checkpoint \
                     covers them, so a change there is not detected",
                    range.lines, range.first, range.last
                );
            }
            if unanchored.is_empty() {
                println!("every line is anchored by a signed checkpoint");
                ExitCode::SUCCESS
            } else {
                ExitCode::from(UNANCHORED)
            }
        }
    };
    for line in &report.restarts {
        println!("line {line}: torn by a crash mid-write; the chains restart after it");
    }
    if report.torn_tail {
        println!(
            "the last line is incomplete: still being written, or torn by a crash (the next \
             server start completes it)"
        );
    }
    code
}

/// Logs go to stderr; `RUST_LOG`, when set, overrides `[logger] level`.
fn init_logging(settings: &Settings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match settings.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The configuration file and data directory SIGHUP re-reads, and `--listen`.
struct ReloadSource {
    file: Option<(PathBuf, PathBuf)>,
    listen: Option<SocketAddr>,
}

async fn run(settings: Settings, reload: ReloadSource) -> Result<(), String> {
    if settings.development_mode {
        warn!(
            "DEVELOPMENT MODE: no --config given; using the embedded default (SQLite store and three \
             local software KMS regions whose master keys sit unprotected in a keyring file). \
             Anyone who can reach the loopback address gets any key, without credentials. \
             Do not use this for real keys."
        );
    }
    for notice in &settings.notices {
        warn!("{notice}");
    }
    // Before the service is built, which exports its series from start.
    let metrics = PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| format!("cannot set up metrics: {e}"))?;
    telemetry::export_from_start();
    let upkeep = tokio::spawn(telemetry::keep_up(
        metrics.clone(),
        telemetry::UPKEEP_INTERVAL,
    ));
    let (store, service) = open_service(&settings).await?;
    let service = Arc::new(LiveService::new(service));
    let limits = LiveLimits::from(settings.limits.clone());
    let audit = open_audit(&settings)?;
    let checkpoints = tokio::spawn(Arc::clone(&audit).write_checkpoints());
    let state = AppState {
        service,
        metrics: Some(metrics),
        audit: Some(Arc::clone(&audit)),
        auth: Arc::new(
            Authenticator::new(&settings.principals)
                .failure_budget(settings.failed_auth_per_minute)
                .allowed_hosts(settings.allowed_hosts.clone()),
        ),
    };
    let auth = Arc::clone(&state.auth);
    let failure_reports = tokio::spawn(Arc::clone(&auth).report_failures());
    let tls = match &settings.tls {
        None => None,
        Some(tls) => Some(Arc::new(
            TlsConfig::load(tls.clone()).map_err(|e| e.to_string())?,
        )),
    };
    let tls_watcher = tls.clone().map(|tls| tokio::spawn(tls.watch()));
    // Registered before the server listens, so that no SIGHUP finds the default action (exit).
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot listen for SIGHUP: {e}"))?;
    let reloader = Reloader::start(
        store,
        Arc::clone(&state.service),
        auth,
        limits.clone(),
        reload.listen,
        settings.clone(),
    );
    let reloader = tokio::spawn(reload_on_hangup(
        hangup,
        reload.file,
        reloader,
        tls.clone(),
        Arc::clone(&audit),
    ));

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let regions: Vec<String> = settings.regions.iter().map(ToString::to_string).collect();
    let principals: Vec<&str> = settings
        .principals
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    info!(%addr, tls = tls.is_some(), key_path = %settings.key_path, ?regions, ?principals, "rkms-server listening");
    let health = match settings.health_listen {
        None => None,
        Some(at) => Some(serve_health(at, Arc::clone(&state.service), &settings.limits).await?),
    };
    let router = app(state, &settings.key_path, limits.clone());
    serve(listener, router, tls, limits, shutdown_signal()).await;
    if let Some((stop, served)) = health {
        let _ = stop.send(());
        let _ = served.await;
    }
    reloader.abort();
    failure_reports.abort();
    checkpoints.abort();
    upkeep.abort();
    if let Err(e) = audit.close().await {
        tracing::error!(error = %e, "cannot write the audit checkpoint at shutdown");
    }
    if let Some(watcher) = tls_watcher {
        watcher.abort();
    }
    info!("rkms-server stopped");
    Ok(())
}

/// Connections the health port takes at once: probes come from an orchestrator or a load
/// balancer, a handful at a time.
const HEALTH_CONNECTIONS: usize = 64;

/// Serves the probes alone on `at`, over plain HTTP (they hold no secret, and orchestrators
/// probe plain HTTP by default), until the returned sender fires.
async fn serve_health(
    at: std::net::SocketAddr,
    service: Arc<LiveService>,
    limits: &Limits,
) -> Result<
    (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ),
    String,
> {
    let listener = tokio::net::TcpListener::bind(at)
        .await
        .map_err(|e| format!("cannot listen on {at} (server.health_port): {e}"))?;
    info!(addr = %at, "health checks also served on their own port");
    let limits = Limits {
        max_connections: HEALTH_CONNECTIONS,
        max_connections_per_address: 0,
        ..limits.clone()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = health_app(service, limits.clone());
    let served = tokio::spawn(serve(listener, app, None, limits, async {
        let _ = stopped.await;
    }));
    Ok((stop, served))
}

/// Opens the audit log, with signed checkpoints when a signing key is configured.
fn open_audit(settings: &Settings) -> Result<Arc<AuditLog>, String> {
    let audit = AuditLog::open(&settings.audit, settings.audit_sync)
        .map_err(|e| format!("cannot open the audit log {:?}: {e}", settings.audit))?;
    let audit = match &settings.audit_signing_key {
        Some(path) => {
            let key =
                audit::SigningKey::load(path).map_err(|e| format!("[audit] signing_key: {e}"))?;
            info!(key_id = key.id(), "audit checkpoints are signed");
            audit.with_checkpoints(key, settings.audit_checkpoints)
        }
        None => {
            warn!(
                "the audit log has no [audit] signing_key: its hash chain shows accidental \
                 damage, but whoever can write the file can rewrite it and recompute the chain \
                 undetected"
            );
            audit
        }
    };
    Ok(Arc::new(audit))
}

/// On SIGHUP (as `systemctl reload` and logrotate send): reopens the audit log at its path,
/// re-reads the configuration file and puts it in force as one unit (see
/// [`rkms_server::reload`]), keeping everything as it was if the file is refused, and reloads
/// the TLS files.
async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    source: Option<(PathBuf, PathBuf)>,
    mut reloader: Reloader,
    tls: Option<Arc<TlsConfig>>,
    audit: Arc<AuditLog>,
) {
    while hangup.recv().await.is_some() {
        match audit.reopen() {
            Ok(()) => info!("SIGHUP: audit log reopened"),
            Err(e) => tracing::error!(
                error = %e,
                "SIGHUP: the audit log cannot be reopened; lines still go to the file open before"
            ),
        }
        match &source {
            None => info!("SIGHUP: the development default has no configuration file to re-read"),
            Some((path, data_dir)) => {
                let read = reread(path, data_dir).map_err(|e| e.to_string());
                let summary = match read {
                    Ok(settings) => {
                        let regions: Vec<String> =
                            settings.regions.iter().map(ToString::to_string).collect();
                        let principals: Vec<String> =
                            settings.principals.iter().map(|p| p.name.clone()).collect();
                        reloader
                            .apply(settings)
                            .await
                            .map(|done| (done, regions, principals))
                    }
                    Err(e) => Err(e),
                };
                match summary {
                    Ok((done, regions, principals)) => {
                        done.notices
                            .iter()
                            .for_each(|notice| warn!("SIGHUP: {notice}"));
                        info!(
                            ?regions,
                            ?principals,
                            regions_changed = done.regions_changed,
                            "SIGHUP: configuration reloaded"
                        );
                    }
                    Err(e) => tracing::error!(
                        error = %e,
                        "SIGHUP: the configuration file is refused; nothing changed"
                    ),
                }
            }
        }
        if let Some(tls) = &tls {
            tls.reload_and_log(true);
        }
    }
}

/// The configuration file as SIGHUP re-reads it, generated tokens included.
fn reread(path: &std::path::Path, data_dir: &std::path::Path) -> Result<Settings, ConfigError> {
    let mut settings = Settings::from_file(path, data_dir)?;
    settings
        .load_generated_tokens()?
        .iter()
        .for_each(show_new_token);
    Ok(settings)
}

/// Resolves on SIGINT or SIGTERM; in-flight requests then finish before the server exits.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => info!("SIGINT received; shutting down"),
        _ = terminate => info!("SIGTERM received; shutting down"),
    }
}
