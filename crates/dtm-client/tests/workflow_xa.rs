//! A workflow's XA step ([`dtm_client::workflow::Wf::xa_step`], dtm's
//! `DoXa`) on real MariaDB and PostgreSQL, against our coordinator in
//! process: the workflow is a plain step, then an XA step, then a last
//! step. After each run the test reads what the database holds: the XA
//! step's row (visible only once committed) and the prepared transactions
//! (`XA RECOVER`, `pg_prepared_xacts`) — none may be left holding locks.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use barrier::BranchError;
use dtm_client::workflow::{BranchCtx, Workflows};
use dtm_client::{ClientError, DtmClient};
use dtm_protocol::Gid;
use tokio::net::TcpListener;
use tokio::sync::Notify;

const FINAL_WITHIN: Duration = Duration::from_secs(30);

fn gid() -> Gid {
    Gid::new(format!("wx-{}", uuid::Uuid::new_v4().simple())).unwrap()
}

async fn callback_listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/workflow/resume", listener.local_addr().unwrap());
    (listener, url)
}

fn serve(workflows: &Workflows, listener: TcpListener) -> tokio::task::JoinHandle<()> {
    let app = workflows.router("/api/workflow/resume");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

/// The tests, once per engine: `$db` is the sqlx database type, `$new`
/// makes a fresh [`harness::TestDatabase`], `$serial` the id column type.
macro_rules! engine_tests {
    ($engine:ident, $db:ty, $new:path, $serial:literal) => {
        mod $engine {
            use super::*;
            use dtm_client::XaDb;
            use dtm_client::TransStatus;
            use support::InProcess;

            type Conn = <$db as sqlx::Database>::Connection;

            struct World {
                dtm: InProcess,
                db: XaDb<$db>,
                /// How many times the XA step's business ran.
                xa_runs: Arc<AtomicUsize>,
                _database: harness::TestDatabase,
            }

            impl World {
                async fn new() -> World {
                    let database = $new().await;
                    let pool = sqlx::Pool::<$db>::connect(&database.url).await.unwrap();
                    let table = barrier::BarrierTable::new("barrier").unwrap();
                    barrier::schema::ensure_barrier_table(&pool, &table).await.unwrap();
                    for sql in [
                        concat!("CREATE TABLE wf_xa (id ", $serial, " PRIMARY KEY, gid varchar(128) NOT NULL, amount bigint NOT NULL)"),
                        concat!("CREATE TABLE wf_effect (id ", $serial, " PRIMARY KEY, gid varchar(128) NOT NULL, step varchar(8) NOT NULL, op varchar(16) NOT NULL)"),
                    ] {
                        sqlx::query(sql).execute(&pool).await.unwrap();
                    }
                    World {
                        dtm: InProcess::start().await,
                        db: XaDb::new(pool).with_table(table),
                        xa_runs: Arc::default(),
                        _database: database,
                    }
                }

                /// Registers "order": step 01 a plain step (an effect row,
                /// an effect row as its rollback), step 02 the XA step
                /// (a `wf_xa` row), step 03 fails for good on input `fail`
                /// and waits on `gate` (if any) before acting.
                fn register(&self, workflows: &Workflows, gate: Option<Arc<Notify>>) {
                    let (db, runs) = (self.db.clone(), Arc::clone(&self.xa_runs));
                    workflows.register("order", move |wf, input| {
                        let (db, runs, gate) = (db.clone(), Arc::clone(&runs), gate.clone());
                        async move {
                            let (act, undo) = (db.clone(), db.clone());
                            wf.branch()?
                                .on_rollback(move |ctx| async move { effect(&undo, &ctx).await })
                                .action(async move |ctx: BranchCtx| {
                                    effect(&act, &ctx).await?;
                                    Ok(b"reserved".to_vec())
                                })
                                .await?;
                            let gid = wf.gid().clone();
                            let xa = wf
                                .xa_step(&db, async |conn: &mut Conn| {
                                    runs.fetch_add(1, Ordering::SeqCst);
                                    let sql = format!("INSERT INTO wf_xa (gid, amount) VALUES ('{gid}', 30)");
                                    sqlx::query(&sql).execute(&mut *conn).await?;
                                    Ok(b"paid".to_vec())
                                })
                                .await?;
                            wf.branch()?
                                .action(async move |_ctx: BranchCtx| {
                                    if let Some(gate) = gate {
                                        gate.notified().await;
                                    }
                                    if input == b"fail" {
                                        return Err(ClientError::Failure("out of stock".into()));
                                    }
                                    Ok(Vec::new())
                                })
                                .await?;
                            Ok(xa)
                        }
                    });
                }

                /// "order" in a process serving its callback, talking to
                /// the coordinator through `dtm` (HTTP or gRPC).
                async fn serving(&self, dtm: DtmClient) -> (Workflows, tokio::task::JoinHandle<()>) {
                    let (listener, url) = callback_listener().await;
                    let workflows = Workflows::new(dtm, url);
                    self.register(&workflows, None);
                    let server = serve(&workflows, listener);
                    (workflows, server)
                }

                /// What a run that stopped right after its `XA PREPARE`
                /// leaves: step `step`'s transaction, holding a `wf_xa` row.
                async fn prepare_by_hand(&self, gid: &Gid, step: &str) {
                    use dtm_client::{XaDatabase, Xid};
                    use sqlx::{ConnectOptions, Connection};
                    let xid = Xid::new(gid, &dtm_protocol::BranchId::new(step).unwrap()).unwrap();
                    let mut conn = self.db.pool().connect_options().connect().await.unwrap();
                    <$db as XaDatabase>::start(&mut conn, &xid).await.unwrap();
                    let sql = format!("INSERT INTO wf_xa (gid, amount) VALUES ('{gid}', 30)");
                    sqlx::query(&sql).execute(&mut conn).await.unwrap();
                    <$db as XaDatabase>::prepare(&mut conn, &xid).await.unwrap();
                    conn.close().await.unwrap();
                }

                async fn count(&self, table: &str, gid: &Gid) -> i64 {
                    let sql = format!("SELECT COUNT(*) FROM {table} WHERE gid = '{gid}'");
                    sqlx::query_scalar(&sql).fetch_one(self.db.pool()).await.unwrap()
                }

                /// The prepared transactions of `gid`'s steps.
                async fn prepared(&self, gid: &Gid) -> Vec<String> {
                    let all = self.db.prepared_xids().await.unwrap();
                    all.into_iter().filter(|x| x.parts().is_some_and(|(g, _)| &g == gid)).map(|x| x.to_string()).collect()
                }

                /// `branch_id op status` of each progress row, sorted, joined by `, `.
                async fn progress(&self, gid: &Gid) -> String {
                    let rows = self.dtm.branches(gid.as_str()).await;
                    let mut rows: Vec<String> = rows.into_iter().map(|(b, o, s)| format!("{b} {o} {s}")).collect();
                    rows.sort();
                    rows.join(", ")
                }
            }

            /// A plain step's effect row (in its own transaction).
            async fn effect(db: &XaDb<$db>, ctx: &BranchCtx) -> Result<(), ClientError> {
                let sql = format!(
                    "INSERT INTO wf_effect (gid, step, op) VALUES ('{}', '{}', '{}')",
                    ctx.gid, ctx.branch_id, ctx.op
                );
                sqlx::query(&sql).execute(db.pool()).await.map(drop).map_err(|e| ClientError::Other(e.to_string()))
            }

            /// The XA step prepares (progress `business`), the workflow
            /// succeeds, phase 2 commits it (progress `commit`): the row is
            /// visible, nothing stays prepared; running it again replays.
            /// Over the HTTP API.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_saga_step_then_an_xa_step_commits() {
                let w = World::new().await;
                let (workflows, _server) = w.serving(w.dtm.http_client()).await;
                let g = gid();
                assert_eq!(workflows.execute("order", &g, b"ok").await.unwrap(), b"paid");
                assert_eq!(w.dtm.status(g.as_str()).await, Some(TransStatus::Succeed));
                assert_eq!(w.count("wf_xa", &g).await, 1, "the XA step's row is committed");
                assert_eq!(w.prepared(&g).await, Vec::<String>::new());
                assert_eq!(
                    w.progress(&g).await,
                    "01 action succeed, 02 action succeed, 02 business succeed, 02 commit succeed, 03 action succeed"
                );
                assert_eq!(workflows.execute("order", &g, b"ok").await.unwrap(), b"paid");
                assert_eq!(w.xa_runs.load(Ordering::SeqCst), 1, "replayed, not run again");
            }

            /// Step 03 fails: the XA step's prepared transaction is rolled
            /// back (newest first, before step 01's rollback), no row, no
            /// lock. Over the gRPC API (progress `business` included).
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_later_failure_rolls_the_xa_step_back() {
                let w = World::new().await;
                let (workflows, _server) = w.serving(w.dtm.grpc_client()).await;
                let g = gid();
                let out = workflows.execute("order", &g, b"fail").await;
                assert!(matches!(&out, Err(ClientError::Failure(m)) if m.contains("out of stock")), "{out:?}");
                assert_eq!(w.dtm.status(g.as_str()).await, Some(TransStatus::Failed));
                assert_eq!(w.count("wf_xa", &g).await, 0, "rolled back");
                assert_eq!(w.prepared(&g).await, Vec::<String>::new(), "no prepared transaction holds locks");
                assert_eq!(w.count("wf_effect", &g).await, 2, "step 01's action and its rollback");
                assert_eq!(
                    w.progress(&g).await,
                    "01 action succeed, 01 rollback succeed, 02 action succeed, 02 business succeed, 02 rollback succeed, 03 action failed"
                );
                let rows = w.dtm.branches(g.as_str()).await;
                let rollbacks: Vec<&str> = rows.iter().filter(|r| r.1 == "rollback").map(|r| r.0.as_str()).collect();
                assert_eq!(rollbacks, ["02", "01"], "newest first");
            }

            /// The first process stops after the XA step prepared (its run
            /// is dropped mid step 03: no phase 2, no submit). The
            /// coordinator's callback reaches a second process, which
            /// replays steps 01 and 02 and commits the prepared transaction.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_interrupted_run_is_resumed_and_commits_the_prepared_xa_step() {
                let w = World::new().await;
                let (listener, url) = callback_listener().await;
                let g = gid();
                let first = Workflows::new(w.dtm.http_client(), url.clone());
                w.register(&first, Some(Arc::new(Notify::new())));
                let run = tokio::spawn({
                    let (first, g) = (first.clone(), g.clone());
                    async move { first.execute("order", &g, b"ok").await }
                });
                harness::wait_until("the XA step recorded", Duration::from_secs(10), async || {
                    match w.dtm.branches(g.as_str()).await.len() {
                        3 => Ok(()),
                        n => Err(format!("{n} progresses")),
                    }
                })
                .await;
                run.abort();
                let _ = run.await;
                drop(first);
                assert_eq!(w.prepared(&g).await.len(), 1, "prepared, waiting for phase 2");
                assert_eq!(w.count("wf_xa", &g).await, 0, "not visible before its commit");

                let second = Workflows::new(w.dtm.http_client(), url);
                w.register(&second, None);
                let _server = serve(&second, listener);
                assert_eq!(w.dtm.wait_final(g.as_str(), FINAL_WITHIN).await, TransStatus::Succeed);
                assert_eq!(w.count("wf_xa", &g).await, 1);
                assert_eq!(w.prepared(&g).await, Vec::<String>::new());
                assert_eq!(w.xa_runs.load(Ordering::SeqCst), 1, "the XA step executed once");
                assert_eq!(w.count("wf_effect", &g).await, 1, "step 01 executed once");
                assert!(w.progress(&g).await.contains("02 commit succeed"));
            }

            /// A run that stopped after recording `business` but before
            /// recording the step's outcome: the database decides. With the
            /// xid prepared the business is done — its recorded result is
            /// returned without running it, and phase 2 commits; without
            /// it (stopped before the prepare) the step is a FAILURE and
            /// the workflow rolls back.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_recorded_business_counts_only_if_its_transaction_is_prepared() {
                use dtm_client::RegisterBranch;
                use dtm_protocol::{BranchId, BranchStatus, Op};
                let w = World::new().await;
                let dtm = w.dtm.http_client();
                // The stopped runs: "order" prepared (as the first step of
                // a run does), then interrupted.
                let stopped = Workflows::new(dtm.clone(), "http://127.0.0.1:1/unused");
                stopped.register("order", |_wf, _input| async { Err(ClientError::Other("stopped".into())) });
                for (g, prepare) in [(gid(), true), (gid(), false)] {
                    assert!(matches!(stopped.execute("order", &g, b"ok").await, Err(ClientError::Other(_))));
                    for (id, op, data) in [("01", Op::Action, &b"reserved"[..]), ("02", Op::Business, b"paid")] {
                        let progress = RegisterBranch::workflow_progress(
                            g.clone(),
                            BranchId::new(id).unwrap(),
                            op,
                            BranchStatus::Succeed,
                            data.to_vec(),
                        );
                        dtm.register_branch(&progress).await.unwrap();
                    }
                    if prepare {
                        w.prepare_by_hand(&g, "02").await;
                    }
                    let resumed = Workflows::new(dtm.clone(), "http://127.0.0.1:1/unused");
                    w.register(&resumed, None);
                    let out = resumed.execute("order", &g, b"ok").await;
                    if prepare {
                        assert_eq!(out.unwrap(), b"paid");
                        assert_eq!(w.count("wf_xa", &g).await, 1, "committed");
                    } else {
                        assert!(matches!(&out, Err(ClientError::Failure(m)) if m.contains("before its prepare")), "{out:?}");
                        assert_eq!(w.dtm.status(g.as_str()).await, Some(TransStatus::Failed));
                        assert!(w.progress(&g).await.contains("02 rollback succeed"));
                    }
                    assert_eq!(w.prepared(&g).await, Vec::<String>::new());
                }
                assert_eq!(w.xa_runs.load(Ordering::SeqCst), 0, "a recorded business never runs again");
            }

            /// The safety net: a step's transaction left prepared after its
            /// workflow is final (as if phase 2 had been lost) is finished
            /// by `XaDb::recover`, which asks the coordinator: committed for
            /// a succeeded workflow, rolled back for a failed one.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn recovery_finishes_a_step_left_prepared_after_its_workflow_ended() {
                use dtm_client::xa::Recovery;
                let w = World::new().await;
                let (workflows, _server) = w.serving(w.dtm.http_client()).await;
                let (won, lost) = (gid(), gid());
                workflows.execute("order", &won, b"ok").await.unwrap();
                assert!(workflows.execute("order", &lost, b"fail").await.is_err());
                for g in [&won, &lost] {
                    w.prepare_by_hand(g, "04").await;
                }
                let round = w.db.recover(&w.dtm.http_client()).await.unwrap();
                let mine = |g: &Gid| {
                    round
                        .iter()
                        .find(|r| {
                            let (Recovery::Committed(x) | Recovery::RolledBack(x) | Recovery::Left(x, _)) = r;
                            x.parts().is_some_and(|(rg, _)| &rg == g)
                        })
                        .cloned()
                };
                assert!(matches!(mine(&won), Some(Recovery::Committed(_))), "{round:?}");
                assert!(matches!(mine(&lost), Some(Recovery::RolledBack(_))), "{round:?}");
                assert_eq!(w.count("wf_xa", &won).await, 2, "the step's row and the recovered one");
                assert_eq!(w.count("wf_xa", &lost).await, 0);
                assert_eq!(w.prepared(&won).await, Vec::<String>::new());
                assert_eq!(w.prepared(&lost).await, Vec::<String>::new());
            }

            /// A business FAILURE fails the step: nothing is prepared, the
            /// workflow rolls back.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_failing_xa_business_prepares_nothing() {
                let w = World::new().await;
                let workflows = Workflows::new(w.dtm.http_client(), "http://127.0.0.1:1/unused");
                workflows.register("refuse", {
                    let db = w.db.clone();
                    move |wf, _input| {
                        let db = db.clone();
                        async move {
                            wf.xa_step(&db, async |_conn: &mut Conn| Err(BranchError::failure("card declined")))
                                .await
                        }
                    }
                });
                let g = gid();
                let out = workflows.execute("refuse", &g, b"").await;
                assert!(matches!(&out, Err(ClientError::Failure(m)) if m.contains("card declined")), "{out:?}");
                assert_eq!(w.dtm.status(g.as_str()).await, Some(TransStatus::Failed));
                assert_eq!(w.prepared(&g).await, Vec::<String>::new());
                assert_eq!(
                    w.progress(&g).await,
                    "01 action failed, 01 rollback succeed"
                );
            }
        }
    };
}

engine_tests!(mariadb, sqlx::MySql, harness::mysql_database, "bigint AUTO_INCREMENT");
engine_tests!(postgres, sqlx::Postgres, harness::postgres_database, "bigserial");
