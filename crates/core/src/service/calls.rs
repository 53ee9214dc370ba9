//! Every KMS and store call goes through here: timeouts, region health and metrics.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::{KeyService, ServiceError};
use crate::health::{BreakerState, Permit};
use crate::kms::KmsError;
use crate::store::StoreError;
use crate::telemetry;

/// Regions whose average latencies fall in the same band keep their configured order.
const LATENCY_BAND: Duration = Duration::from_millis(10);

/// Counts a KMS call as cancelled if it is dropped before it finishes (a hedged-over call).
struct CancelCounter<'a> {
    region: &'a str,
    op: &'static str,
    finished: bool,
}

impl Drop for CancelCounter<'_> {
    fn drop(&mut self) {
        if !self.finished {
            metrics::counter!(telemetry::KMS_CALLS, "region" => self.region.to_owned(), "op" => self.op, "outcome" => "cancelled")
                .increment(1);
        }
    }
}

impl KeyService {
    /// Region indices in the order to try them: regions whose breaker is open last (they are
    /// still asked, as a last resort), then by latency band (see [`LATENCY_BAND`]), then in
    /// configured order. A half-open region keeps its place, so that the next request probes it.
    pub(super) fn ordered_regions(&self) -> Vec<usize> {
        let mut order: Vec<(u8, u128, usize)> = self
            .inner
            .regions
            .iter()
            .enumerate()
            .map(|(index, region)| {
                let rank = u8::from(region.health.state() == BreakerState::Open);
                let band = region
                    .health
                    .latency()
                    .map_or(0, |l| l.as_nanos() / LATENCY_BAND.as_nanos());
                (rank, band, index)
            })
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(_, _, index)| index).collect()
    }

    /// The hedge delay for waiting on region `index`.
    pub(super) fn hedge_delay(&self, index: usize) -> Duration {
        self.inner
            .options
            .hedge
            .delay(self.inner.regions[index].health.latency())
    }

    /// How long a create that has its quorum waits for the other regions' copies: the
    /// configured [`super::ServiceOptions::straggler_wait`], or the generator's hedge delay.
    pub(super) fn straggler_wait(&self, generator: usize) -> Duration {
        self.inner
            .options
            .straggler_wait
            .unwrap_or_else(|| self.hedge_delay(generator))
    }

    /// Runs one KMS call on region `index` under `permit` and the KMS timeout, and records the
    /// region's health and the call's metrics.
    pub(super) async fn kms_call<T>(
        &self,
        index: usize,
        permit: Permit<'_>,
        op: &'static str,
        call: impl Future<Output = Result<T, KmsError>>,
    ) -> Result<T, KmsError> {
        let region = &self.inner.regions[index];
        let name = region.name();
        let mut cancel = CancelCounter {
            region: name,
            op,
            finished: false,
        };
        let timeout = self.inner.options.kms_timeout;
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(KmsError::Unavailable {
                region: name.to_owned(),
                message: format!("no answer within {timeout:?}"),
            }),
        };
        cancel.finished = true;
        let latency = started.elapsed();
        // A refusal is an answer: the region is up. So is a throttled call, but its latency
        // (the client's retries and backoff) says nothing about the region's speed.
        let outcome = match &result {
            Ok(_) => "ok",
            Err(KmsError::Refused { .. }) => "refused",
            Err(KmsError::Throttled { .. }) => "throttled",
            Err(KmsError::Unavailable { .. }) => "unavailable",
        };
        match &result {
            Err(KmsError::Unavailable { .. }) => permit.failed(),
            Err(KmsError::Throttled { .. }) => permit.throttled(),
            Ok(_) | Err(KmsError::Refused { .. }) => {
                permit.succeeded(latency);
                metrics::histogram!(telemetry::KMS_CALL_SECONDS, "region" => name.to_owned(), "op" => op).record(latency.as_secs_f64());
            }
        }
        metrics::counter!(telemetry::KMS_CALLS, "region" => name.to_owned(), "op" => op, "outcome" => outcome).increment(1);
        telemetry::record_breaker_state(name, region.health.state());
        result
    }

    /// Runs one store call under the store timeout and records its metrics.
    pub(super) async fn store_call<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ServiceError> {
        let timeout = self.inner.options.store_timeout;
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(ServiceError::Store(e)),
            Err(_) => Err(ServiceError::StoreTimeout(timeout)),
        };
        // A lost compare-and-set is an answer, not a store failure.
        let outcome = match &result {
            Ok(_) | Err(ServiceError::Store(StoreError::PreconditionFailed { .. })) => "ok",
            Err(ServiceError::StoreTimeout(_)) => "timeout",
            Err(_) => "error",
        };
        metrics::counter!(telemetry::STORE_CALLS, "op" => op, "outcome" => outcome).increment(1);
        metrics::histogram!(telemetry::STORE_CALL_SECONDS, "op" => op)
            .record(started.elapsed().as_secs_f64());
        result
    }
}
