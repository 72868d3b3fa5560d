//! (feature `testing`) A branch service running on a task of a test: what
//! order-srv's and stock-srv's tests start, written once.
//!
//! [`RunningService::start`] builds the service on loopback
//! ([`crate::build_loopback_branch_server`]) and runs it through
//! the harness's [`RunningServer`]; [`RunningService::on_sqlite`] first
//! makes it a fresh SQLite database. Failures panic: this is test code.

use std::net::SocketAddr;

use harness::{RunningServer, TestDatabase};

use crate::{BranchParts, ServeError};

/// A branch service serving on a task until [`RunningService::stop`].
pub struct RunningService {
    /// Its gRPC address.
    pub grpc: SocketAddr,
    /// `http://127.0.0.1:port` of its HTTP branches, when served.
    pub http: Option<String>,
    /// `http://127.0.0.1:port/metrics` (the `Prometheus` block's `Path`),
    /// when a metrics listener is served.
    pub metrics: Option<String>,
    /// The run.
    server: RunningServer<ServeError>,
    /// The SQLite database of [`RunningService::on_sqlite`], kept alive.
    db: Option<TestDatabase>,
}

impl RunningService {
    /// Service `name` (parts `P`) on `data_source`, with HTTP branches when `http`.
    pub async fn start<P>(name: &str, data_source: &str, http: bool) -> RunningService
    where
        P: BranchParts<sqlx::MySql> + BranchParts<sqlx::Postgres> + BranchParts<sqlx::Sqlite>,
    {
        let extra = if http { "HttpListenOn: 127.0.0.1:0\n" } else { "" };
        RunningService::start_with::<P>(name, data_source, extra).await
    }

    /// Like [`RunningService::start`], with `extra` top-level YAML keys
    /// (`HttpListenOn: 127.0.0.1:0`, a `Prometheus:` block with `Path: /metrics`).
    pub async fn start_with<P>(name: &str, data_source: &str, extra: &str) -> RunningService
    where
        P: BranchParts<sqlx::MySql> + BranchParts<sqlx::Postgres> + BranchParts<sqlx::Sqlite>,
    {
        harness::init_tracing();
        let server = crate::build_loopback_branch_server_with::<P>(name, data_source, extra)
            .await
            .unwrap_or_else(|err| panic!("{name} does not start: {err}"));
        let (grpc, http) = (server.local_addr(), server.http_addr().map(|addr| format!("http://{addr}")));
        // The path is the block's; the tests that read it use go-zero's default.
        let metrics = server.metrics_addr().map(|addr| format!("http://{addr}/metrics"));
        let server = RunningServer::spawn(|stop| server.run_until_stopped(stop));
        RunningService { grpc, http, metrics, server, db: None }
    }

    /// Like [`RunningService::start`], on a fresh SQLite database.
    pub async fn on_sqlite<P>(name: &str, http: bool) -> RunningService
    where
        P: BranchParts<sqlx::MySql> + BranchParts<sqlx::Postgres> + BranchParts<sqlx::Sqlite>,
    {
        let extra = if http { "HttpListenOn: 127.0.0.1:0\n" } else { "" };
        RunningService::on_sqlite_with::<P>(name, extra).await
    }

    /// Like [`RunningService::start_with`], on a fresh SQLite database.
    pub async fn on_sqlite_with<P>(name: &str, extra: &str) -> RunningService
    where
        P: BranchParts<sqlx::MySql> + BranchParts<sqlx::Postgres> + BranchParts<sqlx::Sqlite>,
    {
        let db = harness::sqlite_database();
        let mut service = RunningService::start_with::<P>(name, &db.url, extra).await;
        service.db = Some(db);
        service
    }

    /// The URL of the database of [`RunningService::on_sqlite`].
    pub fn data_source(&self) -> &str {
        &self.db.as_ref().expect("started on_sqlite").url
    }

    /// Stops it gracefully; panics if the run fails or hangs.
    pub async fn stop(self) {
        self.server.stop().await;
    }
}
