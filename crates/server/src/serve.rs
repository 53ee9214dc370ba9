//! The connection loop: accept, TLS handshake, HTTP/1.1 under connection limits, and a
//! graceful shutdown. Each request carries the [`Peer`] it came from.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use crate::limits::Limits;
use crate::telemetry::REJECTIONS;
use crate::tls::{ClientCertificate, TlsConfig};

/// How long in-flight requests get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Who is at the other end of a request's connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub remote: SocketAddr,
    /// The client certificate the TLS handshake verified, if one was presented.
    pub certificate: Option<Arc<ClientCertificate>>,
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `shutdown` resolves, then
/// lets open requests finish for up to 30 s.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<TlsConfig>>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
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
        let _ = stream.set_nodelay(true);
        let acceptor = tls.as_ref().map(|tls| tls.acceptor());
        let connection = Connection {
            app: app.clone(),
            limits: limits.clone(),
            watcher: graceful.watcher(),
        };
        tokio::spawn(async move {
            let _slot = slot;
            let Some(acceptor) = acceptor else {
                let peer = Peer {
                    remote,
                    certificate: None,
                };
                return connection.run(stream, peer).await;
            };
            let stream =
                match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                    .await
                {
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
            connection
                .run(
                    stream,
                    Peer {
                        remote,
                        certificate,
                    },
                )
                .await;
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("requests still open {SHUTDOWN_GRACE:?} after the shutdown signal are cut off");
    }
}

struct Connection {
    app: Router,
    limits: Limits,
    watcher: Watcher,
}

impl Connection {
    async fn run<S>(self, stream: S, peer: Peer)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let app = self.app;
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(peer.clone());
            app.clone().oneshot(request)
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        // Half-close: a client that shuts down its sending side after the request still gets
        // the answer (hyper would otherwise drop the request at the end of input).
        http.timer(TokioTimer::new())
            .half_close(true)
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(self.limits.read_buffer_bytes());
        let connection = http.serve_connection(TokioIo::new(stream), service);
        if let Err(e) = self.watcher.watch(connection).await {
            debug!(error = %e, "connection closed with an error");
        }
    }
}
