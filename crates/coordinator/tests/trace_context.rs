//! The W3C trace context with tracing *off* (no `Telemetry.Endpoint`, no
//! exporter in this process): the coordinator stores an incoming
//! `traceparent`/`tracestate` in dtm's `ext_data` column and forwards it
//! unchanged to every branch call, over both APIs and both branch
//! transports, in the submit's own pass and in a later retry pass. (The
//! spans themselves, tracing on, are `crates/order-api/tests/e2e_traces.rs`.)

mod edges_support;

use std::time::Duration;

use edges_support::{BranchServer, InProcess, saga, steps, wait_final};
use harness::branches::{BranchServers, Reply, Transport};
use serde_json::json;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE: &str = "rojo=00f067aa0ba902b7";

fn ext_data() -> String {
    format!(r#"{{"headers":{{"traceparent":"{TRACEPARENT}","tracestate":"{TRACESTATE}"}}}}"#)
}

/// The stored `ext_data` of `gid`, from dtm's query API.
async fn stored_ext_data(base: &str, gid: &str) -> String {
    let body: serde_json::Value =
        reqwest::get(format!("{base}/api/dtmsvr/query?gid={gid}")).await.unwrap().json().await.unwrap();
    body["transaction"]["ext_data"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn http_submit_stores_the_context_and_every_branch_call_carries_it_unchanged() {
    let coordinator = InProcess::sqlite(|_| {}).await;
    let branches = BranchServer::start().await;
    // The second step fails for good: compensations run too.
    let body = saga("trace-http", &steps(&branches, 2), &[json!({}), json!({"fail": true})], true);
    let response = reqwest::Client::new()
        .post(format!("{}/api/dtmsvr/submit", coordinator.http))
        .header("traceparent", TRACEPARENT)
        .header("tracestate", TRACESTATE)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 409, "the saga rolled back");

    assert_eq!(stored_ext_data(&coordinator.http, "trace-http").await, ext_data());
    let calls = branches.calls_for("trace-http");
    assert_eq!(calls.len(), 4, "two actions, two compensations: {calls:?}");
    for call in calls {
        assert_eq!(call.header("traceparent"), Some(TRACEPARENT), "{} {}", call.path, call.param("op"));
        assert_eq!(call.header("tracestate"), Some(TRACESTATE), "{}", call.path);
    }
}

#[tokio::test]
async fn grpc_submit_context_survives_into_a_retry_pass() {
    let coordinator = InProcess::sqlite(|_| {}).await;
    let servers = BranchServers::start().await;
    // The first try of the gRPC step fails transiently: the poller's
    // retry pass, not the submit's, delivers it.
    servers.recorder.script("/pb.stock/deduct", [Reply::Error]);
    let g = &servers.grpc;
    let steps = serde_json::to_string(&[json!({"action": format!("{g}/pb.stock/deduct"), "compensate": ""})])
        .unwrap();
    let mut request = tonic::Request::new(proto::dtmgimp::DtmRequest {
        gid: "trace-grpc".into(),
        trans_type: "saga".into(),
        steps,
        bin_payloads: vec![vec![1, 2, 3]],
        ..Default::default()
    });
    request.metadata_mut().insert("traceparent", TRACEPARENT.parse().unwrap());
    request.metadata_mut().insert("tracestate", TRACESTATE.parse().unwrap());
    let mut client = proto::dtmgimp::dtm_client::DtmClient::connect(coordinator.grpc.clone()).await.unwrap();
    client.submit(request).await.expect("submitted");

    let client = reqwest::Client::new();
    assert_eq!(
        wait_final(&client, &coordinator.http, "trace-grpc", Duration::from_secs(20)).await,
        "succeed"
    );
    assert_eq!(stored_ext_data(&coordinator.http, "trace-grpc").await, ext_data());
    let calls = servers.recorder.calls_of("trace-grpc");
    assert_eq!(calls.len(), 2, "the failed try and the retry: {calls:?}");
    for call in calls {
        assert_eq!(call.transport, Transport::Grpc);
        assert_eq!(call.header("traceparent"), Some(TRACEPARENT));
        assert_eq!(call.header("tracestate"), Some(TRACESTATE));
    }
}

#[tokio::test]
async fn a_malformed_traceparent_is_neither_stored_nor_forwarded() {
    let coordinator = InProcess::sqlite(|_| {}).await;
    let branches = BranchServer::start().await;
    let body = saga("trace-bad", &steps(&branches, 1), &[json!({})], true);
    let response = reqwest::Client::new()
        .post(format!("{}/api/dtmsvr/submit", coordinator.http))
        .header("traceparent", "00-not-a-trace-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(stored_ext_data(&coordinator.http, "trace-bad").await, "", "dtm's empty ext_data");
    let calls = branches.calls_for("trace-bad");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].header("traceparent"), None);
}
