//! Harness of the client's end-to-end tests: our coordinator in process
//! (SQLite store, fast retries). The branches are the harness's recording
//! branch server (`harness::branches`), HTTP and gRPC, with per-path
//! scripts of replies and per-path hooks for branches with real behaviour
//! (a barrier on SQLite, a nested TCC).
#![allow(dead_code)]

use std::time::Duration;

use coordinator::config::{Config, StoreConfig, StoreDriver};
use coordinator::server::Coordinator;
use discovery::ChannelCache;
use dtm_client::{DtmClient, QueryResult, TransStatus};
use tokio::sync::oneshot;

/// A coordinator on a task of the test's runtime.
pub struct InProcess {
    /// `http://127.0.0.1:port/api/dtmsvr`.
    pub http: String,
    /// `127.0.0.1:port` (gRPC).
    pub grpc: String,
    /// The coordinator running now (replaced by [`InProcess::restart`]).
    running: Running,
    /// Holds the SQLite store, which outlives restarts.
    dir: tempfile::TempDir,
}

/// One coordinator: its serving task and how to stop it.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), coordinator::server::ServerError>>,
    engine: coordinator::Engine,
}

impl InProcess {
    /// Fast timing: retries after 1-2 s, the recovery poller every second,
    /// prepared transactions time out after `timeout_to_fail` s.
    pub async fn start() -> InProcess {
        harness::init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        let (http, grpc, running) = InProcess::run_on(dir.path()).await;
        InProcess { http, grpc, running, dir }
    }

    /// Stops the coordinator the way a killed process stops — passes cut
    /// where they are, leases not released, no drain — and starts a new one
    /// on the same store (new ports).
    pub async fn restart(&mut self) {
        self.running.engine.abandon();
        self.running.task.abort();
        let (http, grpc, running) = InProcess::run_on(self.dir.path()).await;
        (self.http, self.grpc, self.running) = (http, grpc, running);
    }

    /// A coordinator on the SQLite store in `dir`, on a task.
    async fn run_on(dir: &std::path::Path) -> (String, String, Running) {
        let config = Config {
            listen_host: "127.0.0.1".into(),
            http_port: 0,
            grpc_port: 0,
            store: StoreConfig {
                driver: StoreDriver::Sqlite,
                db: dir.join("coordinator.db").display().to_string(),
                ..StoreConfig::default()
            },
            retry_interval: 1,
            max_retry_interval: 2,
            timeout_to_fail: 30,
            request_timeout: 3,
            trans_cron_interval: 1,
            ..Config::default()
        };
        let coordinator = Coordinator::build(config).await.expect("build coordinator");
        let http = format!("http://{}/api/dtmsvr", coordinator.http_addr());
        let grpc = coordinator.grpc_addr().to_string();
        let engine = coordinator.engine().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(coordinator.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        (http, grpc, Running { stop: Some(stop), task, engine })
    }

    /// A client of the HTTP API.
    pub fn http_client(&self) -> DtmClient {
        DtmClient::new(&self.http, ChannelCache::new()).expect("http client")
    }

    /// A client of the gRPC API.
    pub fn grpc_client(&self) -> DtmClient {
        DtmClient::new(&self.grpc, ChannelCache::new()).expect("grpc client")
    }

    /// The transaction and its branches.
    pub async fn query(&self, gid: &str) -> QueryResult {
        self.http_client().query(&gid.parse().unwrap()).await.expect("query")
    }

    /// The status of `gid`.
    pub async fn status(&self, gid: &str) -> Option<TransStatus> {
        self.query(gid).await.transaction.map(|t| t.status)
    }

    /// Polls until `gid` is succeed or failed.
    pub async fn wait_final(&self, gid: &str, timeout: Duration) -> TransStatus {
        harness::wait_until(&format!("{gid} final"), timeout, async || match self.status(gid).await {
            Some(status) if status.is_final() => Ok(status),
            other => Err(format!("{other:?}")),
        })
        .await
    }

    /// `(branch_id, op, status)` of every branch row, in row order.
    pub async fn branches(&self, gid: &str) -> Vec<(String, String, String)> {
        self.query(gid)
            .await
            .branches
            .into_iter()
            .map(|b| (b.branch_id, b.op, format!("{:?}", b.status).to_lowercase()))
            .collect()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.running.stop.take() {
            let _ = stop.send(());
        }
        self.running.task.abort();
    }
}
