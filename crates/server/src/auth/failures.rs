//! Failed authentications per client address. Past a budget, an address's requests are
//! refused before their credentials are looked at (a right guess would otherwise still show),
//! so guessing tokens stays slow; and failures are reported as counts, at most one log line
//! per address a minute, so guessing cannot flood the log either.
//!
//! The budget is a GCRA (the token bucket of `governor`, which cannot tell whether an address
//! is spent without spending): `per_minute` failures may come at once, then one each
//! `60 s / per_minute`. Times are passed in, so tests need no clock.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::address_limit::client_of;

/// Addresses tracked at once; beyond them, new addresses' failures are counted in one shared
/// entry (never refused by it), so many addresses cannot grow memory without bound.
const MAX_CLIENTS: usize = 10_000;

/// How often an address's failures are reported at most.
pub(super) const REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// Who failed: one address, an IPv6 address's /64 (what one host can have), or, when the table
/// is full, everyone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Client {
    Address(IpAddr),
    Others,
}

impl Client {
    /// `None`: a request that did not come through the server's connection loop.
    pub(super) fn of(address: Option<IpAddr>) -> Self {
        Self::Address(address.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), client_of))
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(IpAddr::V6(prefix)) => write!(f, "{prefix}/64"),
            Self::Address(v4) => write!(f, "{v4}"),
            Self::Others => f.write_str("other addresses (too many to track one by one)"),
        }
    }
}

/// What a client did since its last report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Report {
    pub(super) client: Client,
    /// Authentications that failed.
    pub(super) failures: u64,
    /// Requests refused with the budget spent.
    pub(super) refused: u64,
    /// Why the last authentication failed.
    pub(super) reason: &'static str,
}

#[derive(Debug)]
struct Entry {
    /// When the budget is whole again (GCRA's theoretical arrival time).
    full_at: Instant,
    failures: u64,
    refused: u64,
    reason: &'static str,
    reported_at: Option<Instant>,
}

impl Entry {
    /// A report when there is something to say and the last one is a minute old.
    fn report(&mut self, client: Client, now: Instant) -> Option<Report> {
        let quiet = self
            .reported_at
            .is_none_or(|at| now.duration_since(at) >= REPORT_INTERVAL);
        if !quiet || self.failures + self.refused == 0 {
            return None;
        }
        self.reported_at = Some(now);
        Some(Report {
            client,
            failures: std::mem::take(&mut self.failures),
            refused: std::mem::take(&mut self.refused),
            reason: self.reason,
        })
    }
}

/// The failures of every client address.
#[derive(Debug)]
pub(super) struct Failures {
    /// `None`: failures are counted and reported but never refused.
    budget: Option<Budget>,
    clients: Mutex<HashMap<Client, Entry>>,
}

#[derive(Debug, Clone, Copy)]
struct Budget {
    /// The time one failure takes to be forgiven.
    each: Duration,
    /// How far ahead the budget may be spent: a minute.
    depth: Duration,
}

/// The budget is spent: retry after `wait`.
#[derive(Debug)]
pub(super) struct Refused {
    pub(super) wait: Duration,
    pub(super) report: Option<Report>,
}

impl Failures {
    /// `per_minute` failures per address, or no limit.
    pub(super) fn new(per_minute: Option<NonZeroU32>) -> Self {
        Self {
            budget: per_minute.map(|n| Budget {
                each: Duration::from_secs(60) / n.get(),
                depth: Duration::from_secs(60),
            }),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Refuses a client whose budget is spent, counting the refusal.
    pub(super) fn check(&self, client: Client, now: Instant) -> Result<(), Refused> {
        let Some(budget) = self.budget else {
            return Ok(());
        };
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        // Only an address's own failures refuse it: the shared overflow entry is for counting,
        // or whoever fills the table would lock every other client out.
        let Some(entry) = clients.get_mut(&client) else {
            return Ok(());
        };
        // Spent when one more failure would put the budget's refill more than a minute ahead.
        let next = entry.full_at.max(now) + budget.each;
        let Some(wait) = next.checked_duration_since(now + budget.depth) else {
            return Ok(());
        };
        if wait.is_zero() {
            return Ok(());
        }
        entry.refused += 1;
        Err(Refused {
            wait,
            report: entry.report(client, now),
        })
    }

    /// Counts a failed authentication; returns a report when one is due.
    pub(super) fn fail(
        &self,
        client: Client,
        reason: &'static str,
        now: Instant,
    ) -> Option<Report> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let client = Self::tracked(&clients, client);
        let entry = clients.entry(client).or_insert(Entry {
            full_at: now,
            failures: 0,
            refused: 0,
            reason,
            reported_at: None,
        });
        if let Some(budget) = self.budget {
            entry.full_at = entry.full_at.max(now) + budget.each;
        }
        entry.failures += 1;
        entry.reason = reason;
        entry.report(client, now)
    }

    /// Reports counts that waited for their minute, and forgets clients with nothing left to
    /// refuse or report.
    pub(super) fn sweep(&self, now: Instant) -> Vec<Report> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let reports = clients
            .iter_mut()
            .filter_map(|(client, entry)| entry.report(*client, now))
            .collect();
        clients.retain(|_, entry| {
            entry.full_at > now
                || entry.failures + entry.refused > 0
                || entry
                    .reported_at
                    .is_some_and(|at| now.duration_since(at) < REPORT_INTERVAL)
        });
        reports
    }

    /// `client`, or [`Client::Others`] when the table is full and does not know it.
    fn tracked(clients: &HashMap<Client, Entry>, client: Client) -> Client {
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            Client::Others
        } else {
            client
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(address: &str) -> Client {
        Client::of(Some(address.parse().unwrap()))
    }

    #[test]
    fn a_minutes_budget_may_be_spent_at_once_then_one_failure_a_period() {
        let failures = Failures::new(NonZeroU32::new(60));
        let start = Instant::now();
        let guesser = client("192.0.2.1");
        for _ in 0..60 {
            failures.check(guesser, start).unwrap();
            failures.fail(guesser, "bad token", start);
        }
        let refused = failures.check(guesser, start).unwrap_err();
        assert_eq!(refused.wait, Duration::from_secs(1));
        assert!(failures.check(client("192.0.2.2"), start).is_ok());
        let later = start + Duration::from_secs(1);
        failures.check(guesser, later).unwrap();
        failures.fail(guesser, "bad token", later);
        assert!(failures.check(guesser, later).is_err());
        assert!(failures
            .check(guesser, start + Duration::from_secs(61))
            .is_ok());
    }

    #[test]
    fn failures_are_reported_once_a_minute_with_their_counts() {
        let failures = Failures::new(NonZeroU32::new(10));
        let start = Instant::now();
        let guesser = client("192.0.2.1");
        let first = failures.fail(guesser, "bad token", start).unwrap();
        assert_eq!((first.failures, first.refused), (1, 0));
        let mut reports = 0;
        for _ in 0..2999 {
            if failures.check(guesser, start).is_ok() {
                reports += usize::from(failures.fail(guesser, "bad token", start).is_some());
            }
        }
        assert_eq!(reports, 0, "nothing more within the minute");
        assert!(failures.sweep(start + Duration::from_secs(30)).is_empty());
        let swept = failures.sweep(start + REPORT_INTERVAL);
        assert_eq!(
            swept,
            [Report {
                client: guesser,
                failures: 9,
                refused: 2990,
                reason: "bad token"
            }]
        );
        assert!(failures.sweep(start + REPORT_INTERVAL * 2).is_empty());
        assert!(
            failures.clients.lock().unwrap().is_empty(),
            "a quiet client is forgotten"
        );
    }

    #[test]
    fn without_a_budget_failures_are_still_reported_and_never_refused() {
        let failures = Failures::new(None);
        let start = Instant::now();
        let guesser = client("192.0.2.1");
        assert!(failures.fail(guesser, "bad token", start).is_some());
        for _ in 0..100 {
            failures.check(guesser, start).unwrap();
            assert!(failures.fail(guesser, "bad token", start).is_none());
        }
        assert_eq!(failures.sweep(start + REPORT_INTERVAL)[0].failures, 100);
    }

    #[test]
    fn an_ipv6_host_is_one_client_and_a_full_table_refuses_no_newcomer() {
        assert_eq!(client("2001:db8:1:2::1"), client("2001:db8:1:2:ffff::9"));
        assert_ne!(client("2001:db8:1:2::1"), client("2001:db8:1:3::1"));
        assert_eq!(client("::ffff:192.0.2.1"), client("192.0.2.1"));
        assert_eq!(client("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");

        let failures = Failures::new(NonZeroU32::new(1));
        let start = Instant::now();
        for n in 0..MAX_CLIENTS as u32 {
            let address = Client::of(Some(IpAddr::V4(Ipv4Addr::from(n))));
            failures.fail(address, "bad token", start);
        }
        let newcomer = client("198.51.100.1");
        failures.fail(newcomer, "bad token", start);
        failures.fail(newcomer, "bad token", start);
        assert!(
            failures.check(client("198.51.100.2"), start).is_ok(),
            "an address that never failed is never refused, however full the table"
        );
        assert_eq!(failures.clients.lock().unwrap().len(), MAX_CLIENTS + 1);
    }
}
