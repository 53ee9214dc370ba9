//! A TCP proxy that can pass, refuse, swallow, delay or reset connections, to take a service
//! away from a client and give it back without restarting it (an emulator restarted loses its
//! state).
//!
//! One task owns the listener and every connection it carried. [`Proxy::set`] hands it the
//! new mode and returns once that mode is in force: the port is closed for [`ProxyMode::Refuse`]
//! and open connections are cut for `Refuse` and [`ProxyMode::Reset`]. The other modes act on
//! open connections as well as on new ones, so a connection pool sees what a real network
//! fault does to it: under [`ProxyMode::Blackhole`] bytes already in flight stop being
//! forwarded and the connections stay open.
//!
//! When a blackhole ends, the connections open during it are cut rather than resumed. Their
//! clients have given up on the requests they hold, and forwarding those late would run an
//! operation after its caller was told it failed (a store delete that timed out, then
//! deletes), which no case here means to test.

use std::future::pending;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

/// What a [`Proxy`] does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward to the service.
    Pass,
    /// Close the port and cut open connections: connections are refused.
    Refuse,
    /// Accept connections and never answer; open connections stall (nothing more is forwarded
    /// either way) but stay open, until the mode changes again and cuts them.
    Blackhole,
    /// Forward, but hold every chunk from the client for this long before passing it on: a
    /// request on a kept-alive connection gets about that much slower.
    Delay(Duration),
    /// Accept connections and close them at once; open connections are cut.
    Reset,
}

impl ProxyMode {
    /// Whether connections carried under `self` end when `next` comes in.
    fn cut_by(self, next: Self) -> bool {
        matches!(next, Self::Refuse | Self::Reset)
            || (self == Self::Blackhole && next != Self::Blackhole)
    }
}

/// A loopback TCP proxy in front of one service.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    commands: mpsc::Sender<(ProxyMode, oneshot::Sender<()>)>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A passing proxy on a free loopback port in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = bind("127.0.0.1:0".parse().expect("a valid address"));
        let addr = listener.local_addr().expect("a bound listener");
        let (commands, received) = mpsc::channel(1);
        let task = tokio::spawn(serve(listener, upstream, received));
        Self {
            addr,
            commands,
            task,
        }
    }

    /// The proxy's own address, for clients.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches mode; returns once the new mode is in force.
    pub async fn set(&self, mode: ProxyMode) {
        let (done, applied) = oneshot::channel();
        self.commands
            .send((mode, done))
            .await
            .expect("the proxy task runs while the proxy lives");
        applied
            .await
            .expect("the proxy task acknowledges every mode");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The task owns the listener and the connections: aborting it closes them all.
        self.task.abort();
    }
}

fn bind(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(addr).expect("the proxy's port is free");
    socket.listen(1024).expect("listen")
}

/// Accepts while the port is open and applies mode changes until the proxy is dropped.
async fn serve(
    listener: TcpListener,
    upstream: SocketAddr,
    mut commands: mpsc::Receiver<(ProxyMode, oneshot::Sender<()>)>,
) {
    let addr = listener.local_addr().expect("a bound listener");
    let mut listener = Some(listener);
    let (mode_tx, mode_rx) = watch::channel(ProxyMode::Pass);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some((mode, done)) = command else { return };
                let current = *mode_tx.borrow();
                if current.cut_by(mode) {
                    connections.shutdown().await;
                }
                listener = match (mode, listener) {
                    (ProxyMode::Refuse, _) => None,
                    (_, None) => Some(bind(addr)),
                    (_, open) => open,
                };
                mode_tx.send_replace(mode);
                let _ = done.send(());
            }
            accepted = accept(listener.as_ref()) => {
                // An accept error (out of descriptors, say) drops that one connection attempt.
                if let Ok(client) = accepted {
                    if *mode_rx.borrow() != ProxyMode::Reset {
                        connections.spawn(carry(client, upstream, mode_rx.clone()));
                    }
                }
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn accept(listener: Option<&TcpListener>) -> io::Result<TcpStream> {
    match listener {
        Some(listener) => listener.accept().await.map(|(stream, _)| stream),
        None => pending().await,
    }
}

/// Carries one client connection: connects upstream (unless blackholed), then forwards both
/// ways.
async fn carry(client: TcpStream, upstream: SocketAddr, mode: watch::Receiver<ProxyMode>) {
    stall_while_blackholed(&mode).await;
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pump(
            client_read,
            server_write,
            mode.clone(),
            Direction::ToService
        ),
        pump(server_read, client_write, mode, Direction::ToClient),
    );
}

/// Under a blackhole nothing moves: the connection waits until the mode changes, which cuts
/// it.
async fn stall_while_blackholed(mode: &watch::Receiver<ProxyMode>) {
    if *mode.borrow() == ProxyMode::Blackhole {
        pending::<()>().await;
    }
}

/// Which way a [`pump`] forwards; only chunks towards the service are delayed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToService,
    ToClient,
}

/// Copies chunks from `from` to `to` as the current mode allows, until either side closes.
/// A chunk read while blackholed is held (so reading stops too).
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mode: watch::Receiver<ProxyMode>,
    direction: Direction,
) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let current = *mode.borrow();
        if let (ProxyMode::Delay(delay), Direction::ToService) = (current, direction) {
            tokio::time::sleep(delay).await;
        }
        stall_while_blackholed(&mode).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::time::timeout;

    use super::*;

    /// A service that echoes every connection's bytes back.
    async fn echo_service() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    /// Sends `ping` and waits up to 500 ms for it to come back: `Some(bytes read)` (0 when the
    /// connection was closed), `None` when nothing came.
    async fn round_trip(stream: &mut TcpStream) -> Option<usize> {
        if stream.write_all(b"ping").await.is_err() {
            return Some(0);
        }
        let mut buf = [0; 4];
        match timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
            Ok(read) => Some(read.unwrap_or(0)),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn each_mode_does_to_open_and_new_connections_what_it_says() {
        let proxy = Proxy::start(echo_service().await).await;
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut open).await, Some(4), "pass");

        proxy
            .set(ProxyMode::Delay(Duration::from_millis(200)))
            .await;
        let started = Instant::now();
        assert_eq!(round_trip(&mut open).await, Some(4), "delay");
        assert!(started.elapsed() >= Duration::from_millis(200));

        proxy.set(ProxyMode::Blackhole).await;
        assert_eq!(
            round_trip(&mut open).await,
            None,
            "blackhole stalls open connections"
        );
        let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut new).await,
            None,
            "blackhole accepts and never answers"
        );

        proxy.set(ProxyMode::Pass).await;
        assert_eq!(
            round_trip(&mut open).await,
            Some(0),
            "a blackhole's connections are cut"
        );
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut open).await, Some(4), "pass again");

        proxy.set(ProxyMode::Reset).await;
        assert_eq!(
            round_trip(&mut open).await,
            Some(0),
            "reset cuts open connections"
        );
        let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut new).await, Some(0), "reset closes new ones");

        proxy.set(ProxyMode::Pass).await;
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        proxy.set(ProxyMode::Refuse).await;
        assert_eq!(
            round_trip(&mut open).await,
            Some(0),
            "refuse cuts open connections"
        );
        assert!(
            TcpStream::connect(proxy.addr()).await.is_err(),
            "and refuses new ones"
        );
    }
}
