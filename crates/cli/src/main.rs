//! `rkms`: RKMS from a terminal. Key operations over the HTTP API (through `rkms-client`, with
//! failover between `--url`s), and files encrypted under an RKMS key in the envelope format
//! (`docs/envelope-format.md`), streamed in constant memory.

mod files;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use rkms_client::{Client, Error};
use serde_json::json;

/// RKMS from a terminal: key operations, and files encrypted under RKMS keys.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// An RKMS server's URL; repeat for failover. Or RKMS_URL (comma-separated).
    #[arg(long = "url", env = "RKMS_URL", value_delimiter = ',', global = true)]
    urls: Vec<String>,
    /// A file holding the bearer token (RKMS_TOKEN holds the token itself).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// PEM file with a client certificate chain and its private key.
    #[arg(long, global = true)]
    identity: Option<PathBuf>,
    /// PEM file of a CA to trust for the servers' certificates, besides the system's.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// How answers are printed (`-o` names an output file).
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Key operations.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Encrypts a file (or standard input) under the current version of key ID.
    Encrypt {
        /// The key id.
        #[arg(long)]
        id: String,
        /// The input file; standard input when absent or `-`.
        #[arg(short = 'i', long = "in")]
        input: Option<PathBuf>,
        /// The output file; standard output when absent or `-`.
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
    },
    /// Decrypts an envelope (the key id and version are in its header). A file output
    /// appears only once every chunk has authenticated.
    Decrypt {
        /// The input file; standard input when absent or `-`.
        #[arg(short = 'i', long = "in")]
        input: Option<PathBuf>,
        /// The output file; standard output when absent or `-`.
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum KeyAction {
    /// Prints the current key (base64), made on first use; or `--version N`.
    Get {
        /// The key id.
        #[arg(long)]
        id: String,
        /// A version other than the current one.
        #[arg(long)]
        version: Option<u32>,
    },
    /// Makes a new current version.
    Rotate {
        /// The key id.
        #[arg(long)]
        id: String,
    },
    /// Schedules the key's deletion.
    Delete {
        /// The key id.
        #[arg(long)]
        id: String,
    },
    /// Cancels a scheduled deletion.
    Restore {
        /// The key id.
        #[arg(long)]
        id: String,
    },
    /// The key's state, versions and regions.
    Info {
        /// The key id.
        #[arg(long)]
        id: String,
    },
    /// Key ids and their states, a page at a time.
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let client = match client(&cli) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("rkms: {e}");
            return ExitCode::from(2);
        }
    };
    let run = async {
        match &cli.command {
            Command::Key { action } => key(&client, action, cli.output)
                .await
                .map_err(|e| e.to_string()),
            Command::Encrypt { id, input, out } => {
                files::encrypt(&client, id, input.as_deref(), out.as_deref()).await
            }
            Command::Decrypt { input, out } => {
                files::decrypt(&client, input.as_deref(), out.as_deref()).await
            }
        }
    };
    let result = tokio::select! {
        result = run => result,
        signal = interrupted() => {
            files::remove_partial();
            eprintln!("rkms: stopped by {signal}; a file output is not written");
            // At once: a blocking read of standard input would keep the runtime from
            // shutting down.
            std::process::exit(130);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rkms: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM, naming it.
async fn interrupted() -> &'static str {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        Some(()) = async { terminate.as_mut()?.recv().await } => "SIGTERM",
    }
}

fn client(cli: &Cli) -> Result<Client, String> {
    if cli.urls.is_empty() {
        return Err("no server: pass --url (or set RKMS_URL)".into());
    }
    let mut builder = cli
        .urls
        .iter()
        .fold(Client::builder(), |builder, url| builder.url(url));
    let token = match &cli.token_file {
        Some(path) => Some(zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("--token-file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
        )),
        None => std::env::var("RKMS_TOKEN")
            .ok()
            .map(zeroize::Zeroizing::new),
    };
    if let Some(token) = token {
        builder = builder.token(token.as_str());
    }
    if let Some(path) = &cli.identity {
        let pem = std::fs::read(path).map_err(|e| format!("--identity {}: {e}", path.display()))?;
        builder = builder.identity_pem(pem);
    }
    if let Some(path) = &cli.ca {
        let pem = std::fs::read(path).map_err(|e| format!("--ca {}: {e}", path.display()))?;
        builder = builder.root_certificate_pem(pem);
    }
    builder.build().map_err(|e| e.to_string())
}

async fn key(client: &Client, action: &KeyAction, output: Output) -> Result<(), Error> {
    let (answer, text) = match action {
        KeyAction::Get { id, version } => {
            let key = match version {
                Some(version) => client.get_key_version(id, *version).await?,
                None => client.get_key(id).await?,
            };
            let encoded = files::base64(key.expose_secret());
            let text = encoded.to_string();
            (
                json!({ "id": key.id, "version": key.version, "key": encoded.as_str() }),
                text,
            )
        }
        KeyAction::Rotate { id } => {
            let version = client.rotate(id).await?;
            (
                json!({ "id": id, "state": "active", "version": version }),
                format!("{id}: version {version} is current"),
            )
        }
        KeyAction::Delete { id } => {
            client.delete(id).await?;
            // The deletion is made; its time is only reported, when it can be read.
            let when = client.describe(id).await.ok().and_then(|i| i.deletion_time);
            (
                json!({ "id": id, "state": "pending_deletion", "deletion_time": when }),
                format!(
                    "{id}: deletion scheduled for {}",
                    when.as_deref().unwrap_or("the end of the deletion window")
                ),
            )
        }
        KeyAction::Restore { id } => {
            client.restore(id).await?;
            (
                json!({ "id": id, "state": "active" }),
                format!("{id}: active"),
            )
        }
        KeyAction::Info { id } => {
            let info = client.describe(id).await?;
            let mut text = format!(
                "{}: {}, current version {}",
                info.id,
                state_name(&info.state),
                info.current_version
            );
            for v in &info.versions {
                text.push_str(&format!(
                    "\n  version {}: created {}, regions {}{}",
                    v.version,
                    v.created_at.as_deref().unwrap_or("-"),
                    v.regions.join(", "),
                    if v.missing.is_empty() {
                        String::new()
                    } else {
                        format!(", missing {}", v.missing.join(", "))
                    }
                ));
            }
            (info_json(&info), text)
        }
        KeyAction::List {
            prefix,
            after,
            limit,
        } => {
            let page = client.list(prefix, after.as_deref(), *limit).await?;
            let mut text: Vec<String> = page
                .keys
                .iter()
                .map(|k| format!("{}\t{}", k.id, state_name(&k.state)))
                .collect();
            if let Some(next) = &page.next {
                text.push(format!("(more: --after {next})"));
            }
            let keys: Vec<_> = page
                .keys
                .iter()
                .map(|k| json!({ "id": k.id, "state": state_name(&k.state) }))
                .collect();
            (json!({ "keys": keys, "next": page.next }), text.join("\n"))
        }
    };
    match output {
        Output::Json => println!("{answer}"),
        Output::Text => println!("{text}"),
    }
    Ok(())
}

/// A state as the API names it.
fn state_name(state: &rkms_client::KeyState) -> &'static str {
    use rkms_client::KeyState;
    match state {
        KeyState::Active => "active",
        KeyState::PendingDeletion => "pending_deletion",
        KeyState::Deleted => "deleted",
        _ => "unreadable",
    }
}

fn info_json(info: &rkms_client::KeyInfo) -> serde_json::Value {
    json!({
        "id": info.id,
        "state": state_name(&info.state),
        "current_version": info.current_version,
        "versions": info.versions.iter().map(|v| json!({
            "version": v.version,
            "created_at": v.created_at,
            "regions": v.regions,
            "missing": v.missing,
        })).collect::<Vec<_>>(),
        "deletion_time": info.deletion_time,
        "deleted_at": info.deleted_at,
    })
}
