//! TCC (dtm's `trans_type_tcc.go`) and 2-phase messages (`trans_type_msg.go`) against real branch servers
//! and a real SQLite store.

mod engine_support;

use std::collections::BTreeMap;
use std::time::Duration;

use coordinator::model::{RegisterBranchRequest, TransRequestInput};
use coordinator::{Engine, EngineError, GlobalStatus};
use engine_support::{Branches, Reply, c, engine, req, status, wait_final};

const FINAL_WITHIN: Duration = Duration::from_secs(20);

fn tcc(gid: &str) -> TransRequestInput {
    TransRequestInput { gid: gid.into(), trans_type: "tcc".into(), ..Default::default() }
}

async fn register(engine: &Engine, b: &Branches, gid: &str, branch_id: &str) -> Result<(), EngineError> {
    let map = BTreeMap::from([
        ("gid".to_string(), gid.to_string()),
        ("trans_type".to_string(), "tcc".to_string()),
        ("branch_id".to_string(), branch_id.to_string()),
        ("confirm".to_string(), b.url(&format!("Confirm{branch_id}"))),
        ("cancel".to_string(), b.url(&format!("Cancel{branch_id}"))),
        ("data".to_string(), format!(r#"{{"branch":"{branch_id}"}}"#)),
    ]);
    engine.register_branch(RegisterBranchRequest::from_map(&map, None)?).await
}

fn msg(gid: &str, b: &Branches, steps: &[&str]) -> TransRequestInput {
    TransRequestInput {
        gid: gid.into(),
        trans_type: "msg".into(),
        steps: steps.iter().map(|s| BTreeMap::from([("action".to_string(), b.url(s))])).collect(),
        payloads: steps.iter().map(|s| format!(r#"{{"step":"{s}"}}"#).into_bytes()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn tcc_submit_confirms_every_branch_in_reverse_registration_order() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    engine.prepare(req(tcc("tcc-1"))).await.unwrap();
    register(&engine, &b, "tcc-1", "01").await.unwrap();
    register(&engine, &b, "tcc-1", "02").await.unwrap();
    let dup = register(&engine, &b, "tcc-1", "02").await.unwrap_err();
    assert!(matches!(dup, EngineError::Conflict(_)), "{dup:?}");
    let mut submit = tcc("tcc-1");
    submit.wait_result = true;
    engine.submit(req(submit)).await.unwrap();
    assert_eq!(b.calls_of("tcc-1"), [c("/Confirm02", "02", "confirm"), c("/Confirm01", "01", "confirm")]);
    for call in b.calls() {
        assert_eq!(call.param("trans_type"), "tcc");
        assert_eq!(call.body, format!(r#"{{"branch":"{}"}}"#, call.param("branch_id")).into_bytes());
    }
    let late = register(&engine, &b, "tcc-1", "03").await.unwrap_err();
    assert!(
        matches!(&late, EngineError::Conflict(m) if m == "no trans with gid: tcc-1 status: prepared found")
    );
}

#[tokio::test]
async fn tcc_abort_cancels_in_reverse_order_and_retries_a_failing_cancel() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    let poller = engine.spawn_poller();
    engine.prepare(req(tcc("tcc-2"))).await.unwrap();
    register(&engine, &b, "tcc-2", "01").await.unwrap();
    register(&engine, &b, "tcc-2", "02").await.unwrap();
    // A cancel's FAILURE is retried: cancels must eventually succeed.
    b.script("/Cancel01", [Reply::Failure]);
    let mut abort = tcc("tcc-2");
    abort.rollback_reason = "try failed".into();
    engine.abort(req(abort)).await.unwrap();
    assert_eq!(wait_final(&engine, "tcc-2", FINAL_WITHIN).await, GlobalStatus::Failed);
    assert_eq!(
        b.calls_of("tcc-2"),
        [c("/Cancel02", "02", "cancel"), c("/Cancel01", "01", "cancel"), c("/Cancel01", "01", "cancel")],
        "the succeeded cancel is not repeated"
    );
    let global = engine.query(&"tcc-2".parse().unwrap()).await.unwrap().unwrap().transaction.unwrap();
    assert_eq!(global.rollback_reason, "try failed");
    engine.shutdown().await;
    poller.await.unwrap();
}

#[tokio::test]
async fn a_prepared_tcc_that_times_out_is_cancelled() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    let poller = engine.spawn_poller();
    let mut prepare = tcc("tcc-3");
    prepare.timeout_to_fail = 1;
    engine.prepare(req(prepare)).await.unwrap();
    register(&engine, &b, "tcc-3", "01").await.unwrap();
    assert_eq!(wait_final(&engine, "tcc-3", FINAL_WITHIN).await, GlobalStatus::Failed);
    assert_eq!(b.calls_of("tcc-3"), [c("/Cancel01", "01", "cancel")]);
    let global = engine.query(&"tcc-3".parse().unwrap()).await.unwrap().unwrap().transaction.unwrap();
    assert_eq!(global.rollback_reason, "Timeout after 1 seconds");
    engine.shutdown().await;
    poller.await.unwrap();
}

#[tokio::test]
async fn msg_submit_delivers_every_action_in_order_retrying_failures() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    let poller = engine.spawn_poller();
    b.script("/Notify", [Reply::Failure]);
    engine.submit(req(msg("msg-1", &b, &["Ship", "Notify"]))).await.unwrap();
    assert_eq!(wait_final(&engine, "msg-1", FINAL_WITHIN).await, GlobalStatus::Succeed);
    assert_eq!(
        b.calls_of("msg-1"),
        [c("/Ship", "01", "action"), c("/Notify", "02", "action"), c("/Notify", "02", "action")]
    );
    assert!(b.calls().iter().all(|call| call.param("trans_type") == "msg" && call.method == "POST"));
    engine.shutdown().await;
    poller.await.unwrap();
}

#[tokio::test]
async fn a_prepared_msg_is_decided_by_its_check_back() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    let poller = engine.spawn_poller();
    b.script("/QueryPreparedNo", [Reply::Failure]);
    for (gid, check) in [("msg-yes", "QueryPrepared"), ("msg-no", "QueryPreparedNo")] {
        let mut prepare = msg(gid, &b, &["Ship"]);
        prepare.query_prepared = b.url(check);
        prepare.timeout_to_fail = 1;
        engine.prepare(req(prepare)).await.unwrap();
    }
    assert_eq!(wait_final(&engine, "msg-yes", FINAL_WITHIN).await, GlobalStatus::Succeed);
    assert_eq!(wait_final(&engine, "msg-no", FINAL_WITHIN).await, GlobalStatus::Failed);
    assert_eq!(b.calls_of("msg-yes"), [c("/QueryPrepared", "00", "msg"), c("/Ship", "01", "action")]);
    assert_eq!(
        b.calls_of("msg-no"),
        [c("/QueryPreparedNo", "00", "msg")],
        "a rolled-back message is not delivered"
    );
    let check = b.calls().into_iter().find(|call| call.path == "/QueryPrepared").unwrap();
    assert_eq!((check.method.as_str(), check.body.len()), ("GET", 0));
    engine.shutdown().await;
    poller.await.unwrap();
}

#[tokio::test]
async fn abort_fails_a_prepared_msg_and_refuses_sagas_and_submitted_msgs() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    engine.prepare(req(msg("msg-a", &b, &["Ship"]))).await.unwrap();
    engine.abort(req(msg("msg-a", &b, &[]))).await.unwrap();
    assert_eq!(status(&engine, "msg-a").await, GlobalStatus::Failed);
    let err = engine.submit(req(msg("msg-a", &b, &["Ship"]))).await.unwrap_err();
    assert!(matches!(&err, EngineError::Conflict(m) if m == "current status 'failed', cannot submit"));

    let mut saga = engine_support::saga("saga-a", &[(b.url("A"), b.url("B"))]);
    saga.wait_result = true;
    engine.submit(req(saga.clone())).await.unwrap();
    let err = engine.abort(req(saga)).await.unwrap_err();
    assert!(
        matches!(&err, EngineError::Conflict(m) if m == "trans type: 'saga' current status 'succeed', cannot abort")
    );
    assert!(b.calls_of("msg-a").is_empty());
    assert!(matches!(engine.abort(req(tcc("unknown"))).await, Err(EngineError::NotFound)));
}
