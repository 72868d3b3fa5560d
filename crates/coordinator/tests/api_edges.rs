//! The coordinator's HTTP and gRPC APIs, against a real coordinator (SQLite
//! store, in-process) and real branch servers on port 0.
//!
//! What these tests pin down is the *wire contract* dtm clients rely on:
//! routes, status codes, body shapes, the leniency towards real SDK bodies,
//! and the strictness towards malformed ones (400 and nothing stored).

mod edges_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use edges_support::{BranchServer, InProcess, get, post, saga, status_of, steps, wait_final};
use prost::Message;
use proto::dtmgimp::dtm_client::DtmClient;
use proto::dtmgimp::{DtmRequest, DtmTransOptions};
use proto::order::{CreateReq, CreateResp, Order, OrderServer};
use serde_json::{Value, json};
use tonic::{Code, Request, Response, Status};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

#[tokio::test]
async fn service_routes_answer_in_dtms_shapes() {
    let coordinator = InProcess::sqlite(|_| {}).await;
    let (c, base) = (client(), coordinator.http.clone());

    assert_eq!(get(&c, &format!("{base}/api/ping")).await, (200, json!({"msg": "pong"})));
    assert_eq!(post(&c, &format!("{base}/api/ping"), &json!({})).await.0, 200);

    let (status, body) = get(&c, &format!("{base}/api/dtmsvr/version")).await;
    assert_eq!(status, 200);
    assert!(body["version"].as_str().unwrap().starts_with('v'), "{body}");

    let (status, body) = get(&c, &format!("{base}/api/dtmsvr/newGid")).await;
    assert_eq!(status, 200);
    assert_eq!(body["dtm_result"], "SUCCESS");
    assert_eq!(body["gid"].as_str().unwrap().len(), 22, "{body}");

    let (status, body) = get(&c, &format!("{base}/api/dtmsvr/query?gid=never-submitted")).await;
    assert_eq!((status, body), (200, json!({"transaction": null, "branches": []})));

    let (status, body) = get(&c, &format!("{base}/api/dtmsvr/query")).await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "gid");

    let (status, body) = get(&c, &format!("{base}/api/dtmsvr/all?limit=10")).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"transactions": [], "next_position": ""}));
    assert_eq!(get(&c, &format!("{base}/api/dtmsvr/all?status=bogus")).await.1["field"], "status");

    let (status, body) = get(&c, &format!("{base}/no/such/route")).await;
    assert_eq!(status, 404);
    assert!(body["message"].is_string());
    coordinator.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_saga_from_a_dtm_sdk_body_succeeds_and_branches_get_dtms_parameters() {
    let branches = BranchServer::start().await;
    let coordinator = InProcess::sqlite(|_| {}).await;
    let (c, base) = (client(), coordinator.http.clone());

    let payloads = [json!({"amount": 30}), json!({"amount": 31})];
    let body = saga("sdk-body-1", &steps(&branches, 2), &payloads, true);
    let (status, reply) = post(&c, &format!("{base}/api/dtmsvr/submit"), &body).await;
    assert_eq!((status, reply), (200, json!({"dtm_result": "SUCCESS"})));

    let calls = branches.calls_for("sdk-body-1");
    assert_eq!(calls.len(), 2, "{calls:?}");
    for (i, call) in calls.iter().enumerate() {
        assert_eq!(call.method, "POST");
        assert_eq!(call.last_segment(), "action");
        assert_eq!(call.params["trans_type"], "saga");
        assert_eq!(call.params["branch_id"], format!("0{}", i + 1));
        assert_eq!(call.params["op"], "action");
        assert_eq!(call.text(), payloads[i].to_string(), "payload passed through verbatim");
    }

    let (status, detail) = get(&c, &format!("{base}/api/dtmsvr/query?gid=sdk-body-1")).await;
    assert_eq!(status, 200);
    assert_eq!(detail["transaction"]["status"], "succeed");
    assert_eq!(detail["transaction"]["trans_type"], "saga");
    let ops: Vec<&str> =
        detail["branches"].as_array().unwrap().iter().map(|b| b["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["compensate", "action", "compensate", "action"], "dtm's row order");

    let (_, page) = get(&c, &format!("{base}/api/dtmsvr/all?gid=sdk-body-1")).await;
    assert_eq!(page["transactions"][0]["gid"], "sdk-body-1");

    // dtm's metrics after one saga.
    let text = c.get(format!("{base}/api/metrics")).send().await.unwrap().text().await.unwrap();
    for expected in [
        r#"dtm_server_process_total{type="http",api="submit",status="ok"} 1"#,
        r#"dtm_transaction_process_total{model="saga",status="ok"} 1"#,
        r#"dtm_branch_process_total{model="saga",branchid="02",branchtype="action",status="ok"} 1"#,
        "dtm_server_response_duration_bucket",
        "dtm_transaction_handled_duration_count",
    ] {
        assert!(text.contains(expected), "metrics lack {expected:?}:\n{text}");
    }
    assert!(!text.contains("sdk-body-1"), "gids must never become metric labels");
    coordinator.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn wait_result_reports_failure_with_409_and_the_saga_is_compensated_in_reverse() {
    let branches = BranchServer::start().await;
    let coordinator = InProcess::sqlite(|_| {}).await;
    let (c, base) = (client(), coordinator.http.clone());

    let payloads = [json!({"n": 1}), json!({"fail": true})];
    let (status, reply) = post(
        &c,
        &format!("{base}/api/dtmsvr/submit"),
        &saga("fails-1", &steps(&branches, 2), &payloads, true),
    )
    .await;
    assert_eq!(status, 409, "{reply}");
    assert_eq!(reply["dtm_result"], "FAILURE");
    assert!(reply["message"].is_string());

    assert_eq!(wait_final(&c, &base, "fails-1", Duration::from_secs(20)).await, "failed");
    let compensations: Vec<String> = branches
        .calls_for("fails-1")
        .into_iter()
        .filter(|call| call.last_segment() == "compensate")
        .map(|call| call.params["branch_id"].clone())
        .collect();
    // The failed step is compensated too (its action may have half-happened), last step first.
    assert_eq!(compensations, ["02", "01"]);
    coordinator.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn malformed_requests_are_refused_with_400_naming_the_field_and_nothing_is_stored() {
    let branches = BranchServer::start().await;
    let coordinator = InProcess::sqlite(|config| config.max_body_bytes = 4096).await;
    let (c, base) = (client(), coordinator.http.clone());
    let submit = format!("{base}/api/dtmsvr/submit");
    let good_steps = steps(&branches, 1);

    let mut mismatch = saga("bad-payloads", &good_steps, &[json!({})], false);
    mismatch["payloads"] = json!(["{}", "{}"]);
    let bad_url = saga("bad-url", &[("http://".into(), String::new())], &[json!({})], false);
    let mut bad_type = saga("bad-type", &good_steps, &[json!({})], false);
    bad_type["trans_type"] = json!("sagga");
    let empty_gid = saga("", &good_steps, &[json!({})], false);
    let mut wrong_json_type = saga("bad-wait", &good_steps, &[json!({})], false);
    wrong_json_type["wait_result"] = json!("yes");
    let grpc_url =
        saga("bad-grpc-url", &[("localhost/pb.order/create".into(), String::new())], &[json!({})], false);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad-payloads", serde_json::to_vec(&mismatch).unwrap(), "payloads"),
        ("bad-url", serde_json::to_vec(&bad_url).unwrap(), "steps[0].action"),
        ("bad-type", serde_json::to_vec(&bad_type).unwrap(), "trans_type"),
        ("", serde_json::to_vec(&empty_gid).unwrap(), "gid"),
        ("bad-wait", serde_json::to_vec(&wrong_json_type).unwrap(), "wait_result"),
        ("bad-grpc-url", serde_json::to_vec(&grpc_url).unwrap(), "steps[0].action"),
        ("bad-json", br#"{"gid":"bad-json","trans_type":"saga","steps":["#.to_vec(), "body"),
        ("bad-array", b"[1,2]".to_vec(), "body"),
    ];
    for (gid, body, field) in cases {
        let response =
            c.post(&submit).header("content-type", "application/json").body(body).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 400, "{gid}");
        let reply: Value = response.json().await.unwrap();
        assert_eq!(reply["field"], field, "{gid}: {reply}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()), "{reply}");
        if !gid.is_empty() {
            assert_eq!(status_of(&c, &base, gid).await, None, "{gid} must not be stored");
        }
    }

    // Larger than MaxBodyBytes: 413, in JSON, nothing stored.
    let big = saga("too-big", &good_steps, &[json!({"pad": "x".repeat(8192)})], false);
    let (status, reply) = post(&c, &submit, &big).await;
    assert_eq!(status, 413, "{reply}");
    assert!(reply["message"].is_string());
    assert_eq!(status_of(&c, &base, "too-big").await, None);

    // registerBranch takes a flat map of strings.
    let (status, reply) =
        post(&c, &format!("{base}/api/dtmsvr/registerBranch"), &json!({"gid": "x", "branch_id": 1})).await;
    assert_eq!((status, reply["field"].clone()), (400, json!("branch_id")));

    let (_, page) = get(&c, &format!("{base}/api/dtmsvr/all")).await;
    assert_eq!(page["transactions"], json!([]), "nothing may have been stored");
    assert!(branches.calls().is_empty(), "no branch may have been called");
    coordinator.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_duplicate_submit_is_accepted_while_running_and_refused_once_final() {
    let branches = BranchServer::start().await;
    let coordinator = InProcess::sqlite(|_| {}).await;
    let (c, base) = (client(), coordinator.http.clone());
    let body = saga("dup-1", &steps(&branches, 1), &[json!({"delay_ms": 1500})], false);
    let submit = format!("{base}/api/dtmsvr/submit");

    assert_eq!(post(&c, &submit, &body).await, (200, json!({"dtm_result": "SUCCESS"})));
    assert_eq!(status_of(&c, &base, "dup-1").await.as_deref(), Some("submitted"));
    assert_eq!(post(&c, &submit, &body).await.0, 200, "re-submit while running is idempotent");
    // The same gid with other work is refused, not silently ignored.
    let other = saga("dup-1", &steps(&branches, 2), &[json!({}), json!({})], false);
    let (status, reply) = post(&c, &submit, &other).await;
    assert_eq!(status, 409, "{reply}");
    assert!(reply["message"].as_str().is_some_and(|m| m.contains("other steps")), "{reply}");

    assert_eq!(wait_final(&c, &base, "dup-1", Duration::from_secs(20)).await, "succeed");
    let (status, reply) = post(&c, &submit, &body).await;
    assert_eq!(status, 409, "{reply}");
    assert_eq!(reply["dtm_result"], "FAILURE");
    coordinator.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn admin_routes_force_stop_and_reset_next_cron_time() {
    let branches = BranchServer::start().await;
    let coordinator = InProcess::sqlite(|_| {}).await;
    let (c, base) = (client(), coordinator.http.clone());
    // An action that sleeps past RequestTimeout keeps the saga unfinished.
    let body = saga("stuck-1", &steps(&branches, 1), &[json!({"delay_ms": 60_000})], false);
    assert_eq!(post(&c, &format!("{base}/api/dtmsvr/submit"), &body).await.0, 200);

    let reset = format!("{base}/api/dtmsvr/resetNextCronTime");
    assert_eq!(post(&c, &reset, &json!({"gid": "stuck-1"})).await, (200, json!({"dtm_result": "SUCCESS"})));
    assert_eq!(post(&c, &reset, &json!({"gid": "no-such-gid"})).await.0, 500);
    assert_eq!(post(&c, &reset, &json!({})).await.1["field"], "gid");

    let stop = format!("{base}/api/dtmsvr/forceStop");
    assert_eq!(post(&c, &stop, &json!({"gid": "stuck-1"})).await, (200, json!({"dtm_result": "SUCCESS"})));
    assert_eq!(status_of(&c, &base, "stuck-1").await.as_deref(), Some("failed"));
    let (status, reply) = post(&c, &stop, &json!({"gid": "stuck-1"})).await;
    assert_eq!((status, reply["dtm_result"].clone()), (409, json!("FAILURE")), "already final");
    coordinator.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn tcc_branches_register_through_the_route_and_its_old_aliases() {
    let branches = BranchServer::start().await;
    let coordinator = InProcess::sqlite(|_| {}).await;
    let (c, base) = (client(), coordinator.http.clone());
    let prepare = json!({"gid": "tcc-1", "trans_type": "tcc", "custom_data": null, "wait_result": false});
    assert_eq!(post(&c, &format!("{base}/api/dtmsvr/prepare"), &prepare).await.0, 200);
    assert_eq!(
        post(&c, &format!("{base}/api/dtmsvr/prepare"), &prepare).await.0,
        200,
        "prepare is idempotent"
    );

    let register = |branch_id: &str, gid: &str| {
        json!({"gid": gid, "trans_type": "tcc", "branch_id": branch_id, "data": "{}",
            "confirm": branches.url("confirm"), "cancel": branches.url("cancel"), "unknown": null})
    };
    for (route, branch_id) in [("registerBranch", "01"), ("registerTccBranch", "02")] {
        let (status, reply) =
            post(&c, &format!("{base}/api/dtmsvr/{route}"), &register(branch_id, "tcc-1")).await;
        assert_eq!((status, reply), (200, json!({"dtm_result": "SUCCESS"})), "{route}");
    }
    // The old XA alias reaches the same handler; no prepared trans → FAILURE.
    let (status, reply) =
        post(&c, &format!("{base}/api/dtmsvr/registerXaBranch"), &register("01", "tcc-x")).await;
    assert_eq!((status, reply["dtm_result"].clone()), (409, json!("FAILURE")), "{reply}");
    let bad_url =
        json!({"gid": "tcc-1", "trans_type": "tcc", "branch_id": "03", "confirm": "nope", "cancel": ""});
    let (status, reply) = post(&c, &format!("{base}/api/dtmsvr/registerBranch"), &bad_url).await;
    assert_eq!((status, reply["field"].clone()), (400, json!("confirm")), "{reply}");

    let (_, detail) = get(&c, &format!("{base}/api/dtmsvr/query?gid=tcc-1")).await;
    assert_eq!(detail["branches"].as_array().map(Vec::len), Some(4), "cancel+confirm per branch: {detail}");

    let submit = json!({"gid": "tcc-1", "trans_type": "tcc", "wait_result": true});
    assert_eq!(post(&c, &format!("{base}/api/dtmsvr/submit"), &submit).await.0, 200);
    assert_eq!(wait_final(&c, &base, "tcc-1", Duration::from_secs(20)).await, "succeed");
    let mut confirmed: Vec<String> = branches
        .calls_for("tcc-1")
        .into_iter()
        .filter(|call| call.params["op"] == "confirm")
        .map(|call| call.params["branch_id"].clone())
        .collect();
    confirmed.sort();
    assert_eq!(confirmed, ["01", "02"]);
    coordinator.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_configured_bearer_token_is_required_on_both_apis() {
    let coordinator =
        InProcess::sqlite(|config| config.auth_token = coordinator::config::Secret::new("t0ken")).await;
    let (c, base) = (client(), coordinator.http.clone());
    let new_gid = format!("{base}/api/dtmsvr/newGid");

    let response = c.get(&new_gid).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert!(response.json::<Value>().await.unwrap()["message"].is_string());
    assert_eq!(c.get(&new_gid).bearer_auth("wrong").send().await.unwrap().status().as_u16(), 401);
    assert_eq!(c.get(&new_gid).bearer_auth("t0ken").send().await.unwrap().status().as_u16(), 200);
    // Health checks and scrapes stay open.
    assert_eq!(get(&c, &format!("{base}/api/ping")).await.0, 200);
    assert_eq!(c.get(format!("{base}/api/metrics")).send().await.unwrap().status().as_u16(), 200);

    let mut grpc = DtmClient::connect(coordinator.grpc.clone()).await.unwrap();
    let status = grpc.new_gid(Request::new(())).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut request = Request::new(());
    request.metadata_mut().insert("authorization", "Bearer t0ken".parse().unwrap());
    assert_eq!(grpc.new_gid(request).await.unwrap().into_inner().gid.len(), 22);
    coordinator.stop().await.expect("clean shutdown");
}

// ---------------------------------------------------------------------------
// gRPC
// ---------------------------------------------------------------------------

/// `(dtm-gid, dtm-branch_id, dtm-op, num)` per call.
type CallLog = Arc<Mutex<Vec<(String, String, String, i64)>>>;

/// A gRPC order service: `create` fails (Aborted) when `num > 100`.
#[derive(Clone, Default)]
struct Orders {
    /// `(dtm-gid, dtm-branch_id, dtm-op, num)` of every call.
    calls: CallLog,
}

impl Orders {
    fn record(&self, request: &Request<CreateReq>) {
        let md = |k: &str| request.metadata().get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        self.calls.lock().unwrap().push((
            md("dtm-gid"),
            md("dtm-branch_id"),
            md("dtm-op"),
            request.get_ref().num,
        ));
    }
}

#[tonic::async_trait]
impl Order for Orders {
    async fn create(&self, request: Request<CreateReq>) -> Result<Response<CreateResp>, Status> {
        self.record(&request);
        if request.get_ref().num > 100 {
            return Err(Status::aborted("FAILURE: insufficient stock"));
        }
        Ok(Response::new(CreateResp {}))
    }

    async fn create_rollback(&self, request: Request<CreateReq>) -> Result<Response<CreateResp>, Status> {
        self.record(&request);
        Ok(Response::new(CreateResp {}))
    }
}

async fn start_orders() -> (Orders, String) {
    let orders = Orders::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = OrderServer::new(orders.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream_from(listener)),
    );
    (orders, addr.to_string())
}

fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}

fn grpc_saga(gid: &str, server: &str, num: i64, wait_result: bool) -> DtmRequest {
    DtmRequest {
        gid: gid.into(),
        trans_type: "saga".into(),
        steps: json!([{"action": format!("{server}/pb.order/create"), "compensate": format!("{server}/pb.order/createRollback")}])
            .to_string(),
        bin_payloads: vec![CreateReq { goods_id: 1, user_id: 1, num }.encode_to_vec()],
        trans_options: Some(DtmTransOptions { wait_result, ..Default::default() }),
        ..Default::default()
    }
}

#[tokio::test]
async fn grpc_api_submits_sagas_and_maps_outcomes_to_dtms_codes() {
    let (orders, server) = start_orders().await;
    let coordinator = InProcess::sqlite(|_| {}).await;
    let mut dtm = DtmClient::connect(coordinator.grpc.clone()).await.unwrap();

    let gid = dtm.new_gid(Request::new(())).await.unwrap().into_inner().gid;
    assert_eq!(gid.len(), 22);
    dtm.submit(grpc_saga("grpc-ok", &server, 2, true)).await.expect("wait_result success is OK");
    assert!(orders.calls.lock().unwrap().contains(&("grpc-ok".into(), "01".into(), "action".into(), 2)));

    let status = dtm.submit(grpc_saga("grpc-fail", &server, 500, true)).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    let c = client();
    assert_eq!(wait_final(&c, &coordinator.http, "grpc-fail", Duration::from_secs(20)).await, "failed");
    assert!(orders.calls.lock().unwrap().contains(&(
        "grpc-fail".into(),
        "01".into(),
        "compensate".into(),
        500
    )));

    let mut bad = grpc_saga("grpc-bad", &server, 1, false);
    bad.steps = "not json".into();
    let status = dtm.submit(bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("Steps"), "{status:?}");
    assert_eq!(status_of(&c, &coordinator.http, "grpc-bad").await, None);

    let mut duplicate = grpc_saga("grpc-ok", &server, 2, false);
    duplicate.trans_options = None;
    assert_eq!(dtm.submit(duplicate).await.unwrap_err().code(), Code::Aborted, "final saga refuses submit");

    // Workflows are served (engine_workflow.rs); a request without a gid is refused.
    let status = dtm.prepare_workflow(DtmRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let channel =
        tonic::transport::Endpoint::from_shared(coordinator.grpc.clone()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest { service: "dtmgimp.Dtm".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);

    assert!(reflected_services(&coordinator.grpc).await.contains(&"dtmgimp.Dtm".to_string()));

    let text = c.get(format!("{}/api/metrics", coordinator.http)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"dtm_server_process_total{type="grpc",api="submit",status="fail"}"#), "{text}");
    coordinator.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn overload_and_slow_requests_are_answered_with_503() {
    let branches = BranchServer::start().await;
    let coordinator = InProcess::sqlite(|config| {
        config.max_concurrent_requests = 1;
        config.api_timeout = 2;
    })
    .await;
    let (c, base) = (client(), coordinator.http.clone());
    let submit = format!("{base}/api/dtmsvr/submit");

    // A wait_result submit whose branch takes 2.8 s (under RequestTimeout)
    // holds the only slot for ApiTimeout = 2 s...
    let slow = saga("slow-1", &steps(&branches, 1), &[json!({"delay_ms": 2800})], true);
    let in_flight = tokio::spawn({
        let (c, submit) = (c.clone(), submit.clone());
        async move { post(&c, &submit, &slow).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while branches.calls_for("slow-1").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the branch was never called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...so the next request is shed at once instead of queueing.
    let (status, reply) = get(&c, &format!("{base}/api/dtmsvr/newGid")).await;
    assert_eq!(status, 503, "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("overloaded"), "{reply}");

    // ...and the slow one is cut at ApiTimeout (the saga itself goes on).
    let (status, reply) = in_flight.await.unwrap();
    assert_eq!(status, 503, "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("timed out"), "{reply}");
    assert_eq!(wait_final(&c, &base, "slow-1", Duration::from_secs(20)).await, "succeed");
    coordinator.stop().await.expect("clean shutdown");
}

/// The service names a gRPC reflection client (grpcurl, Postman) would see.
async fn reflected_services(address: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let channel =
        tonic::transport::Endpoint::from_shared(address.to_string()).unwrap().connect().await.unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies =
        client.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    match replies.message().await.unwrap().and_then(|reply| reply.message_response) {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection reply {other:?}"),
    }
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let branches = BranchServer::start().await;
    let coordinator = InProcess::sqlite(|_| {}).await;
    let (c, base) = (client(), coordinator.http.clone());
    let slow = saga("drain-1", &steps(&branches, 1), &[json!({"delay_ms": 1000})], true);
    let in_flight = tokio::spawn({
        let (c, submit) = (c.clone(), format!("{base}/api/dtmsvr/submit"));
        async move { post(&c, &submit, &slow).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while branches.calls_for("drain-1").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the branch was never called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stop while the submit is waiting for its branch: it still gets its answer.
    coordinator.stop().await.expect("clean shutdown");
    assert_eq!(in_flight.await.unwrap(), (200, json!({"dtm_result": "SUCCESS"})));
    assert!(c.get(format!("{base}/api/ping")).send().await.is_err(), "no longer accepting");
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_until_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let coordinator = InProcess::sqlite(|config| config.max_connections = 1).await;
    let addr = coordinator.http.trim_start_matches("http://").to_string();

    // The first connection takes the only slot (and just sits there).
    let first = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The second one is not accepted: its request cannot be answered...
    let mut second = tokio::net::TcpStream::connect(&addr).await.unwrap();
    second.write_all(b"GET /api/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut reply = Vec::new();
    let early = tokio::time::timeout(Duration::from_millis(300), second.read_to_end(&mut reply)).await;
    assert!(early.is_err(), "answered while the limit was reached: {:?}", String::from_utf8_lossy(&reply));
    // ...until the first closes; then it is served normally.
    drop(first);
    tokio::time::timeout(Duration::from_secs(10), second.read_to_end(&mut reply)).await.unwrap().unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    coordinator.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn the_store_block_reaches_postgres_and_mysql_by_parts() {
    // Host/Port/User/Db (dtm's keys) become the right connection URL.
    let branches = BranchServer::start().await;
    let postgres = harness::postgres_database().await;
    let mysql = harness::mysql_database().await;
    let stores = [
        coordinator::config::StoreConfig {
            driver: coordinator::config::StoreDriver::Postgres,
            host: "127.0.0.1".into(),
            port: edges_support::port_of(&postgres.server_url),
            user: "postgres".into(),
            db: postgres.name.clone(),
            ..Default::default()
        },
        edges_support::mysql_store(edges_support::port_of(&mysql.server_url), &mysql.name),
    ];
    for store in stores {
        let described = store.describe();
        let coordinator = InProcess::start(edges_support::fast_config(store)).await;
        let body = saga("by-parts", &steps(&branches, 1), &[json!({})], true);
        let (status, reply) =
            post(&client(), &format!("{}/api/dtmsvr/submit", coordinator.http), &body).await;
        assert_eq!(status, 200, "{described}: {reply}");
        coordinator.stop().await.expect("clean shutdown");
    }
}
