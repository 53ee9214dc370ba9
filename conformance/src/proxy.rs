//! A TCP proxy that can pass, refuse or swallow connections, to take a service away from a
//! client and give it back.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// What a [`Proxy`] does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward to the service.
    Pass,
    /// Close the port and drop open connections: connections are refused.
    Refuse,
    /// Accept connections and never answer; open connections stall.
    Blackhole,
}

/// A loopback TCP proxy in front of one service.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A passing proxy on a free loopback port in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = bind("127.0.0.1:0".parse().expect("a valid address"));
        let addr = listener.local_addr().expect("a bound listener");
        Self {
            addr,
            upstream,
            task: Some(tokio::spawn(serve(listener, upstream, ProxyMode::Pass))),
        }
    }

    /// The proxy's own address, for clients.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches mode; open connections of the old mode are dropped.
    pub async fn set(&mut self, mode: ProxyMode) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        if mode != ProxyMode::Refuse {
            self.task = Some(tokio::spawn(serve(bind(self.addr), self.upstream, mode)));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn bind(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(addr).expect("the proxy's port is free");
    socket.listen(1024).expect("listen")
}

/// Accepts until aborted. Forwarding tasks live in a set owned here, so aborting the proxy
/// also cuts the connections it carried.
async fn serve(listener: TcpListener, upstream: SocketAddr, mode: ProxyMode) {
    let mut connections = tokio::task::JoinSet::new();
    let mut held = Vec::new();
    while let Ok((mut client, _)) = listener.accept().await {
        if mode == ProxyMode::Blackhole {
            held.push(client);
            continue;
        }
        connections.spawn(async move {
            if let Ok(mut server) = TcpStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}
