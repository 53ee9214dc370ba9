//! `RegionHealth`: a circuit breaker and a latency estimate per KMS region.
//!
//! Closed: calls go through; `failure_threshold` failures in a row open the breaker. Open:
//! the region is asked last until `open_for` has passed. Half-open: one probe call goes
//! through; its success closes the breaker, its failure opens it again. A region that answers
//! with a refusal (wrong context, foreign key) is healthy: refusals do not count as failures,
//! and neither does throttling.
//!
//! A breaker orders the regions; it never forbids asking one. When no other region can serve,
//! [`RegionHealth::last_resort`] probes an open region at once, before `open_for` has passed:
//! a region that failed seconds ago may have recovered, and a request that would otherwise
//! fail loses nothing by asking. Only one probe runs at a time; other requests in need wait
//! for its outcome rather than each sending a call to a region that may hang.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;

/// Settings of every region's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerOptions {
    /// Failures (errors or timeouts) in a row that open the breaker (default 3).
    pub failure_threshold: u32,
    /// How long an open breaker puts its region last, before the next request probes it even
    /// when other regions can serve (default 5 s).
    pub open_for: Duration,
}

impl Default for BreakerOptions {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            open_for: Duration::from_secs(5),
        }
    }
}

/// A breaker's state, as reported in metrics and readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// One probe call is allowed.
    HalfOpen,
    /// The region is asked last, by a probe.
    Open,
}

impl BreakerState {
    /// The state's name in metrics and readiness reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }
}

#[derive(Debug)]
enum Breaker {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct State {
    breaker: Breaker,
    /// Exponentially weighted moving average of successful call latency.
    latency: Option<Duration>,
    /// Probes that got an error or timed out, so that a request waiting for a probe can tell
    /// a failed one (give up) from an abandoned one (take over as the probe).
    failed_probes: u64,
    /// Times the breaker closed again after it had opened: the region came back.
    recoveries: u64,
    /// When the breaker last opened from closed, until a call succeeds again: how long the
    /// region has been failing, as operators read it in `/readyz`.
    unhealthy_since: Option<SystemTime>,
}

/// Weight of the newest sample in the latency average.
const LATENCY_WEIGHT: f64 = 0.2;

/// One region's health. Cheap to share; every method takes a short lock.
#[derive(Debug)]
pub(crate) struct RegionHealth {
    state: Mutex<State>,
    options: BreakerOptions,
    /// Wakes the requests waiting in [`RegionHealth::last_resort`] when a probe ends.
    probe_ended: Notify,
}

/// Leave to make one call to a region. Report how it went with [`Permit::succeeded`] or
/// [`Permit::failed`]. A permit dropped without a report (a cancelled call) counts as a
/// failure if the call had run for `slow_after` or longer (it was too slow to be of use, as a
/// hedged call to a blackholed region is), and otherwise just frees a half-open probe slot.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    health: &'a RegionHealth,
    probe: bool,
    reported: bool,
    started: Instant,
    slow_after: Option<Duration>,
}

impl RegionHealth {
    pub(crate) fn new(options: BreakerOptions) -> Self {
        Self {
            state: Mutex::new(State {
                breaker: Breaker::Closed { failures: 0 },
                latency: None,
                failed_probes: 0,
                recoveries: 0,
                unhealthy_since: None,
            }),
            options,
            probe_ended: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a single assignment, so a poisoned lock still holds a valid state.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A permit to call the region now, or `None` while its breaker is open or a probe runs.
    pub(crate) fn try_acquire(&self) -> Option<Permit<'_>> {
        let mut state = self.lock();
        let probe = match state.breaker {
            Breaker::Closed { .. } => false,
            Breaker::Open { until } if Instant::now() < until => return None,
            Breaker::HalfOpen { probing: true } => return None,
            Breaker::Open { .. } | Breaker::HalfOpen { probing: false } => {
                state.breaker = Breaker::HalfOpen { probing: true };
                true
            }
        };
        Some(self.permit(probe))
    }

    /// A permit for a request that no other region can serve: at once if the breaker is
    /// closed; as the probe, even before `open_for` has passed, if none runs; otherwise once
    /// the running probe ends: a call if it succeeded, the probe if it was abandoned (its own
    /// request was served elsewhere). `None` when the probe this request waited for got an
    /// error or timed out: the region is still down, and asking it now would only wait again.
    /// Also `None` after waiting `max_wait` (the KMS timeout, which bounds the probe itself):
    /// a probe held that long is held by someone who is not calling with it, such as a
    /// repair that took it as a permit for later.
    pub(crate) async fn last_resort(&self, max_wait: Duration) -> Option<Permit<'_>> {
        let give_up = Instant::now() + max_wait;
        let mut failed_probes_before = None;
        loop {
            let ended = self.probe_ended.notified();
            tokio::pin!(ended);
            // Registered before the state is read, so that a probe ending in between still
            // wakes this request.
            ended.as_mut().enable();
            {
                let mut state = self.lock();
                let failed_probes = state.failed_probes;
                match state.breaker {
                    Breaker::Closed { .. } => return Some(self.permit(false)),
                    _ if failed_probes_before.is_some_and(|before| before != failed_probes) => {
                        return None;
                    }
                    Breaker::Open { .. } | Breaker::HalfOpen { probing: false } => {
                        state.breaker = Breaker::HalfOpen { probing: true };
                        return Some(self.permit(true));
                    }
                    Breaker::HalfOpen { probing: true } => {
                        failed_probes_before.get_or_insert(failed_probes);
                    }
                }
            }
            if tokio::time::timeout_at(give_up, ended).await.is_err() {
                return None;
            }
        }
    }

    fn permit(&self, probe: bool) -> Permit<'_> {
        Permit {
            health: self,
            probe,
            reported: false,
            started: Instant::now(),
            slow_after: None,
        }
    }

    /// True when [`RegionHealth::try_acquire`] would give a permit now: closed, or ready for a
    /// probe that nobody is making yet.
    pub(crate) fn can_call(&self) -> bool {
        match self.lock().breaker {
            Breaker::Closed { .. } => true,
            Breaker::Open { until } => Instant::now() >= until,
            Breaker::HalfOpen { probing } => !probing,
        }
    }

    /// The breaker's state now.
    pub(crate) fn state(&self) -> BreakerState {
        match self.lock().breaker {
            Breaker::Closed { .. } => BreakerState::Closed,
            Breaker::Open { until } if Instant::now() < until => BreakerState::Open,
            Breaker::Open { .. } | Breaker::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// The average latency of successful calls, once there has been one.
    pub(crate) fn latency(&self) -> Option<Duration> {
        self.lock().latency
    }

    /// Since when the region has failed: set when its breaker opens, cleared by the next
    /// successful call.
    pub(crate) fn unhealthy_since(&self) -> Option<SystemTime> {
        self.lock().unhealthy_since
    }

    /// How many times the region came back after its breaker had opened.
    pub(crate) fn recoveries(&self) -> u64 {
        self.lock().recoveries
    }

    fn record_success(&self, latency: Duration, probe: bool) {
        let mut state = self.lock();
        if !matches!(state.breaker, Breaker::Closed { .. }) {
            state.recoveries += 1;
        }
        state.breaker = Breaker::Closed { failures: 0 };
        state.unhealthy_since = None;
        state.latency = Some(match state.latency {
            None => latency,
            Some(average) => {
                average.mul_f64(1.0 - LATENCY_WEIGHT) + latency.mul_f64(LATENCY_WEIGHT)
            }
        });
        drop(state);
        if probe {
            self.probe_ended.notify_waiters();
        }
    }

    /// A failed call; `abandoned` when it was cancelled (too slow to be of use) rather than
    /// answered with an error or timed out.
    fn record_failure(&self, probe: bool, abandoned: bool) {
        let mut state = self.lock();
        if probe && !abandoned {
            state.failed_probes += 1;
        }
        let trip = match state.breaker {
            Breaker::Closed { failures } if failures + 1 < self.options.failure_threshold => {
                state.breaker = Breaker::Closed {
                    failures: failures + 1,
                };
                false
            }
            Breaker::Closed { .. } => {
                state.unhealthy_since.get_or_insert_with(SystemTime::now);
                true
            }
            // Late failures of calls admitted before the breaker opened change nothing; a
            // failed probe opens it again.
            Breaker::Open { .. } | Breaker::HalfOpen { .. } => probe,
        };
        if trip {
            state.breaker = Breaker::Open {
                until: Instant::now() + self.options.open_for,
            };
        }
        drop(state);
        if probe {
            self.probe_ended.notify_waiters();
        }
    }
}

impl Permit<'_> {
    /// Counts the call as failed if it is cancelled after running for `after` or longer.
    pub(crate) fn slow_after(mut self, after: Duration) -> Self {
        self.slow_after = Some(after);
        self
    }

    /// The call succeeded (or the region answered with a refusal) after `latency`.
    pub(crate) fn succeeded(mut self, latency: Duration) {
        self.reported = true;
        self.health.record_success(latency, self.probe);
    }

    /// The call failed or timed out.
    pub(crate) fn failed(mut self) {
        self.reported = true;
        self.health.record_failure(self.probe, false);
    }

    /// The region answered that it is throttling us: no failure, and no latency sample.
    pub(crate) fn throttled(mut self) {
        self.reported = true;
        self.free_probe();
    }

    /// Lets the next call probe a half-open region, if this permit was its probe.
    fn free_probe(&self) {
        if !self.probe {
            return;
        }
        let mut state = self.health.lock();
        if let Breaker::HalfOpen { probing: true } = state.breaker {
            state.breaker = Breaker::HalfOpen { probing: false };
        }
        drop(state);
        self.health.probe_ended.notify_waiters();
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.reported {
            return;
        }
        if self
            .slow_after
            .is_some_and(|after| self.started.elapsed() >= after)
        {
            self.health.record_failure(self.probe, true);
        } else {
            self.free_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> RegionHealth {
        RegionHealth::new(BreakerOptions {
            failure_threshold: 3,
            open_for: Duration::from_secs(5),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_repeated_failures_then_probes_and_closes() {
        let h = health();
        for _ in 0..2 {
            h.try_acquire().unwrap().failed();
            assert_eq!(h.state(), BreakerState::Closed);
        }
        h.try_acquire().unwrap().failed();
        assert_eq!(h.state(), BreakerState::Open);
        assert!(
            h.try_acquire().is_none(),
            "an open breaker skips the region"
        );

        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(h.state(), BreakerState::HalfOpen);
        let probe = h.try_acquire().expect("one probe after the cool-down");
        assert!(h.try_acquire().is_none(), "only one probe at a time");
        assert!(!h.can_call(), "the probe is taken");
        probe.succeeded(Duration::from_millis(4));
        assert_eq!(h.state(), BreakerState::Closed);
        assert!(h.can_call());
        assert!(h.try_acquire().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_and_a_cancelled_probe_frees_its_slot() {
        let h = health();
        for _ in 0..3 {
            h.try_acquire().unwrap().failed();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(h.try_acquire().expect("probe"));
        let probe = h.try_acquire().expect("a cancelled probe frees the slot");
        probe.failed();
        assert_eq!(h.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(
            h.try_acquire().is_none(),
            "a failed probe starts a new cool-down"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_cancelled_call_counts_as_a_failure_and_a_quick_one_does_not() {
        let h = health();
        for _ in 0..3 {
            drop(
                h.try_acquire()
                    .unwrap()
                    .slow_after(Duration::from_millis(50)),
            );
        }
        assert_eq!(
            h.state(),
            BreakerState::Closed,
            "cancelled quickly: no failure"
        );
        for _ in 0..3 {
            let permit = h
                .try_acquire()
                .unwrap()
                .slow_after(Duration::from_millis(50));
            tokio::time::advance(Duration::from_millis(60)).await;
            drop(permit);
        }
        assert_eq!(
            h.state(),
            BreakerState::Open,
            "cancelled after being slow: failures"
        );
    }

    /// The longest a last-resort request waits for another's probe in these tests.
    const WAIT: Duration = Duration::from_secs(2);

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_after_its_longest_wait_when_the_probe_is_held_unused() {
        let h = health();
        for _ in 0..3 {
            h.try_acquire().unwrap().failed();
        }
        let _held = h.last_resort(WAIT).await.unwrap();
        let started = Instant::now();
        assert!(h.last_resort(WAIT).await.is_none());
        assert_eq!(started.elapsed(), WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_last_resort_probes_an_open_breaker_at_once_and_others_wait_for_its_outcome() {
        let h = health();
        for _ in 0..3 {
            h.try_acquire().unwrap().failed();
        }
        assert!(h.try_acquire().is_none(), "open: not for ordinary calls");
        let probe = h
            .last_resort(WAIT)
            .await
            .expect("a probe before open_for passes");
        let mut waiter = std::pin::pin!(h.last_resort(WAIT));
        assert!(
            futures::poll!(waiter.as_mut()).is_pending(),
            "a second request waits for the running probe"
        );
        probe.failed();
        assert!(
            waiter.await.is_none(),
            "the probe failed: the waiter does not call a region that is still down"
        );
        assert_eq!(h.state(), BreakerState::Open);

        let probe = h
            .last_resort(WAIT)
            .await
            .expect("the next request probes again");
        let mut waiter = std::pin::pin!(h.last_resort(WAIT));
        assert!(futures::poll!(waiter.as_mut()).is_pending());
        probe.succeeded(Duration::from_millis(3));
        let permit = waiter.await.expect("the probe succeeded: the waiter calls");
        assert!(!permit.probe);
        assert_eq!(h.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_hands_the_probe_to_a_waiting_request() {
        let h = health();
        for _ in 0..3 {
            h.try_acquire().unwrap().failed();
        }
        let probe = h.last_resort(WAIT).await.unwrap();
        let mut waiter = std::pin::pin!(h.last_resort(WAIT));
        assert!(futures::poll!(waiter.as_mut()).is_pending());
        drop(probe);
        let probe = waiter.await.expect("the waiter takes the probe");
        assert!(probe.probe);

        let slow = probe.slow_after(Duration::from_millis(50));
        let mut waiter = std::pin::pin!(h.last_resort(WAIT));
        assert!(futures::poll!(waiter.as_mut()).is_pending());
        tokio::time::advance(Duration::from_millis(60)).await;
        drop(slow);
        assert_eq!(h.state(), BreakerState::Open, "too slow: a failure");
        assert!(
            waiter
                .await
                .expect("abandoned, not failed: the waiter probes")
                .probe,
            "a probe whose own request was served elsewhere says nothing of the region's health"
        );
    }

    #[tokio::test]
    async fn a_success_resets_the_failure_count_and_feeds_the_latency_average() {
        let h = health();
        h.try_acquire().unwrap().failed();
        h.try_acquire().unwrap().failed();
        h.try_acquire()
            .unwrap()
            .succeeded(Duration::from_millis(10));
        h.try_acquire().unwrap().failed();
        h.try_acquire().unwrap().failed();
        assert_eq!(h.state(), BreakerState::Closed);
        h.try_acquire()
            .unwrap()
            .succeeded(Duration::from_millis(20));
        assert_eq!(h.latency(), Some(Duration::from_millis(12)));
    }
}
