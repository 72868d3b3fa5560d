//! The whole system as separate processes, the way a user runs it:
//! etcd, a private MariaDB, the coordinator, order-srv, stock-srv and
//! order-api — the real binaries, started with the `etc/` files a user gets
//! and overridden only through their `${VAR}` environment variables.
//!
//! Each test gets its own etcd, coordinator (SQLite store in a temp dir)
//! and services; the MariaDB server is shared by the tests of one binary,
//! each test on its own two databases.
//!
//! Every process is started on port 0 and waited for through its readiness
//! line (`ready <name> pid=… grpc=…`), which also tells the port it got —
//! never by polling a port picked in advance, which another test's process
//! may hold. A process restarted later gets the port it had. A system takes
//! a [`SystemSlot`] first, so only a few run at once on the machine.

#![allow(dead_code)] // each e2e_*.rs uses a different part

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use harness::{Etcd, GuardedProcess, MariaDb, ReadyLine, SystemSlot};
use serde_json::Value;

/// Declares each test `fn name(mode: &'static str)` twice, in `mod saga`
/// and `mod workflow` (order-api's `TransMode`).
#[allow(unused_macros)]
macro_rules! in_both_modes {
    ($($test:ident),* $(,)?) => {
        mod saga {
            $(#[tokio::test(flavor = "multi_thread")] async fn $test() { super::$test("saga").await })*
        }
        mod workflow {
            $(#[tokio::test(flavor = "multi_thread")] async fn $test() { super::$test("workflow").await })*
        }
    };
}

/// Where the workspace lives (for `etc/` and `cargo build`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// A binary of another package of the workspace (`target/<profile>/<name>`),
/// built once per test process.
pub fn binary(package: &str, name: &str) -> PathBuf {
    let path = harness::service_binaries().join(name);
    assert!(path.exists(), "{} is missing (package {package})", path.display());
    path
}

/// The MariaDB server of this test binary.
pub fn mariadb() -> &'static MariaDb {
    static SERVER: OnceLock<MariaDb> = OnceLock::new();
    SERVER.get_or_init(MariaDb::start)
}

/// One running process of the system.
pub struct Proc {
    /// The process (killed when dropped).
    pub process: GuardedProcess,
    /// Its main port (gRPC; HTTP for order-api).
    pub port: u16,
    /// Its log file.
    pub log: PathBuf,
    /// Its readiness line: every address it serves on.
    pub ready: ReadyLine,
}

impl Proc {
    /// Sends SIGTERM and waits for the process to exit.
    pub fn stop_gracefully(&mut self) {
        self.process.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.is_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!self.is_alive(), "process on port {} ignored SIGTERM:\n{}", self.port, self.log_tail());
    }

    /// SIGKILLs the process (no deregistration: its key expires with the lease).
    pub fn kill(&mut self) {
        self.process.signal("KILL");
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.is_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Running, and not a zombie waiting for the guard to reap it.
    pub fn is_alive(&self) -> bool {
        self.process.is_running()
    }

    /// Its whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of its log, for assertion messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Spawns `binary` through `env VAR=value … binary args…`, so the child
/// sees exactly the overrides a user would export.
fn spawn(binary: &Path, args: &[&str], env: &[(String, String)], log: &Path) -> GuardedProcess {
    let mut argv: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    argv.push(binary.display().to_string());
    argv.extend(args.iter().map(|a| a.to_string()));
    GuardedProcess::spawn("env", &argv, log, None)
}

/// How long a process may take from spawn to its readiness line (a busy
/// two-core machine builds a MariaDB schema slowly).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Spawns `binary` and waits for its readiness line as `name`.
fn start(
    name: &str,
    binary: &Path,
    args: &[&str],
    env: &[(String, String)],
    log: PathBuf,
    main: &str,
) -> Proc {
    let process = spawn(binary, args, env, &log);
    let ready = process.wait_ready(name, READY_TIMEOUT);
    Proc { process, port: ready.port(main), log, ready }
}

/// The system under test.
pub struct System {
    /// Held while the system exists: at most a few whole systems at once.
    pub slot: SystemSlot,
    /// Temp dir for logs and the coordinator's SQLite file.
    pub dir: tempfile::TempDir,
    /// This test's etcd.
    pub etcd: Etcd,
    /// `mysql://root@127.0.0.1:<port>/<order db>`.
    pub order_db: String,
    /// `mysql://root@127.0.0.1:<port>/<stock db>`.
    pub stock_db: String,
    /// The coordinator (gRPC port; HTTP port in `coordinator_http`).
    pub coordinator: Option<Proc>,
    /// The coordinator's HTTP port (0 until it first started).
    pub coordinator_http: u16,
    /// The coordinator's gRPC port (0 until it first started).
    pub coordinator_grpc: u16,
    /// order-srv, when running.
    pub order_srv: Option<Proc>,
    /// stock-srv instances.
    pub stock_srvs: Vec<Proc>,
    /// order-api.
    pub order_api: Option<Proc>,
    /// order-srv's port (0 until it first started; kept across restarts).
    pub order_srv_port: u16,
    /// Environment every process of this system gets on top of its own
    /// (e.g. `OTEL_ENDPOINT`, `LOG_ENCODING`).
    pub extra_env: Vec<(String, String)>,
    /// order-api's `TransMode` (`TRANS_MODE`): `saga` or `workflow`.
    pub trans_mode: &'static str,
}

impl System {
    /// etcd, databases and coordinator; no business services yet.
    pub fn infrastructure() -> System {
        System::infrastructure_with_env(&[])
    }

    /// [`System::infrastructure`], every process started with `env` too.
    pub fn infrastructure_with_env(env: &[(&str, &str)]) -> System {
        harness::init_tracing();
        let slot = harness::system_slot();
        let dir = tempfile::Builder::new().prefix("e2e-").tempdir().expect("temp dir");
        let etcd = Etcd::start_private();
        let server = mariadb().url();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        // The demo's names, made unique per test on the shared server.
        let order_db = format!("{server}/dtm-gozero-order-{}", &suffix[..12]);
        let stock_db = format!("{server}/dtm-gozero-stock-{}", &suffix[..12]);
        let mut system = System {
            slot,
            dir,
            etcd,
            order_db,
            stock_db,
            coordinator: None,
            coordinator_http: 0,
            coordinator_grpc: 0,
            order_srv: None,
            stock_srvs: Vec::new(),
            order_api: None,
            order_srv_port: 0,
            extra_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            trans_mode: "saga",
        };
        system.start_coordinator();
        system
    }

    /// Everything: infrastructure, order-srv, one stock-srv, order-api.
    pub fn start() -> System {
        System::start_in("saga")
    }

    /// [`System::start`] with order-api in `TransMode` `mode`.
    pub fn start_in(mode: &'static str) -> System {
        let mut system = System::infrastructure();
        system.trans_mode = mode;
        system.start_order_srv();
        system.start_stock_srv();
        system.start_order_api();
        system
    }

    fn etcd_hosts(&self) -> String {
        self.etcd.hosts()
    }

    /// The coordinator from `etc/coordinator.yaml` (as docker-compose runs
    /// it), with fast retries and etcd registration as `dtmservice`. The
    /// first start picks its ports (0: the end point it registers gets the
    /// bound port); a restart keeps them.
    pub fn start_coordinator(&mut self) {
        let (http, grpc) = (self.coordinator_http, self.coordinator_grpc);
        let db = self.dir.path().join("coordinator.db");
        let env: Vec<(String, String)> = [
            ("LISTEN_HOST", "127.0.0.1".to_string()),
            ("HTTP_PORT", http.to_string()),
            ("GRPC_PORT", grpc.to_string()),
            ("STORE_DRIVER", "sqlite".to_string()),
            ("STORE_DB", db.display().to_string()),
            ("MICRO_SERVICE_DRIVER", "dtm-driver-gozero".to_string()),
            ("MICRO_SERVICE_TARGET", format!("etcd://{}/dtmservice", self.etcd_hosts())),
            ("MICRO_SERVICE_END_POINT", format!("127.0.0.1:{grpc}")),
            ("RETRY_INTERVAL", "1".to_string()),
            ("MAX_RETRY_INTERVAL", "2".to_string()),
            ("TRANS_CRON_INTERVAL", "1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(self.extra_env.iter().cloned())
        .collect();
        let log = self.dir.path().join("coordinator.log");
        let binary = binary("coordinator", "coordinator");
        let proc = start("coordinator", &binary, &["-f", &Self::etc("coordinator.yaml")], &env, log, "grpc");
        self.coordinator_http = proc.ready.port("http");
        self.coordinator_grpc = proc.ready.port("grpc");
        self.coordinator = Some(proc);
        self.wait_for_registration("dtmservice/", 1);
    }

    fn common_env(&self) -> Vec<(String, String)> {
        let mut env = vec![("ETCD_HOSTS".into(), self.etcd_hosts()), ("RUST_LOG".into(), "info".into())];
        env.extend(self.extra_env.iter().cloned());
        env
    }

    fn etc(name: &str) -> String {
        workspace().join("etc").join(name).display().to_string()
    }

    /// `etc/<name>` itself, or — with `extra` YAML — a copy with `extra`
    /// appended in the test's dir (what uncommenting a key there gives).
    fn config_with(&self, name: &str, extra: &str) -> String {
        if extra.is_empty() {
            return Self::etc(name);
        }
        let text = std::fs::read_to_string(Self::etc(name)).expect("read etc file");
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("{text}\n{extra}")).expect("write config");
        path.display().to_string()
    }

    /// order-srv from `etc/order-srv.yaml`, on the port it had before.
    pub fn start_order_srv(&mut self) {
        self.start_order_srv_with("");
    }

    /// order-srv with `extra` YAML appended to its etc file.
    pub fn start_order_srv_with(&mut self, extra: &str) {
        let port = self.order_srv_port;
        let mut env = self.common_env();
        env.push(("ORDER_SRV_LISTEN_ON".into(), format!("127.0.0.1:{port}")));
        env.push(("ORDER_DSN".into(), self.order_db.clone()));
        let log = self.dir.path().join("order-srv.log"); // appended to across restarts
        let binary = binary("order-srv", "order-srv");
        let config = self.config_with("order-srv.yaml", extra);
        let proc = start("order-srv", &binary, &["-f", &config], &env, log, "grpc");
        self.order_srv_port = proc.port;
        self.order_srv = Some(proc);
        self.wait_for_registration("order.rpc/", 1);
    }

    /// Another stock-srv instance from `etc/stock-srv.yaml`.
    pub fn start_stock_srv(&mut self) {
        self.start_stock_srv_with("");
    }

    /// A stock-srv instance with `extra` YAML appended to its etc file.
    pub fn start_stock_srv_with(&mut self, extra: &str) {
        let mut env = self.common_env();
        env.push(("STOCK_SRV_LISTEN_ON".into(), "127.0.0.1:0".into()));
        env.push(("STOCK_DSN".into(), self.stock_db.clone()));
        let log = self.dir.path().join(format!("stock-srv-{}.log", self.stock_srvs.len() + 1));
        let binary = binary("stock-srv", "stock-srv");
        let config = self.config_with("stock-srv.yaml", extra);
        let proc = start("stock-srv", &binary, &["-f", &config], &env, log, "grpc");
        self.stock_srvs.push(proc);
        self.wait_for_registration("stock.rpc/", self.stock_srvs.len());
    }

    /// order-api from `etc/order-api.yaml`, the coordinator found in etcd.
    pub fn start_order_api(&mut self) {
        self.start_order_api_with(&[]);
    }

    /// order-api with extra environment overrides (e.g. `SUBMIT_WAIT`).
    pub fn start_order_api_with(&mut self, extra: &[(&str, &str)]) {
        self.start_order_api_configured("", extra);
    }

    /// order-api with `yaml` appended to its etc file and `extra` env overrides.
    pub fn start_order_api_configured(&mut self, yaml: &str, extra: &[(&str, &str)]) {
        let mut env = self.common_env();
        env.push(("ORDER_API_HOST".into(), "127.0.0.1".into()));
        env.push(("ORDER_API_LISTEN_PORT".into(), "0".into()));
        env.push(("DTM_SERVER".into(), format!("etcd://{}/dtmservice", self.etcd_hosts())));
        env.push((
            "DTM_HTTP_SERVER".into(),
            format!("http://127.0.0.1:{}/api/dtmsvr", self.coordinator_http),
        ));
        env.push(("TRANS_MODE".into(), self.trans_mode.into()));
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let log = self.dir.path().join("order-api.log");
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_order-api"));
        let config = self.config_with("order-api.yaml", yaml);
        self.order_api = Some(start("order-api", &binary, &["-f", &config], &env, log, "http"));
    }

    /// `http://127.0.0.1:<order-api port>`.
    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.order_api.as_ref().expect("order-api running").port)
    }

    /// Waits until `count` instances are registered under `prefix`.
    pub fn wait_for_registration(&self, prefix: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.registered(prefix).len();
            if found == count {
                return;
            }
            assert!(Instant::now() < deadline, "{prefix}: {found} registrations, expected {count}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `(key, value)` under `prefix` in etcd.
    pub fn registered(&self, prefix: &str) -> Vec<(String, String)> {
        let endpoints = self.etcd.endpoints();
        let prefix = prefix.to_string();
        run_async(async move {
            let mut client = Client::connect(endpoints, None).await.expect("etcd client");
            let reply = client.get(prefix, Some(GetOptions::new().with_prefix())).await.expect("etcd get");
            reply
                .kvs()
                .iter()
                .map(|kv| (kv.key_str().unwrap_or("").to_string(), kv.value_str().unwrap_or("").to_string()))
                .collect()
        })
    }

    /// Stock of `goods_id`.
    pub async fn stock(&self, goods_id: i64) -> Option<i32> {
        let pool = sqlx::MySqlPool::connect(&self.stock_db).await.unwrap();
        let num = sqlx::query_scalar("select num from stock where goods_id = ?")
            .bind(goods_id)
            .fetch_optional(&pool)
            .await
            .unwrap();
        pool.close().await;
        num
    }

    /// Sets the stock of `goods_id` (inserting the row if needed).
    pub async fn set_stock(&self, goods_id: i64, num: i32) {
        let pool = sqlx::MySqlPool::connect(&self.stock_db).await.unwrap();
        sqlx::query(
            "insert into stock (goods_id, num) values (?, ?) on duplicate key update num = values(num)",
        )
        .bind(goods_id)
        .bind(num)
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }

    /// `(gid, row_state, user_id, goods_id, num)` of every order.
    pub async fn orders(&self) -> Vec<(String, i8, i64, i64, i32)> {
        let pool = sqlx::MySqlPool::connect(&self.order_db).await.unwrap();
        let rows = sqlx::query_as(
            "select cast(gid as char) as gid, row_state, user_id, goods_id, num from `order` order by id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        rows
    }

    /// Rows of `gid` in `dtm_barrier.barrier`: `(branch_id, op, reason)`.
    /// Both services' databases live on one server, so they share dtm's
    /// fixed `dtm_barrier` database, as in the Go demo.
    pub async fn barrier_rows(&self, gid: &str) -> Vec<(String, String, String)> {
        let pool = sqlx::MySqlPool::connect(&self.order_db).await.unwrap();
        let rows = sqlx::query_as(
            "select branch_id, op, reason from dtm_barrier.barrier where gid = ? order by branch_id, id",
        )
        .bind(gid)
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        rows
    }

    /// POSTs a quick order; returns the status and the JSON answer.
    pub async fn quick_create(&self, body: &Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/order/quickCreate", self.api()))
            .json(body)
            .send()
            .await
            .expect("order-api answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `GET /order/status/{gid}` until the saga is final; its status.
    pub async fn wait_final(&self, gid: &str, timeout: Duration) -> String {
        harness::wait_until(&format!("saga {gid} final"), timeout, async || {
            let response = reqwest::get(format!("{}/order/status/{gid}", self.api())).await.unwrap();
            if response.status() != 200 {
                return Err(format!("HTTP {}", response.status()));
            }
            let view: Value = response.json().await.unwrap();
            match view["status"].as_str().unwrap_or("") {
                status @ ("succeed" | "failed") => Ok(status.to_string()),
                other => Err(format!("still {other:?}")),
            }
        })
        .await
    }
}

/// Runs a future on a fresh runtime thread (for the sync helpers above,
/// callable from async tests too).
fn run_async<T: Send + 'static>(future: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(future)
    })
    .join()
    .expect("helper thread")
}
