//! `order-api`: the demo's HTTP entry point (axum, `:8889`).
//!
//! `POST /order/quickCreate {"userId":1,"goodsId":1,"num":1}` asks the
//! coordinator for a gid and submits a two-step saga over gRPC:
//!
//! | step | action | compensation |
//! |---|---|---|
//! | 01 | `<OrderRpcConf>/pb.order/create` | `<OrderRpcConf>/pb.order/createRollback` |
//! | 02 | `<StockRpcConf>/pb.stock/deduct` | `<StockRpcConf>/pb.stock/deductRollback` |
//!
//! with `wait_result`, and answers with the outcome (see [`handler`]):
//!
//! ```text
//! $ curl -XPOST localhost:8889/order/quickCreate -d '{"userId":1,"goodsId":1,"num":1}'
//! {"gid":"a3f…","status":"succeed"}                                   (200)
//! $ curl -XPOST localhost:8889/order/quickCreate -d '{"userId":1,"goodsId":1,"num":1000}'
//! {"gid":"b71…","status":"failed","reason":"insufficient stock or unknown goods"}   (409)
//! $ curl localhost:8889/order/status/b71…
//! {"gid":"b71…","status":"failed","branches":[{"branchId":"01","op":"action",…},…]}
//! ```
//! order-api itself never calls order-srv or stock-srv: the coordinator does.
//!
//! Metrics (go-zero's `http_server_*` per route template, and
//! `dtm_client_*` for each submit and query to the coordinator) are kept in
//! [`svc::ServiceContext::metrics`] and served on a listener of their own
//! when the config's `Prometheus` block has a `Host` (see
//! `service_kit::metrics`).
//!
//! | here | go-zero |
//! |---|---|
//! | `main.rs` | `order.go` (`-f etc/order.yaml`) |
//! | [`config`] | `internal/config/config.go` |
//! | [`handler`] | `internal/handler/routes.go`, `createHandler.go` |
//! | [`logic`] | `internal/logic/createLogic.go` |
//! | [`svc`] | `internal/svc/serviceContext.go` |
//! | [`types`] | `internal/types/types.go` |
//! | [`error`] | `httpx.Error` + an error handler |
//! | [`workflow`] | the quick order as a dtm workflow (`TransMode: workflow`) |

pub mod config;
pub mod error;
pub mod handler;
pub mod logic;
pub mod svc;
pub mod types;
pub mod workflow;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use service_kit::MetricsServer;
use tokio::net::TcpListener;

pub use config::Config;

use crate::svc::{ServiceContext, SvcError};

/// Why order-api could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(#[from] SvcError),
    /// `Host:Port` could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The `Prometheus` block's listener could not be bound.
    #[error("metrics: {0}")]
    Metrics(#[from] service_kit::ServeError),
}

/// A bound, not yet serving order-api.
pub struct Server {
    /// Bound at build time so port 0 works and the address is known.
    listener: TcpListener,
    /// The address actually bound.
    local_addr: SocketAddr,
    /// The application.
    app: Router,
    /// `MaxConns`: open connections at most.
    max_connections: usize,
    /// How long in-flight requests may finish after shutdown (`Timeout`).
    drain_timeout: std::time::Duration,
    /// Called when serving starts (the binary prints its readiness line).
    on_ready: Option<service_kit::ready::OnReady>,
    /// The metrics listener, when the `Prometheus` block asks for one.
    metrics: Option<MetricsServer>,
}

/// Builds the service: clients ready (nothing dialled), port bound.
pub async fn build(config: Config) -> Result<Server, StartError> {
    let addr = format!("{}:{}", config.host, config.port);
    let svc = ServiceContext::new(config)?;
    let bind_error = |source| StartError::Bind { addr: addr.clone(), source };
    let listener = TcpListener::bind(&addr).await.map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    let (max_connections, drain_timeout) = (svc.config.max_conns, svc.config.request_timeout());
    if let Some(workflows) = &svc.workflows {
        workflows.set_callback(workflow::callback_url(&svc.config, local_addr));
    }
    let callback = svc.workflows.as_ref().map(|w| w.router(workflow::CALLBACK_PATH));
    let metrics = svc.metrics.clone();
    let metrics_server = match &svc.config.prometheus {
        Some(conf) => MetricsServer::bind(conf, &metrics).await?,
        None => None,
    };
    Ok(Server {
        listener,
        local_addr,
        app: metrics.instrument_http(match callback {
            Some(callback) => handler::routes(svc).merge(callback),
            None => handler::routes(svc),
        }),
        max_connections,
        drain_timeout,
        on_ready: None,
        metrics: metrics_server,
    })
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("max_connections", &self.max_connections)
            .field("drain_timeout", &self.drain_timeout)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The metrics listener's address, if one is served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }

    /// Prints the [readiness line](service_kit::ready) of process `name`
    /// with the `http` (and, if served, `metrics`) address when serving
    /// starts. The binary calls this; embedded servers do not.
    pub fn announce_ready(self, name: &'static str) -> Server {
        let mut addrs = vec![("http", self.local_addr)];
        addrs.extend(self.metrics_addr().map(|addr| ("metrics", addr)));
        self.on_ready(move || service_kit::ready::announce(name, &addrs))
    }

    /// Calls `hook` when serving starts.
    pub fn on_ready(mut self, hook: impl FnOnce() + Send + 'static) -> Server {
        self.on_ready = Some(Box::new(hook));
        self
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets the
    /// requests in flight finish (each is bounded by `Timeout`); the
    /// metrics listener, if any, stops last.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let metrics = self.metrics.take().map(MetricsServer::spawn);
        let served = self.serve(shutdown).await;
        let stopped = match metrics {
            Some(metrics) => metrics.stop().await.map_err(std::io::Error::other),
            None => Ok(()),
        };
        served.and(stopped)
    }

    async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        tracing::info!(addr = %self.local_addr(), "order-api listening");
        // A request may take `Timeout`; the drain waits for that much, and
        // slow clients must send their request head within 10 s.
        let limits = service_kit::http::HttpServeLimits {
            max_connections: self.max_connections,
            drain_timeout: self.drain_timeout,
            ..Default::default()
        };
        // The listener is bound and the clients are built (nothing to
        // prepare: order-api has no database), so serving starts with the
        // next poll; connections accepted meanwhile wait in the backlog.
        if let Some(hook) = self.on_ready {
            hook();
        }
        service_kit::http::serve(self.listener, self.app, shutdown, limits).await?;
        tracing::info!("order-api stopped");
        Ok(())
    }
}
