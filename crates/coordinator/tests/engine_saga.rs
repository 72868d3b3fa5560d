//! Saga semantics (dtm's `trans_type_saga.go`) against real branch servers and a real SQLite store.
//!
//! Every test records the calls each branch received and asserts the exact
//! sequence with the dtm parameters (gid, trans_type, branch_id, op).

mod engine_support;

use std::time::Duration;

use coordinator::{EngineError, GlobalStatus};
use engine_support::{Branches, Reply, Transport, c, engine, req, saga, status, wait_final};
use prost::Message;

const FINAL_WITHIN: Duration = Duration::from_secs(20);

fn two_steps(b: &Branches) -> Vec<(String, String)> {
    vec![(b.url("TransOut"), b.url("TransOutRevert")), (b.url("TransIn"), b.url("TransInRevert"))]
}

#[tokio::test]
async fn saga_success_calls_actions_in_order_with_dtm_parameters() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    let mut input = saga("ok-1", &two_steps(&b));
    input.wait_result = true;
    input.branch_headers.insert("x-test".into(), "hello".into());
    engine.submit(req(input)).await.expect("wait_result succeeds");

    assert_eq!(b.calls_of("ok-1"), [c("/TransOut", "01", "action"), c("/TransIn", "02", "action")]);
    for (k, call) in b.calls().iter().enumerate() {
        assert_eq!(call.param("trans_type"), "saga");
        assert_eq!(call.method, "POST", "a payload means POST");
        assert_eq!(call.body, format!(r#"{{"step":{k}}}"#).into_bytes(), "payload passed through verbatim");
        assert_eq!(call.header("content-type"), Some("application/json"));
        assert_eq!(call.header("x-test"), Some("hello"), "branch_headers are sent");
    }
    let detail = engine.query(&"ok-1".parse().unwrap()).await.unwrap().unwrap();
    let global = detail.transaction.unwrap();
    assert_eq!(global.status, GlobalStatus::Succeed);
    assert!(global.finish_time.is_some());
    let rows: Vec<(String, String, String)> = detail
        .branches
        .iter()
        .map(|r| (r.branch_id.to_string(), r.op.to_string(), r.status.to_string()))
        .collect();
    let row = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        rows,
        [
            row("01", "compensate", "prepared"),
            row("01", "action", "succeed"),
            row("02", "compensate", "prepared"),
            row("02", "action", "succeed")
        ]
    );
}

#[tokio::test]
async fn failure_compensates_every_attempted_step_in_reverse_including_the_failed_one() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    b.script("/TransIn", [Reply::Failure]);
    let mut steps = two_steps(&b);
    steps.push((b.url("Notify"), b.url("NotifyRevert")));
    let mut input = saga("fail-1", &steps);
    input.wait_result = true;
    let err = engine.submit(req(input)).await.unwrap_err();
    assert!(matches!(&err, EngineError::Failure(m) if m.contains("FAILURE")), "{err:?}");

    assert_eq!(
        b.calls_of("fail-1"),
        [
            c("/TransOut", "01", "action"),
            c("/TransIn", "02", "action"),
            c("/TransInRevert", "02", "compensate"),
            c("/TransOutRevert", "01", "compensate"),
        ],
        "step 3 never runs; step 2 is compensated although its action failed"
    );
    let detail = engine.query(&"fail-1".parse().unwrap()).await.unwrap().unwrap();
    let global = detail.transaction.unwrap();
    assert_eq!(global.status, GlobalStatus::Failed);
    assert!(global.rollback_reason.contains("FAILURE"));
    assert!(global.rollback_time.is_some());
    let failed: Vec<String> = detail
        .branches
        .iter()
        .filter(|r| r.status.to_string() == "failed")
        .map(|r| r.branch_id.to_string())
        .collect();
    assert_eq!(failed, ["02"]);
}

#[tokio::test]
async fn transient_errors_are_retried_until_success() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    let poller = engine.spawn_poller();
    b.script("/TransIn", [Reply::Error, Reply::Error]);
    engine.submit(req(saga("retry-1", &two_steps(&b)))).await.unwrap();
    assert_eq!(wait_final(&engine, "retry-1", FINAL_WITHIN).await, GlobalStatus::Succeed);
    assert_eq!(
        b.calls_of("retry-1"),
        [
            c("/TransOut", "01", "action"),
            c("/TransIn", "02", "action"),
            c("/TransIn", "02", "action"),
            c("/TransIn", "02", "action"),
        ],
        "the succeeded step is recorded by the failed pass and not repeated"
    );
    engine.shutdown().await;
    poller.await.unwrap();
}

#[tokio::test]
async fn ongoing_is_retried_until_success() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    let poller = engine.spawn_poller();
    b.script("/TransOut", [Reply::Ongoing, Reply::Ongoing]);
    let mut input = saga("ongoing-1", &two_steps(&b));
    input.wait_result = true;
    let err = engine.submit(req(input)).await.unwrap_err();
    assert!(matches!(err, EngineError::Ongoing), "{err:?}");
    assert_eq!(wait_final(&engine, "ongoing-1", FINAL_WITHIN).await, GlobalStatus::Succeed);
    assert_eq!(
        b.calls_of("ongoing-1"),
        [
            c("/TransOut", "01", "action"),
            c("/TransOut", "01", "action"),
            c("/TransOut", "01", "action"),
            c("/TransIn", "02", "action"),
        ]
    );
    engine.shutdown().await;
    poller.await.unwrap();
}

#[tokio::test]
async fn a_compensation_failing_twice_is_retried_until_it_succeeds() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    let poller = engine.spawn_poller();
    b.script("/TransIn", [Reply::Failure]);
    // A compensation's FAILURE is not accepted: retried like an error.
    b.script("/TransInRevert", [Reply::Failure, Reply::Error]);
    engine.submit(req(saga("comp-1", &two_steps(&b)))).await.unwrap();
    assert_eq!(wait_final(&engine, "comp-1", FINAL_WITHIN).await, GlobalStatus::Failed);
    assert_eq!(
        b.calls_of("comp-1"),
        [
            c("/TransOut", "01", "action"),
            c("/TransIn", "02", "action"),
            c("/TransInRevert", "02", "compensate"),
            c("/TransInRevert", "02", "compensate"),
            c("/TransInRevert", "02", "compensate"),
            c("/TransOutRevert", "01", "compensate"),
        ],
        "step 1 is compensated only after step 2's compensation succeeded"
    );
    engine.shutdown().await;
    poller.await.unwrap();
}

#[tokio::test]
async fn retry_limit_aborts_after_that_many_attempts() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    b.script("/TransIn", [Reply::Error; 10]);
    let mut input = saga("limit-1", &two_steps(&b));
    input.wait_result = true;
    input.retry_limit = 3;
    let err = engine.submit(req(input)).await.unwrap_err();
    assert!(
        matches!(&err, EngineError::Failure(m) if m == "RetryCount is greater than RetryLimit, RetryLimit: 3"),
        "{err:?}"
    );
    assert_eq!(
        b.calls_of("limit-1"),
        [
            c("/TransOut", "01", "action"),
            c("/TransIn", "02", "action"),
            c("/TransIn", "02", "action"),
            c("/TransIn", "02", "action"),
            c("/TransInRevert", "02", "compensate"),
            c("/TransOutRevert", "01", "compensate"),
        ]
    );
    assert_eq!(status(&engine, "limit-1").await, GlobalStatus::Failed);
}

#[tokio::test]
async fn timeout_to_fail_rolls_a_stuck_saga_back() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    let poller = engine.spawn_poller();
    b.script("/TransIn", [Reply::Ongoing; 100]);
    let mut input = saga("timeout-1", &two_steps(&b));
    input.timeout_to_fail = 2;
    engine.submit(req(input)).await.unwrap();
    assert_eq!(wait_final(&engine, "timeout-1", FINAL_WITHIN).await, GlobalStatus::Failed);
    let global = engine.query(&"timeout-1".parse().unwrap()).await.unwrap().unwrap().transaction.unwrap();
    assert_eq!(global.rollback_reason, "Timeout after 2 seconds");
    let calls = b.calls_of("timeout-1");
    assert_eq!(
        calls[calls.len() - 2..],
        [c("/TransInRevert", "02", "compensate"), c("/TransOutRevert", "01", "compensate")],
        "the step that may have run (ONGOING) is compensated first"
    );
    engine.shutdown().await;
    poller.await.unwrap();
}

#[tokio::test]
async fn duplicate_submit_is_accepted_while_running_and_refused_once_final() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    b.script("/TransOut", [Reply::Ongoing]);
    let mut input = saga("dup-1", &two_steps(&b));
    input.wait_result = true;
    assert!(matches!(engine.submit(req(input.clone())).await, Err(EngineError::Ongoing)));
    assert_eq!(status(&engine, "dup-1").await, GlobalStatus::Submitted);
    // Running: accepted again; with wait_result this runs a pass, which now succeeds.
    engine.submit(req(input.clone())).await.expect("resubmit of a running saga is accepted");
    assert_eq!(status(&engine, "dup-1").await, GlobalStatus::Succeed);
    let err = engine.submit(req(input.clone())).await.unwrap_err();
    assert!(
        matches!(&err, EngineError::Conflict(m) if m == "current status 'succeed', cannot submit"),
        "{err:?}"
    );
    input.wait_result = false;
    assert!(matches!(engine.submit(req(input)).await, Err(EngineError::Conflict(_))));
    assert_eq!(b.calls_of("dup-1").len(), 3, "no branch is called by the refused submits");
}

#[tokio::test]
async fn prepare_is_idempotent_and_submit_processes_the_prepared_saga() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    let input = saga("prep-1", &two_steps(&b));
    engine.prepare(req(input.clone())).await.unwrap();
    engine.prepare(req(input.clone())).await.unwrap();
    assert_eq!(status(&engine, "prep-1").await, GlobalStatus::Prepared);
    assert!(b.calls_of("prep-1").is_empty());
    let mut submit = input;
    submit.wait_result = true;
    engine.submit(req(submit)).await.unwrap();
    assert_eq!(b.calls_of("prep-1"), [c("/TransOut", "01", "action"), c("/TransIn", "02", "action")]);
    let err = engine.prepare(req(saga("prep-1", &two_steps(&b)))).await.unwrap_err();
    assert!(matches!(&err, EngineError::Conflict(m) if m == "current status 'succeed', cannot prepare"));
}

#[tokio::test]
async fn concurrent_saga_respects_orders_forward_and_backward() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    // Steps 0 and 1 run together; step 2 waits for both; step 2 fails.
    b.script("/S0", [Reply::Slow(Duration::from_millis(300))]);
    b.script("/S2", [Reply::Failure]);
    let steps: Vec<(String, String)> =
        (0..3).map(|k| (b.url(&format!("S{k}")), b.url(&format!("C{k}")))).collect();
    let mut input = saga("conc-1", &steps);
    input.custom_data = r#"{"concurrent":true,"orders":{"2":[0,1]}}"#.into();
    input.wait_result = true;
    assert!(matches!(engine.submit(req(input)).await, Err(EngineError::Failure(_))));

    let paths: Vec<String> = b.calls_of("conc-1").into_iter().map(|(p, _, _)| p).collect();
    let at =
        |p: &str| paths.iter().position(|x| x == p).unwrap_or_else(|| panic!("{p} not called: {paths:?}"));
    assert_eq!(paths.len(), 6, "{paths:?}");
    assert!(at("/S0") < at("/S2") && at("/S1") < at("/S2"), "S2 waits for S0 and S1: {paths:?}");
    assert!(at("/C2") < at("/C0") && at("/C2") < at("/C1"), "C0 and C1 wait for C2: {paths:?}");
    assert_eq!(status(&engine, "conc-1").await, GlobalStatus::Failed);
}

#[tokio::test]
async fn grpc_branches_get_raw_payloads_and_dtm_metadata() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    b.script(proto::stock::DEDUCT_PATH, [Reply::Failure]);
    let order = proto::order::CreateReq { goods_id: 1, user_id: 7, num: 2 }.encode_to_vec();
    let stock = proto::stock::DeductReq { goods_id: 1, num: 2 }.encode_to_vec();
    let g = &b.grpc;
    let mut input = saga(
        "grpc-1",
        &[
            (format!("{g}/pb.order/create"), format!("{g}/pb.order/createRollback")),
            (format!("{g}/pb.stock/deduct"), format!("{g}/pb.stock/deductRollback")),
        ],
    );
    input.payloads = vec![order.clone(), stock.clone()];
    input.protocol = "grpc".into();
    input.wait_result = true;
    input.branch_headers.insert("x-test".into(), "meta".into());
    assert!(matches!(engine.submit(req(input)).await, Err(EngineError::Failure(m)) if m.contains("FAILURE")));
    assert_eq!(
        b.calls_of("grpc-1"),
        [
            c("/pb.order/create", "01", "action"),
            c("/pb.stock/deduct", "02", "action"),
            c("/pb.stock/deductRollback", "02", "compensate"),
            c("/pb.order/createRollback", "01", "compensate"),
        ]
    );
    for call in b.calls() {
        assert_eq!((call.transport, call.param("trans_type").as_str()), (Transport::Grpc, "saga"));
        assert_eq!(call.header("x-test"), Some("meta"));
        let expected = if call.path.starts_with("/pb.order") { &order } else { &stock };
        assert_eq!(&call.body, expected, "payload bytes arrive as the request message");
    }
}

#[tokio::test]
async fn invalid_requests_are_refused_before_anything_is_stored() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    let mut input = saga("bad-1", &two_steps(&b));
    // A workflow is finished by its SDK's submit, which says how it ended.
    input.trans_type = "workflow".into();
    input.steps.clear();
    input.payloads.clear();
    let err = engine.submit(req(input)).await.unwrap_err();
    assert!(
        matches!(&err, EngineError::InvalidArgument { field, .. } if field == "req_extra.status"),
        "{err:?}"
    );
    let mut input = saga("bad-2", &two_steps(&b));
    input.protocol = "json-rpc".into();
    assert!(matches!(engine.submit(req(input)).await, Err(EngineError::InvalidArgument { .. })));
    assert!(engine.query(&"bad-1".parse().unwrap()).await.unwrap().is_none());
    assert!(engine.query(&"bad-2".parse().unwrap()).await.unwrap().is_none());
}

#[tokio::test]
async fn force_stop_and_reset_next_cron_time() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    b.script("/TransOut", [Reply::Ongoing]);
    let mut input = saga("stop-1", &two_steps(&b));
    input.wait_result = true;
    let _ = engine.submit(req(input)).await;
    let gid = "stop-1".parse().unwrap();
    engine.reset_next_cron_time(&gid).await.unwrap();
    engine.force_stop(&gid).await.unwrap();
    assert_eq!(status(&engine, "stop-1").await, GlobalStatus::Failed);
    assert!(matches!(engine.force_stop(&gid).await, Err(EngineError::Conflict(_))));
    let unknown = "nope".parse().unwrap();
    assert!(matches!(engine.force_stop(&unknown).await, Err(EngineError::NotFound)));
    assert!(matches!(engine.reset_next_cron_time(&unknown).await, Err(EngineError::NotFound)));
}

#[tokio::test]
async fn empty_payload_means_get_and_empty_url_means_immediate_success() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    b.script("/Second", [Reply::Failure]);
    let mut input = saga("empty-1", &[(String::new(), b.url("Undo")), (b.url("Second"), String::new())]);
    input.payloads = vec![Vec::new(), Vec::new()];
    input.wait_result = true;
    assert!(matches!(engine.submit(req(input)).await, Err(EngineError::Failure(_))));
    // Step 1's empty action and step 2's empty compensation are never called.
    assert_eq!(b.calls_of("empty-1"), [c("/Second", "02", "action"), c("/Undo", "01", "compensate")]);
    assert!(
        b.calls().iter().all(|call| call.method == "GET"
            && call.body.is_empty()
            && call.header("content-type").is_none())
    );
}

#[derive(Default)]
struct Counting {
    finished: std::sync::Mutex<Vec<(String, String)>>,
    branches: std::sync::Mutex<Vec<(String, String, bool)>>,
}

impl coordinator::EngineObserver for Counting {
    fn transaction_finished(
        &self,
        trans_type: dtm_protocol::TransType,
        outcome: GlobalStatus,
        _duration: Duration,
    ) {
        self.finished.lock().unwrap().push((trans_type.to_string(), outcome.to_string()));
    }
    fn branch_called(
        &self,
        _trans_type: dtm_protocol::TransType,
        branch_id: &dtm_protocol::BranchId,
        op: dtm_protocol::Op,
        outcome: &dtm_protocol::BranchResult,
        _latency: Duration,
    ) {
        let ok = matches!(outcome, dtm_protocol::BranchResult::Success);
        self.branches.lock().unwrap().push((branch_id.to_string(), op.to_string(), ok));
    }
}

#[tokio::test]
async fn the_observer_sees_every_branch_call_and_the_outcome() {
    let db = harness::sqlite_database();
    let b = Branches::start().await;
    let observer = std::sync::Arc::new(Counting::default());
    let store = coordinator::store::open(&db.url, 4).await.unwrap();
    let hooks = coordinator::EngineHooks { observer: observer.clone(), ..Default::default() };
    let engine = coordinator::Engine::new(store, engine_support::fast_settings(), hooks).unwrap();
    b.script("/TransIn", [Reply::Failure]);
    let mut input = saga("obs-1", &two_steps(&b));
    input.wait_result = true;
    let _ = engine.submit(req(input)).await;
    assert_eq!(*observer.finished.lock().unwrap(), [("saga".to_string(), "failed".to_string())]);
    let s = |b: &str, o: &str, ok: bool| (b.to_string(), o.to_string(), ok);
    assert_eq!(
        *observer.branches.lock().unwrap(),
        [
            s("01", "action", true),
            s("02", "action", false),
            s("02", "compensate", true),
            s("01", "compensate", true)
        ]
    );
}

#[tokio::test]
async fn etcd_branch_urls_are_resolved_through_discovery() {
    let etcd = harness::Etcd::start();
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    let conf = discovery::EtcdConf::new(etcd.endpoints(), "order.rpc");
    let _registration = discovery::Registration::register_value(&conf, b.grpc.clone()).await.unwrap();
    let target = format!("etcd://{}/order.rpc", etcd.hosts());
    let mut input =
        saga("etcd-1", &[(format!("{target}/pb.order/create"), format!("{target}/pb.order/createRollback"))]);
    input.payloads = vec![proto::order::CreateReq { goods_id: 1, user_id: 2, num: 3 }.encode_to_vec()];
    input.protocol = "grpc".into();
    input.wait_result = true;
    engine.submit(req(input)).await.expect("the etcd-registered branch is reached");
    assert_eq!(b.calls_of("etcd-1"), [c("/pb.order/create", "01", "action")]);

    // Without a resolver, such URLs are refused before anything is stored.
    let store = coordinator::store::open(&db.url, 1).await.unwrap();
    let hooks = coordinator::EngineHooks { resolver: None, ..Default::default() };
    let bare = coordinator::Engine::new(store, engine_support::fast_settings(), hooks).unwrap();
    let input = saga("etcd-2", &[(format!("{target}/pb.order/create"), String::new())]);
    let err = bare.submit(req(input)).await.unwrap_err();
    assert!(
        matches!(&err, EngineError::InvalidArgument { message, .. } if message.contains("etcd resolver")),
        "{err:?}"
    );
}
