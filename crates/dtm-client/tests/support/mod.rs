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
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), coordinator::server::ServerError>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    /// Fast timing: retries after 1-2 s, the recovery poller every second,
    /// prepared transactions time out after `timeout_to_fail` s.
    pub async fn start() -> InProcess {
        harness::init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config {
            listen_host: "127.0.0.1".into(),
            http_port: 0,
            grpc_port: 0,
            store: StoreConfig {
                driver: StoreDriver::Sqlite,
                db: dir.path().join("coordinator.db").display().to_string(),
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
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(coordinator.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        InProcess { http, grpc, stop: Some(stop), task, _dir: dir }
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
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}
