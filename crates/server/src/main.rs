//! The `rkms-server` binary: command line, logging, start-up and graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use metrics_exporter_prometheus::PrometheusBuilder;
use rkms_core::KeyService;
use rkms_server::audit::{self, AuditLog};
use rkms_server::backends::{open_regions, open_store};
use rkms_server::config::{LogFormat, Settings};
use rkms_server::routes::{app, AppState};
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
    #[arg(long, env = "RKMS_CONFIG")]
    config: Option<PathBuf>,
    /// Address and port to listen on; overrides the configuration file. Port 0 picks a free port.
    #[arg(long, env = "RKMS_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory for the default SQLite file and keyring.
    #[arg(long, env = "RKMS_DATA_DIR", default_value = "./rkms-data")]
    data_dir: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
}

#[derive(Debug, clap::Subcommand)]
enum AuditAction {
    /// Checks an audit log's hash chain: exit 0 if intact, 1 at the first broken line.
    Verify {
        /// The audit log file.
        file: PathBuf,
    },
}

/// Histogram buckets for call latencies, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Audit {
        action: AuditAction::Verify { file },
    }) = &cli.command
    {
        return match audit::verify(file) {
            Ok(lines) => {
                println!("{}: {lines} lines, chain intact", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::FAILURE
            }
        };
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
    if let Some(listen) = cli.listen {
        settings.listen = listen;
    }
    init_logging(&settings);
    match run(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "rkms-server stopped");
            eprintln!("rkms-server: {e}");
            ExitCode::FAILURE
        }
    }
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

async fn run(settings: Settings) -> Result<(), String> {
    if settings.development_mode {
        warn!(
            "DEVELOPMENT MODE: no --config given; using the embedded default (SQLite store and three \
             local software KMS regions whose master keys sit unprotected in a keyring file). \
             Do not use this for real keys."
        );
    }
    for notice in &settings.notices {
        warn!("{notice}");
    }
    let store = open_store(&settings.store).await?;
    let regions = open_regions(&settings.kms, &settings.regions).await?;
    if regions.len() < 2 {
        warn!("only one KMS region is configured: keys are unavailable whenever it is");
    }
    let service = regions
        .into_iter()
        .fold(KeyService::builder(store), |builder, kms| {
            builder.region(kms)
        })
        .options(settings.service.clone())
        .build()
        .map_err(|e| format!("invalid service settings: {e}"))?;
    let metrics = PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| format!("cannot set up metrics: {e}"))?;
    let service = Arc::new(service);
    let repairer = tokio::spawn({
        let service = Arc::clone(&service);
        async move { service.run_repairer().await }
    });
    let audit = AuditLog::open(&settings.audit)
        .map_err(|e| format!("cannot open the audit log {:?}: {e}", settings.audit))?;
    let state = AppState {
        service,
        metrics: Some(metrics),
        audit: Some(Arc::new(audit)),
    };

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let regions: Vec<String> = settings.regions.iter().map(ToString::to_string).collect();
    info!(%addr, key_path = %settings.key_path, ?regions, "rkms-server listening");
    axum::serve(listener, app(state, &settings.key_path))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))?;
    repairer.abort();
    info!("rkms-server stopped");
    Ok(())
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
