//! dtm's workflow mode against our coordinator (in process, SQLite store,
//! its recovery poller running), over both APIs. Each step's effect is a
//! row counted in a real SQLite database, so "executed exactly once" is
//! what the database says, not what the SDK believes.

mod support;

use std::sync::Arc;
use std::time::Duration;

use dtm_client::workflow::{BranchCtx, Workflows};
use dtm_client::{ClientError, DtmClient, TransStatus};
use dtm_protocol::Gid;
use sqlx::SqlitePool;
use support::InProcess;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// A database where each step's effect is one row `(gid, step, op)`.
async fn effects_db(dir: &tempfile::TempDir) -> SqlitePool {
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("effects.db").display());
    let pool = SqlitePool::connect(&url).await.unwrap();
    sqlx::query("create table effect (id integer primary key autoincrement, gid text, step text, op text)")
        .execute(&pool)
        .await
        .unwrap();
    pool
}

async fn effect(pool: &SqlitePool, ctx: &BranchCtx) {
    sqlx::query("insert into effect (gid, step, op) values (?, ?, ?)")
        .bind(ctx.gid.as_str())
        .bind(ctx.branch_id.as_str())
        .bind(ctx.op.as_str())
        .execute(pool)
        .await
        .unwrap();
}

/// `(step, op)` of every effect of `gid`, in the order they happened.
async fn effects(pool: &SqlitePool, gid: &str) -> Vec<(String, String)> {
    sqlx::query_as("select step, op from effect where gid = ? order by id")
        .bind(gid)
        .fetch_all(pool)
        .await
        .unwrap()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// The order workflow of these tests: three saga-style steps, each an
/// effect with an effect as its rollback; step 3 fails for good when the
/// input says `fail`, and waits on `gate` (if any) before acting.
fn register(workflows: &Workflows, pool: SqlitePool, gate: Option<Arc<Notify>>) {
    workflows.register("order", move |wf, input| {
        let (pool, gate) = (pool.clone(), gate.clone());
        async move {
            let mut results = Vec::new();
            for step in 1..=3 {
                let (act, undo) = (pool.clone(), pool.clone());
                let gate = gate.clone();
                let fail = input == b"fail" && step == 3;
                let reply = wf
                    .branch()?
                    .on_rollback(move |ctx| async move {
                        effect(&undo, &ctx).await;
                        Ok(())
                    })
                    .action(async move |ctx: BranchCtx| {
                        if step == 3
                            && let Some(gate) = gate
                        {
                            gate.notified().await;
                        }
                        if fail {
                            return Err(ClientError::Failure("out of stock".into()));
                        }
                        effect(&act, &ctx).await;
                        Ok(format!("step{step}").into_bytes())
                    })
                    .await?;
                results.push(String::from_utf8(reply).unwrap());
            }
            Ok(results.join(",").into_bytes())
        }
    });
}

/// Serves `workflows`' callback on `listener`; the callback URL.
fn serve(workflows: &Workflows, listener: TcpListener) -> tokio::task::JoinHandle<()> {
    let app = workflows.router("/api/workflow/resume");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

async fn callback_listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/workflow/resume", listener.local_addr().unwrap());
    (listener, url)
}

/// Runs the "order" workflow in `first` until steps 1 and 2 are recorded,
/// then drops the run in the middle of step 3, as a process dying there
/// would: no submit, no more records.
async fn interrupt_after_two_steps(coordinator: &InProcess, first: &Workflows, gid: &Gid) {
    let run = tokio::spawn({
        let (first, gid) = (first.clone(), gid.clone());
        async move { first.execute("order", &gid, b"ok").await }
    });
    harness::wait_until("steps 1 and 2 recorded", Duration::from_secs(10), async || {
        match coordinator.branches(gid.as_str()).await.len() {
            2 => Ok(()),
            n => Err(format!("{n} progresses")),
        }
    })
    .await;
    run.abort();
    let _ = run.await;
}

async fn succeeds_and_records_every_step(dtm: DtmClient, coordinator: &InProcess) {
    let dir = tempfile::tempdir().unwrap();
    let pool = effects_db(&dir).await;
    let (listener, url) = callback_listener().await;
    let workflows = Workflows::new(dtm, url);
    register(&workflows, pool.clone(), None);
    let _server = serve(&workflows, listener);
    let gid = Gid::random();
    let result = workflows.execute("order", &gid, b"ok").await.unwrap();
    assert_eq!(result, b"step1,step2,step3");
    assert_eq!(coordinator.status(gid.as_str()).await, Some(TransStatus::Succeed));
    assert_eq!(
        effects(&pool, gid.as_str()).await,
        pairs(&[("01", "action"), ("02", "action"), ("03", "action")])
    );
    assert_eq!(
        coordinator.branches(gid.as_str()).await,
        vec![
            ("01".into(), "action".into(), "succeed".into()),
            ("02".into(), "action".into(), "succeed".into()),
            ("03".into(), "action".into(), "succeed".into()),
        ]
    );
    // Executing it again replays the stored result: nothing runs twice.
    assert_eq!(workflows.execute("order", &gid, b"ok").await.unwrap(), b"step1,step2,step3");
    assert_eq!(effects(&pool, gid.as_str()).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_succeeds_over_http_and_its_result_is_replayed() {
    let coordinator = InProcess::start().await;
    succeeds_and_records_every_step(coordinator.http_client(), &coordinator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_succeeds_over_grpc_and_its_result_is_replayed() {
    let coordinator = InProcess::start().await;
    succeeds_and_records_every_step(coordinator.grpc_client(), &coordinator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_rolls_back_every_step_newest_first() {
    let coordinator = InProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = effects_db(&dir).await;
    let (listener, url) = callback_listener().await;
    let workflows = Workflows::new(coordinator.http_client(), url);
    register(&workflows, pool.clone(), None);
    let _server = serve(&workflows, listener);
    let gid = Gid::random();
    let outcome = workflows.execute("order", &gid, b"fail").await;
    assert!(matches!(&outcome, Err(ClientError::Failure(m)) if m == "out of stock"), "{outcome:?}");
    // Step 3's rollback was registered before its action failed: it runs
    // too (with a barrier, a null compensation), then 02, then 01.
    assert_eq!(
        effects(&pool, gid.as_str()).await,
        pairs(&[
            ("01", "action"),
            ("02", "action"),
            ("03", "rollback"),
            ("02", "rollback"),
            ("01", "rollback")
        ])
    );
    let query = coordinator.query(gid.as_str()).await;
    let transaction = query.transaction.unwrap();
    assert_eq!(transaction.status, TransStatus::Failed);
    assert_eq!(transaction.rollback_reason.as_deref(), Some("out of stock"));
    assert_eq!(
        coordinator.branches(gid.as_str()).await,
        vec![
            ("01".into(), "action".into(), "succeed".into()),
            ("02".into(), "action".into(), "succeed".into()),
            ("03".into(), "action".into(), "failed".into()),
            ("03".into(), "rollback".into(), "succeed".into()),
            ("02".into(), "rollback".into(), "succeed".into()),
            ("01".into(), "rollback".into(), "succeed".into()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_killed_mid_way_is_resumed_by_the_callback_and_each_step_runs_once() {
    let coordinator = InProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = effects_db(&dir).await;
    let (listener, url) = callback_listener().await;
    let gid = Gid::random();

    // The first process: steps 1 and 2 done and recorded, step 3 hangs,
    // then the process dies (its task is dropped mid-step: no submit, no
    // more records). Its callback was never served.
    let gate = Arc::new(Notify::new());
    let first = Workflows::new(coordinator.http_client(), url.clone());
    register(&first, pool.clone(), Some(Arc::clone(&gate)));
    interrupt_after_two_steps(&coordinator, &first, &gid).await;
    drop(first);
    assert_eq!(coordinator.status(gid.as_str()).await, Some(TransStatus::Prepared));

    // The restarted process serves the callback; the coordinator's poller
    // finds the workflow due and calls it: steps 1 and 2 are replayed from
    // their records, step 3 runs, the workflow is submitted.
    let second = Workflows::new(coordinator.http_client(), url);
    register(&second, pool.clone(), None);
    let _server = serve(&second, listener);
    assert_eq!(coordinator.wait_final(gid.as_str(), Duration::from_secs(30)).await, TransStatus::Succeed);
    assert_eq!(
        effects(&pool, gid.as_str()).await,
        pairs(&[("01", "action"), ("02", "action"), ("03", "action")]),
        "each step executed exactly once"
    );
    let query = coordinator.query(gid.as_str()).await;
    assert_eq!(query.branches.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcc_steps_confirm_newest_first_on_success() {
    let coordinator = InProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = effects_db(&dir).await;
    let (listener, url) = callback_listener().await;
    let workflows = Workflows::new(coordinator.grpc_client(), url);
    let p = pool.clone();
    workflows.register("tcc", move |wf, _input| {
        let pool = p.clone();
        async move {
            for _ in 0..2 {
                let (t, c, x) = (pool.clone(), pool.clone(), pool.clone());
                wf.branch()?
                    .on_commit(move |ctx| async move {
                        effect(&c, &ctx).await;
                        Ok(())
                    })
                    .on_rollback(move |ctx| async move {
                        effect(&x, &ctx).await;
                        Ok(())
                    })
                    .action(async move |ctx: BranchCtx| {
                        effect(&t, &ctx).await;
                        Ok(Vec::new())
                    })
                    .await?;
            }
            Ok(Vec::new())
        }
    });
    let _server = serve(&workflows, listener);
    let gid = Gid::random();
    workflows.execute("tcc", &gid, b"").await.unwrap();
    assert_eq!(
        effects(&pool, gid.as_str()).await,
        pairs(&[("01", "action"), ("02", "action"), ("02", "commit"), ("01", "commit")])
    );
    assert_eq!(coordinator.status(gid.as_str()).await, Some(TransStatus::Succeed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_workflow_is_resumed_through_the_grpc_callback() {
    let coordinator = InProcess::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = effects_db(&dir).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let callback = format!("{}/workflow.Workflow/Execute", listener.local_addr().unwrap());
    let gid = Gid::random();

    // Interrupted after step 2, as above; this time over dtm's gRPC API.
    let first = Workflows::new(coordinator.grpc_client(), callback.clone());
    register(&first, pool.clone(), Some(Arc::new(Notify::new())));
    interrupt_after_two_steps(&coordinator, &first, &gid).await;

    let second = Workflows::new(coordinator.grpc_client(), callback);
    register(&second, pool.clone(), None);
    let service = second.grpc_service();
    let _server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    assert_eq!(coordinator.wait_final(gid.as_str(), Duration::from_secs(30)).await, TransStatus::Succeed);
    assert_eq!(
        effects(&pool, gid.as_str()).await,
        pairs(&[("01", "action"), ("02", "action"), ("03", "action")]),
        "each step executed exactly once"
    );
}
