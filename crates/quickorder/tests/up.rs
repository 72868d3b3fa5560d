//! `quickorder up` as a user runs it: the real binary on a fresh data
//! folder, orders over HTTP, rows checked in the SQLite files, SIGTERM, and
//! a second start that keeps (or, with `--reset`, drops) the data; and the
//! same on a MariaDB whose root has no password.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use harness::{StdoutWatch, SystemSlot};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use sqlx::SqlitePool;

/// A running `quickorder up`, killed if the test fails half-way.
struct Up {
    child: Option<Child>,
    /// Its stdout, read as it comes.
    stdout: Option<StdoutWatch>,
    api: u16,
    /// The coordinator's HTTP port (its console).
    coordinator_http: u16,
}

impl Up {
    /// Starts `quickorder up` with every port 0 and waits for its readiness
    /// line, which names the ports it got.
    fn start(data: &Path, extra: &[&str]) -> Up {
        let mut command = Command::new(env!("CARGO_BIN_EXE_quickorder"));
        command.arg("up").arg("--data-dir").arg(data).args(extra);
        for flag in [
            "--api-port",
            "--coordinator-http-port",
            "--coordinator-grpc-port",
            "--order-port",
            "--stock-port",
        ] {
            command.arg(flag).arg("0");
        }
        let mut child = command
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start quickorder up");
        let stdout = StdoutWatch::new(child.stdout.take().expect("piped"), "quickorder", child.id());
        let mut up = Up { child: Some(child), stdout: None, api: 0, coordinator_http: 0 };
        let ready = stdout.wait_ready(Duration::from_secs(60)).unwrap_or_else(|err| panic!("{err}"));
        up.api = ready.port("api");
        up.coordinator_http = ready.port("coordinator-http");
        up.stdout = Some(stdout);
        up
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api)
    }

    /// Sends `signal` and waits for the exit; returns the status and stdout.
    fn stop(mut self, signal: Signal) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        kill(Pid::from_raw(child.id() as i32), signal).expect("signal quickorder");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "quickorder did not exit after {signal}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = self.stdout.take().expect("watched").finish();
        (status, out)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn quick_create(up: &Up, num: i64) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(up.url("/order/quickCreate"))
        .json(&json!({"userId": 7, "goodsId": 1, "num": num}))
        .send()
        .await
        .expect("order-api answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

async fn stock_left(data: &Path) -> i64 {
    let pool = SqlitePool::connect(&sqlite(data, "stock.db")).await.expect("open stock.db");
    let (num,): (i64,) =
        sqlx::query_as("SELECT num FROM stock WHERE goods_id = 1").fetch_one(&pool).await.expect("stock row");
    pool.close().await;
    num
}

async fn orders(data: &Path) -> Vec<(i64, i64, String)> {
    let pool = SqlitePool::connect(&sqlite(data, "order.db")).await.expect("open order.db");
    let rows = sqlx::query_as(r#"SELECT num, row_state, gid FROM "order" ORDER BY id"#)
        .fetch_all(&pool)
        .await
        .expect("order rows");
    pool.close().await;
    rows
}

fn sqlite(data: &Path, file: &str) -> String {
    format!("sqlite://{}", data.join(file).display())
}

fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    (dir, data)
}

#[tokio::test(flavor = "multi_thread")]
async fn up_serves_orders_stops_on_sigterm_and_keeps_its_data() {
    let _slot: SystemSlot = harness::system_slot();
    let (_dir, data) = data_dir();

    let up = Up::start(&data, &[]);
    let health = reqwest::get(up.url("/healthz")).await.expect("healthz");
    assert!(health.status().is_success());

    let (status, ok) = quick_create(&up, 1).await;
    assert_eq!((status, ok["status"].as_str()), (200, Some("succeed")), "{ok}");
    let (status, failed) = quick_create(&up, 500).await;
    assert_eq!((status, failed["status"].as_str()), (409, Some("failed")), "{failed}");

    assert_eq!(stock_left(&data).await, 99);
    let rows = orders(&data).await;
    assert_eq!(
        rows,
        vec![
            (1, 0, ok["gid"].as_str().unwrap().to_string()),
            (500, -1, failed["gid"].as_str().unwrap().to_string()),
        ]
    );

    let (status, out) = up.stop(Signal::SIGTERM);
    assert!(status.success(), "exit {status:?}\n{out}");
    assert!(out.contains("quickorder is up") && out.contains("curl -s -X POST"), "{out}");
    assert!(out.contains("quickorder stopped cleanly"), "{out}");

    // A second start on the same folder keeps the stock and the orders.
    let up = Up::start(&data, &[]);
    let (status, again) = quick_create(&up, 2).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(stock_left(&data).await, 97);
    assert_eq!(orders(&data).await.len(), 3);
    let (status, _) = up.stop(Signal::SIGINT);
    assert!(status.success(), "Ctrl-C must stop cleanly too: {status:?}");

    // --reset starts over.
    let up = Up::start(&data, &["--reset"]);
    assert_eq!(stock_left(&data).await, 100);
    assert!(orders(&data).await.is_empty());
    drop(up);
}

/// `quickorder up` turns the services' admin endpoints on and tells the
/// coordinator's console where they are: a transaction's page shows the
/// barrier rows and the business rows its gid left in both databases.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_the_rows_each_saga_left_in_both_services() {
    let _slot: SystemSlot = harness::system_slot();
    let (_dir, data) = data_dir();
    let up = Up::start(&data, &[]);
    let coordinator = up.coordinator_http;
    let (status, failed) = quick_create(&up, 500).await;
    assert_eq!(status, 409, "{failed}");
    let gid = failed["gid"].as_str().expect("gid").to_string();
    let page = format!("http://127.0.0.1:{coordinator}/admin/");
    assert_eq!(reqwest::get(&page).await.expect("console").status().as_u16(), 200);
    let url = format!("http://127.0.0.1:{coordinator}/api/admin/transaction?gid={gid}");
    // The attempts reach the timeline a moment after the answer (written in
    // batches, off the saga's path). The demo records every call, trouble
    // or not (servers default to `troubled`).
    let view: Value =
        harness::wait_until("the order's calls are recorded", Duration::from_secs(10), async || {
            let view: Value = reqwest::get(&url).await.expect("admin API").json().await.expect("JSON");
            if view["attempts"].as_array().is_some_and(|a| a.len() >= 3) {
                Ok(view)
            } else {
                Err(view.to_string())
            }
        })
        .await;
    assert_eq!(view["transaction"]["status"], "failed", "{view}");
    assert_eq!(view["recording"], "all", "{view}");
    let services = view["services"].as_array().expect("services");
    let names: Vec<&str> = services.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["order-srv", "stock-srv"], "{view}");
    let table = |service: usize, name: &str| -> Vec<Vec<Value>> {
        let tables = services[service]["tables"].as_array().unwrap_or_else(|| panic!("{view}"));
        let table = tables.iter().find(|t| t["name"] == name).unwrap_or_else(|| panic!("{name}: {view}"));
        table["rows"].as_array().expect("rows").iter().map(|r| r.as_array().expect("row").clone()).collect()
    };
    // order-srv: its action and its compensation ran; the order is marked -1.
    let order_barrier = table(0, "barrier");
    assert_eq!(order_barrier.len(), 2, "{order_barrier:?}");
    let order = table(0, "order");
    assert_eq!(order.len(), 1);
    assert_eq!(order[0][3], json!("500"));
    assert_eq!(order[0][4], json!("-1"));
    // stock-srv: a null compensation — the action's slot taken by reason 'compensate'.
    let stock_barrier = table(1, "barrier");
    assert!(
        stock_barrier.iter().any(|r| r[2] == json!("action") && r[4] == json!("compensate")),
        "{stock_barrier:?}"
    );
    drop(up);
}

/// `--mysql` with a server whose root has no password (a throwaway
/// MariaDB): the empty password must reach every process as empty, not
/// be replaced by a config file's default.
#[tokio::test(flavor = "multi_thread")]
async fn up_on_mysql_with_an_empty_password_serves_orders() {
    let _slot: SystemSlot = harness::system_slot();
    let server = harness::mysql_database().await.server_url;
    assert!(!server.contains(":@") && !server.contains("root:"), "a URL without a password: {server}");
    let (_dir, data) = data_dir();
    let up = Up::start(&data, &["--mysql", &server]);
    let (status, ok) = quick_create(&up, 1).await;
    assert_eq!((status, ok["status"].as_str()), (200, Some("succeed")), "{ok}");
    let (status, out) = up.stop(Signal::SIGTERM);
    assert!(status.success(), "exit {status:?}\n{out}");
}
