//! stock-srv's metrics (go-zero's `Prometheus` block), scraped over HTTP
//! after real calls: gRPC and HTTP branch calls move go-zero's
//! `rpc_server_*` / `http_server_*` families and `barrier_outcomes_total`
//! by exactly what the barrier did; the pool gauges are read at scrape
//! time; labels stay bounded; the real binary serves metrics only when the
//! block has a `Host`, reports the bound port in its readiness line and
//! stops the listener with its graceful shutdown.

use std::collections::BTreeSet;
use std::time::Duration;

use harness::GuardedProcess;
use proto::stock::{DeductReq, StockClient};
use service_kit::testing::RunningService;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// HTTP branches and a metrics listener, both on port 0.
const WITH_METRICS: &str = "HttpListenOn: 127.0.0.1:0\nPrometheus:\n  Host: 127.0.0.1\n  Port: 0\n";

/// A request as dtm sends it to branch 02: the payload plus `dtm-*` metadata.
fn branch(goods_id: i64, num: i64, gid: &str, op: &str) -> Request<DeductReq> {
    let mut request = Request::new(DeductReq { goods_id, num });
    let metadata = request.metadata_mut();
    metadata.insert("dtm-gid", gid.parse().unwrap());
    metadata.insert("dtm-trans_type", "saga".parse().unwrap());
    metadata.insert("dtm-branch_id", "02".parse().unwrap());
    metadata.insert("dtm-op", op.parse().unwrap());
    request
}

/// `GET url`: the status, the content type and the body.
async fn get(url: &str) -> (u16, String, String) {
    let response = reqwest::get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let kind =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    (status, kind, response.text().await.unwrap())
}

/// A gRPC call to `path` nobody serves (raw HTTP/2, as a scanner would send it).
async fn grpc_call_to(addr: std::net::SocketAddr, path: &str) -> String {
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let response = client
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    let status =
        response.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let _ = response.bytes().await;
    status
}

/// The value of gauge `name{db_name="sqlite"}` in `exposition`.
fn gauge(exposition: &str, name: &str) -> u32 {
    let prefix = format!(r#"{name}{{db_name="sqlite"}} "#);
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{exposition}"))
}

fn assert_has(exposition: &str, lines: &[&str]) {
    let missing: Vec<&&str> = lines.iter().filter(|line| !exposition.lines().any(|l| l == **line)).collect();
    assert!(missing.is_empty(), "missing {missing:#?} in\n{exposition}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_calls_move_go_zeros_counters_and_the_barrier_outcomes() {
    let service = RunningService::on_sqlite_with::<stock_srv::StockParts>("stock.rpc", WITH_METRICS).await;
    let metrics = service.metrics.clone().expect("a Prometheus block with a Host serves metrics");
    let channel = Channel::from_shared(format!("http://{}", service.grpc)).unwrap().connect().await.unwrap();
    let mut client = StockClient::new(channel);

    // Before any call: the barrier's series exist at 0, the pool is read.
    let (status, kind, before) = get(&metrics).await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    assert_has(
        &before,
        &[
            r#"barrier_outcomes_total{op="action",outcome="duplicate"} 0"#,
            r#"barrier_outcomes_total{op="compensate",outcome="null_compensation"} 0"#,
            r#"sql_client_max_open_connections{db_name="sqlite"} 64"#,
        ],
    );

    // Applied, then the same call again (a redelivery): duplicate.
    client.deduct(branch(1, 1, "metrics-a", "action")).await.unwrap();
    client.deduct(branch(1, 1, "metrics-a", "action")).await.unwrap();
    // A compensation before its action (null compensation), then the
    // late action (hanging): both answer OK, neither touches the stock.
    client.deduct_rollback(branch(1, 1, "metrics-b", "compensate")).await.unwrap();
    client.deduct(branch(1, 1, "metrics-b", "action")).await.unwrap();
    // More than in stock: Aborted("FAILURE"), the saga rolls back.
    let failure = client.deduct(branch(1, 100_000, "metrics-c", "action")).await.unwrap_err();
    assert_eq!(failure.code(), Code::Aborted);
    // No dtm metadata: refused before the barrier.
    let invalid = client.deduct(Request::new(DeductReq { goods_id: 1, num: 1 })).await.unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    // Paths nobody serves: one label for all of them.
    assert_eq!(grpc_call_to(service.grpc, "/pb.stock/scan-1").await, "12");
    assert_eq!(grpc_call_to(service.grpc, "/scanner.Service/scan-2").await, "12");
    // The HTTP branch: applied once, and a path no route matches.
    let http = service.http.clone().expect("HTTP branches");
    let http_client = reqwest::Client::new();
    let query = "gid=metrics-d&trans_type=saga&branch_id=02&op=action";
    let applied = http_client
        .post(format!("{http}/api/stock/deduct?{query}"))
        .json(&serde_json::json!({"goodsId": 1, "num": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(applied.status(), 200);
    let unknown = http_client.post(format!("{http}/api/stock/scan-3")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);

    let (_, _, after) = get(&metrics).await;
    assert_has(
        &after,
        &[
            // What the barrier did: two applied (gRPC, HTTP), one each of the rest.
            r#"barrier_outcomes_total{op="action",outcome="applied"} 2"#,
            r#"barrier_outcomes_total{op="action",outcome="duplicate"} 1"#,
            r#"barrier_outcomes_total{op="action",outcome="hanging"} 1"#,
            r#"barrier_outcomes_total{op="action",outcome="failure"} 1"#,
            r#"barrier_outcomes_total{op="compensate",outcome="null_compensation"} 1"#,
            r#"barrier_outcomes_total{op="compensate",outcome="applied"} 0"#,
            // go-zero's gRPC families: method = full path, code = gRPC's number.
            r#"rpc_server_requests_code_total{method="/pb.stock/deduct",code="0"} 3"#,
            r#"rpc_server_requests_code_total{method="/pb.stock/deduct",code="10"} 1"#,
            r#"rpc_server_requests_code_total{method="/pb.stock/deduct",code="3"} 1"#,
            r#"rpc_server_requests_code_total{method="/pb.stock/deductRollback",code="0"} 1"#,
            r#"rpc_server_requests_code_total{method="other",code="12"} 2"#,
            r#"rpc_server_requests_duration_ms_count{method="/pb.stock/deduct"} 5"#,
            r#"rpc_server_requests_duration_ms_count{method="/pb.stock/deductRollback"} 1"#,
            // go-zero's HTTP families: the route template, or "other".
            r#"http_server_requests_code_total{path="/api/stock/deduct",code="200",method="POST"} 1"#,
            r#"http_server_requests_code_total{path="other",code="404",method="POST"} 1"#,
            r#"http_server_requests_duration_ms_count{path="/api/stock/deduct",method="POST"} 1"#,
        ],
    );
    // go-zero's buckets.
    assert!(
        after.contains(r#"rpc_server_requests_duration_ms_bucket{le="5000.0",method="/pb.stock/deduct"} 5"#)
    );
    assert!(
        after.contains(r#"http_server_requests_duration_ms_bucket{le="1000.0",path="/api/stock/deduct""#)
    );
    assert!(!after.contains("scan-"), "a raw path became a label:\n{after}");
    let (open, in_use, idle) = (
        gauge(&after, "sql_client_open_connections"),
        gauge(&after, "sql_client_in_use_connections"),
        gauge(&after, "sql_client_idle_connections"),
    );
    assert!(open >= 1 && in_use + idle == open, "open {open} = in use {in_use} + idle {idle}:\n{after}");
    // The pool is read at each scrape: every connection goes back (sqlx
    // returns a released connection on a task of its own: a moment later).
    harness::wait_until("every pooled connection idle again", Duration::from_secs(10), async || match gauge(
        &get(&metrics).await.2,
        "sql_client_in_use_connections",
    ) {
        0 => Ok(()),
        n => Err(format!("{n} in use")),
    })
    .await;

    // Only the configured path answers.
    let base = metrics.trim_end_matches("/metrics");
    assert_eq!(get(&format!("{base}/other")).await.0, 404);

    // Graceful shutdown stops the metrics listener too.
    service.stop().await;
    assert!(reqwest::get(&metrics).await.is_err(), "the metrics port still answers after the stop");
}

/// `stock-srv -f <file>` with a minimal config on SQLite, `extra` appended;
/// the process and its readiness line.
fn start_binary(dir: &std::path::Path, extra: &str) -> (GuardedProcess, harness::ReadyLine) {
    let db = dir.join(format!("stock-{}.db", extra.len()));
    let config = dir.join(format!("stock-{}.yaml", extra.len()));
    let yaml = format!(
        "Name: stock.rpc\nListenOn: 127.0.0.1:0\nDB:\n  DataSource: \"sqlite://{}?mode=rwc\"\n{extra}",
        db.display()
    );
    std::fs::write(&config, yaml).unwrap();
    let log = dir.join(format!("stock-{}.log", extra.len()));
    let args = vec!["-f".to_string(), config.display().to_string()];
    let process = GuardedProcess::spawn(env!("CARGO_BIN_EXE_stock-srv"), &args, &log, None);
    let ready = process.wait_ready("stock-srv", Duration::from_secs(60));
    (process, ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_listens_for_metrics_only_when_the_block_has_a_host() {
    let dir = tempfile::tempdir().unwrap();
    let labels = |ready: &harness::ReadyLine| ready.addrs.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>();

    // No block, and a block whose Host placeholder is unset: no listener,
    // nothing in the readiness line. The process listens on gRPC only.
    for extra in ["", "Prometheus:\n  Host: \"${METRICS_TEST_UNSET_HOST:-}\"\n  Port: 0\n"] {
        let (mut process, ready) = start_binary(dir.path(), extra);
        assert_eq!(labels(&ready), ["grpc"], "{extra:?}");
        let ports: BTreeSet<u16> = harness::listening_ports(process.pid()).into_iter().collect();
        assert_eq!(ports, [ready.port("grpc")].into(), "{extra:?}: only the gRPC port is open");
        assert!(process.stop(Duration::from_secs(15)), "stock-srv ignored SIGTERM");
    }

    // With a Host: its own port (0 → the bound one, in the readiness line).
    let (mut process, ready) = start_binary(dir.path(), "Prometheus:\n  Host: 127.0.0.1\n  Port: 0\n");
    assert_eq!(labels(&ready), ["grpc", "metrics"]);
    let metrics = ready.addr("metrics");
    assert_ne!(metrics.port(), 0);
    assert!(harness::listens_on(process.pid(), metrics.port()), "the binary itself owns the metrics port");
    let (status, _, body) = get(&format!("http://{metrics}/metrics")).await;
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE barrier_outcomes counter") && body.contains("sql_client_open_connections"));
    assert!(
        process.stop(Duration::from_secs(15)),
        "stock-srv did not stop gracefully:\n{}",
        process.log_tail()
    );
}
