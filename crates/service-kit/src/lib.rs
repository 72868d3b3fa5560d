//! What every process of the quick-order demo shares, so that `order-srv`,
//! `stock-srv`, `order-api` and the coordinator never copy each other.
//!
//! | module | go-zero counterpart | what it gives |
//! |---|---|---|
//! | [`config`] | `conf.MustLoad` + `service.ServiceConf` | YAML with `${VAR:-default}`, strict PascalCase structs |
//! | [`datasource`] | `DB.DataSource` | Go DSN or sqlx URL → sqlx URL; the password never printed |
//! | [`branch`] | the `logic` files' barrier boilerplate | metadata → barrier, gid span, outcome → dtm's codes |
//! | [`db`] | `sqlx.NewMysql(...)` + the README's manual SQL | business pool, database + barrier table created at start |
//! | [`telemetry`] | `logx` + `core/trace` | `tracing` to stdout, plain or JSON, `RUST_LOG` overrides; OTLP span export (`Telemetry`) |
//! | [`trace`] | `core/trace` propagation | W3C `traceparent` in (child spans, `trace_id` in logs) and out (or passed through) |
//! | [`shutdown`] | `core/proc/signals.go` | a future that resolves on SIGINT / SIGTERM |
//! | [`grpc`] | `zrpc.MustNewServer(...).Start()` | health, reflection, etcd registration, deregister-then-drain |
//! | [`http`] | `rest.MustNewServer(...).Start()` | axum served with a header-read timeout, a connection cap and a bounded drain |
//! | [`listener`] | `MaxConns` | a TCP listener that stops accepting at a connection limit |
//! | [`http_branch`] | dtm's HTTP branch handlers | query → barrier, outcome → 200/409/425/400/503, the `HttpListenOn` server |
//! | [`admin`] | – | the optional read-only `AdminListenOn` endpoint: one gid's barrier and business rows |
//! | [`service`] | – | a service's gRPC server plus its optional HTTP branches |
//! | [`metrics`] | `core/prometheus`, `rest/handler/prometheushandler.go`, `zrpc`'s prometheus interceptor | go-zero's metric names for HTTP, gRPC and the pool, barrier outcomes, the `Prometheus` listener |
//! | [`ready`] | – | the one stdout line saying "serving, here are my addresses" |
//! | [`shipped`] | – | the `etc/*.yaml` files compiled in, for the launchers that start the system from them |
//! | `testing` (feature `testing`) | – | a branch service on a test's task (`RunningService`), for the services' tests |
//!
//! A typical `main` (thin: build, bind, run until a shutdown signal):
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use service_kit::{config, grpc, shutdown, telemetry};
//! let conf: config::RpcServerConf = config::load_yaml("etc/order-srv.yaml")?;
//! telemetry::init_with(conf.log_service_name(), &conf.log)?;
//! let server = grpc::GrpcServer::bind(&conf.listen_on, grpc::GrpcSettings::from_conf(&conf))
//!     .await?
//!     .register_in(conf.etcd.clone());
//! // .add_service(OrderServer::new(...))
//! server.run_until_stopped(shutdown::signal()).await?;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod branch;
pub mod config;
pub mod datasource;
pub mod db;
pub mod grpc;
pub mod http;
pub mod http_branch;
pub mod listener;
pub mod metrics;
pub mod ready;
pub mod service;
pub mod shipped;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;

pub use config::{ConfigError, DbConf, LogConf, LogEncoding, Mode, PrometheusConf, RpcServerConf, load_yaml};
pub use datasource::{Backend, DataSource, DataSourceError};
pub use db::{BusinessDb, DbError};
pub use grpc::{GrpcServer, GrpcSettings, ServeError};
pub use metrics::{Metrics, MetricsServer};
pub use service::{
    BranchParts, ServiceServer, build_branch_server, build_loopback_branch_server,
    build_loopback_branch_server_with,
};

/// Why a service could not start: one enum for every process of the demo,
/// shown by `main` and turned into a non-zero exit code.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The YAML file is missing, malformed or incomplete.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Logging could not be set up.
    #[error(transparent)]
    Telemetry(#[from] telemetry::TelemetryError),
    /// The business database is unreachable or could not be prepared.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A business table could not be created.
    #[error("cannot create the business tables: {0}")]
    Schema(#[from] sqlx::Error),
    /// The server could not bind, register or serve.
    #[error(transparent)]
    Serve(#[from] ServeError),
}
