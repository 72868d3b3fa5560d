//! XA end to end, on real MariaDB and PostgreSQL: the application's [`Xa`]
//! in this test, our coordinator in process (HTTP API), and the branch
//! service of [`xa_service`] as a separate process (this test binary, run
//! again as the service) whose local XA transactions live in the database —
//! so that it can be SIGKILLed between `XA PREPARE` and the coordinator's
//! commit. After each scenario the test
//! reads what the database holds: the business rows, the barrier rows, and
//! the prepared transactions (`XA RECOVER`, `pg_prepared_xacts`) — none may
//! be left holding locks.

mod support;
mod xa_service;

use std::path::PathBuf;
use std::time::Duration;

use dtm_client::xa::Recovery;
use dtm_client::{ClientError, DtmClient, TransStatus, Xa, XaDb, Xid};
use dtm_protocol::{BranchId, Gid};
use harness::{GuardedProcess, TestDatabase};
use serde_json::json;
use support::InProcess;

const FINAL_WITHIN: Duration = Duration::from_secs(30);

fn gid() -> Gid {
    Gid::new(format!("xa-{}", uuid::Uuid::new_v4().simple())).unwrap()
}

fn xid(gid: &Gid, branch: &str) -> Xid {
    Xid::new(gid, &BranchId::new(branch).unwrap()).unwrap()
}

/// The branch service's database, seen from the test.
#[derive(Clone)]
enum Db {
    MySql(XaDb<sqlx::MySql>),
    Postgres(XaDb<sqlx::Postgres>),
}

/// Runs the same code on either engine's [`XaDb`].
macro_rules! on_db {
    ($db:expr, $xa:ident => $body:expr) => {
        match $db {
            Db::MySql($xa) => $body,
            Db::Postgres($xa) => $body,
        }
    };
}

impl Db {
    async fn open(db: &TestDatabase) -> Db {
        let table = barrier::BarrierTable::new("barrier").unwrap();
        match db.backend {
            harness::Backend::MySql => {
                Db::MySql(XaDb::new(sqlx::MySqlPool::connect(&db.url).await.unwrap()).with_table(table))
            }
            harness::Backend::Postgres => {
                Db::Postgres(XaDb::new(sqlx::PgPool::connect(&db.url).await.unwrap()).with_table(table))
            }
            harness::Backend::Sqlite => unreachable!("SQLite has no XA"),
        }
    }

    /// `(branch_id, account, amount)` committed for `gid`.
    async fn effects(&self, gid: &Gid) -> Vec<(String, String, i64)> {
        let sql = format!("SELECT branch_id, account, amount FROM xa_effect WHERE gid = '{gid}' ORDER BY id");
        on_db!(self, xa => sqlx::query_as(&sql).fetch_all(xa.pool()).await.unwrap())
    }

    /// `(branch_id, op, reason)` of the barrier rows of `gid`.
    async fn barrier_rows(&self, gid: &Gid) -> Vec<(String, String, String)> {
        let sql = format!("SELECT branch_id, op, reason FROM barrier WHERE gid = '{gid}' ORDER BY id");
        let rows: Vec<(String, String, Option<String>)> =
            on_db!(self, xa => sqlx::query_as(&sql).fetch_all(xa.pool()).await.unwrap());
        rows.into_iter().map(|(b, o, r)| (b, o, r.unwrap_or_default())).collect()
    }

    /// The prepared transactions of `gid`'s branches.
    async fn prepared(&self, gid: &Gid) -> Vec<String> {
        let all = on_db!(self, xa => xa.prepared_xids().await.unwrap());
        let mut mine: Vec<String> = all
            .into_iter()
            .filter(|x| x.parts().is_some_and(|(g, _)| &g == gid))
            .map(|x| x.to_string())
            .collect();
        mine.sort();
        mine
    }

    /// One recovery round; only what concerns `gid`.
    async fn recover(&self, dtm: &DtmClient, gid: &Gid) -> Vec<Recovery> {
        let round = on_db!(self, xa => xa.recover(dtm).await.unwrap());
        round
            .into_iter()
            .filter(|r| {
                let (Recovery::Committed(x) | Recovery::RolledBack(x) | Recovery::Left(x, _)) = r;
                x.parts().is_some_and(|(g, _)| &g == gid)
            })
            .collect()
    }
}

/// The branch service process.
struct BranchService {
    /// This test binary, which serves when [`xa_service::SERVE`] is set.
    binary: PathBuf,
    /// `<database url> <dtm url>`; the ports are added at each start.
    config: String,
    log: PathBuf,
    process: Option<GuardedProcess>,
    /// The HTTP port it serves on, kept across restarts (phase-2 URLs name it).
    port: u16,
    /// The same for its gRPC service.
    grpc_port: u16,
}

impl BranchService {
    fn start(db_url: &str, dtm: &str, dir: &std::path::Path) -> BranchService {
        let mut service = BranchService {
            binary: std::env::current_exe().expect("the test binary"),
            config: format!("{db_url} {dtm}"),
            log: dir.join("xa_branch.log"),
            process: None,
            port: 0,
            grpc_port: 0,
        };
        service.spawn();
        service
    }

    fn spawn(&mut self) {
        // `env` sets the variable for the child only, then becomes it (same pid).
        let args = vec![
            format!("{}={} {} {}", xa_service::SERVE, self.config, self.port, self.grpc_port),
            self.binary.display().to_string(),
            "branch_service_process".to_string(),
            "--exact".to_string(),
            "--nocapture".to_string(),
        ];
        let process = GuardedProcess::spawn("env", &args, &self.log, None);
        let ready = process.wait_ready("xa-branch", Duration::from_secs(60));
        (self.port, self.grpc_port) = (ready.port("http"), ready.port("grpc"));
        self.process = Some(process);
    }

    /// SIGKILL: whatever it prepared stays in the database.
    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    fn url(&self, account: &str) -> String {
        format!("http://127.0.0.1:{}/xa/{account}", self.port)
    }

    /// The gRPC branch URL of `account` (`host:port/xa.Busi/<account>`).
    fn grpc_url(&self, account: &str) -> String {
        format!("127.0.0.1:{}/xa.Busi/{account}", self.grpc_port)
    }
}

struct World {
    dtm: InProcess,
    db: Db,
    branches: BranchService,
    /// The branch service's database.
    database: TestDatabase,
    _dir: tempfile::TempDir,
}

impl World {
    async fn new(database: TestDatabase) -> World {
        let dtm = InProcess::start().await;
        let dir = tempfile::tempdir().unwrap();
        let branches = {
            let (url, http, path) = (database.url.clone(), dtm.http.clone(), dir.path().to_path_buf());
            tokio::task::spawn_blocking(move || BranchService::start(&url, &http, &path)).await.unwrap()
        };
        let db = Db::open(&database).await;
        World { dtm, db, branches, database, _dir: dir }
    }

    fn xa(&self, gid: &Gid) -> Xa {
        Xa::new(self.dtm.http_client(), gid.clone())
    }

    /// POSTs a phase-2 call by hand, as the coordinator does.
    async fn phase_two(&self, gid: &Gid, branch: &str, op: &str) -> u16 {
        reqwest::Client::new()
            .post(self.branches.url("out"))
            .query(&[("gid", gid.as_str()), ("trans_type", "xa"), ("branch_id", branch), ("op", op)])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

/// Both branches prepare, the application submits, the coordinator commits
/// both: the rows are visible, nothing stays prepared.
async fn success_commits_both_branches(w: World) {
    let g = gid();
    w.xa(&g)
        .wait_result(true)
        .run(async |xa| {
            xa.call_branch_json(&json!({"amount": -30}), &w.branches.url("out")).await?;
            xa.call_branch_json(&json!({"amount": 30}), &w.branches.url("in")).await?;
            Ok(())
        })
        .await
        .expect("committed");
    assert_eq!(w.dtm.status(g.as_str()).await, Some(TransStatus::Succeed));
    assert_eq!(w.db.effects(&g).await, [("01".into(), "out".into(), -30), ("02".into(), "in".into(), 30)]);
    assert_eq!(w.db.prepared(&g).await, Vec::<String>::new());
    assert_eq!(
        w.dtm.branches(g.as_str()).await,
        [
            ("01".into(), "rollback".into(), "prepared".into()),
            ("01".into(), "commit".into(), "succeed".into()),
            ("02".into(), "rollback".into(), "prepared".into()),
            ("02".into(), "commit".into(), "succeed".into()),
        ]
    );
    assert_eq!(
        w.db.barrier_rows(&g).await,
        [("01".into(), "action".into(), "action".into()), ("02".into(), "action".into(), "action".into())]
    );
    // Phase 2 delivered again (a lost answer): still success, nothing changes.
    assert_eq!(w.phase_two(&g, "01", "commit").await, 200);
    assert_eq!(w.db.effects(&g).await.len(), 2);
}

/// The second branch answers FAILURE: the application aborts, the first
/// branch's prepared transaction is rolled back, no lock is left.
async fn failure_rolls_back_the_prepared_branch(w: World) {
    let g = gid();
    let out = w
        .xa(&g)
        .wait_result(true)
        .run(async |xa| {
            xa.call_branch_json(&json!({"amount": -30}), &w.branches.url("out")).await?;
            xa.call_branch_json(&json!({"amount": 30, "fail": true}), &w.branches.url("in")).await?;
            Ok(())
        })
        .await;
    assert!(matches!(&out, Err(ClientError::Failure(m)) if m.contains("account in refuses")), "{out:?}");
    assert_eq!(w.dtm.wait_final(g.as_str(), FINAL_WITHIN).await, TransStatus::Failed);
    assert_eq!(w.db.effects(&g).await, Vec::<(String, String, i64)>::new());
    assert_eq!(w.db.prepared(&g).await, Vec::<String>::new(), "no prepared transaction holds locks");
    // 01 prepared and was rolled back (its row went with it, the rollback
    // wrote its own); 02 failed before registering: nothing to roll back.
    assert_eq!(w.db.barrier_rows(&g).await, [("01".into(), "action".into(), "rollback".into())]);
    assert_eq!(
        w.dtm.branches(g.as_str()).await,
        [
            ("01".into(), "rollback".into(), "succeed".into()),
            ("01".into(), "commit".into(), "prepared".into())
        ]
    );
    // A duplicate rollback, and one for a branch that never prepared: success, nothing else.
    assert_eq!(w.phase_two(&g, "01", "rollback").await, 200);
    assert_eq!(w.phase_two(&g, "02", "rollback").await, 200);
    assert_eq!(w.db.prepared(&g).await, Vec::<String>::new());
}

/// The branch service is SIGKILLed after its local transaction prepared,
/// before the application submits. The prepared transaction survives in the
/// database; the coordinator's commit fails until the service is back, then
/// lands, and the row is committed.
async fn a_branch_service_killed_between_prepare_and_commit(mut w: World) {
    let g = gid();
    let out_url = w.branches.url("out");
    let xa = w.xa(&g);
    xa.prepare().await.unwrap();
    xa.call_branch_json(&json!({"amount": -30}), &out_url).await.expect("prepared");
    w.branches.kill();
    assert_eq!(w.db.prepared(&g).await, [xid(&g, "01").to_string()], "prepared survives the process");
    xa.submit().await.expect("submitted");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(w.dtm.status(g.as_str()).await, Some(TransStatus::Submitted), "commit cannot land yet");
    assert_eq!(w.db.effects(&g).await, Vec::<(String, String, i64)>::new(), "prepared, invisible");

    tokio::task::block_in_place(|| w.branches.spawn());
    assert_eq!(w.dtm.wait_final(g.as_str(), FINAL_WITHIN).await, TransStatus::Succeed);
    assert_eq!(w.db.effects(&g).await, [("01".into(), "out".into(), -30)]);
    assert_eq!(w.db.prepared(&g).await, Vec::<String>::new());
}

/// The coordinator stops abruptly after the submit, before any commit
/// landed (the branch service is down, so the commit is still pending);
/// a new coordinator on the same store, once the service is back, commits.
async fn the_coordinator_stopped_between_submit_and_commit(mut w: World) {
    let g = gid();
    let xa = w.xa(&g);
    xa.prepare().await.unwrap();
    xa.call_branch_json(&json!({"amount": 11}), &w.branches.url("out")).await.unwrap();
    w.branches.kill();
    xa.submit().await.expect("submitted");
    w.dtm.restart().await;
    assert_eq!(w.dtm.status(g.as_str()).await, Some(TransStatus::Submitted));
    assert_eq!(w.db.prepared(&g).await, [xid(&g, "01").to_string()]);
    tokio::task::block_in_place(|| w.branches.spawn());
    assert_eq!(w.dtm.wait_final(g.as_str(), FINAL_WITHIN).await, TransStatus::Succeed);
    assert_eq!(w.db.effects(&g).await, [("01".into(), "out".into(), 11)]);
    assert_eq!(w.db.prepared(&g).await, Vec::<String>::new());
}

/// A rollback that overtakes its action (the application gave up on a slow
/// call): null rollback, and the late action then refuses to prepare.
async fn a_rollback_before_the_local_transaction_blocks_it(w: World) {
    let g = gid();
    assert_eq!(w.phase_two(&g, "01", "rollback").await, 200, "nothing to roll back: success");
    assert_eq!(w.db.barrier_rows(&g).await, [("01".into(), "action".into(), "rollback".into())]);
    let out = w
        .xa(&g)
        .run(async |xa| xa.call_branch_json(&json!({"amount": -30}), &w.branches.url("out")).await)
        .await;
    assert!(matches!(&out, Err(ClientError::Failure(m)) if m.contains("rolled back before")), "{out:?}");
    assert_eq!(w.dtm.wait_final(g.as_str(), FINAL_WITHIN).await, TransStatus::Failed);
    assert_eq!(w.db.effects(&g).await, Vec::<(String, String, i64)>::new());
    assert_eq!(w.db.prepared(&g).await, Vec::<String>::new());
}

/// Recovery finishes what the coordinator will not or cannot: a branch of a
/// force-stopped transaction (no rollback is ever sent) is rolled back by
/// the periodic task; a branch of a submitted transaction whose service is
/// down is committed by one round.
async fn recovery_finishes_prepared_branches_of_decided_transactions(mut w: World) {
    let dtm = w.dtm.http_client();
    let stopped = gid();
    let xa = w.xa(&stopped);
    xa.prepare().await.unwrap();
    xa.call_branch_json(&json!({"amount": -1}), &w.branches.url("out")).await.unwrap();
    let undecided = w.db.recover(&dtm, &stopped).await;
    assert!(
        matches!(undecided.as_slice(), [Recovery::Left(_, why)] if why.contains("still prepared")),
        "{undecided:?}"
    );
    let force = reqwest::Client::new()
        .post(format!("{}/forceStop", w.dtm.http))
        .json(&json!({"gid": stopped.as_str()}))
        .send()
        .await
        .unwrap();
    assert_eq!(force.status().as_u16(), 200);
    assert_eq!(w.db.prepared(&stopped).await, [xid(&stopped, "01").to_string()], "left holding locks");
    // The periodic task does what one round does.
    let task = on_db!(w.db.clone(), xa => xa.spawn_recovery(dtm.clone(), Duration::from_millis(200)));
    harness::wait_until("recovery rolled it back", FINAL_WITHIN, async || {
        if w.db.prepared(&stopped).await.is_empty() { Ok(()) } else { Err("still prepared".to_string()) }
    })
    .await;
    task.abort();
    assert_eq!(w.db.effects(&stopped).await, Vec::<(String, String, i64)>::new());
    assert_eq!(w.db.barrier_rows(&stopped).await, [("01".into(), "action".into(), "rollback".into())]);

    let submitted = gid();
    let xa = w.xa(&submitted);
    xa.prepare().await.unwrap();
    xa.call_branch_json(&json!({"amount": 7}), &w.branches.url("out")).await.unwrap();
    w.branches.kill();
    xa.submit().await.unwrap();
    assert_eq!(w.db.recover(&dtm, &submitted).await, [Recovery::Committed(xid(&submitted, "01"))]);
    assert_eq!(w.db.effects(&submitted).await, [("01".into(), "out".into(), 7)]);
    assert_eq!(w.db.prepared(&submitted).await, Vec::<String>::new());
    // The coordinator's own commit, once the service is back, finds it done.
    tokio::task::block_in_place(|| w.branches.spawn());
    assert_eq!(w.dtm.wait_final(submitted.as_str(), FINAL_WITHIN).await, TransStatus::Succeed);
    assert_eq!(w.db.effects(&submitted).await.len(), 1);
}

/// The application on the gRPC API (`Prepare`, `Submit` with trans_type
/// `xa`); the branch registers over HTTP; same outcome.
async fn the_grpc_api_drives_the_same_flow(w: World) {
    let g = gid();
    Xa::new(w.dtm.grpc_client(), g.clone())
        .wait_result(true)
        .run(async |xa| {
            xa.call_branch_json(&json!({"amount": 5}), &w.branches.url("out")).await?;
            Ok(())
        })
        .await
        .expect("committed");
    assert_eq!(w.dtm.status(g.as_str()).await, Some(TransStatus::Succeed));
    assert_eq!(w.db.effects(&g).await, [("01".into(), "out".into(), 5)]);
    assert_eq!(w.db.prepared(&g).await, Vec::<String>::new());
}

/// Branches served over gRPC (`/xa.Busi/<account>`, dtm's values as
/// `dtm-` metadata, `dtm-phase2_url` naming the same method): the
/// coordinator sends phase 2 over gRPC too. A transaction whose second
/// branch answers `Aborted` rolls the first back; one where both succeed
/// commits both; nothing stays prepared after either.
async fn grpc_branches_commit_and_roll_back(w: World) {
    let call = async |xa: &Xa, account: &str, body: serde_json::Value| {
        let url = w.branches.grpc_url(account);
        xa.call_branch_raw(body.to_string().as_bytes(), &url, &url).await
    };
    let committed = gid();
    w.xa(&committed)
        .wait_result(true)
        .run(async |xa| {
            call(xa, "out", json!({"amount": 7})).await?;
            call(xa, "in", json!({"amount": 7})).await?;
            Ok(())
        })
        .await
        .expect("committed");
    assert_eq!(w.dtm.status(committed.as_str()).await, Some(TransStatus::Succeed));
    assert_eq!(
        w.db.effects(&committed).await,
        [("01".into(), "out".into(), 7), ("02".into(), "in".into(), 7)]
    );
    assert_eq!(w.db.prepared(&committed).await, Vec::<String>::new());

    let refused = gid();
    let outcome = w
        .xa(&refused)
        .wait_result(true)
        .run(async |xa| {
            call(xa, "out", json!({"amount": 3})).await?;
            call(xa, "in", json!({"fail": true})).await?;
            Ok(())
        })
        .await;
    assert!(matches!(outcome, Err(ClientError::Failure(_))), "{outcome:?}");
    assert_eq!(w.dtm.wait_final(refused.as_str(), FINAL_WITHIN).await, TransStatus::Failed);
    assert_eq!(w.db.effects(&refused).await, Vec::<(String, String, i64)>::new(), "01 rolled back");
    assert_eq!(w.db.prepared(&refused).await, Vec::<String>::new());
    // 01 prepared and was rolled back by the coordinator's gRPC call (the
    // only phase-2 URL it was given); 02 failed before registering.
    assert_eq!(w.db.barrier_rows(&refused).await, [("01".into(), "action".into(), "rollback".into())]);
    assert_eq!(
        w.dtm.branches(refused.as_str()).await,
        [
            ("01".into(), "rollback".into(), "succeed".into()),
            ("01".into(), "commit".into(), "prepared".into())
        ]
    );
}

/// Sixteen XA transactions at once through the same branch service, every
/// third one refused by its second branch: each ends all-or-nothing, and no
/// local transaction stays prepared (no lock left, no deadlock between them).
async fn concurrent_transactions_each_commit_or_roll_back_whole(w: World) {
    let runs = (0..16).map(|k| {
        let (w, g) = (&w, gid());
        async move {
            let fail = k % 3 == 2;
            let outcome = w
                .xa(&g)
                .wait_result(true)
                .run(async |xa| {
                    xa.call_branch_json(&json!({"amount": -k}), &w.branches.url("out")).await?;
                    xa.call_branch_json(&json!({"amount": k, "fail": fail}), &w.branches.url("in")).await?;
                    Ok(())
                })
                .await;
            (g, fail, outcome)
        }
    });
    for (g, fail, outcome) in futures::future::join_all(runs).await {
        let end = w.dtm.wait_final(g.as_str(), FINAL_WITHIN).await;
        let rows = w.db.effects(&g).await;
        if fail {
            assert!(matches!(outcome, Err(ClientError::Failure(_))), "{g}: {outcome:?}");
            assert_eq!((end, rows.len()), (TransStatus::Failed, 0), "{g}");
        } else {
            assert!(outcome.is_ok(), "{g}: {outcome:?}");
            assert_eq!((end, rows.len()), (TransStatus::Succeed, 2), "{g}");
        }
        assert_eq!(w.db.prepared(&g).await, Vec::<String>::new(), "{g}");
    }
}

/// dtm's old SDKs register XA branches at `registerXaBranch`.
async fn the_old_register_xa_branch_route_is_accepted(w: World) {
    let g = gid();
    w.xa(&g).prepare().await.unwrap();
    let body =
        json!({"gid": g.as_str(), "trans_type": "xa", "branch_id": "01", "url": w.branches.url("out")});
    let answer = reqwest::Client::new()
        .post(format!("{}/registerXaBranch", w.dtm.http))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    w.xa(&g).abort("by hand").await.unwrap();
    assert_eq!(w.dtm.wait_final(g.as_str(), FINAL_WITHIN).await, TransStatus::Failed);
    assert_eq!(w.db.barrier_rows(&g).await, [("01".into(), "action".into(), "rollback".into())]);
}

/// MariaDB answers `XAER_NOTA` to `XA COMMIT` of a transaction that is
/// prepared but still attached to the session that prepared it; dtm's SDK
/// would call that done. Ours answers "retry" while `XA RECOVER` lists the
/// xid, and commits once the session has let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_a_commit_waits_for_the_session_that_prepared() {
    use sqlx::{Connection, Executor};
    let w = World::new(harness::mysql_database().await).await;
    let g = gid();
    let xid = xid(&g, "01");
    let mut session = sqlx::MySqlConnection::connect(&w.database.url).await.unwrap();
    for sql in [
        format!("XA START '{xid}'"),
        format!("INSERT INTO xa_effect (gid, branch_id, account, amount) VALUES ('{g}', '01', 'out', 3)"),
        format!("XA END '{xid}'"),
        format!("XA PREPARE '{xid}'"),
    ] {
        session.execute(sql.as_str()).await.unwrap();
    }
    assert_eq!(w.phase_two(&g, "01", "commit").await, 503, "prepared, not committed: retry");
    assert_eq!(w.db.prepared(&g).await, [xid.to_string()]);
    session.close().await.unwrap();
    harness::wait_until("the commit lands", FINAL_WITHIN, async || {
        match w.phase_two(&g, "01", "commit").await {
            200 => Ok(()),
            other => Err(format!("HTTP {other}")),
        }
    })
    .await;
    assert_eq!(w.db.effects(&g).await, [("01".into(), "out".into(), 3)]);
    assert_eq!(w.db.prepared(&g).await, Vec::<String>::new());
}

/// With [`xa_service::SERVE`] set (by [`BranchService`]), this test is the
/// branch service process and serves until killed. Run as a test, it checks
/// that service on MariaDB: a call without dtm's values is a 400 naming
/// what is missing; phase 2 of a branch that never ran is a success, and a
/// rollback leaves the row that stops a late local transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_service_process() {
    if let Ok(config) = std::env::var(xa_service::SERVE) {
        xa_service::serve(&config).await.expect("the branch service serves");
        return;
    }
    let database = harness::mysql_database().await;
    let router = xa_service::router(&database.url, "http://127.0.0.1:1/api/dtmsvr").await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/xa/out", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();
    let missing = client.post(&url).send().await.unwrap();
    assert_eq!(missing.status().as_u16(), 400);
    assert!(missing.text().await.unwrap().contains("gid"));
    let g = gid();
    for op in ["commit", "rollback"] {
        let call = [("gid", g.as_str()), ("trans_type", "xa"), ("branch_id", "01"), ("op", op)];
        assert_eq!(client.post(&url).query(&call).send().await.unwrap().status().as_u16(), 200, "{op}");
    }
    let db = Db::open(&database).await;
    assert_eq!(db.barrier_rows(&g).await, [("01".into(), "action".into(), "rollback".into())]);
    server.abort();
}

macro_rules! on_both_databases {
    ($($test:ident),* $(,)?) => {
        mod mariadb {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
              async fn $test() { super::$test(super::World::new(harness::mysql_database().await).await).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
              async fn $test() { super::$test(super::World::new(harness::postgres_database().await).await).await })*
        }
    };
}

on_both_databases!(
    success_commits_both_branches,
    failure_rolls_back_the_prepared_branch,
    a_branch_service_killed_between_prepare_and_commit,
    a_rollback_before_the_local_transaction_blocks_it,
    recovery_finishes_prepared_branches_of_decided_transactions,
    the_old_register_xa_branch_route_is_accepted,
    the_grpc_api_drives_the_same_flow,
    grpc_branches_commit_and_roll_back,
    the_coordinator_stopped_between_submit_and_commit,
    concurrent_transactions_each_commit_or_roll_back_whole,
);
