//! Asking regions one after another, hedged, until one succeeds: decrypt and generate.
//!
//! The first region in the given order is asked at once. The next is asked when a call fails,
//! or when the latest call has not answered within its region's hedge delay. The first
//! success wins, and the calls still in flight are cancelled. In steady state one region
//! answers within its hedge delay, so a call costs one KMS request.
//!
//! A region whose breaker gives no permit is not skipped: it moves to the back and is asked
//! as a last resort ([`crate::health::RegionHealth::last_resort`]) once no other region is
//! left to ask. A region that failed seconds ago may have recovered, and a request that
//! would otherwise fail loses nothing by asking it.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt as _};
use tokio::time::Instant;

use super::KeyService;
use crate::health::Permit;
use crate::kms::KmsError;
use crate::KeyId;

impl KeyService {
    /// Runs `call` on the regions in `order`, hedged, until one succeeds; returns that region
    /// and its answer, or every region's failure in the order they came.
    pub(super) async fn first_success<T, Call, Fut>(
        &self,
        id: &KeyId,
        order: Vec<usize>,
        op: &'static str,
        call: Call,
    ) -> Result<(usize, T), Vec<KmsError>>
    where
        Call: Fn(usize) -> Fut,
        Fut: Future<Output = Result<T, KmsError>>,
    {
        let mut pending = VecDeque::from(order);
        let mut last_resort = VecDeque::new();
        let mut failures = Vec::new();
        let mut in_flight = FuturesUnordered::new();
        let mut hedge_at = Instant::now();
        // Each turn asks one more region: at the start, after a failure, and when the hedge
        // delay passes.
        loop {
            if let Some((index, permit)) = self.next_to_ask(&mut pending, &mut last_resort) {
                let delay = self.hedge_delay(index);
                in_flight.push(self.attempt(index, permit, delay, op, call(index)));
                hedge_at = Instant::now() + delay;
            }
            if in_flight.is_empty() {
                return Err(failures);
            }
            let more_to_ask = !pending.is_empty() || !last_resort.is_empty();
            tokio::select! {
                Some((index, result)) = in_flight.next() => match result {
                    Ok(answer) => return Ok((index, answer)),
                    Err(e) => {
                        tracing::warn!(%id, region = self.inner.regions[index].name(), op, error = %e, "KMS call failed; trying the next region");
                        failures.push(e);
                    }
                },
                () = tokio::time::sleep_until(hedge_at), if more_to_ask => {}
            }
        }
    }

    /// The next region to ask, with its permit: the first in `pending` whose breaker gives
    /// one (the others move to `last_resort`), or else the first in `last_resort`, whose
    /// permit [`KeyService::attempt`] waits for.
    fn next_to_ask(
        &self,
        pending: &mut VecDeque<usize>,
        last_resort: &mut VecDeque<usize>,
    ) -> Option<(usize, Option<Permit<'_>>)> {
        while let Some(index) = pending.pop_front() {
            match self.inner.regions[index].health.try_acquire() {
                Some(permit) => return Some((index, Some(permit))),
                None => last_resort.push_back(index),
            }
        }
        last_resort.pop_front().map(|index| (index, None))
    }

    /// One KMS call to region `index` under `permit`, or, without one, under a last-resort
    /// permit once the region's breaker gives it. A call cancelled after `slow_after` counts
    /// as a failure of the region.
    pub(super) async fn attempt<T>(
        &self,
        index: usize,
        permit: Option<Permit<'_>>,
        slow_after: Duration,
        op: &'static str,
        call: impl Future<Output = Result<T, KmsError>>,
    ) -> (usize, Result<T, KmsError>) {
        let region = &self.inner.regions[index];
        let permit = match permit {
            Some(permit) => Some(permit),
            None => {
                region
                    .health
                    .last_resort(self.inner.options.kms_timeout)
                    .await
            }
        };
        let result = match permit {
            Some(permit) => {
                self.kms_call(index, permit.slow_after(slow_after), op, call)
                    .await
            }
            None => Err(KmsError::Unavailable {
                region: region.name().to_owned(),
                message: "skipped: its circuit breaker is open and its probe failed or did not end in time"
                    .into(),
            }),
        };
        (index, result)
    }
}
