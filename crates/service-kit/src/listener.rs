//! A TCP listener with a cap on open connections, for every server here.
//!
//! Without a cap, a flood of clients (or a slowloris holding sockets open)
//! costs a socket, a task and buffers each until memory or file descriptors
//! run out. With one, the process stops accepting at the limit; further
//! clients wait in the kernel's accept queue and are served as slots free up.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A TCP listener that holds at most `limit` connections open at once.
///
/// A semaphore permit is taken *before* `accept`, so when the limit is
/// reached we simply stop accepting: new clients wait in the kernel's
/// backlog (and time out there if we stay full) instead of costing us a
/// socket and a task each. The permit travels inside the connection and is
/// released when the connection is dropped.
pub struct LimitedListener {
    /// The bound socket.
    listener: TcpListener,
    /// One permit per open connection.
    permits: Arc<Semaphore>,
}

impl LimitedListener {
    /// Wraps `listener`, allowing `limit` simultaneous connections.
    pub fn new(listener: TcpListener, limit: usize) -> LimitedListener {
        LimitedListener { listener, permits: Arc::new(Semaphore::new(limit)) }
    }

    /// Waits for a free slot, then for a connection. Accept errors (e.g.
    /// out of file descriptors) are logged and retried after a pause, as
    /// axum's own listener does.
    pub async fn next(&mut self) -> (LimitedConnection, SocketAddr) {
        loop {
            let permit = match self.permits.clone().acquire_owned().await {
                Ok(permit) => permit,
                // Only a closed semaphore fails, and this one is never closed.
                Err(_closed) => std::future::pending().await,
            };
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    // gRPC and small JSON requests: do not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    return (LimitedConnection { stream, _permit: permit }, addr);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The connections as a stream, for tonic's `serve_with_incoming_shutdown`.
    pub fn into_stream(self) -> impl futures::Stream<Item = io::Result<LimitedConnection>> + Send + 'static {
        futures::stream::unfold(self, |mut listener| async move {
            let (connection, _addr) = listener.next().await;
            Some((Ok(connection), listener))
        })
    }
}

impl LimitedListener {
    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An accepted TCP connection that owns one slot of its [`LimitedListener`].
pub struct LimitedConnection {
    /// The socket; all I/O is delegated to it.
    stream: TcpStream,
    /// Released (freeing a slot) when the connection is dropped.
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for LimitedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for LimitedConnection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}
