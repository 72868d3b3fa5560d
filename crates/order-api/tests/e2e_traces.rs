//! End to end, real processes, tracing on: the four binaries export their
//! spans over OTLP/gRPC to a receiver in this test (the collector's own
//! service definition, from `opentelemetry-proto`), and one quick order must
//! come out as one trace across all four services, parent by parent:
//!
//! ```text
//! client's span (our traceparent)
//! └─ order-api    POST /order/quickCreate            (server)
//!    └─ order-api dtm submit                         (client)
//!       └─ coordinator submit                        (server; its context is stored in ext_data)
//!          └─ coordinator pass                       (one per processing pass, retries included)
//!             └─ coordinator action /order.rpc/pb.order/create   (client, one per branch call)
//!                └─ order.rpc /pb.order/create       (server)
//!                   ├─ order.rpc barrier insert
//!                   ├─ order.rpc INSERT order
//!                   └─ order.rpc barrier commit
//! ```
//!
//! Also: the same over dtm's HTTP branch protocol; the compensations of a
//! rolled-back order in the same trace; a
//! retry by a *restarted* coordinator continuing the stored trace; and, in
//! JSON log mode, `gid` and `trace_id` on every line written inside a
//! request, the coordinator's pass included.

mod e2e_common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e_common::System;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use serde_json::{Value, json};

/// One received span, flattened.
#[derive(Debug, Clone)]
struct Span {
    /// `service.name` of the resource that sent it.
    service: String,
    trace_id: String,
    span_id: String,
    /// Empty for a root span.
    parent: String,
    name: String,
    /// OTLP's `SpanKind`: 2 server, 3 client.
    kind: i32,
    attributes: BTreeMap<String, String>,
    /// Unix nanoseconds: the tree lists siblings in the order they started.
    start: u64,
    duration: Duration,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => s.clone(),
                AnyValue::IntValue(i) => i.to_string(),
                AnyValue::BoolValue(b) => b.to_string(),
                AnyValue::DoubleValue(d) => d.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

/// The OTLP trace receiver: keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.map(|r| text(&r.attributes)).unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(Span {
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                        name: span.name,
                        kind: span.kind,
                        attributes: text(&span.attributes),
                        start: span.start_time_unix_nano,
                        duration: Duration::from_nanos(
                            span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano),
                        ),
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    /// Serves on a free loopback port; returns the receiver and `host:port`.
    async fn start() -> (Receiver, String) {
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        (receiver, addr.to_string())
    }

    fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans.lock().unwrap().iter().filter(|s| s.trace_id == trace_id).cloned().collect()
    }

    /// Waits until the trace has spans that `done` accepts (exporters send
    /// in batches, every 100 ms here); the spans then.
    async fn wait_for(&self, trace_id: &str, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.trace(trace_id);
            if done(&spans) {
                return spans;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "trace {trace_id}: {what} not seen in 30 s; received:\n{}",
                tree(&spans)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The environment that turns tracing on in every process, exporting to
/// `receiver` with a short batch delay (the SDK's `OTEL_BSP_SCHEDULE_DELAY`).
fn traced_env(receiver: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_ENDPOINT", receiver.to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ("LOG_ENCODING", "json".to_string()),
    ]
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The caller's own span, as a client with tracing would send it.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

async fn quick_create(system: &System, body: &Value, traceparent: Option<String>) -> (u16, Value) {
    let mut post = reqwest::Client::new().post(format!("{}/order/quickCreate", system.api())).json(body);
    if let Some(traceparent) = traceparent {
        post = post.header("traceparent", traceparent);
    }
    let response = post.send().await.expect("order-api answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Whether the coordinator's server span (its `submit`) has arrived. With
/// `wait_result` it ends after the pass and every branch call, and a batch
/// exporter sends spans in the order they end: once it is here, so is
/// everything the coordinator did for the request. (Each process exports
/// on its own: the branches' spans may well arrive first.)
fn coordinator_exported(spans: &[Span]) -> bool {
    spans.iter().any(|s| s.service == "coordinator" && s.kind == 2)
}

/// The span tree of a trace, one line per span: service, name, duration.
fn tree(spans: &[Span]) -> String {
    fn walk(spans: &[Span], parent: &str, depth: usize, out: &mut String) {
        let mut children: Vec<&Span> = spans.iter().filter(|s| s.parent == parent).collect();
        children.sort_by_key(|s| s.start);
        for span in children {
            out.push_str(&format!(
                "{}{} [{}] {:.1} ms\n",
                "  ".repeat(depth),
                span.name,
                span.service,
                span.duration.as_secs_f64() * 1000.0
            ));
            walk(spans, &span.span_id, depth + 1, out);
        }
    }
    let ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut out = String::new();
    // Roots: spans whose parent is not in the trace (the client's span).
    let mut roots: Vec<&str> = spans.iter().map(|s| s.parent.as_str()).filter(|p| !ids.contains(p)).collect();
    roots.sort();
    roots.dedup();
    for root in roots {
        walk(spans, root, 0, &mut out);
    }
    out
}

fn one<'a>(spans: &'a [Span], what: &str, pick: impl Fn(&Span) -> bool) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "exactly one {what}; trace:\n{}", tree(spans));
    found[0]
}

/// The coordinator's client span of one branch operation.
fn branch_call<'a>(spans: &'a [Span], branch_id: &str, op: &str) -> &'a Span {
    one(spans, &format!("coordinator call {branch_id}/{op}"), |s| {
        s.service == "coordinator"
            && s.kind == 3
            && s.attributes.get("branch_id").map(String::as_str) == Some(branch_id)
            && s.attributes.get("op").map(String::as_str) == Some(op)
    })
}

/// Checks that `call` was made by a processing pass of the coordinator
/// that hangs under the stored context `api` (the submit span).
fn check_pass(spans: &[Span], call: &Span, api: &Span) {
    let pass = one(spans, &format!("pass of {}", call.name), |s| s.span_id == call.parent);
    assert_eq!(
        (pass.name.as_str(), pass.service.as_str()),
        ("pass", "coordinator"),
        "trace:\n{}",
        tree(spans)
    );
    assert_eq!(pass.parent, api.span_id, "passes hang under the stored context:\n{}", tree(spans));
}

/// The branch's server span under `call`, and checks its barrier and SQL
/// children (a committed local transaction).
fn branch_server<'a>(spans: &'a [Span], call: &Span, service: &str, sql: &str) -> &'a Span {
    branch_server_ending(spans, call, service, sql, "barrier commit")
}

/// [`branch_server`], the local transaction ending with `end` (`barrier
/// commit` or `barrier rollback`).
fn branch_server_ending<'a>(spans: &'a [Span], call: &Span, service: &str, sql: &str, end: &str) -> &'a Span {
    let server = one(spans, &format!("{service} server span under {}", call.name), |s| {
        s.parent == call.span_id && s.kind == 2
    });
    assert_eq!(server.service, service, "trace:\n{}", tree(spans));
    let children: Vec<&str> =
        spans.iter().filter(|s| s.parent == server.span_id).map(|s| s.name.as_str()).collect();
    assert!(children.contains(&"barrier insert"), "{service}: barrier span; trace:\n{}", tree(spans));
    assert!(children.contains(&end), "{service}: {end} span; trace:\n{}", tree(spans));
    if !sql.is_empty() {
        assert!(children.contains(&sql), "{service}: {sql} span; trace:\n{}", tree(spans));
    }
    server
}

/// order-api → coordinator: the first three levels; the coordinator's
/// server span.
fn check_entry(spans: &[Span], gid: &str, client_span: &str) -> Span {
    let server = one(spans, "order-api server span", |s| s.service == "order-api" && s.kind == 2);
    assert_eq!(server.parent, client_span, "order-api continues the caller's traceparent");
    assert_eq!(server.attributes.get("gid").map(String::as_str), Some(gid));
    let submit = one(spans, "order-api's coordinator call", |s| s.service == "order-api" && s.kind == 3);
    assert_eq!(submit.parent, server.span_id, "trace:\n{}", tree(spans));
    let api = one(spans, "coordinator submit span", |s| s.service == "coordinator" && s.kind == 2);
    assert_eq!(api.parent, submit.span_id, "trace:\n{}", tree(spans));
    api.clone()
}

/// The `gid` and `trace_id` of every JSON line of `log` written inside a
/// request of saga `gid` (lines that list spans).
fn check_json_logs(name: &str, log: &str, gid: &str, trace_id: &str) {
    let mut inside = 0;
    for line in log.lines().filter(|l| l.starts_with('{')) {
        let entry: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {line}"));
        let spans = entry["spans"].as_array().map_or(0, Vec::len);
        if spans == 0 || !line.contains(gid) {
            continue;
        }
        inside += 1;
        assert_eq!(entry["gid"], gid, "{name}: top-level gid: {line}");
        assert_eq!(entry["trace_id"], trace_id, "{name}: top-level trace_id: {line}");
    }
    assert!(inside > 0, "{name}: no JSON line inside a request of {gid}:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_quick_order_is_one_trace_across_the_four_services() {
    let (receiver, addr) = Receiver::start().await;
    let env = traced_env(&addr);
    let system = tokio::task::spawn_blocking(move || {
        let mut system = System::infrastructure_with_env(&borrowed(&env));
        system.start_order_srv();
        system.start_stock_srv();
        system.start_order_api();
        system
    })
    .await
    .unwrap();

    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let (status, answer) =
        quick_create(&system, &json!({"userId": 1, "goodsId": 1, "num": 1}), Some(traceparent)).await;
    assert_eq!(status, 200, "{answer}");
    let gid = answer["gid"].as_str().unwrap().to_string();

    let spans = receiver
        .wait_for(CLIENT_TRACE, "the two branches' SQL", |spans| {
            ["INSERT order", "UPDATE stock", "POST /order/quickCreate"]
                .iter()
                .all(|name| spans.iter().any(|s| s.name == *name))
                && coordinator_exported(spans)
        })
        .await;
    let services: std::collections::BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        ["coordinator", "order-api", "order.rpc", "stock.rpc"].into(),
        "one trace, four services:\n{}",
        tree(&spans)
    );
    let api = check_entry(&spans, &gid, CLIENT_SPAN);
    for (branch, service, sql) in [("01", "order.rpc", "INSERT order"), ("02", "stock.rpc", "UPDATE stock")] {
        let call = branch_call(&spans, branch, "action");
        check_pass(&spans, call, &api);
        assert_eq!(call.attributes.get("gid").map(String::as_str), Some(gid.as_str()));
        assert_eq!(call.attributes.get("protocol").map(String::as_str), Some("grpc"));
        assert_eq!(call.attributes.get("outcome").map(String::as_str), Some("success"));
        assert!(call.attributes.get("url").is_some_and(|u| u.contains(service)), "{call:?}");
        branch_server(&spans, call, service, sql);
    }

    // JSON logs: gid and trace_id on every line inside a request.
    let logs = [
        ("order-api", system.order_api.as_ref().unwrap().log_text()),
        ("order-srv", system.order_srv.as_ref().unwrap().log_text()),
        ("stock-srv", system.stock_srvs[0].log_text()),
    ];
    for (name, log) in &logs {
        check_json_logs(name, log, &gid, CLIENT_TRACE);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compensated_order_shows_its_compensations_in_the_same_trace() {
    let (receiver, addr) = Receiver::start().await;
    let env = traced_env(&addr);
    let system = tokio::task::spawn_blocking(move || {
        let mut system = System::infrastructure_with_env(&borrowed(&env));
        system.start_order_srv();
        system.start_stock_srv();
        system.start_order_api();
        system
    })
    .await
    .unwrap();

    // No traceparent: order-api starts the trace.
    let (status, answer) = quick_create(&system, &json!({"userId": 1, "goodsId": 1, "num": 101}), None).await;
    assert_eq!(status, 409, "{answer}");
    let gid = answer["gid"].as_str().unwrap().to_string();
    let trace_id = receiver
        .wait_for_any(|s| s.service == "order-api" && s.attributes.get("gid") == Some(&gid))
        .await
        .trace_id;
    let spans = receiver
        .wait_for(&trace_id, "both compensations at their branches", |spans| {
            ["UPDATE order", "POST /order/quickCreate"]
                .iter()
                .all(|name| spans.iter().any(|s| s.name == *name))
                && spans.iter().filter(|s| s.service == "stock.rpc" && s.kind == 2).count() == 2
                && coordinator_exported(spans)
        })
        .await;
    println!("compensated order {gid}, trace {trace_id}:\n{}", tree(&spans));

    let server = one(&spans, "order-api server span", |s| s.service == "order-api" && s.kind == 2);
    assert_eq!(server.parent, "", "without a traceparent order-api starts the trace");
    let api = check_entry(&spans, &gid, "");
    let failed = branch_call(&spans, "02", "action");
    assert_eq!(failed.attributes.get("outcome").map(String::as_str), Some("failure"), "{failed:?}");
    // The failed deduction rolled its local transaction back; the stock's
    // compensation found no action (null compensation) and ran no SQL.
    for (branch, op, service, sql, end) in [
        ("01", "action", "order.rpc", "INSERT order", "barrier commit"),
        ("02", "action", "stock.rpc", "UPDATE stock", "barrier rollback"),
        ("02", "compensate", "stock.rpc", "", "barrier commit"),
        ("01", "compensate", "order.rpc", "UPDATE order", "barrier commit"),
    ] {
        let call = branch_call(&spans, branch, op);
        check_pass(&spans, call, &api);
        branch_server_ending(&spans, call, service, sql, end);
    }
    // JSON logs (`LogEncoding: json` in the coordinator too): the pass's
    // "saga aborting" line carries the saga's gid and trace_id on top.
    let coordinator_log = system.coordinator.as_ref().unwrap().log_text();
    assert!(coordinator_log.contains("saga aborting"), "{coordinator_log}");
    check_json_logs("coordinator", &coordinator_log, &gid, &trace_id);
}

impl Receiver {
    /// Waits for any span matching `pick`.
    async fn wait_for_any(&self, pick: impl Fn(&Span) -> bool) -> Span {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(span) = self.spans.lock().unwrap().iter().find(|s| pick(s)) {
                return span.clone();
            }
            assert!(tokio::time::Instant::now() < deadline, "span not seen in 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_a_coordinator_restart_continues_the_stored_trace() {
    let (receiver, addr) = Receiver::start().await;
    let env = traced_env(&addr);
    // stock-srv is not there yet: the saga cannot finish.
    let mut system = tokio::task::spawn_blocking(move || {
        let mut system = System::infrastructure_with_env(&borrowed(&env));
        system.start_order_srv();
        system.start_order_api_with(&[("SUBMIT_WAIT", "1000")]);
        system
    })
    .await
    .unwrap();

    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let (status, answer) =
        quick_create(&system, &json!({"userId": 3, "goodsId": 1, "num": 1}), Some(traceparent)).await;
    assert_eq!(status, 202, "still running: stock-srv is not there yet: {answer}");
    let gid = answer["gid"].as_str().unwrap().to_string();
    // The first coordinator's spans are out (its submit span is the stored
    // parent) before it dies without a chance to flush.
    let before = receiver
        .wait_for(CLIENT_TRACE, "the first coordinator's submit span", |spans| {
            spans.iter().any(|s| s.service == "coordinator" && s.kind == 2)
        })
        .await;
    let api = one(&before, "coordinator submit span", |s| s.service == "coordinator" && s.kind == 2).clone();

    let system = tokio::task::spawn_blocking(move || {
        system.coordinator.as_mut().unwrap().kill();
        system.start_coordinator();
        system.start_stock_srv();
        system
    })
    .await
    .unwrap();
    assert_eq!(system.wait_final(&gid, Duration::from_secs(60)).await, "succeed");

    // Each process exports in its own batches: stock-srv's spans may arrive
    // before the restarted coordinator's, and the call's span before the
    // pass around it (which ends later): wait for all three.
    let succeeded = |s: &Span| {
        s.service == "coordinator"
            && s.attributes.get("branch_id").map(String::as_str) == Some("02")
            && s.attributes.get("outcome").map(String::as_str) == Some("success")
    };
    let spans = receiver
        .wait_for(CLIENT_TRACE, "stock-srv's deduction and the coordinator's pass that called it", |spans| {
            spans.iter().any(|s| s.name == "UPDATE stock")
                && spans
                    .iter()
                    .filter(|s| succeeded(s))
                    .any(|call| spans.iter().any(|p| p.span_id == call.parent))
        })
        .await;
    let done = one(&spans, "successful 02/action call", succeeded);
    // The restarted coordinator's retry pass hangs under the stored submit span.
    check_pass(&spans, done, &api);
    branch_server(&spans, done, "stock.rpc", "UPDATE stock");
    // And the earlier failed attempts are in the same trace, as errors.
    assert!(
        spans.iter().any(|s| s.attributes.get("branch_id").map(String::as_str) == Some("02")
            && s.attributes.get("outcome").map(String::as_str) == Some("error")),
        "the failed attempts are in the trace:\n{}",
        tree(&spans)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_branches_are_traced_like_grpc_ones() {
    let (receiver, addr) = Receiver::start().await;
    let env = traced_env(&addr);
    let system = tokio::task::spawn_blocking(move || {
        let mut system = System::infrastructure_with_env(&borrowed(&env));
        system.start_order_srv_with("HttpListenOn: 127.0.0.1:0\n");
        system.start_stock_srv_with("HttpListenOn: 127.0.0.1:0\n");
        let order_http = system.order_srv.as_ref().unwrap().ready.port("http");
        let stock_http = system.stock_srvs[0].ready.port("http");
        system.start_order_api_configured(
            &format!(
                "OrderHttpUrl: http://127.0.0.1:{order_http}/api/order\nStockHttpUrl: http://127.0.0.1:{stock_http}/api/stock\n"
            ),
            &[],
        );
        system
    })
    .await
    .unwrap();

    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let (status, answer) =
        quick_create(&system, &json!({"userId": 1, "goodsId": 1, "num": 1}), Some(traceparent)).await;
    assert_eq!(status, 200, "{answer}");
    let gid = answer["gid"].as_str().unwrap().to_string();
    let spans = receiver
        .wait_for(CLIENT_TRACE, "the two HTTP branches' SQL", |spans| {
            ["INSERT order", "UPDATE stock"].iter().all(|name| spans.iter().any(|s| s.name == *name))
                && coordinator_exported(spans)
        })
        .await;
    let api = check_entry(&spans, &gid, CLIENT_SPAN);
    for (branch, service, sql) in [("01", "order.rpc", "INSERT order"), ("02", "stock.rpc", "UPDATE stock")] {
        let call = branch_call(&spans, branch, "action");
        check_pass(&spans, call, &api);
        assert_eq!(call.attributes.get("protocol").map(String::as_str), Some("http"), "{call:?}");
        branch_server(&spans, call, service, sql);
    }
}
