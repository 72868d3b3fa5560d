//! A userspace TCP fault proxy: the `netem` of this harness.
//!
//! One [`Link`] = one listening socket that forwards every connection to
//! one upstream address, byte for byte, through a pair of pumps per
//! direction. The chaos schedule changes a link's [`LinkState`] at run
//! time, and every pump obeys it on the next chunk:
//!
//! | fault | what the pumps do |
//! |---|---|
//! | latency `d` | each chunk is delivered `d` after it was read (the pipe stays full: latency without a bandwidth cap) |
//! | stall | chunks are read and held until the stall ends; connections stay open, nothing arrives (a black hole that heals) |
//! | drop | every open connection is reset (RST, as a crashed middlebox or a cut cable with a timeout does), and new ones are reset as soon as they are accepted, until the fault ends |
//!
//! Why userspace: CI machines have no `tc netem` and no root for iptables.
//! A proxy only sees the links it is placed on, so the topology puts one
//! in front of every branch service instance (the address that instance
//! publishes in etcd is the proxy's) and one between each group of
//! database clients and MariaDB.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What a link currently does to its traffic. [`LinkState::default`] is a
/// clean link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkState {
    /// Added one-way delay per chunk, both directions.
    pub latency: Duration,
    /// Hold every byte until this is cleared.
    pub stalled: bool,
    /// Reset new connections as soon as they are accepted.
    pub refusing: bool,
    /// Bumped to reset every connection open at that moment.
    pub resets: u64,
}

/// Counters, for the report.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections reset by a drop fault (open ones and refused new ones).
    pub reset: AtomicU64,
    /// Connections that could not reach the upstream (it was down).
    pub upstream_failed: AtomicU64,
}

/// A running proxy; dropping it stops accepting (open connections finish).
pub struct Link {
    /// `coordinators→order-srv-1`, for the schedule and the report.
    pub name: String,
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Where the bytes go.
    pub upstream: SocketAddr,
    /// The fault switch every pump watches.
    control: watch::Sender<LinkState>,
    /// Counters shared with the connection tasks.
    pub stats: Arc<LinkStats>,
    /// The accept loop.
    task: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Link {
    /// Binds `listen` (port 0 allowed) and starts forwarding to `upstream`.
    pub async fn bind(
        name: impl Into<String>,
        listen: SocketAddr,
        upstream: SocketAddr,
    ) -> std::io::Result<Link> {
        let listener = TcpListener::bind(listen).await?;
        let listen = listener.local_addr()?;
        let (control, state) = watch::channel(LinkState::default());
        let stats = Arc::new(LinkStats::default());
        let task = tokio::spawn(accept_loop(listener, upstream, state, Arc::clone(&stats)));
        Ok(Link { name: name.into(), listen, upstream, control, stats, task })
    }

    /// Adds `latency` to every chunk (zero: none).
    pub fn set_latency(&self, latency: Duration) {
        self.control.send_modify(|s| s.latency = latency);
    }

    /// Starts or ends a stall.
    pub fn set_stalled(&self, stalled: bool) {
        self.control.send_modify(|s| s.stalled = stalled);
    }

    /// Starts a drop (reset everything open, refuse new connections) or ends it.
    pub fn set_dropping(&self, dropping: bool) {
        self.control.send_modify(|s| {
            if dropping {
                s.resets += 1;
            }
            s.refusing = dropping;
        });
    }

    /// Back to a clean link (open connections stay open).
    pub fn heal(&self) {
        self.control.send_modify(|s| *s = LinkState { resets: s.resets, ..LinkState::default() });
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: watch::Receiver<LinkState>,
    stats: Arc<LinkStats>,
) {
    loop {
        let (client, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%err, "fault proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        if state.borrow().refusing {
            stats.reset.fetch_add(1, Ordering::Relaxed);
            reset(&client);
            continue;
        }
        tokio::spawn(connection(client, upstream, state.clone(), Arc::clone(&stats)));
    }
}

/// Closes with RST instead of FIN: the peer sees "connection reset", the
/// way a dropped connection looks, not an orderly end of stream.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

async fn connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut state: watch::Receiver<LinkState>,
    stats: Arc<LinkStats>,
) {
    let epoch = state.borrow().resets;
    let mut server = match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(upstream)).await {
        Ok(Ok(server)) => server,
        _ => {
            // Upstream down: the client sees its connection reset, as if it
            // had reached the dead host directly.
            stats.upstream_failed.fetch_add(1, Ordering::Relaxed);
            reset(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let reset_now = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let forward = pipe(client_read, server_write, state.clone());
        let backward = pipe(server_read, client_write, state.clone());
        let dropped = async {
            // Resolves when a drop fault starts after this connection was opened.
            let _ = state.wait_for(|s| s.resets != epoch).await;
        };
        tokio::select! {
            _ = futures::future::join(forward, backward) => false,
            () = dropped => true,
        }
    };
    if reset_now {
        stats.reset.fetch_add(1, Ordering::Relaxed);
        reset(&client);
        reset(&server);
    }
}

/// One direction: a reader that timestamps chunks and a writer that
/// delivers each one `latency` later, unless the link is stalled. Ends at
/// EOF (passed on as a half-close) or at the first error.
async fn pipe(mut from: ReadHalf<'_>, mut to: WriteHalf<'_>, state: watch::Receiver<LinkState>) {
    // Bounded: a stalled writer makes the reader stop reading, so a stall
    // fills the kernel buffers and the sender blocks, as on a real network.
    let (chunks, mut inbox) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if chunks.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
        // Dropping `chunks` tells the writer the stream ended.
    };
    let write = async move {
        let mut state = state;
        while let Some((read_at, chunk)) = inbox.recv().await {
            let latency = state.borrow().latency;
            if !latency.is_zero() {
                tokio::time::sleep_until(read_at + latency).await;
            }
            if state.wait_for(|s| !s.stalled).await.is_err() {
                return;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    futures::future::join(read, write).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        Ok(buf.to_vec())
    }

    fn any() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    #[tokio::test]
    async fn forwards_bytes_both_ways() {
        let link = Link::bind("test", any(), echo_server().await).await.unwrap();
        assert_eq!(round_trip(link.listen).await.unwrap(), b"ping");
    }

    #[tokio::test]
    async fn latency_delays_each_direction() {
        let link = Link::bind("test", any(), echo_server().await).await.unwrap();
        link.set_latency(Duration::from_millis(150));
        let started = std::time::Instant::now();
        assert_eq!(round_trip(link.listen).await.unwrap(), b"ping");
        assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_stall_holds_bytes_until_it_ends() {
        let link = Link::bind("test", any(), echo_server().await).await.unwrap();
        link.set_stalled(true);
        let call = tokio::spawn(round_trip(link.listen));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!call.is_finished(), "nothing may pass a stalled link");
        link.heal();
        assert_eq!(call.await.unwrap().unwrap(), b"ping");
    }

    #[tokio::test]
    async fn a_drop_resets_open_connections_and_refuses_new_ones() {
        let link = Link::bind("test", any(), echo_server().await).await.unwrap();
        let mut open = TcpStream::connect(link.listen).await.unwrap();
        open.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        open.read_exact(&mut buf).await.unwrap();
        link.set_dropping(true);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(open.read(&mut buf).await.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset));
        assert!(round_trip(link.listen).await.is_err());
        link.set_dropping(false);
        assert_eq!(round_trip(link.listen).await.unwrap(), b"ping");
        assert!(link.stats.reset.load(Ordering::Relaxed) >= 2);
    }
}
