//! The connection loop: accept, TLS handshake, HTTP/1.1 or HTTP/2 (which carries gRPC) under
//! connection limits, and a graceful shutdown. Each request carries the [`Peer`] it came from.
//!
//! No client can keep the others or the health checks out:
//! - `max_connections` slots serve every route. While they are all taken, up to
//!   [`PROBE_RESERVE`] more connections are accepted for one request each: a health check
//!   (`/healthz`, `/readyz`) is answered, anything else gets a 503 at once. A probe's path is
//!   known only once its request is read, so the reserve is decided at accept and enforced
//!   per request; a separate health port would need every orchestrator reconfigured.
//! - One client address holds at most `max_connections_per_address` of all these.
//! - A connection is closed when its client takes none of the answer for `write_timeout`
//!   (hyper has no write deadline; a small fixed send buffer makes such writes block soon),
//!   and after the request in progress at `max_connection_age`, however slowly its client
//!   reads; the header read timeout covers the TLS handshake and idle time.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse as _;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use crate::error::ApiError;
use crate::limits::{Limits, LiveLimits, HEALTH_PATH, READY_PATH};
use crate::telemetry::REJECTIONS;
use crate::tls::{ClientCertificate, Peer, TlsConfig};

mod open_files;
mod per_address;
mod write_deadline;

pub use open_files::{check_open_file_limit, fit_open_file_limit};
use per_address::PerAddress;
use write_deadline::WriteDeadline;

/// Kernel send buffer of a connection (Linux doubles it for its bookkeeping). Answers are small;
/// a fixed buffer keeps a client that stops reading from parking megabytes in the kernel (the
/// self-tuned buffer grows to 4 MiB on Linux) and blocks its writes soon, so that the write
/// deadline sees it.
const SEND_BUFFER_BYTES: usize = 64 * 1024;
/// How long in-flight requests get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Connections beyond `max_connections` that may each make one health check. Orchestrators
/// and load balancers probe a few at a time.
const PROBE_RESERVE: usize = 8;
/// Time a connection in the reserve gets for its TLS handshake and request: probes send at
/// once, and Kubernetes gives up on one after a second by default.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Requests one HTTP/2 connection may have in progress at once; a client's further calls
/// wait on its side. With `max_connections` this bounds the requests in progress.
const MAX_STREAMS: u32 = 32;
/// The gRPC health check, which a connection in the reserve may make as `/healthz`.
const GRPC_HEALTH_PATH: &str = "/grpc.health.v1.Health/Check";

/// Serves `app` on `listener` (over TLS when `tls` is given) until `shutdown` resolves, then
/// lets open requests finish for up to 30 s. Limits replaced while serving (a reload) apply
/// from the next accepted connection on; open connections keep theirs.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<TlsConfig>>,
    limits: impl Into<LiveLimits>,
    shutdown: impl Future<Output = ()>,
) {
    let live = limits.into();
    let mut in_force = live.current();
    let (stop, stopping) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(in_force.max_connections));
    let reserve = Arc::new(Semaphore::new(PROBE_RESERVE));
    let addresses = PerAddress::new(in_force.max_connections_per_address);
    let mut shutdown = std::pin::pin!(shutdown);
    let follow = |in_force: &mut Arc<Limits>| {
        let now = live.current();
        if !Arc::ptr_eq(&now, in_force) {
            resize(&slots, in_force.max_connections, now.max_connections);
            addresses.set_cap(now.max_connections_per_address);
            *in_force = now;
        }
    };
    loop {
        follow(&mut in_force);
        // A slot first, then the connection: past both pools, clients wait in the listen
        // queue. The semaphores are never closed, so `else` is never taken.
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            Ok(permit) = Arc::clone(&slots).acquire_owned() => Slot::full(permit),
            Ok(permit) = Arc::clone(&reserve).acquire_owned() => Slot::probe(permit),
            () = live.changed() => continue,
            else => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Limits replaced while this loop waited apply to this connection already.
        follow(&mut in_force);
        let Some(counted) = addresses.admit(remote.ip()) else {
            // Closed unanswered: an answer would cost the handshake and file the cap saves.
            metrics::counter!(REJECTIONS, "reason" => "connections_per_address").increment(1);
            debug!(%remote, "connection refused: its address holds max_connections_per_address");
            continue;
        };
        // A full slot freed while this one waited in the reserve is taken instead.
        let slot = if slot.probes_only {
            Arc::clone(&slots)
                .try_acquire_owned()
                .map_or(slot, Slot::full)
        } else {
            slot
        };
        let connection = Connection {
            app: app.clone(),
            limits: Limits::clone(&in_force),
            probes_only: slot.probes_only,
            stopping: stopping.clone(),
            opened: Instant::now(),
        };
        let acceptor = tls.as_ref().map(|tls| tls.acceptor());
        tokio::spawn(async move {
            let _held = (slot, counted);
            connection.run(stream, remote, acceptor).await;
        });
    }
    drop(listener);
    drop(stopping);
    let _ = stop.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, stop.closed())
        .await
        .is_err()
    {
        warn!("requests still open {SHUTDOWN_GRACE:?} after the shutdown signal are cut off");
    }
}

/// Changes the number of connection slots from `was` to `now`. Fewer slots are taken out as
/// open connections close, by a task that holds them for good.
fn resize(slots: &Arc<Semaphore>, was: usize, now: usize) {
    if now > was {
        slots.add_permits(now - was);
    } else if was > now {
        let fewer = u32::try_from(was - now).unwrap_or(u32::MAX);
        let slots = Arc::clone(slots);
        tokio::spawn(async move {
            if let Ok(taken) = slots.acquire_many_owned(fewer).await {
                taken.forget();
            }
        });
    }
}

/// The slot a connection holds until it closes: one of `max_connections`, for every route,
/// or one of the reserve, for one health check.
struct Slot {
    _permit: OwnedSemaphorePermit,
    probes_only: bool,
}

impl Slot {
    fn full(permit: OwnedSemaphorePermit) -> Self {
        Self {
            _permit: permit,
            probes_only: false,
        }
    }

    fn probe(permit: OwnedSemaphorePermit) -> Self {
        Self {
            _permit: permit,
            probes_only: true,
        }
    }
}

struct Connection {
    app: Router,
    limits: Limits,
    probes_only: bool,
    /// Turns true on shutdown.
    stopping: watch::Receiver<bool>,
    opened: Instant,
}

impl Connection {
    /// Time to finish the TLS handshake, and each request's headers.
    fn header_timeout(&self) -> Duration {
        if self.probes_only {
            self.limits.header_read_timeout.min(PROBE_TIMEOUT)
        } else {
            self.limits.header_read_timeout
        }
    }

    async fn run(self, stream: TcpStream, remote: SocketAddr, acceptor: Option<TlsAcceptor>) {
        let _ = stream.set_nodelay(true);
        if let Err(e) =
            rustix::net::sockopt::set_socket_send_buffer_size(&stream, SEND_BUFFER_BYTES)
        {
            debug!(%remote, error = %e, "cannot size the send buffer");
        }
        let stream = WriteDeadline::new(stream, self.limits.write_timeout);
        let Some(acceptor) = acceptor else {
            let peer = Peer {
                remote,
                certificate: None,
            };
            return self.serve_http(stream, peer).await;
        };
        let stream =
            match tokio::time::timeout(self.header_timeout(), acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    metrics::counter!(REJECTIONS, "reason" => "tls_handshake").increment(1);
                    return info!(%remote, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    metrics::counter!(REJECTIONS, "reason" => "tls_handshake").increment(1);
                    return info!(%remote, "TLS handshake timed out");
                }
            };
        let certificate = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| Arc::new(ClientCertificate::from_der(leaf)));
        self.serve_http(
            stream,
            Peer {
                remote,
                certificate,
            },
        )
        .await;
    }

    async fn serve_http<S>(mut self, stream: S, peer: Peer)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let app = self.app.clone();
        let probes_only = self.probes_only;
        let remote = peer.remote;
        let activity = Arc::new(Activity::new());
        let service = hyper::service::service_fn({
            let activity = Arc::clone(&activity);
            move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(peer.clone());
                let app = app.clone();
                let busy = activity.begin();
                async move {
                    let _busy = busy;
                    let path = request.uri().path();
                    if probes_only && ![HEALTH_PATH, READY_PATH, GRPC_HEALTH_PATH].contains(&path) {
                        return Ok(at_the_connection_limit());
                    }
                    app.oneshot(request).await
                }
            }
        });
        let mut http = auto::Builder::new(TokioExecutor::new());
        // Half-close: a client that shuts down its sending side after the request still gets
        // the answer (hyper would otherwise drop the request at the end of input).
        http.http1()
            .timer(TokioTimer::new())
            .half_close(true)
            .keep_alive(!probes_only)
            .header_read_timeout(self.header_timeout())
            .max_buf_size(self.limits.read_buffer_bytes());
        // A connection in the reserve makes one health check (HTTP/2 is negotiated in ALPN
        // before the connection knows it is one; the idle close ends it after its check).
        http.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(if probes_only { 1 } else { MAX_STREAMS })
            .max_header_list_size(
                u32::try_from(self.limits.read_buffer_bytes()).unwrap_or(u32::MAX),
            )
            .keep_alive_interval(Some(self.limits.header_read_timeout))
            .keep_alive_timeout(self.limits.write_timeout);
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let mut connection = std::pin::pin!(connection);
        let too_old = tokio::time::sleep_until(self.opened + self.limits.max_connection_age);
        let closing = tokio::select! {
            result = connection.as_mut() => Some(result),
            () = too_old => {
                debug!(%remote, "connection reached max_connection_age");
                None
            }
            () = activity.idle_for(self.header_timeout()) => {
                debug!(%remote, "connection idle");
                None
            }
            () = shutting_down(&mut self.stopping) => None,
        };
        let result = match closing {
            Some(result) => result,
            None => {
                // Requests in progress may finish, within the write timeout: an HTTP/2 stream
                // its client never ends would otherwise keep the connection for good.
                connection.as_mut().graceful_shutdown();
                match tokio::time::timeout(self.limits.write_timeout, connection).await {
                    Ok(result) => result,
                    Err(_) => {
                        debug!(%remote, "requests still open at close are cut off");
                        return;
                    }
                }
            }
        };
        if let Err(e) = result {
            debug!(error = %e, "connection closed with an error");
        }
    }
}

/// Requests in progress on one connection. hyper closes an idle HTTP/1 connection after the
/// header read timeout, but lets an HTTP/2 connection, or one that has sent nothing, idle
/// until `max_connection_age`; this closes either after the same timeout without a request.
/// A request only counts itself and notes the time: the watcher looks when its timer fires,
/// so that no request wakes the connection's task (two wakeups a request cost more than the
/// rest of this loop).
#[derive(Debug)]
struct Activity {
    in_progress: AtomicUsize,
    /// When a request last began or ended, in milliseconds from `opened`.
    last_change: AtomicU64,
    opened: Instant,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_progress: AtomicUsize::new(0),
            last_change: AtomicU64::new(0),
            opened: Instant::now(),
        }
    }

    /// Counts a request in progress until the guard is dropped.
    fn begin(self: &Arc<Self>) -> Busy {
        self.in_progress.fetch_add(1, Ordering::SeqCst);
        self.note_change();
        Busy(Arc::clone(self))
    }

    fn note_change(&self) {
        let millis = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_change.store(millis, Ordering::SeqCst);
    }

    /// Resolves once no request has been in progress for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        let mut wait = timeout;
        loop {
            tokio::time::sleep(wait).await;
            if self.in_progress.load(Ordering::SeqCst) > 0 {
                wait = timeout;
                continue;
            }
            let last = self.opened + Duration::from_millis(self.last_change.load(Ordering::SeqCst));
            match timeout.checked_sub(last.elapsed()) {
                Some(left) if !left.is_zero() => wait = left,
                _ => return,
            }
        }
    }
}

/// A request in progress: see [`Activity::begin`].
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        // The time first: a watcher that sees no request in progress then sees its end.
        self.0.note_change();
        self.0.in_progress.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Resolves once the server shuts down.
async fn shutting_down(stopping: &mut watch::Receiver<bool>) {
    // An error means the server is gone too.
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// The answer to anything but a health check beyond `max_connections`.
fn at_the_connection_limit() -> axum::response::Response {
    metrics::counter!(REJECTIONS, "reason" => "connection_limit").increment(1);
    let mut response =
        ApiError::Unavailable("the server is at its connection limit; retry shortly".into())
            .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
