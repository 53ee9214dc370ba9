//! `/healthz` and `/readyz`. Anyone who reaches the port may call them, so they are rate
//! limited per client address and answer from memory: readiness is checked in the background
//! once a second. The answer says up or down per region, since when a region has been
//! failing, and the repairer's backlog (how many ids this server knows to lack copies),
//! nothing about any key.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use rkms_core::{BreakerState, KeyService};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::address_limit::AddressLimit;
use crate::error::{rfc3339, ApiError};
use crate::live::LiveService;
use crate::telemetry::REJECTIONS;
use crate::tls::Peer;

/// How often readiness is checked.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Probes per second one address may send, and at once: far above what an orchestrator or a
/// load balancer sends, far below what would cost anything.
const PROBES_PER_SECOND: NonZeroU32 = NonZeroU32::new(20).expect("non-zero");
const PROBE_BURST: NonZeroU32 = NonZeroU32::new(40).expect("non-zero");

/// What the last background check found.
#[derive(Debug, Clone)]
pub struct Readiness {
    checked: Instant,
    store_up: bool,
    /// Each region's name, whether its circuit breaker lets calls through, and since when
    /// (seconds since the Unix epoch) it has been failing.
    regions: Vec<(String, bool, Option<u64>)>,
    /// Ids the repairer knows to lack copies.
    repair_backlog: usize,
}

/// The probes' shared state: the latest readiness and the per-address limit. The background
/// check stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Probes {
    latest: watch::Receiver<Option<Readiness>>,
    limit: Arc<AddressLimit>,
    /// A check older than this is not trusted: the checker is stuck, and so may the server be.
    stale_after: Duration,
    _checker: Arc<AbortOnDrop>,
}

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Probes {
    /// Starts checking the readiness of the service in force in the background. Needs a
    /// Tokio runtime.
    pub fn start(service: Arc<LiveService>) -> Self {
        let (publish, latest) = watch::channel(None);
        let limit = Arc::new(AddressLimit::new(PROBES_PER_SECOND, PROBE_BURST));
        let store_timeout = service.current().options().store_timeout;
        let checker = tokio::spawn({
            let limit = Arc::clone(&limit);
            async move {
                let mut ticks = tokio::time::interval(CHECK_INTERVAL);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    publish.send_replace(Some(check(&service.current()).await));
                    limit.forget_idle();
                }
            }
        });
        Self {
            latest,
            limit,
            stale_after: CHECK_INTERVAL * 3 + store_timeout,
            _checker: Arc::new(AbortOnDrop(checker)),
        }
    }

    /// Takes one probe from the budget of the address `request` came from (429 when spent).
    pub fn admit<B>(&self, request: &http::Request<B>) -> Result<(), ApiError> {
        // Every request through the server carries its peer; one without (in-process callers)
        // shares a single budget rather than escaping the limit.
        let address = request
            .extensions()
            .get::<Peer>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.remote.ip());
        self.limit.admit(address).map_err(|wait| {
            metrics::counter!(REJECTIONS, "reason" => "probe_rate_limited").increment(1);
            ApiError::TooManyProbes(wait)
        })
    }

    /// The last check, when it found the store answering and at least one region whose
    /// circuit breaker is not open; otherwise why not (a 503). Only the probes in the
    /// server's first moments wait, for the first check.
    pub async fn ready(&self) -> Result<Readiness, ApiError> {
        let mut latest = self.latest.clone();
        let checked =
            tokio::time::timeout(self.stale_after, latest.wait_for(Option::is_some)).await;
        let Some(readiness) = checked.ok().and_then(Result::ok).and_then(|r| r.clone()) else {
            return Err(ApiError::Unavailable("readiness not checked yet".into()));
        };
        if readiness.checked.elapsed() > self.stale_after {
            return Err(ApiError::Unavailable(format!(
                "readiness last checked {:?} ago",
                readiness.checked.elapsed()
            )));
        }
        if !readiness.store_up {
            return Err(ApiError::Unavailable(
                "the key store is not reachable".into(),
            ));
        }
        if !readiness.regions.iter().any(|(_, up, _)| *up) {
            return Err(ApiError::Unavailable(
                "every KMS region's circuit breaker is open after repeated failures".into(),
            ));
        }
        Ok(readiness)
    }
}

async fn check(service: &KeyService) -> Readiness {
    let store_up = match service.check_store().await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "readiness: store check failed");
            false
        }
    };
    let regions = service
        .region_status()
        .into_iter()
        .map(|r| {
            rkms_core::telemetry::record_breaker_state(&r.name, r.breaker);
            let since = r.unhealthy_since.map(|at| {
                at.duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            });
            (r.name, r.breaker != BreakerState::Open, since)
        })
        .collect();
    Readiness {
        checked: Instant::now(),
        store_up,
        regions,
        repair_backlog: service.repair_backlog(),
    }
}

/// Takes one probe from the caller's per-address budget (429 when spent).
pub async fn limit(
    State(probes): State<Probes>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    probes.admit(&request)?;
    Ok(next.run(request).await)
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: see [`Probes::ready`].
pub async fn readyz(State(probes): State<Probes>) -> Result<Json<serde_json::Value>, ApiError> {
    let readiness = probes.ready().await?;
    let up_or_down = |up: bool| if up { "up" } else { "down" };
    let regions: Vec<serde_json::Value> = readiness
        .regions
        .iter()
        .map(|(name, up, since)| {
            json!({
                "name": name,
                "state": up_or_down(*up),
                "unhealthy_since": since.map(rfc3339),
            })
        })
        .collect();
    Ok(Json(json!({
        "status": "ready",
        "store": "up",
        "regions": regions,
        "repair": { "backlog": readiness.repair_backlog },
    })))
}
