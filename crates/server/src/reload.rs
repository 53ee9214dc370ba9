//! Reloading the configuration while serving (SIGHUP).
//!
//! The file is read and checked as one unit: `[kms]` (regions, key ids, endpoints, timeouts,
//! hedge, breaker), `[cache]`, `[limits]`, `[repair]`, `[lifecycle]`, `[[principals]]` and the
//! allowed hosts. The regions are opened and a whole new [`KeyService`] is built before
//! anything changes, so a file that is refused at any step changes nothing. Then everything
//! is put in force together; requests in flight finish on what they started with.
//!
//! The listen addresses, the API version, `[server.tls]` file paths, `[store]`, `[audit]`
//! and `[logger]` are restart-only: each holds something opened once (a socket, the router,
//! a connection pool, a file, the log subscriber). A reload that changes one keeps it as it
//! is and says so; the TLS files' contents and the audit file itself are reopened by SIGHUP
//! apart from this.

use std::net::SocketAddr;
use std::sync::Arc;

use rkms_core::{KeyService, Store, SweepSchedule};
use tokio::task::JoinHandle;

use crate::auth::Authenticator;
use crate::backends::build_service;
use crate::config::Settings;
use crate::limits::LiveLimits;
use crate::live::LiveService;
use crate::serve::fit_open_file_limit;

/// What a reload put in force.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// True when the regions or their master keys changed: the repairer sweeps at once.
    pub regions_changed: bool,
    /// Things worth a line in the log: restart-only settings that changed and were kept,
    /// and the configuration's own notices.
    pub notices: Vec<String>,
}

/// Everything a reload replaces, and the background repairer of the service in force.
#[derive(Debug)]
pub struct Reloader {
    store: Arc<dyn Store>,
    live: Arc<LiveService>,
    auth: Arc<Authenticator>,
    limits: LiveLimits,
    /// `--listen`, which overrides the file's address at every reload as at start.
    listen_override: Option<SocketAddr>,
    in_force: Settings,
    /// When the repairer sweeps next, kept across reloads.
    sweeps: Arc<SweepSchedule>,
    repairer: JoinHandle<()>,
}

impl Reloader {
    /// Starts the repairer of the service in force; `in_force` is the configuration it was
    /// built from. Needs a Tokio runtime.
    pub fn start(
        store: Arc<dyn Store>,
        live: Arc<LiveService>,
        auth: Arc<Authenticator>,
        limits: LiveLimits,
        listen_override: Option<SocketAddr>,
        in_force: Settings,
    ) -> Self {
        let service = live.current();
        let sweeps = Arc::new(SweepSchedule::new(&service.options().repair));
        let repairer = spawn_repairer(service, Arc::clone(&sweeps));
        Self {
            store,
            live,
            auth,
            limits,
            listen_override,
            in_force,
            sweeps,
            repairer,
        }
    }

    /// Checks `next` (a configuration file read again) as one unit and puts it in force, or
    /// refuses it with the reason and changes nothing.
    pub async fn apply(&mut self, mut next: Settings) -> Result<Reloaded, String> {
        if let Some(listen) = self.listen_override {
            next.listen = listen;
        }
        let mut notices = keep_restart_only(&self.in_force, &mut next);
        notices.extend(next.check_exposure().map_err(|e| e.to_string())?);
        let store_pool = next.store.pool_size();
        notices.extend(fit_open_file_limit(&mut next.limits, store_pool)?);
        let previous = self.live.current();
        let service = build_service(&next, &self.store, Some(&previous)).await?;
        // Settings say what changed for AWS; the local keyring's current keys (`keyring
        // rotate`) show only in the opened regions.
        let regions_changed = next.regions != self.in_force.regions
            || region_keys(&previous) != region_keys(&service)
            || previous.options().removed_regions != service.options().removed_regions;
        notices.append(&mut next.notices);

        self.auth.reconfigure(
            &next.principals,
            next.failed_auth_per_minute,
            next.allowed_hosts.clone(),
        );
        self.limits.replace(next.limits.clone());
        self.live.replace(service);
        self.repairer.abort();
        if regions_changed {
            self.sweeps.sweep_now();
        }
        self.repairer = spawn_repairer(self.live.current(), Arc::clone(&self.sweeps));
        self.in_force = next;
        Ok(Reloaded {
            regions_changed,
            notices,
        })
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.repairer.abort();
    }
}

/// Sets each restart-only setting of `next` back to the one in force (`was`), with a notice
/// for each that differed.
fn keep_restart_only(was: &Settings, next: &mut Settings) -> Vec<String> {
    let mut notices = Vec::new();
    let mut keep = |name: &str, changed: bool| {
        if changed {
            notices.push(format!(
                "{name} changed in the configuration file; it is restart-only and stays as \
                 it was until the server restarts"
            ));
        }
    };
    keep(
        "[server] host and port",
        next.listen != was.listen || next.health_listen != was.health_listen,
    );
    keep("[server] api_version", next.key_path != was.key_path);
    keep("[server.tls] file paths", next.tls != was.tls);
    keep(
        "[server] allow_insecure_http",
        next.allow_insecure_http != was.allow_insecure_http,
    );
    keep("[store]", next.store != was.store);
    keep(
        "[audit]",
        next.audit != was.audit
            || next.audit_sync != was.audit_sync
            || next.audit_signing_key != was.audit_signing_key
            || next.audit_checkpoints != was.audit_checkpoints,
    );
    keep(
        "[logger]",
        next.log_level != was.log_level || next.log_format != was.log_format,
    );
    next.listen = was.listen;
    next.health_listen = was.health_listen;
    next.key_path.clone_from(&was.key_path);
    next.tls.clone_from(&was.tls);
    next.allow_insecure_http = was.allow_insecure_http;
    next.store.clone_from(&was.store);
    next.service.store_timeout = was.service.store_timeout;
    next.audit.clone_from(&was.audit);
    next.audit_sync = was.audit_sync;
    next.audit_signing_key.clone_from(&was.audit_signing_key);
    next.audit_checkpoints = was.audit_checkpoints;
    next.log_level.clone_from(&was.log_level);
    next.log_format = was.log_format;
    notices
}

/// Runs `service`'s repairer on the shared schedule until aborted.
fn spawn_repairer(service: Arc<KeyService>, sweeps: Arc<SweepSchedule>) -> JoinHandle<()> {
    tokio::spawn(async move { service.run_repairer_with(&sweeps).await })
}

/// Each region's name and the master key it wraps under.
fn region_keys(service: &KeyService) -> Vec<(String, String)> {
    service
        .region_status()
        .into_iter()
        .map(|r| (r.name, r.master_key))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const PRINCIPAL: &str = "[[principals]]\nname = \"t\"\nanonymous = true\n\
                             allow = [{ ids = [\"*\"], operations = [\"get\"] }]\n";

    fn settings(extra: &str) -> Settings {
        let text =
            format!("[kms]\nprovider = \"local\"\nregions = [\"a\", \"b\"]\n{extra}{PRINCIPAL}");
        Settings::from_toml(&text, Path::new("/var/lib/rkms")).unwrap()
    }

    #[test]
    fn restart_only_settings_stay_as_they_were_and_are_named() {
        let was = settings("[server]\nport = 8080\n");
        let mut next = settings(
            "[server]\nport = 9090\napi_version = \"v2\"\n\
             [store]\nbackend = \"postgres\"\nurl = \"postgres://db/keys\"\ntimeout_ms = 9000\n\
             [logger]\nlevel = \"debug\"\n[cache]\nttl_seconds = 7\n",
        );
        assert_ne!(next.service.store_timeout, was.service.store_timeout);
        let notices = keep_restart_only(&was, &mut next);
        for name in [
            "[server] host and port",
            "[server] api_version",
            "[store]",
            "[logger]",
        ] {
            assert!(
                notices.iter().any(|n| n.starts_with(name)),
                "{name} is named: {notices:?}"
            );
        }
        assert_eq!(notices.len(), 4, "{notices:?}");
        assert_eq!(next.listen, was.listen);
        assert_eq!(next.key_path, was.key_path);
        assert_eq!(next.store, was.store);
        assert_eq!(next.service.store_timeout, was.service.store_timeout);
        assert_eq!(next.log_level, was.log_level);
        assert_eq!(
            next.service.cache.ttl,
            std::time::Duration::from_secs(7),
            "reloadable"
        );
    }

    #[test]
    fn an_unchanged_file_has_nothing_to_say() {
        let was = settings("");
        let mut next = settings("");
        assert!(keep_restart_only(&was, &mut next).is_empty());
    }
}
