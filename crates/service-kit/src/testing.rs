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
        harness::init_tracing();
        let server = crate::build_loopback_branch_server::<P>(name, data_source, http)
            .await
            .unwrap_or_else(|err| panic!("{name} does not start: {err}"));
        let (grpc, http) = (server.local_addr(), server.http_addr().map(|addr| format!("http://{addr}")));
        let server = RunningServer::spawn(|stop| server.run_until_stopped(stop));
        RunningService { grpc, http, server, db: None }
    }

    /// Like [`RunningService::start`], on a fresh SQLite database.
    pub async fn on_sqlite<P>(name: &str, http: bool) -> RunningService
    where
        P: BranchParts<sqlx::MySql> + BranchParts<sqlx::Postgres> + BranchParts<sqlx::Sqlite>,
    {
        let db = harness::sqlite_database();
        let mut service = RunningService::start::<P>(name, &db.url, http).await;
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
