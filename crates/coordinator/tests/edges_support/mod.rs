//! Shared helpers of the coordinator's edge tests (API, process, etcd).
//!
//! * [`BranchServer`] — the harness's recording branch server, as an HTTP
//!   branch service whose behaviour each saga chooses through its payload
//!   (`{"fail":true}`, `{"delay_ms":300}`), optionally guarding a business
//!   effect with the subtransaction barrier on MariaDB;
//! * [`InProcess`] — a coordinator built with [`Coordinator::build`] and run
//!   on a task, for API tests;
//! * [`CoordinatorProcess`] — the real `coordinator` binary as a child
//!   process, for crash, shutdown and registration tests;
//! * small HTTP helpers (`saga`, `wait_final`).
//!
//! Not every test binary uses every helper.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use coordinator::config::{Config, StoreConfig, StoreDriver};
use coordinator::server::Coordinator;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use harness::branches::Call;
use harness::branches::{Answer, BranchServers};

/// An HTTP branch service, `ANY /busi/{op}`: the harness's recording
/// branch server with the edge tests' behaviour.
///
/// Behaviour per call, from the JSON payload: `"delay_ms": n` sleeps first;
/// `"fail": true` answers an action with 409 FAILURE (compensations always
/// succeed, as dtm requires).
pub struct BranchServer {
    /// The server and its record.
    servers: BranchServers,
    /// When set, actions/compensations run their effect through the barrier here.
    effects: Option<sqlx::MySqlPool>,
}

impl BranchServer {
    /// A recording branch server without a database.
    pub async fn start() -> BranchServer {
        BranchServer::start_with(None).await
    }

    /// A branch server whose ops insert one `effects` row each, guarded by
    /// the barrier (`barrier` table) on `pool`.
    pub async fn with_effects(pool: sqlx::MySqlPool) -> BranchServer {
        for statement in barrier::schema::statements(barrier::schema::mysql::BARRIER) {
            sqlx::query(&statement).execute(&pool).await.expect("create barrier table");
        }
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS effects (id BIGINT AUTO_INCREMENT PRIMARY KEY, gid VARCHAR(128) NOT NULL, \
             branch_id VARCHAR(128) NOT NULL, op VARCHAR(45) NOT NULL)",
        )
        .execute(&pool)
        .await
        .expect("create effects table");
        BranchServer::start_with(Some(pool)).await
    }

    async fn start_with(effects: Option<sqlx::MySqlPool>) -> BranchServer {
        let servers = BranchServers::start().await;
        let pool = effects.clone();
        servers.recorder.on_success(move |call| busi(call, pool.clone()));
        BranchServer { servers, effects }
    }

    /// `http://127.0.0.1:port/busi/<op>`.
    pub fn url(&self, op: &str) -> String {
        self.servers.http_url(&format!("busi/{op}"))
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.servers.recorder.calls()
    }

    /// Calls for one gid.
    pub fn calls_for(&self, gid: &str) -> Vec<Call> {
        self.servers.recorder.calls_of(gid)
    }

    /// `(gid, branch_id, op) → number of business effects` from the database.
    pub async fn effects(&self) -> BTreeMap<(String, String, String), i64> {
        let pool = self.effects.as_ref().expect("branch server without effects");
        let rows: Vec<(String, String, String, i64)> =
            sqlx::query_as("SELECT gid, branch_id, op, COUNT(*) FROM effects GROUP BY gid, branch_id, op")
                .fetch_all(pool)
                .await
                .expect("read effects");
        rows.into_iter().map(|(g, b, o, n)| ((g, b, o), n)).collect()
    }
}

/// One call of `/busi/{op}`: the payload's behaviour, then the effect
/// behind the barrier when there is a database.
async fn busi(call: Call, effects: Option<sqlx::MySqlPool>) -> Answer {
    let op = call.last_segment().to_string();
    let payload: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
    if let Some(ms) = payload.get("delay_ms").and_then(Value::as_u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let fail = op == "action" && payload.get("fail").and_then(Value::as_bool) == Some(true);
    if let Some(pool) = &effects {
        let guard = match barrier::BranchBarrier::from_received(&call.received()) {
            Ok(b) => b,
            Err(e) => return (400, e.to_string()),
        };
        let mut guard = guard.with_table(barrier::BarrierTable::new("barrier").expect("table name"));
        let (gid, branch_id) = (call.param("gid"), call.param("branch_id"));
        let result = guard
            .call_with_pool(pool, async |conn| {
                if fail {
                    return Err(barrier::BranchError::failure("insufficient stock"));
                }
                sqlx::query("INSERT INTO effects (gid, branch_id, op) VALUES (?, ?, ?)")
                    .bind(&gid)
                    .bind(&branch_id)
                    .bind(&op)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
            .await;
        return match result {
            Ok(_) => (200, json!({"dtm_result": "SUCCESS"}).to_string()),
            Err(e) => {
                let (status, body) = e.into_http();
                (status.as_u16(), body)
            }
        };
    }
    if fail {
        return (409, json!({"dtm_result": "FAILURE", "message": "insufficient"}).to_string());
    }
    (200, json!({"dtm_result": "SUCCESS"}).to_string())
}

/// Test timing: small intervals so retries and recovery happen within seconds.
pub fn fast_config(store: StoreConfig) -> Config {
    Config {
        listen_host: "127.0.0.1".into(),
        http_port: 0,
        grpc_port: 0,
        store,
        retry_interval: 1,
        max_retry_interval: 2,
        timeout_to_fail: 3,
        request_timeout: 3,
        trans_cron_interval: 1,
        ..Config::default()
    }
}

/// A SQLite store in `dir`.
pub fn sqlite_store(dir: &Path) -> StoreConfig {
    StoreConfig {
        driver: StoreDriver::Sqlite,
        db: dir.join("coordinator.db").display().to_string(),
        ..StoreConfig::default()
    }
}

/// A MySQL store config for database `db` on `127.0.0.1:port` as root.
pub fn mysql_store(port: u16, db: &str) -> StoreConfig {
    StoreConfig {
        driver: StoreDriver::Mysql,
        host: "127.0.0.1".into(),
        port,
        user: "root".into(),
        db: db.into(),
        ..StoreConfig::default()
    }
}

/// The port of a `mysql://root@127.0.0.1:<port>` server URL.
pub fn port_of(server_url: &str) -> u16 {
    server_url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("port in server url")
}

/// A coordinator running on a task of this test's runtime.
pub struct InProcess {
    /// `http://127.0.0.1:port`.
    pub http: String,
    /// `http://127.0.0.1:port` of the gRPC listener (for tonic clients).
    pub grpc: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), coordinator::server::ServerError>>>,
    /// Keeps a SQLite directory alive.
    _dir: Option<tempfile::TempDir>,
}

impl InProcess {
    /// Builds and runs a coordinator with `config`.
    pub async fn start(config: Config) -> InProcess {
        InProcess::start_in(config, None).await
    }

    /// A coordinator on a fresh SQLite file, with `tweak` applied to the test config.
    pub async fn sqlite(tweak: impl FnOnce(&mut Config)) -> InProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = fast_config(sqlite_store(dir.path()));
        tweak(&mut config);
        InProcess::start_in(config, Some(dir)).await
    }

    async fn start_in(config: Config, dir: Option<tempfile::TempDir>) -> InProcess {
        harness::init_tracing();
        let coordinator = Coordinator::build(config).await.expect("build coordinator");
        let http = format!("http://{}", coordinator.http_addr());
        let grpc = format!("http://{}", coordinator.grpc_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(coordinator.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        InProcess { http, grpc, stop: Some(stop), task: Some(task), _dir: dir }
    }

    /// Graceful shutdown; returns what `run_until_stopped` returned.
    pub async fn stop(mut self) -> Result<(), coordinator::server::ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("coordinator task"),
            None => Ok(()),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The `coordinator` binary running as a child process.
pub struct CoordinatorProcess {
    child: Option<Child>,
    /// HTTP port.
    pub http_port: u16,
    /// gRPC port.
    pub grpc_port: u16,
    /// The process's stdout/stderr.
    pub log: PathBuf,
    /// The config file it was started with.
    pub config_path: PathBuf,
}

impl CoordinatorProcess {
    /// Writes `yaml` (which must not set the ports) to `dir` and starts
    /// the binary with `-f` on ports 0; waits for its readiness line, which
    /// tells the ports it got.
    pub fn start(dir: &Path, name: &str, yaml: &str) -> CoordinatorProcess {
        CoordinatorProcess::start_on(dir, name, yaml, 0, 0)
    }

    /// Like [`CoordinatorProcess::start`] with given ports (a restart keeps
    /// them); the readiness line must show exactly those.
    pub fn start_on(
        dir: &Path,
        name: &str,
        yaml: &str,
        http_port: u16,
        grpc_port: u16,
    ) -> CoordinatorProcess {
        let config_path = dir.join(format!("{name}.yaml"));
        let full = format!("ListenHost: 127.0.0.1\nHttpPort: {http_port}\nGrpcPort: {grpc_port}\n{yaml}");
        std::fs::write(&config_path, full).expect("write config");
        let log = dir.join(format!("{name}.log"));
        let log_start = harness::log_len(&log);
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
            .arg("-f")
            .arg(&config_path)
            .env("RUST_LOG", std::env::var("TEST_COORDINATOR_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file)
            .spawn()
            .expect("spawn coordinator");
        let ready =
            harness::wait_ready_line(&log, log_start, "coordinator", child.id(), Duration::from_secs(60))
                .unwrap_or_else(|err| panic!("{err}"));
        let (http, grpc) = (ready.port("http"), ready.port("grpc"));
        if http_port != 0 || grpc_port != 0 {
            assert_eq!((http, grpc), (http_port, grpc_port), "the coordinator did not keep its ports");
        }
        CoordinatorProcess { child: Some(child), http_port: http, grpc_port: grpc, log, config_path }
    }

    /// `http://127.0.0.1:<http port>`.
    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// SIGKILL, no chance to clean up (a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (up to 30 s) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("send SIGTERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("coordinator ignored SIGTERM for 30 s:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A saga body as dtm's Go SDK sends it (including its always-present fields).
pub fn saga(gid: &str, steps: &[(String, String)], payloads: &[Value], wait_result: bool) -> Value {
    json!({
        "gid": gid,
        "trans_type": "saga",
        "steps": steps.iter().map(|(a, c)| json!({"action": a, "compensate": c})).collect::<Vec<_>>(),
        "payloads": payloads.iter().map(Value::to_string).collect::<Vec<_>>(),
        "custom_data": null,
        "query_prepared": null,
        "protocol": null,
        "wait_result": wait_result,
        "concurrent": false,
        "branch_headers": null,
        "some_future_field": {"ignored": true},
    })
}

/// The two steps `(action, compensate)` of a branch server, `n` times.
pub fn steps(server: &BranchServer, n: usize) -> Vec<(String, String)> {
    (0..n).map(|_| (server.url("action"), server.url("compensate"))).collect()
}

/// POSTs JSON, returns status and body.
pub async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let response = client.post(url).json(body).send().await.expect("POST");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// GETs, returns status and body.
pub async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.expect("GET");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// The status of `gid` from `/api/dtmsvr/query` (`None` if unknown or unreachable).
pub async fn status_of(client: &reqwest::Client, base: &str, gid: &str) -> Option<String> {
    let response = client.get(format!("{base}/api/dtmsvr/query?gid={gid}")).send().await.ok()?;
    let body: Value = response.json().await.ok()?;
    body["transaction"]["status"].as_str().map(str::to_string)
}

/// Polls until `gid` is `succeed` or `failed`; panics after `timeout`.
pub async fn wait_final(client: &reqwest::Client, base: &str, gid: &str, timeout: Duration) -> String {
    harness::wait_until(&format!("{gid} final"), timeout, async || match status_of(client, base, gid).await {
        Some(status) if status == "succeed" || status == "failed" => Ok(status),
        other => Err(format!("{other:?}")),
    })
    .await
}
