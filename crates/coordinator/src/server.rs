//! Putting the coordinator together: store, engine, two listeners, discovery.
//!
//! The life of a coordinator process, in order:
//!
//! 1. [`Coordinator::build`] opens the store (creating its tables), builds
//!    the engine and **binds** both listeners. Port 0 works: tests read the
//!    real ports back with [`Coordinator::http_addr`] / [`Coordinator::grpc_addr`].
//! 2. [`Coordinator::run_until_stopped`] starts serving HTTP and gRPC and the
//!    recovery poller, and only *then* registers `dtmservice/<lease id>` in
//!    etcd — a client that finds us there can connect at once.
//! 3. When the `shutdown` future resolves (SIGINT/SIGTERM in `main`):
//!    deregister first (revoke the lease, so clients stop choosing us),
//!    mark gRPC health NOT_SERVING, stop accepting, let in-flight requests
//!    finish, then shut the engine down (it finishes or releases the
//!    transactions it holds, so another instance can take them over at once).
//!
//! Branch URLs of the form `etcd://hosts/<key>/pkg.Svc/Method` are resolved
//! through etcd by the discovery crate's [`discovery::ChannelCache`] (one
//! etcd client per cluster, one watched key prefix per service).
//!
//! Each listener accepts at most `MaxConnections` connections at a time
//! ([`LimitedListener`]); further clients wait in the kernel's accept queue.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::grpc::{BearerInterceptor, DtmService};
use crate::api::http::{HttpLimits, HttpState, router};
use crate::config::{Config, RegistrationTarget};
use crate::engine::{Engine, EngineHooks, EngineSettings};
use crate::metrics::Metrics;

/// Why the coordinator could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is unusable (caught at build time).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The store could not be opened or migrated.
    #[error("cannot open the store ({store}): {message}")]
    Store {
        /// Loggable description of the store (no password).
        store: String,
        /// The store's error.
        message: String,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address we tried.
        addr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Registration in etcd failed at start-up.
    #[error("cannot register in etcd: {0}")]
    Discovery(#[from] discovery::DiscoveryError),
    /// A server task failed while running.
    #[error("{0} server failed: {1}")]
    Serve(&'static str, String),
}

/// A built, bound, not-yet-running coordinator.
pub struct Coordinator {
    /// The configuration it was built from (registration, limits, auth).
    config: Config,
    /// The transaction engine shared by both APIs and the poller.
    engine: Engine,
    /// Metrics shared by the APIs and the engine observer.
    metrics: Arc<Metrics>,
    /// Bound HTTP listener (dtm's 36789).
    http: TcpListener,
    /// Bound gRPC listener (dtm's 36790).
    grpc: TcpListener,
}

impl Coordinator {
    /// Opens the store, builds the engine, binds both listeners.
    pub async fn build(config: Config) -> Result<Coordinator, ServerError> {
        config.validate()?;
        let metrics = Arc::new(Metrics::new());
        let store = crate::store::open(config.store.url().expose(), config.store.max_open_conns)
            .await
            .map_err(|e| ServerError::Store { store: config.store.describe(), message: e.to_string() })?;
        let hooks = EngineHooks {
            observer: metrics.clone(),
            resolver: Some(Arc::new(discovery::ChannelCache::new())),
        };
        let engine = Engine::new(store, engine_settings(&config), hooks)
            .map_err(|e| ServerError::Serve("branch client", e.to_string()))?;
        let http = bind(&config.listen_host, config.http_port).await?;
        let grpc = bind(&config.listen_host, config.grpc_port).await?;
        tracing::info!(
            store = %config.store.describe(),
            http = %local(&http),
            grpc = %local(&grpc),
            "coordinator built"
        );
        Ok(Coordinator { config, engine, metrics, http, grpc })
    }

    /// The bound HTTP address (the real port when configured with 0).
    pub fn http_addr(&self) -> SocketAddr {
        local(&self.http)
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        local(&self.grpc)
    }

    /// The engine (for in-process tests and embedding).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully (see the
    /// module docs for the order). Returns an error if a server fails.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Coordinator { config, engine, metrics, http, grpc } = self;
        let stop_accepting = CancellationToken::new();
        // Everything that can fail is built before anything is spawned.
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServerError::Serve("grpc", format!("reflection: {e}")))?;
        let registration_target = config.micro_service.registration()?;
        engine.spawn_poller();

        // HTTP.
        let state = HttpState {
            engine: engine.clone(),
            metrics: metrics.clone(),
            auth_token: config.auth_token().cloned(),
        };
        let limits = HttpLimits {
            max_body_bytes: config.max_body_bytes,
            max_concurrent_requests: config.max_concurrent_requests,
            timeout: config.api_timeout(),
        };
        let app = router(state, limits);
        let http_listener = LimitedListener::new(http, config.max_connections);
        let token = stop_accepting.clone();
        let mut http_task: JoinHandle<io::Result<()>> = tokio::spawn(async move {
            axum::serve(http_listener, app).with_graceful_shutdown(token.cancelled_owned()).await
        });

        // gRPC.
        let (health, health_service) = tonic_health::server::health_reporter();
        let dtm =
            proto::dtmgimp::dtm_server::DtmServer::new(DtmService::new(engine.clone(), metrics.clone()))
                .max_decoding_message_size(config.max_body_bytes)
                .max_encoding_message_size(config.max_body_bytes);
        health.set_serving::<proto::dtmgimp::dtm_server::DtmServer<DtmService>>().await;
        let dtm = tonic::service::interceptor::InterceptedService::new(
            dtm,
            BearerInterceptor::new(config.auth_token().cloned()),
        );
        let incoming = LimitedListener::new(grpc, config.max_connections).into_stream();
        let token = stop_accepting.clone();
        let grpc_server = tonic::transport::Server::builder()
            .timeout(config.api_timeout())
            .layer(
                tower::ServiceBuilder::new()
                    .load_shed()
                    .layer(tower::limit::GlobalConcurrencyLimitLayer::new(config.max_concurrent_requests)),
            )
            .add_service(health_service)
            .add_service(reflection)
            .add_service(dtm)
            .serve_with_incoming_shutdown(incoming, token.cancelled_owned());
        let mut grpc_task: JoinHandle<io::Result<()>> =
            tokio::spawn(async move { grpc_server.await.map_err(io::Error::other) });

        // Announce ourselves only now that both listeners serve.
        let registration = match registration_target {
            Some(target) => match register(&target).await {
                Ok(registration) => Some(registration),
                Err(e) => {
                    stop_accepting.cancel();
                    let _ = tokio::join!(http_task, grpc_task);
                    engine.shutdown().await;
                    return Err(e);
                }
            },
            None => None,
        };

        // Run until told to stop, or until a server dies on its own.
        let failure = tokio::select! {
            () = shutdown => None,
            result = &mut http_task => Some(("http", flatten(result))),
            result = &mut grpc_task => Some(("grpc", flatten(result))),
        };
        match &failure {
            None => tracing::info!("shutdown requested"),
            Some((which, result)) => tracing::error!(server = which, ?result, "server stopped unexpectedly"),
        }

        // 1. Disappear from discovery, so new clients go elsewhere.
        if let Some(registration) = registration {
            let key = registration.key();
            match registration.deregister().await {
                Ok(()) => tracing::info!(%key, "deregistered from etcd"),
                Err(e) => {
                    tracing::warn!(%key, error = %e, "deregistration failed; the key expires with its lease")
                }
            }
        }
        // 2. Stop accepting and drain in-flight requests.
        health.set_not_serving::<proto::dtmgimp::dtm_server::DtmServer<DtmService>>().await;
        stop_accepting.cancel();
        let (http_result, grpc_result) = match failure {
            Some(("http", result)) => (result, flatten(grpc_task.await)),
            Some((_, result)) => (flatten(http_task.await), result),
            None => (flatten(http_task.await), flatten(grpc_task.await)),
        };
        // 3. Finish or release the transactions this instance holds.
        engine.shutdown().await;
        tracing::info!("coordinator stopped");
        http_result.map_err(|e| ServerError::Serve("http", e.to_string()))?;
        grpc_result.map_err(|e| ServerError::Serve("grpc", e.to_string()))?;
        Ok(())
    }
}

/// The engine's knobs from the configuration.
fn engine_settings(config: &Config) -> EngineSettings {
    let secs = Duration::from_secs;
    EngineSettings {
        retry_interval: secs(config.retry_interval),
        timeout_to_fail: secs(config.timeout_to_fail),
        request_timeout: secs(config.request_timeout),
        max_retry_interval: secs(config.max_retry_interval),
        trans_cron_interval: secs(config.trans_cron_interval),
        lease_duration: secs(config.retry_interval),
        ..EngineSettings::default()
    }
}

/// Registers `<key>/<lease id>` → EndPoint (verbatim) under a 10 s lease.
async fn register(target: &RegistrationTarget) -> Result<discovery::Registration, ServerError> {
    let conf = discovery::EtcdConf::new(target.hosts.clone(), target.key.clone());
    // The discovery crate logs the key and value once registered.
    Ok(discovery::Registration::register_value(&conf, target.end_point.clone()).await?)
}

/// Joins a task result and the server's own result.
fn flatten(result: Result<io::Result<()>, tokio::task::JoinError>) -> io::Result<()> {
    result.map_err(io::Error::other).and_then(|r| r)
}

async fn bind(host: &str, port: u16) -> Result<TcpListener, ServerError> {
    let addr = format!("{host}:{port}");
    TcpListener::bind(&addr).await.map_err(|source| ServerError::Bind { addr, source })
}

fn local(listener: &TcpListener) -> SocketAddr {
    // A bound TCP listener always has a local address.
    listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

// ---------------------------------------------------------------------------
// Connection limiting
// ---------------------------------------------------------------------------

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
    async fn next(&mut self) -> (LimitedConnection, SocketAddr) {
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

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.next().await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
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
