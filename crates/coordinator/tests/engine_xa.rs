//! XA (dtm's `dtmsvr/trans_type_xa.go`) in the coordinator: `prepare`,
//! `registerBranch` of XA branches (rows `rollback` and `commit` with one
//! URL), `submit` → every `commit`, `abort` or timeout → every `rollback`,
//! always POSTed, retried until they succeed, and finished by another
//! coordinator after the first one died between submit and commit. Every
//! test runs with the store on MariaDB, PostgreSQL and SQLite; the branches
//! are the harness's recording server (the branches' own XA transactions
//! are `dtm-client`'s, tested in `crates/dtm-client/tests/xa.rs`).

#[macro_use]
mod engine_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use coordinator::engine::{Checkpoint, PassCheckpoint};
use coordinator::model::{RegisterBranchRequest, TransRequestInput};
use coordinator::{Engine, EngineError, EngineHooks, GlobalStatus};
use dtm_protocol::{Gid, Op};
use engine_support::{Branches, Reply, Transport, c, fast_settings, req, status, wait_final};

const FINAL_WITHIN: Duration = Duration::from_secs(20);

fn xa(gid: &str) -> TransRequestInput {
    TransRequestInput { gid: gid.into(), trans_type: "xa".into(), ..Default::default() }
}

/// What an XA branch registers from inside its local transaction: its
/// phase-2 URL (here `/Xa<branch>` on the recording server).
fn registration(b: &Branches, gid: &str, branch_id: &str) -> RegisterBranchRequest {
    let map = BTreeMap::from([
        ("gid".to_string(), gid.to_string()),
        ("trans_type".to_string(), "xa".to_string()),
        ("branch_id".to_string(), branch_id.to_string()),
        ("url".to_string(), b.url(&format!("Xa{branch_id}"))),
    ]);
    RegisterBranchRequest::from_map(&map, None).expect("valid registration")
}

struct World {
    store_url: String,
    branches: Branches,
    _store: harness::TestDatabase,
}

impl World {
    async fn new(store: harness::TestDatabase) -> World {
        harness::init_tracing();
        World { store_url: store.url.clone(), branches: Branches::start().await, _store: store }
    }

    async fn engine(&self, hooks: EngineHooks) -> Engine {
        let store = coordinator::store::open(&self.store_url, 8).await.expect("open store");
        Engine::new(store, fast_settings(), hooks).expect("engine")
    }

    async fn prepared_with(&self, engine: &Engine, gid: &str, branches: &[&str]) {
        engine.prepare(req(xa(gid))).await.expect("prepared");
        for branch in branches {
            engine.register_branch(registration(&self.branches, gid, branch)).await.expect("registered");
        }
    }
}

/// Submit: every branch's `commit`, oldest registration first, POSTed with
/// an empty body; the rows are dtm's (`rollback` then `commit` per branch).
async fn submit_commits_every_branch_in_registration_order(world: World) {
    let engine = world.engine(EngineHooks::default()).await;
    let b = &world.branches;
    world.prepared_with(&engine, "xa-1", &["01", "02"]).await;
    let duplicate = engine.register_branch(registration(b, "xa-1", "02")).await;
    assert!(matches!(duplicate, Err(EngineError::Conflict(_))), "{duplicate:?}");
    let mut submit = xa("xa-1");
    submit.wait_result = true;
    engine.submit(req(submit)).await.expect("committed");

    assert_eq!(b.calls_of("xa-1"), [c("/Xa01", "01", "commit"), c("/Xa02", "02", "commit")]);
    for call in b.calls() {
        assert_eq!(
            (call.method.as_str(), call.param("trans_type").as_str(), call.body.len()),
            ("POST", "xa", 0)
        );
    }
    let detail = engine.query(&"xa-1".parse().unwrap()).await.unwrap().unwrap();
    let rows: Vec<(String, Op, String)> =
        detail.branches.iter().map(|r| (r.branch_id.to_string(), r.op, r.status.to_string())).collect();
    assert_eq!(
        rows,
        [
            ("01".into(), Op::Rollback, "prepared".into()),
            ("01".into(), Op::Commit, "succeed".into()),
            ("02".into(), Op::Rollback, "prepared".into()),
            ("02".into(), Op::Commit, "succeed".into()),
        ]
    );
    assert!(detail.branches.iter().all(|r| r.url == b.url(&format!("Xa{}", r.branch_id))));
    let late = engine.register_branch(registration(b, "xa-1", "03")).await;
    assert!(
        matches!(&late, Err(EngineError::Conflict(m)) if m == "no trans with gid: xa-1 status: prepared found"),
        "{late:?}"
    );
}

/// A gRPC phase-2 URL gets its `commit` as a gRPC call with dtm's metadata.
async fn a_grpc_branch_is_committed_over_grpc(world: World) {
    let engine = world.engine(EngineHooks::default()).await;
    engine.prepare(req(xa("xa-g"))).await.expect("prepared");
    let map = BTreeMap::from([
        ("gid".to_string(), "xa-g".to_string()),
        ("trans_type".to_string(), "xa".to_string()),
        ("branch_id".to_string(), "01".to_string()),
        ("url".to_string(), format!("{}/pb.busi/Xa", world.branches.grpc)),
    ]);
    engine.register_branch(RegisterBranchRequest::from_map(&map, None).unwrap()).await.expect("registered");
    let mut submit = xa("xa-g");
    submit.wait_result = true;
    engine.submit(req(submit)).await.expect("committed");
    assert_eq!(world.branches.calls_of("xa-g"), [c("/pb.busi/Xa", "01", "commit")]);
    let call = world.branches.calls().into_iter().find(|call| call.param("gid") == "xa-g").unwrap();
    assert_eq!((call.transport, call.param("trans_type").as_str()), (Transport::Grpc, "xa"));
}

/// Abort: every `rollback`, a failing one retried (FAILURE too: a
/// prepared local transaction can always be rolled back) until it succeeds.
async fn abort_rolls_back_every_branch_and_retries_until_done(world: World) {
    let engine = world.engine(EngineHooks::default()).await;
    let poller = engine.spawn_poller();
    let b = &world.branches;
    world.prepared_with(&engine, "xa-2", &["01", "02"]).await;
    b.script("/Xa01", [Reply::Failure, Reply::Error]);
    let mut wrong_type = xa("xa-2");
    wrong_type.trans_type = "tcc".into();
    let refused = engine.abort(req(wrong_type)).await;
    assert!(matches!(refused, Err(EngineError::Conflict(_))), "{refused:?}");
    let mut abort = xa("xa-2");
    abort.rollback_reason = "branch 02 said no".into();
    engine.abort(req(abort)).await.expect("aborting");
    assert_eq!(wait_final(&engine, "xa-2", FINAL_WITHIN).await, GlobalStatus::Failed);
    assert_eq!(
        b.calls_of("xa-2"),
        [
            c("/Xa01", "01", "rollback"),
            c("/Xa01", "01", "rollback"),
            c("/Xa01", "01", "rollback"),
            c("/Xa02", "02", "rollback"),
        ],
        "registration order; a pass stops at the first rollback that does not succeed"
    );
    let global = engine.query(&"xa-2".parse().unwrap()).await.unwrap().unwrap().transaction.unwrap();
    assert_eq!(global.rollback_reason, "branch 02 said no");
    engine.shutdown().await;
    poller.await.unwrap();
}

/// An XA left prepared (the application died before submit) is rolled back
/// once its `timeout_to_fail` has passed.
async fn a_prepared_xa_that_times_out_is_rolled_back(world: World) {
    let engine = world.engine(EngineHooks::default()).await;
    let poller = engine.spawn_poller();
    let mut prepare = xa("xa-3");
    prepare.timeout_to_fail = 1;
    engine.prepare(req(prepare)).await.expect("prepared");
    engine.register_branch(registration(&world.branches, "xa-3", "01")).await.expect("registered");
    assert_eq!(wait_final(&engine, "xa-3", FINAL_WITHIN).await, GlobalStatus::Failed);
    assert_eq!(world.branches.calls_of("xa-3"), [c("/Xa01", "01", "rollback")]);
    let global = engine.query(&"xa-3".parse().unwrap()).await.unwrap().unwrap().transaction.unwrap();
    assert_eq!(global.rollback_reason, "Timeout after 1 seconds");
    engine.shutdown().await;
    poller.await.unwrap();
}

/// Stops every pass forever just before its first `commit` call, and says so:
/// the coordinator "dies" there.
#[derive(Default)]
struct DiesBeforeCommit {
    reached: AtomicUsize,
}

#[async_trait]
impl PassCheckpoint for DiesBeforeCommit {
    async fn reached(&self, _gid: &Gid, point: Checkpoint) {
        if matches!(point, Checkpoint::BeforeCall { op: Op::Commit, .. }) {
            self.reached.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
    }
}

/// A coordinator killed after it accepted the submit and before any commit
/// was sent: another coordinator on the same store takes the lease once it
/// has expired and delivers every commit, once.
async fn commits_land_after_the_coordinator_dies_between_submit_and_commit(world: World) {
    let dying = Arc::new(DiesBeforeCommit::default());
    let one = world.engine(EngineHooks { checkpoint: Some(dying.clone()), ..EngineHooks::default() }).await;
    world.prepared_with(&one, "xa-4", &["01", "02"]).await;
    one.submit(req(xa("xa-4"))).await.expect("accepted");
    harness::wait_until("the pass is stuck before its commit", FINAL_WITHIN, async || {
        if dying.reached.load(Ordering::SeqCst) > 0 { Ok(()) } else { Err("not yet".to_string()) }
    })
    .await;
    one.abandon(); // what SIGKILL leaves: a live lease, no release
    assert_eq!(status(&one, "xa-4").await, GlobalStatus::Submitted);
    assert!(world.branches.calls_of("xa-4").is_empty(), "no commit was sent");

    let two = world.engine(EngineHooks::default()).await;
    let poller = two.spawn_poller();
    assert_eq!(wait_final(&two, "xa-4", FINAL_WITHIN).await, GlobalStatus::Succeed);
    assert_eq!(world.branches.calls_of("xa-4"), [c("/Xa01", "01", "commit"), c("/Xa02", "02", "commit")]);
    two.shutdown().await;
    poller.await.unwrap();
}

on_every_store!(
    submit_commits_every_branch_in_registration_order,
    a_grpc_branch_is_committed_over_grpc,
    abort_rolls_back_every_branch_and_retries_until_done,
    a_prepared_xa_that_times_out_is_rolled_back,
    commits_land_after_the_coordinator_dies_between_submit_and_commit,
);
