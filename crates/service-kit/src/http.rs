//! Serving an axum application the way a go-zero `rest` server runs, with
//! the protections a public HTTP port needs:
//!
//! * a **connection cap** (go-zero's `MaxConns`): at most
//!   [`HttpServeLimits::max_connections`] connections are open at once,
//!   further clients wait in the kernel's accept queue
//!   ([`crate::listener::LimitedListener`]);
//! * a **header-read timeout**: a client must send its request head within
//!   [`HttpServeLimits::header_read_timeout`], or its connection is closed
//!   (a slowloris cannot hold slots for ever);
//! * a **bounded drain**: when the shutdown future resolves, no new
//!   connection is accepted, running requests get
//!   [`HttpServeLimits::drain_timeout`] to finish, and whatever still runs
//!   then is cut off.

use std::future::Future;
use std::io;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use crate::listener::LimitedListener;

/// The limits of [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpServeLimits {
    /// Open connections at most (go-zero's `MaxConns`, 10000).
    pub max_connections: usize,
    /// Longest a client may take to send its request head.
    pub header_read_timeout: Duration,
    /// Longest running requests may take to finish after shutdown.
    pub drain_timeout: Duration,
}

impl Default for HttpServeLimits {
    fn default() -> HttpServeLimits {
        HttpServeLimits {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_millis(5500),
        }
    }
}

/// Serves `app` on `listener` (HTTP/1.1 and HTTP/2) until `shutdown`
/// resolves, then drains within the limits (see the module docs).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: HttpServeLimits,
) -> io::Result<()> {
    let mut listener = LimitedListener::new(listener, limits.max_connections.max(1));
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let graceful = GracefulShutdown::new();
    // Owns every connection task, so that the ones still open after the
    // drain timeout are really closed (dropping the set aborts them).
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            (connection, peer) = listener.next() => {
                // Handlers may ask who is calling (`ConnectInfo<SocketAddr>`),
                // e.g. to log the address behind an admin action.
                let service = TowerToHyperService::new(app.clone().map_request(
                    move |mut request: axum::http::Request<hyper::body::Incoming>| {
                        request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                        request
                    },
                ));
                let connection = builder.serve_connection(TokioIo::new(connection), service).into_owned();
                let connection = graceful.watch(connection);
                connections.spawn(async move {
                    if let Err(err) = connection.await {
                        // Client resets and header timeouts: routine, not news.
                        tracing::debug!(%peer, error = %err, "connection ended with an error");
                    }
                });
            }
            // Reap finished connections so the set stays as small as the
            // number of open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            drain_timeout = ?limits.drain_timeout,
            open = connections.len(),
            "connections still open after the drain timeout; closing them"
        );
    }
    connections.shutdown().await;
    Ok(())
}
