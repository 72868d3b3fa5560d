//! The listeners of one demo service: gRPC always, dtm-style HTTP branches
//! when `HttpListenOn` is configured, metrics when the `Prometheus` block
//! has a `Host`, and a read-only admin endpoint when `AdminListenOn` is set.
//!
//! Start-up order: tables, then listeners, then serving and registration,
//! then the [readiness line](crate::ready) (see [`build_branch_server`]).
//! The HTTP branches start serving before the gRPC server registers, so
//! the line is true for both.
//!
//! Shutdown order: the gRPC server deregisters from etcd and drains first
//! (see [`crate::grpc`]); the HTTP branches keep serving meanwhile — the
//! coordinator may still be delivering a compensation over HTTP — and are
//! drained last, within their own drain timeout. The metrics listener
//! stops after both, so a last scrape still sees the final counts.

use std::future::Future;
use std::net::SocketAddr;

use tokio::sync::watch;

use crate::http_branch::HttpBranchServer;
use crate::metrics::{Metrics, MetricsServer, serve_with_metrics};
use crate::{GrpcServer, ServeError};

/// A bound, not yet serving service.
pub struct ServiceServer {
    /// The gRPC server (business services, health, registration).
    grpc: GrpcServer,
    /// The HTTP branches, if configured.
    http: Option<HttpBranchServer>,
    /// The metrics listener, if the `Prometheus` block asks for one.
    metrics: Option<MetricsServer>,
    /// The read-only admin endpoint (`AdminListenOn`), if configured.
    admin: Option<HttpBranchServer>,
}

impl ServiceServer {
    /// A service with only its gRPC listener.
    pub fn grpc(grpc: GrpcServer) -> ServiceServer {
        ServiceServer { grpc, http: None, metrics: None, admin: None }
    }

    /// Adds the admin endpoint.
    pub fn with_admin(mut self, admin: HttpBranchServer) -> ServiceServer {
        self.admin = Some(admin);
        self
    }

    /// The admin endpoint's address, if served.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(HttpBranchServer::local_addr)
    }

    /// Adds HTTP branches.
    pub fn with_http(mut self, http: HttpBranchServer) -> ServiceServer {
        self.http = Some(http);
        self
    }

    /// Adds the metrics listener.
    pub fn with_metrics_server(mut self, metrics: MetricsServer) -> ServiceServer {
        self.metrics = Some(metrics);
        self
    }

    /// The metrics listener's address, if one is served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }

    /// The gRPC address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.grpc.local_addr()
    }

    /// The HTTP address, if HTTP branches are served.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpBranchServer::local_addr)
    }

    /// Prints the [readiness line](crate::ready) of process `name` (with
    /// the gRPC and, if served, HTTP and metrics addresses) once the
    /// service serves and is registered. The binaries call this; embedded
    /// servers do not.
    pub fn announce_ready(self, name: &'static str) -> ServiceServer {
        let mut addrs = vec![("grpc", self.local_addr())];
        addrs.extend(self.http_addr().map(|addr| ("http", addr)));
        addrs.extend(self.metrics_addr().map(|addr| ("metrics", addr)));
        addrs.extend(self.admin_addr().map(|addr| ("admin", addr)));
        self.on_ready(move || crate::ready::announce(name, &addrs))
    }

    /// Calls `hook` once the service serves (HTTP branches included) and
    /// is registered, if configured.
    pub fn on_ready(mut self, hook: impl FnOnce() + Send + 'static) -> ServiceServer {
        self.grpc = self.grpc.on_ready(hook);
        self
    }

    /// Serves until `shutdown` resolves, then stops gRPC (deregister,
    /// drain), then HTTP, then the metrics listener. Returns the first error.
    /// The admin endpoint is read-only: it stops with the service, no drain.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let ServiceServer { grpc, http, metrics, admin } = self;
        let admin = admin.map(|admin| {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(admin.run_until_stopped(async move {
                let _ = stopped.await;
            }));
            (stop, task)
        });
        // Boxed: the gRPC server's future is large, and this one holds it
        // beside the metrics listener's.
        let result = serve_with_metrics(metrics, Box::pin(serve_grpc_and_http(grpc, http, shutdown))).await;
        if let Some((stop, task)) = admin {
            let _ = stop.send(());
            task.abort();
        }
        result
    }
}

/// gRPC and, if configured, the HTTP branches, stopped in that order.
async fn serve_grpc_and_http(
    grpc: GrpcServer,
    http: Option<HttpBranchServer>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let Some(http) = http else {
        return grpc.run_until_stopped(shutdown).await;
    };
    let drain_timeout = http.drain_timeout();
    let (stop, mut stopped) = watch::channel(false);
    let mut http_task = tokio::spawn(http.run_until_stopped(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    }));
    let grpc = grpc.run_until_stopped(shutdown).await;
    let _ = stop.send(true);
    let http = match tokio::time::timeout(drain_timeout, &mut http_task).await {
        Ok(Ok(result)) => result,
        Ok(Err(err)) => Err(ServeError::Task(err.to_string())),
        Err(_) => {
            tracing::warn!(timeout = ?drain_timeout, "HTTP branch calls still running after the drain timeout; closing");
            http_task.abort();
            Ok(())
        }
    };
    grpc.and(http)
}

/// What one branch service (order-srv, stock-srv) adds on one database
/// engine: its tables, its tonic service and its HTTP branch routes.
/// Everything else — connecting the database, binding, registration, HTTP
/// limits, the readiness line — is [`build_branch_server`], shared.
pub trait BranchParts<DB: sqlx::Database> {
    /// Creates the service's tables if missing. Runs before any listener is
    /// bound: nothing can reach the service before its tables exist.
    fn prepare(pool: &sqlx::Pool<DB>) -> impl Future<Output = Result<(), sqlx::Error>>;

    /// Adds its tonic service.
    fn add_grpc(server: GrpcServer, pool: sqlx::Pool<DB>, max_msg_size: usize) -> GrpcServer;

    /// The dtm-style HTTP branch routes (served when `HttpListenOn` is set).
    fn http_routes(pool: sqlx::Pool<DB>, timeout: std::time::Duration) -> axum::Router;

    /// The business rows the admin endpoint shows for a gid (beside the
    /// barrier rows; served when `AdminListenOn` is set).
    fn admin_queries() -> Vec<crate::admin::AdminQuery>;
}

/// Builds a branch service from its configuration, in the order that makes
/// an open port mean a prepared service: database connected and its tables
/// created *first*, then gRPC (and HTTP, if configured) bound — port 0
/// allowed — and not yet serving.
///
/// Binding before the tables exist would let the kernel accept connections
/// (a TCP probe, a harness polling the port, a first request) for a service
/// that then answers "table doesn't exist".
pub async fn build_branch_server<P>(config: &crate::RpcServerConf) -> Result<ServiceServer, crate::StartError>
where
    P: BranchParts<sqlx::MySql> + BranchParts<sqlx::Postgres> + BranchParts<sqlx::Sqlite>,
{
    let settings = crate::GrpcSettings::from_conf(config);
    let max_msg_size = settings.max_msg_size;
    let db = crate::BusinessDb::connect(&config.db, config.db_acquire_timeout()).await?;
    match &db {
        crate::BusinessDb::MySql(pool) => <P as BranchParts<sqlx::MySql>>::prepare(pool).await?,
        crate::BusinessDb::Postgres(pool) => <P as BranchParts<sqlx::Postgres>>::prepare(pool).await?,
        crate::BusinessDb::Sqlite(pool) => <P as BranchParts<sqlx::Sqlite>>::prepare(pool).await?,
    }
    // One registry per service: gRPC and HTTP calls, barrier outcomes, the pool.
    let metrics = Metrics::new();
    metrics.track_barrier();
    let db_name = config.db.data_source.database().unwrap_or_else(|| "sqlite".to_string());
    metrics.register_pool(db_name, db.clone());
    let grpc = GrpcServer::bind(&config.listen_on, settings)
        .await?
        .register_in(config.etcd.clone())
        .with_metrics(metrics.clone());
    let admin_db = db.clone();
    let timeout = config.call_timeout();
    let (grpc, routes) = match db {
        crate::BusinessDb::MySql(pool) => (
            <P as BranchParts<sqlx::MySql>>::add_grpc(grpc, pool.clone(), max_msg_size),
            <P as BranchParts<sqlx::MySql>>::http_routes(pool, timeout),
        ),
        crate::BusinessDb::Postgres(pool) => (
            <P as BranchParts<sqlx::Postgres>>::add_grpc(grpc, pool.clone(), max_msg_size),
            <P as BranchParts<sqlx::Postgres>>::http_routes(pool, timeout),
        ),
        crate::BusinessDb::Sqlite(pool) => (
            <P as BranchParts<sqlx::Sqlite>>::add_grpc(grpc, pool.clone(), max_msg_size),
            <P as BranchParts<sqlx::Sqlite>>::http_routes(pool, timeout),
        ),
    };
    let mut server = ServiceServer::grpc(grpc);
    if let Some(listen_on) = config.http_listen_on() {
        let limits = crate::http::HttpServeLimits { drain_timeout: timeout, ..Default::default() };
        let routes = metrics.instrument_http(routes);
        server = server.with_http(HttpBranchServer::bind(listen_on, routes, max_msg_size, limits).await?);
    }
    if let Some(listen_on) = config.admin_listen_on() {
        let queries = match &admin_db {
            crate::BusinessDb::MySql(_) => <P as BranchParts<sqlx::MySql>>::admin_queries(),
            crate::BusinessDb::Postgres(_) => <P as BranchParts<sqlx::Postgres>>::admin_queries(),
            crate::BusinessDb::Sqlite(_) => <P as BranchParts<sqlx::Sqlite>>::admin_queries(),
        };
        let routes = crate::admin::router(&config.name, admin_db, queries);
        let limits = crate::http::HttpServeLimits { drain_timeout: timeout, ..Default::default() };
        server = server.with_admin(HttpBranchServer::bind(listen_on, routes, 64 * 1024, limits).await?);
    }
    if let Some(conf) = &config.prometheus
        && let Some(listener) = MetricsServer::bind(conf, &metrics).await?
    {
        server = server.with_metrics_server(listener);
    }
    Ok(server)
}

/// A branch service on loopback, gRPC on port 0 and — when `http` — HTTP
/// branches on another port 0, without etcd, on `data_source`; every other
/// key at its default, exactly as a YAML file naming only these keys
/// gives. What the services' own tests start (one place for the YAML they
/// all wrote): built, not yet serving.
pub async fn build_loopback_branch_server<P>(
    name: &str,
    data_source: &str,
    http: bool,
) -> Result<ServiceServer, crate::StartError>
where
    P: BranchParts<sqlx::MySql> + BranchParts<sqlx::Postgres> + BranchParts<sqlx::Sqlite>,
{
    let extra = if http { "HttpListenOn: 127.0.0.1:0\n" } else { "" };
    build_loopback_branch_server_with::<P>(name, data_source, extra).await
}

/// [`build_loopback_branch_server`] with `extra` YAML keys (top-level,
/// one per line: `HttpListenOn: …`, a `Prometheus:` block).
pub async fn build_loopback_branch_server_with<P>(
    name: &str,
    data_source: &str,
    extra: &str,
) -> Result<ServiceServer, crate::StartError>
where
    P: BranchParts<sqlx::MySql> + BranchParts<sqlx::Postgres> + BranchParts<sqlx::Sqlite>,
{
    // JSON strings are YAML double-quoted scalars: any name or DSN stays one value.
    let quote = |value: &str| serde_json::Value::String(value.to_string()).to_string();
    let mut yaml =
        format!("Name: {}\nListenOn: 127.0.0.1:0\nDB:\n  DataSource: {}\n", quote(name), quote(data_source));
    yaml.push_str(extra);
    let config: crate::RpcServerConf =
        crate::config::parse_yaml(std::path::Path::new("loopback.yaml"), &yaml, |_| None)?;
    build_branch_server::<P>(&config).await
}
