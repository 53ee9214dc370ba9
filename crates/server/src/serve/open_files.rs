//! The connection limit fitted to the open-file limit (`RLIMIT_NOFILE`) at start, so that the
//! server reaches `max_connections` before it runs out of file descriptors (it once logged
//! "Too many open files" ten times a second instead).

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use super::PROBE_RESERVE;
use crate::limits::Limits;

/// Files besides connections: the runtime, logs, audit log and keyring, and the sockets of
/// the KMS and store clients.
const OTHER_FILES: u64 = 128;
/// Fewest connections worth serving: an open-file limit that leaves fewer is refused.
const FEWEST_CONNECTIONS: usize = 16;

/// Raises the soft open-file limit as far as the hard limit when `limits` need more. If even
/// the hard limit is short, lowers `max_connections` to fit (and the per-address cap in
/// proportion) and returns the warning; refuses if fewer than 16 connections would fit (or
/// fewer than configured, if that is less). `store_pool` is the store's connection pool, whose
/// connections may each hold two files (SQLite's write-ahead log).
pub fn fit_open_file_limit(limits: &mut Limits, store_pool: u32) -> Result<Option<String>, String> {
    fit_within(limits, store_pool, true)
}

/// What [`fit_open_file_limit`] would answer, with the limit as start-up would raise it, but
/// raising nothing (`rkms-server check-config`).
pub fn check_open_file_limit(limits: &Limits, store_pool: u32) -> Result<Option<String>, String> {
    fit_within(&mut limits.clone(), store_pool, false)
}

fn fit_within(limits: &mut Limits, store_pool: u32, raise: bool) -> Result<Option<String>, String> {
    let other = OTHER_FILES + 2 * u64::from(store_pool) + PROBE_RESERVE as u64;
    let needed = limits.max_connections as u64 + other;
    let current = getrlimit(Resource::Nofile);
    let mut soft = current.current.unwrap_or(u64::MAX);
    if soft < needed {
        // As far as the hard limit; `None` is unlimited, where asking for all fails.
        let raised = current.maximum.unwrap_or(needed);
        let new = Rlimit {
            current: Some(raised),
            maximum: current.maximum,
        };
        if !raise || setrlimit(Resource::Nofile, new).is_ok() {
            soft = raised;
        }
    }
    fit(limits, soft, other)
}

/// Lowers `limits` to what `soft` files hold beside `other` ones, or refuses.
fn fit(limits: &mut Limits, soft: u64, other: u64) -> Result<Option<String>, String> {
    let fitting = usize::try_from(soft.saturating_sub(other)).unwrap_or(usize::MAX);
    let configured = limits.max_connections;
    if fitting >= configured {
        return Ok(None);
    }
    let why = format!(
        "the open-file limit (RLIMIT_NOFILE) is {soft}, and {other} files are kept for health \
         checks beyond the limit, the store, KMS clients and logs"
    );
    let raise = format!(
        "raise the limit (ulimit -n, systemd LimitNOFILE=) to {} to serve {configured}",
        configured as u64 + other
    );
    if fitting < configured.min(FEWEST_CONNECTIONS) {
        return Err(format!(
            "configuration key limits.max_connections: {configured} connections do not fit: \
             {why}; {raise}"
        ));
    }
    limits.max_connections_per_address =
        (limits.max_connections_per_address * fitting).div_ceil(configured);
    limits.max_connections = fitting;
    Ok(Some(format!(
        "lowering limits.max_connections from {configured} to {fitting}, and \
         max_connections_per_address to {}: {why}; {raise}",
        limits.max_connections_per_address
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, per_address: usize) -> Limits {
        Limits {
            max_connections,
            max_connections_per_address: per_address,
            ..Limits::default()
        }
    }

    #[test]
    fn a_limit_with_room_changes_nothing() {
        let mut fitted = limits(1024, 256);
        assert_eq!(fit(&mut fitted, 2000, 200), Ok(None));
        assert_eq!(fitted, limits(1024, 256));
    }

    #[test]
    fn a_short_limit_lowers_both_caps_in_proportion() {
        let mut fitted = limits(1024, 256);
        let warning = fit(&mut fitted, 712, 200).unwrap().unwrap();
        assert_eq!(fitted, limits(512, 128));
        assert!(
            warning.contains("RLIMIT_NOFILE") && warning.contains("to 1224"),
            "{warning}"
        );
        let mut off = limits(1024, 0);
        fit(&mut off, 712, 200).unwrap();
        assert_eq!(off, limits(512, 0), "an address cap that is off stays off");
    }

    #[test]
    fn a_limit_too_short_for_a_few_connections_is_refused_by_name() {
        let error = fit(&mut limits(1024, 256), 64, 200).unwrap_err();
        assert!(error.contains("limits.max_connections"), "{error}");
        assert!(fit(&mut limits(1024, 256), 215, 200).is_err());
        assert!(fit(&mut limits(1024, 256), 216, 200).is_ok());
        assert_eq!(
            fit(&mut limits(4, 1), 204, 200),
            Ok(None),
            "four connections fit, as configured"
        );
        assert!(fit(&mut limits(4, 1), 203, 200).is_err());
    }
}
