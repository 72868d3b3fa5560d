//! One pass per transaction, whatever clients, pauses and clocks do.
//!
//! Each test holds a pass at a chosen point with a [`PassCheckpoint`] hook,
//! lets a second actor in (a `wait_result` resubmit, another coordinator's
//! poller after the lease ran out, `resetNextCronTime`, a `registerBranch`),
//! releases the first pass, and then checks what every branch actually
//! received and what it applied — through dtm's barrier into an `effect`
//! table — not only the final status. Every test runs with the
//! coordinator's store on MariaDB, PostgreSQL and SQLite.

#[macro_use]
mod engine_support;
mod store_support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use coordinator::engine::{Checkpoint, PassCheckpoint};
use coordinator::model::{RegisterBranchRequest, TransRequestInput};
use coordinator::store::StoreError;
use coordinator::{Engine, EngineError, EngineHooks, EngineSettings, GlobalStatus};
use dtm_protocol::{BranchId, Gid, Op};
use engine_support::{Branches, Reply, fast_settings, req, saga, status, wait_final};
use store_support::Intercepted;
use tokio::sync::Semaphore;

/// Holds the first pass that reaches `point` until the test opens the gate.
struct Gate {
    point: Checkpoint,
    /// A permit appears when a pass is held at the gate.
    reached: Semaphore,
    /// The held pass goes on when a permit appears here.
    open: Semaphore,
}

/// A checkpoint hook: records every point reached and holds passes at gates.
#[derive(Default)]
struct Hook {
    seen: Mutex<Vec<(String, Checkpoint)>>,
    gates: Mutex<Vec<Arc<Gate>>>,
}

impl Hook {
    /// Arms a gate at `point` (for the next pass that reaches it).
    fn hold(&self, point: Checkpoint) -> Arc<Gate> {
        let gate = Arc::new(Gate { point, reached: Semaphore::new(0), open: Semaphore::new(0) });
        self.gates.lock().unwrap().push(gate.clone());
        gate
    }

    /// How often passes reached `point`.
    fn count(&self, point: &Checkpoint) -> usize {
        self.seen.lock().unwrap().iter().filter(|(_, p)| p == point).count()
    }
}

#[async_trait]
impl PassCheckpoint for Hook {
    async fn reached(&self, gid: &Gid, point: Checkpoint) {
        self.seen.lock().unwrap().push((gid.to_string(), point.clone()));
        let gate = {
            let mut gates = self.gates.lock().unwrap();
            gates.iter().position(|g| g.point == point).map(|i| gates.remove(i))
        };
        if let Some(gate) = gate {
            gate.reached.add_permits(1);
            gate.open.acquire().await.unwrap().forget();
        }
    }
}

impl Gate {
    /// Waits until a pass is held here.
    async fn wait_reached(&self) {
        tokio::time::timeout(Duration::from_secs(20), self.reached.acquire())
            .await
            .expect("a pass reaches the gate")
            .unwrap()
            .forget();
    }

    /// Lets the held pass go on.
    fn release(&self) {
        self.open.add_permits(1);
    }
}

fn before(branch: usize, op: Op) -> Checkpoint {
    Checkpoint::BeforeCall { branch_id: BranchId::nth(branch), op }
}

/// Short leases, so that "paused longer than the lease" takes seconds:
/// calls time out after 1 s, a lease lasts 2 × 1 s + 1.5 s = 3.5 s.
fn short_leases() -> EngineSettings {
    EngineSettings {
        lease_duration: Duration::from_secs(2),
        request_timeout: Duration::from_secs(1),
        ..fast_settings()
    }
}

/// The store, the branch servers with a barrier-guarded effect table, and a
/// way to build engines with hooks on them.
struct World {
    store_url: String,
    branches: Branches,
    effects: sqlx::MySqlPool,
    _dbs: Vec<harness::TestDatabase>,
}

impl World {
    async fn new(store: harness::TestDatabase) -> World {
        harness::init_tracing();
        let business = harness::mysql_database().await;
        let effects = sqlx::MySqlPool::connect(&business.url).await.unwrap();
        let branches = Branches::start().await;
        branches.use_barrier_db(effects.clone()).await;
        World { store_url: store.url.clone(), branches, effects, _dbs: vec![store, business] }
    }

    async fn engine(&self, settings: EngineSettings) -> (Engine, Arc<Hook>) {
        let store = coordinator::store::open(&self.store_url, 8).await.expect("open store");
        Self::engine_on(store, settings)
    }

    fn engine_on(store: Arc<dyn coordinator::Store>, settings: EngineSettings) -> (Engine, Arc<Hook>) {
        let hook = Arc::new(Hook::default());
        let hooks = EngineHooks { checkpoint: Some(hook.clone()), ..EngineHooks::default() };
        (Engine::new(store, settings, hooks).expect("engine"), hook)
    }

    /// A saga of `n` steps on `/A{k}` with compensations `/C{k}`.
    fn saga(&self, gid: &str, n: usize) -> TransRequestInput {
        let steps: Vec<(String, String)> = (0..n)
            .map(|k| (self.branches.url(&format!("A{k}")), self.branches.url(&format!("C{k}"))))
            .collect();
        saga(gid, &steps)
    }

    /// How often each branch op of `gid` was called.
    fn calls(&self, gid: &str) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (path, _, _) in self.branches.calls_of(gid) {
            *counts.entry(path).or_default() += 1;
        }
        counts
    }

    /// The business effects of `gid` that took place: `(branch_id, op)`, each once at most.
    async fn effects(&self, gid: &str) -> Vec<(String, String)> {
        sqlx::query_as("SELECT branch_id, op FROM effect WHERE gid = ? ORDER BY id")
            .bind(gid)
            .fetch_all(&self.effects)
            .await
            .unwrap()
    }
}

fn effect(branch: usize, op: &str) -> (String, String) {
    (BranchId::nth(branch).to_string(), op.to_string())
}

fn calls(list: &[(&str, usize)]) -> BTreeMap<String, usize> {
    list.iter().map(|(p, n)| (p.to_string(), *n)).collect()
}

/// The report's race: step 01 fails while a client resubmits with
/// `wait_result`. The resubmit joins the running pass instead of starting a
/// second one that would go on to step 02 after the rollback.
async fn resubmit_joins_the_running_pass(world: World) {
    let (engine, hook) = world.engine(fast_settings()).await;
    world.branches.script("/A0", [Reply::Failure]);
    let gate = hook.hold(before(0, Op::Action));
    engine.submit(req(world.saga("join-1", 2))).await.expect("accepted");
    gate.wait_reached().await;

    let again = {
        let engine = engine.clone();
        let mut input = world.saga("join-1", 2);
        input.wait_result = true;
        tokio::spawn(async move { engine.submit(req(input)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!again.is_finished(), "the resubmit waits for the running pass");
    gate.release();
    let answer = again.await.unwrap();
    assert!(matches!(answer, Err(EngineError::Failure(_))), "{answer:?}");

    assert_eq!(status(&engine, "join-1").await, GlobalStatus::Failed);
    assert_eq!(hook.count(&Checkpoint::PassStarted), 1, "one pass, not two");
    assert_eq!(world.calls("join-1"), calls(&[("/A0", 1), ("/C0", 1)]), "step 02 never called");
    assert_eq!(world.effects("join-1").await, Vec::<(String, String)>::new(), "nothing applied");
}

/// The same resubmit at another coordinator: it does not take a live lease;
/// it answers from the store once the owner has finished.
async fn resubmit_elsewhere_waits_for_the_owner(world: World) {
    let (one, hook_one) = world.engine(fast_settings()).await;
    let (two, hook_two) = world.engine(fast_settings()).await;
    world.branches.script("/A0", [Reply::Failure]);
    let gate = hook_one.hold(before(0, Op::Action));
    one.submit(req(world.saga("join-2", 2))).await.expect("accepted");
    gate.wait_reached().await;

    let again = {
        let mut input = world.saga("join-2", 2);
        input.wait_result = true;
        tokio::spawn(async move { two.submit(req(input)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.release();
    let answer = again.await.unwrap();
    assert!(matches!(answer, Err(EngineError::Failure(_))), "{answer:?}");
    assert_eq!(hook_two.count(&Checkpoint::PassStarted), 0, "no pass at the second coordinator");
    assert_eq!(world.calls("join-2"), calls(&[("/A0", 1), ("/C0", 1)]));
    assert_eq!(world.effects("join-2").await, Vec::<(String, String)>::new());
}

/// A coordinator paused (here: held) longer than its lease before calling
/// step 02. Another coordinator takes the saga over, step 02 fails there and
/// the saga is rolled back. When the first wakes up, its lease check fails:
/// it calls nothing more (without fencing it went on to step 03, which
/// nobody would ever compensate) and writes nothing.
async fn a_pass_that_outlived_its_lease_makes_no_call(world: World) {
    let (one, hook_one) = world.engine(short_leases()).await;
    let (two, _hook_two) = world.engine(short_leases()).await;
    world.branches.script("/A1", [Reply::Failure]);
    let gate = hook_one.hold(before(1, Op::Action));
    one.submit(req(world.saga("paused", 3))).await.expect("accepted");
    gate.wait_reached().await;

    let _poller = two.spawn_poller();
    let end = wait_final(&two, "paused", Duration::from_secs(30)).await;
    assert_eq!(end, GlobalStatus::Failed);
    gate.release();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(one.passes_in_flight(), 0, "the paused pass ended");
    assert_eq!(status(&two, "paused").await, GlobalStatus::Failed);
    assert_eq!(
        world.calls("paused"),
        calls(&[("/A0", 2), ("/A1", 1), ("/C0", 1), ("/C1", 1)]),
        "A0 by both passes (the second time skipped by the barrier), A1 only by the new owner, never A2"
    );
    assert_eq!(world.effects("paused").await, [effect(0, "action"), effect(0, "compensate")]);
    two.abandon();
}

/// `resetNextCronTime` on a transaction in the middle of a pass does not
/// hand its lease to another coordinator.
async fn reset_next_cron_time_leaves_a_live_lease(world: World) {
    let (one, hook_one) = world.engine(fast_settings()).await;
    let (two, hook_two) = world.engine(fast_settings()).await;
    let gate = hook_one.hold(before(1, Op::Action));
    one.submit(req(world.saga("reset", 2))).await.expect("accepted");
    gate.wait_reached().await;

    two.reset_next_cron_time(&"reset".parse().unwrap()).await.expect("found");
    let _poller = two.spawn_poller();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(hook_two.count(&Checkpoint::PassStarted), 0, "the poller did not take the live lease");
    gate.release();
    assert_eq!(wait_final(&one, "reset", Duration::from_secs(10)).await, GlobalStatus::Succeed);
    assert_eq!(world.calls("reset"), calls(&[("/A0", 1), ("/A1", 1)]));
    assert_eq!(world.effects("reset").await, [effect(0, "action"), effect(1, "action")]);
    two.abandon();
}

/// A TCC that times out: a branch registered after the pass leased the
/// transaction but before its decision to cancel is cancelled too (the
/// pass reads what to cancel after the decision), and one registered after
/// the decision is refused.
async fn a_timeout_cancels_every_branch_registered_before_it(world: World) {
    let (engine, hook) = world.engine(fast_settings()).await;
    let tcc = TransRequestInput {
        gid: "tcc-race".into(),
        trans_type: "tcc".into(),
        timeout_to_fail: 1,
        ..TransRequestInput::default()
    };
    engine.prepare(req(tcc)).await.expect("prepared");
    let register = |branch: usize| {
        let b = &world.branches;
        let map = BTreeMap::from([
            ("gid".to_string(), "tcc-race".to_string()),
            ("trans_type".to_string(), "tcc".to_string()),
            ("branch_id".to_string(), BranchId::nth(branch).to_string()),
            ("confirm".to_string(), b.url(&format!("Confirm{branch}"))),
            ("cancel".to_string(), b.url(&format!("Cancel{branch}"))),
        ]);
        RegisterBranchRequest::from_map(&map, None).unwrap()
    };
    engine.register_branch(register(0)).await.expect("registered");
    let gate = hook.hold(Checkpoint::PassStarted);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let _poller = engine.spawn_poller();
    gate.wait_reached().await;
    engine.register_branch(register(1)).await.expect("still prepared: accepted");
    gate.release();
    assert_eq!(wait_final(&engine, "tcc-race", Duration::from_secs(10)).await, GlobalStatus::Failed);
    assert_eq!(world.calls("tcc-race"), calls(&[("/Cancel0", 1), ("/Cancel1", 1)]));
    let late = engine.register_branch(register(2)).await;
    assert!(matches!(late, Err(EngineError::Conflict(_))), "{late:?}");
    engine.abandon();
}

/// Aborts whose write committed but whose reply was lost (a connection cut
/// during COMMIT, a group-commit batch that failed after committing): the
/// answer comes from what the store holds, not from the lost reply.
async fn an_abort_whose_reply_was_lost_is_judged_by_the_store(world: World) {
    let direct = coordinator::store::open_direct(&world.store_url, 8).await.expect("open store");
    let loses_abort_replies = Intercepted {
        after_update: Box::new(|update, outcome| match update.change.status {
            Some(GlobalStatus::Aborting | GlobalStatus::Failed) if outcome.is_ok() => {
                Err(StoreError::WriteLost)
            }
            _ => outcome,
        }),
        ..Intercepted::new(direct)
    };
    let (engine, _hook) = World::engine_on(Arc::new(loses_abort_replies), fast_settings());
    let tcc = TransRequestInput {
        gid: "lost-tcc".into(),
        trans_type: "tcc".into(),
        ..TransRequestInput::default()
    };
    engine.prepare(req(tcc.clone())).await.expect("prepared");
    let map = BTreeMap::from([
        ("gid".to_string(), "lost-tcc".to_string()),
        ("trans_type".to_string(), "tcc".to_string()),
        ("branch_id".to_string(), "01".to_string()),
        ("confirm".to_string(), world.branches.url("Confirm")),
        ("cancel".to_string(), world.branches.url("Cancel")),
    ]);
    engine.register_branch(RegisterBranchRequest::from_map(&map, None).unwrap()).await.expect("registered");
    let abort = engine.abort(req(TransRequestInput { wait_result: true, ..tcc })).await;
    // The final write's reply is lost too; the pass reads the outcome back.
    assert!(abort.is_ok(), "{abort:?}");
    assert_eq!(wait_final(&engine, "lost-tcc", Duration::from_secs(10)).await, GlobalStatus::Failed);
    assert_eq!(world.calls("lost-tcc"), calls(&[("/Cancel", 1)]));

    let msg = TransRequestInput {
        gid: "lost-msg".into(),
        trans_type: "msg".into(),
        ..TransRequestInput::default()
    };
    engine.prepare(req(msg.clone())).await.expect("prepared");
    assert!(engine.abort(req(msg)).await.is_ok(), "the message is failed, as asked");
    assert_eq!(status(&engine, "lost-msg").await, GlobalStatus::Failed);
}

on_every_store!(
    resubmit_joins_the_running_pass,
    resubmit_elsewhere_waits_for_the_owner,
    a_pass_that_outlived_its_lease_makes_no_call,
    reset_next_cron_time_leaves_a_live_lease,
    a_timeout_cancels_every_branch_registered_before_it,
    an_abort_whose_reply_was_lost_is_judged_by_the_store,
);
