//! dtm's workflow mode in the coordinator (`dtmsvr/trans_type_workflow.go`):
//! `prepareWorkflow`, progress records, the workflow's submit, and the
//! poller resuming an unfinished workflow through its callback (HTTP and
//! gRPC), on MariaDB, PostgreSQL and SQLite.

mod engine_support;

use std::collections::BTreeMap;
use std::time::Duration;

use coordinator::model::{RegisterBranchRequest, TransRequestInput};
use coordinator::{Engine, EngineError, GlobalStatus};
use engine_support::{Branches, Reply, engine, req, status, wait_final};
use harness::TestDatabase;

/// `{"name":"order","data":base64("{\"n\":1}")}`.
const CUSTOM: &str = r#"{"name":"order","data":"eyJuIjoxfQ=="}"#;

fn workflow(gid: &str, callback: &str) -> TransRequestInput {
    TransRequestInput {
        gid: gid.into(),
        trans_type: "workflow".into(),
        custom_data: CUSTOM.into(),
        query_prepared: callback.into(),
        retry_interval: 1,
        ..Default::default()
    }
}

fn submit(gid: &str, extra: &[(&str, &str)]) -> TransRequestInput {
    TransRequestInput {
        gid: gid.into(),
        trans_type: "workflow".into(),
        req_extra: extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

async fn progress(
    engine: &Engine,
    gid: &str,
    branch: &str,
    op: &str,
    state: &str,
    data: &str,
) -> Result<(), EngineError> {
    let map = BTreeMap::from([
        ("gid".to_string(), gid.to_string()),
        ("trans_type".to_string(), "workflow".to_string()),
        ("branch_id".to_string(), branch.to_string()),
        ("op".to_string(), op.to_string()),
        ("status".to_string(), state.to_string()),
        ("data".to_string(), data.to_string()),
    ]);
    engine.register_branch(RegisterBranchRequest::from_map(&map, None)?).await
}

async fn progress_is_recorded_once_and_submit_finishes_the_workflow(db: TestDatabase) {
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    let first = engine.prepare_workflow(req(workflow("wf-1", &b.url("Resume")))).await.unwrap();
    assert_eq!(first.transaction.status, GlobalStatus::Prepared);
    assert!(first.progresses.is_empty());

    progress(&engine, "wf-1", "01", "action", "succeed", "r1").await.unwrap();
    // The same record again (a lost reply retried) is fine; another one for
    // the same step is refused: a recorded step is never overwritten.
    progress(&engine, "wf-1", "01", "action", "succeed", "r1").await.unwrap();
    let other = progress(&engine, "wf-1", "01", "action", "failed", "no").await.unwrap_err();
    assert!(matches!(other, EngineError::Conflict(_)), "{other:?}");
    progress(&engine, "wf-1", "02", "action", "failed", "out of stock").await.unwrap();
    progress(&engine, "wf-1", "02", "rollback", "succeed", "").await.unwrap();
    for (op, state) in [("try", "succeed"), ("action", "prepared"), ("action", "")] {
        let bad = progress(&engine, "wf-1", "03", op, state, "").await.unwrap_err();
        assert!(matches!(bad, EngineError::InvalidArgument { .. }), "{op}/{state}: {bad:?}");
    }

    // prepareWorkflow again (a resumed run): the same transaction, its progress in order.
    let again = engine.prepare_workflow(req(workflow("wf-1", &b.url("Resume")))).await.unwrap();
    let steps: Vec<_> = again
        .progresses
        .iter()
        .map(|p| (p.branch_id.as_str(), p.op.as_str(), p.status.as_str(), p.bin_data.as_slice()))
        .collect();
    assert_eq!(
        steps,
        [
            ("01", "action", "succeed", &b"r1"[..]),
            ("02", "action", "failed", &b"out of stock"[..]),
            ("02", "rollback", "succeed", &b""[..])
        ]
    );

    let no_status = engine.submit(req(submit("wf-1", &[]))).await.unwrap_err();
    assert!(matches!(no_status, EngineError::InvalidArgument { .. }), "{no_status:?}");
    engine
        .submit(req(submit("wf-1", &[("status", "failed"), ("rollback_reason", "out of stock")])))
        .await
        .unwrap();
    assert_eq!(status(&engine, "wf-1").await, GlobalStatus::Failed);
    // The same submit again is accepted; the other outcome is not.
    engine.submit(req(submit("wf-1", &[("status", "failed")]))).await.unwrap();
    let flip = engine.submit(req(submit("wf-1", &[("status", "succeed")]))).await.unwrap_err();
    assert!(matches!(flip, EngineError::Conflict(_)), "{flip:?}");
    let late = progress(&engine, "wf-1", "03", "action", "succeed", "").await.unwrap_err();
    assert!(
        matches!(&late, EngineError::Conflict(m) if m == "no trans with gid: wf-1 status: prepared found")
    );
    let done = engine.prepare_workflow(req(workflow("wf-1", &b.url("Resume")))).await.unwrap();
    assert_eq!(
        (done.transaction.status, done.transaction.rollback_reason.as_str()),
        (GlobalStatus::Failed, "out of stock")
    );

    // A succeeded workflow keeps its result (base64, as the SDK sends it).
    engine.prepare_workflow(req(workflow("wf-2", &b.url("Resume")))).await.unwrap();
    engine.submit(req(submit("wf-2", &[("status", "succeed"), ("result", "b2s=")]))).await.unwrap();
    let done = engine.prepare_workflow(req(workflow("wf-2", &b.url("Resume")))).await.unwrap();
    assert_eq!((done.transaction.status, done.transaction.result.as_str()), (GlobalStatus::Succeed, "b2s="));

    // A gid of another type is not a workflow; a workflow needs its name.
    let mut saga = workflow("wf-3", "");
    saga.custom_data = r#"{"data":"AA=="}"#.into();
    let bad = engine.prepare_workflow(req(saga)).await.unwrap_err();
    assert!(matches!(&bad, EngineError::InvalidArgument { field, .. } if field == "custom_data"), "{bad:?}");
    assert!(b.calls().is_empty(), "nothing was called back: no workflow was due");
}

async fn an_unfinished_workflow_is_resumed_through_its_http_callback(db: TestDatabase) {
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    let _poller = engine.spawn_poller();
    // The first resume fails, the second runs but does not finish: the
    // callback is called again until the application submits.
    b.script("/Resume", [Reply::Error, Reply::Ok]);
    engine.prepare_workflow(req(workflow("wf-http", &b.url("Resume")))).await.unwrap();
    b.wait_calls("wf-http", 3, Duration::from_secs(20)).await;
    let calls: Vec<_> = b.calls().into_iter().filter(|c| c.param("gid") == "wf-http").collect();
    for call in &calls[..3] {
        assert_eq!(call.path, "/Resume");
        assert_eq!(call.method, "POST");
        assert_eq!(
            (call.param("trans_type"), call.param("branch_id"), call.param("op")),
            ("workflow".to_string(), "00".to_string(), "order".to_string()),
            "op is the workflow's name"
        );
        assert_eq!(call.body, br#"{"n":1}"#, "the raw input as the body");
    }
    assert_eq!(status(&engine, "wf-http").await, GlobalStatus::Prepared);
    engine.submit(req(submit("wf-http", &[("status", "succeed")]))).await.unwrap();
    assert_eq!(wait_final(&engine, "wf-http", Duration::from_secs(5)).await, GlobalStatus::Succeed);
    let settled = b.calls_of("wf-http").len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(b.calls_of("wf-http").len() <= settled + 1, "no more callbacks once it finished");
}

async fn a_grpc_callback_gets_workflow_data_and_the_name_as_dtm_op(db: TestDatabase) {
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    let _poller = engine.spawn_poller();
    let callback = format!("{}/workflow.Workflow/Execute", b.grpc);
    engine.prepare_workflow(req(workflow("wf-grpc", &callback))).await.unwrap();
    b.wait_calls("wf-grpc", 1, Duration::from_secs(20)).await;
    let calls: Vec<_> = b.calls().into_iter().filter(|c| c.param("gid") == "wf-grpc").collect();
    let call = &calls[0];
    assert_eq!(call.path, "/workflow.Workflow/Execute");
    assert_eq!((call.param("op"), call.param("branch_id")), ("order".to_string(), "00".to_string()));
    // workflow.WorkflowData{Data: input}: field 1, length 7.
    assert_eq!(call.body, [&[0x0a, 7][..], br#"{"n":1}"#].concat());
    engine.submit(req(submit("wf-grpc", &[("status", "succeed")]))).await.unwrap();
    assert_eq!(status(&engine, "wf-grpc").await, GlobalStatus::Succeed);
}

macro_rules! on_every_store {
    ($($test:ident),* $(,)?) => {
        mod mariadb {
            $(#[tokio::test] async fn $test() { super::$test(harness::mysql_database().await).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $test() { super::$test(harness::postgres_database().await).await })*
        }
        mod sqlite {
            $(#[tokio::test] async fn $test() { super::$test(harness::sqlite_database()).await })*
        }
    };
}

on_every_store!(
    progress_is_recorded_once_and_submit_finishes_the_workflow,
    an_unfinished_workflow_is_resumed_through_its_http_callback,
    a_grpc_callback_gets_workflow_data_and_the_name_as_dtm_op,
);
