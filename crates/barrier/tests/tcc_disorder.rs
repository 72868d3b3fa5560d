//! The barrier under TCC (ops `try`, `confirm`, `cancel`) on real MariaDB,
//! PostgreSQL and SQLite servers, including dtm's `TestTccBarrierDisorder`:
//! a try delayed in the network until the transaction timed out and was
//! cancelled.
//!
//! The branch is a stock account: try freezes (deducts) the units, confirm
//! has nothing left to do, cancel gives them back. Each delivered request
//! gets a fresh `BranchBarrier`, as a service builds one per call.

// Shared with barrier.rs; this file uses only part of it.
#[allow(dead_code)]
#[macro_use]
mod support;

use std::time::Duration;

use barrier::{BarrierTable, BranchBarrier, BranchError, Outcome, Skipped, schema};
use dtm_protocol::{BranchId, Gid, Op, TransType};
use harness::TestDatabase;
use sqlx::Pool;
use sqlx::pool::PoolOptions;
use support::{Engine, Row};

const GOODS: i64 = 1;

struct Fixture<E: Engine> {
    /// Keeps the database alive.
    _db: TestDatabase,
    pool: Pool<E>,
    table: BarrierTable,
}

impl<E: Engine> Fixture<E> {
    async fn new() -> Fixture<E> {
        harness::init_tracing();
        let db = E::database().await;
        let pool = PoolOptions::<E>::new().max_connections(8).connect(&db.url).await.expect("connect");
        let table = BarrierTable::new(BarrierTable::UNQUALIFIED).unwrap();
        schema::ensure_barrier_table(&pool, &table).await.expect("barrier table");
        support::business_tables(&pool).await;
        Fixture { _db: db, pool, table }
    }

    /// The barrier of one delivered TCC request for branch 01.
    fn barrier(&self, gid: &Gid, op: Op) -> BranchBarrier {
        BranchBarrier::new(TransType::Tcc, gid.clone(), BranchId::nth(0), op).with_table(self.table.clone())
    }

    /// `try`: freeze `num` units (0 rows → not enough stock, a business failure).
    async fn try_freeze(&self, gid: &Gid, num: i64) -> Result<Outcome<()>, BranchError> {
        self.barrier(gid, Op::Try).call_with_pool(&self.pool, async |conn| freeze::<E>(conn, num).await).await
    }

    /// `confirm`: the units stay deducted; only the barrier row is written.
    async fn confirm(&self, gid: &Gid) -> Result<Outcome<()>, BranchError> {
        self.barrier(gid, Op::Confirm).call_with_pool(&self.pool, async |_conn| Ok(())).await
    }

    /// `cancel`: give the frozen units back.
    async fn cancel(&self, gid: &Gid, num: i64) -> Result<Outcome<()>, BranchError> {
        self.barrier(gid, Op::Cancel)
            .call_with_pool(&self.pool, async |conn| {
                E::add_stock(conn, GOODS, num).await?;
                Ok(())
            })
            .await
    }

    async fn stock(&self) -> i64 {
        E::stock(&self.pool, GOODS).await
    }

    async fn rows(&self, gid: &Gid) -> Vec<Row> {
        let mut rows: Vec<Row> = E::barrier_rows(&self.pool, &self.table)
            .await
            .into_iter()
            .filter(|r| r.gid == gid.as_str())
            .collect();
        rows.sort();
        rows
    }
}

async fn freeze<E: Engine>(conn: &mut E::Connection, num: i64) -> Result<(), BranchError> {
    if E::deduct_stock(conn, GOODS, num).await? == 0 {
        return Err(BranchError::failure("insufficient stock"));
    }
    Ok(())
}

fn new_gid() -> Gid {
    Gid::new(format!("tcc-{}", uuid::Uuid::new_v4().simple())).unwrap()
}

fn tcc_row(gid: &Gid, op: &str, reason: &str) -> Row {
    Row::new("tcc", gid.as_str(), "01", op, "01", reason)
}

/// The happy paths: try then confirm, try then cancel; each op runs once
/// however often it is delivered.
async fn try_confirm_and_try_cancel_run_once_each<E: Engine>() {
    let f = Fixture::<E>::new().await;
    let confirmed = new_gid();
    assert_eq!(f.try_freeze(&confirmed, 10).await.unwrap(), Outcome::Ran(()));
    assert_eq!(f.try_freeze(&confirmed, 10).await.unwrap(), Outcome::Skipped(Skipped::Duplicate));
    assert_eq!(f.confirm(&confirmed).await.unwrap(), Outcome::Ran(()));
    assert_eq!(f.confirm(&confirmed).await.unwrap(), Outcome::Skipped(Skipped::Duplicate));
    assert_eq!(f.stock().await, 90);

    let cancelled = new_gid();
    assert_eq!(f.try_freeze(&cancelled, 5).await.unwrap(), Outcome::Ran(()));
    assert_eq!(f.cancel(&cancelled, 5).await.unwrap(), Outcome::Ran(()));
    assert_eq!(f.cancel(&cancelled, 5).await.unwrap(), Outcome::Skipped(Skipped::Duplicate));
    assert_eq!(f.stock().await, 90, "the cancelled freeze was given back once");
    assert_eq!(
        f.rows(&cancelled).await,
        vec![tcc_row(&cancelled, "cancel", "cancel"), tcc_row(&cancelled, "try", "try")]
    );
}

/// dtm's `TestTccBarrierDisorder`: the try is stuck in the network; the
/// transaction times out and the coordinator cancels — twice, as two cron
/// rounds do. The first cancel finds no try: null compensation. The second
/// is a duplicate. When the try finally arrives it finds its row already
/// written by the cancel: hanging, skipped, and answered with success (the
/// coordinator must not retry it). The stock never moves.
async fn cancel_before_a_delayed_try_is_null_and_the_try_hangs<E: Engine>() {
    let f = Fixture::<E>::new().await;
    let gid = new_gid();
    assert_eq!(f.cancel(&gid, 5).await.unwrap(), Outcome::Skipped(Skipped::NullCompensation));
    assert_eq!(f.cancel(&gid, 5).await.unwrap(), Outcome::Skipped(Skipped::Duplicate));
    assert_eq!(f.try_freeze(&gid, 5).await.unwrap(), Outcome::Skipped(Skipped::Hanging));
    assert_eq!(f.try_freeze(&gid, 5).await.unwrap(), Outcome::Skipped(Skipped::Hanging), "and stays hanging");
    assert_eq!(f.stock().await, 100, "neither the null cancel nor the late try touched the stock");
    assert_eq!(
        f.rows(&gid).await,
        vec![tcc_row(&gid, "cancel", "cancel"), tcc_row(&gid, "try", "cancel")],
        "the try row was written by the cancel"
    );
    // A confirm can never come after a cancel (dtm only confirms submitted
    // transactions), so nothing else is left to check.
}

/// The other order of the same race: the try is *inside* its local
/// transaction when the cancel arrives. The cancel's insert of the try row
/// waits for the try to commit, then finds it: not a null compensation, so
/// it gives the units back. Stock ends where it started.
async fn cancel_during_a_running_try_waits_and_undoes_it<E: Engine>() {
    let f = Fixture::<E>::new().await;
    let gid = new_gid();
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let (release, release_rx) = tokio::sync::oneshot::channel::<()>();
    let mut try_barrier = f.barrier(&gid, Op::Try);
    let pool = f.pool.clone();
    let running_try = tokio::spawn(async move {
        try_barrier
            .call_with_pool(&pool, async |conn| {
                freeze::<E>(conn, 7).await?;
                let _ = started_tx.send(());
                let _ = release_rx.await;
                Ok(())
            })
            .await
    });
    started.await.expect("the try is inside its transaction");
    let mut cancel_barrier = f.barrier(&gid, Op::Cancel);
    let pool = f.pool.clone();
    let mut cancel = tokio::spawn(async move {
        cancel_barrier
            .call_with_pool(&pool, async |conn| {
                E::add_stock(conn, GOODS, 7).await?;
                Ok(())
            })
            .await
    });
    // If the cancel did not wait, it would have finished (as a null
    // compensation) by now; waiting longer can only make this pass.
    let early = tokio::time::timeout(Duration::from_millis(300), &mut cancel).await;
    assert!(early.is_err(), "the cancel must wait for the running try: {early:?}");
    release.send(()).unwrap();
    assert_eq!(running_try.await.unwrap().unwrap(), Outcome::Ran(()));
    assert_eq!(cancel.await.unwrap().unwrap(), Outcome::Ran(()), "the committed try is undone");
    assert_eq!(f.stock().await, 100);
    assert_eq!(f.rows(&gid).await, vec![tcc_row(&gid, "cancel", "cancel"), tcc_row(&gid, "try", "try")]);
}

/// A try that fails for business reasons rolls back its barrier row, so
/// the cancel that follows (dtm cancels every registered branch) is null.
async fn a_failed_try_leaves_a_null_cancel<E: Engine>() {
    let f = Fixture::<E>::new().await;
    let gid = new_gid();
    let error = f.try_freeze(&gid, 1000).await.unwrap_err();
    assert!(matches!(error, BranchError::Failure(_)), "{error:?}");
    assert_eq!(f.rows(&gid).await, vec![], "the failed try left no row");
    assert_eq!(f.cancel(&gid, 1000).await.unwrap(), Outcome::Skipped(Skipped::NullCompensation));
    assert_eq!(f.stock().await, 100);
}

on_every_engine!(
    try_confirm_and_try_cancel_run_once_each,
    cancel_before_a_delayed_try_is_null_and_the_try_hangs,
    cancel_during_a_running_try_waits_and_undoes_it,
    a_failed_try_leaves_a_null_cancel,
);
