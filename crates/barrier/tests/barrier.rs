//! The barrier against real MariaDB, PostgreSQL and SQLite servers.
//!
//! Every scenario is one generic `async fn` over [`Engine`], instantiated
//! for the three engines by `on_every_engine!` at the bottom: the test
//! `mysql::null_compensation_then_late_action_is_skipped` is the scenario
//! `null_compensation_then_late_action_is_skipped` on MariaDB, and so on.
//!
//! The business code is the article's: stock-srv deducts with
//! `update stock set num = num - ? where goods_id = ? and num >= ?` (0 rows →
//! `BranchError::failure`), order-srv inserts an order carrying the saga's
//! gid and cancels it by gid. Each test plays the coordinator: it builds a
//! fresh `BranchBarrier` per delivered request, as a service does.

#[macro_use]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use barrier::{BarrierTable, BranchBarrier, BranchError, MsgBarrier, MsgLocal, Outcome, Skipped, schema};
use dtm_protocol::{BranchId, Gid, Op, TransType};
use harness::TestDatabase;
use sqlx::Pool;
use sqlx::pool::PoolOptions;
use support::{Engine, Row, business_tables};

/// The goods the demo sells; the stock table is seeded with 100 of them.
const GOODS: i64 = 1;
const USER: i64 = 7;

/// A fresh database with the real DDL applied, and the barrier in an
/// unqualified `barrier` table inside it.
struct Fixture<E: Engine> {
    /// Keeps the database (and SQLite's temp dir) alive.
    db: TestDatabase,
    pool: Pool<E>,
    table: BarrierTable,
}

impl<E: Engine> Fixture<E> {
    async fn new() -> Fixture<E> {
        harness::init_tracing();
        let db = E::database().await;
        let pool = PoolOptions::<E>::new().max_connections(40).connect(&db.url).await.expect("connect");
        let table = BarrierTable::new(BarrierTable::UNQUALIFIED).unwrap();
        schema::ensure_barrier_table(&pool, &table).await.expect("barrier table");
        business_tables(&pool).await;
        Fixture { db, pool, table }
    }

    /// The barrier for one delivered saga request.
    fn barrier(&self, gid: &Gid, branch: usize, op: Op) -> BranchBarrier {
        BranchBarrier::new(TransType::Saga, gid.clone(), BranchId::nth(branch), op)
            .with_table(self.table.clone())
    }

    async fn rows(&self) -> Vec<Row> {
        E::barrier_rows(&self.pool, &self.table).await
    }

    async fn stock(&self) -> i64 {
        E::stock(&self.pool, GOODS).await
    }

    /// order-srv `create` (branch 01, action).
    async fn create_order(&self, gid: &Gid, num: i64) -> Result<Outcome<()>, BranchError> {
        self.barrier(gid, 0, Op::Action)
            .call_with_pool(&self.pool, async |conn| {
                E::insert_order(conn, gid.as_str(), USER, GOODS, num).await?;
                Ok(())
            })
            .await
    }

    /// order-srv `createRollback` (branch 01, compensate).
    async fn cancel_order(&self, gid: &Gid) -> Result<Outcome<()>, BranchError> {
        self.barrier(gid, 0, Op::Compensate)
            .call_with_pool(&self.pool, async |conn| {
                E::cancel_order(conn, gid.as_str()).await?;
                Ok(())
            })
            .await
    }

    /// stock-srv `deduct` (branch 02, action).
    async fn deduct(&self, gid: &Gid, num: i64) -> Result<Outcome<()>, BranchError> {
        self.barrier(gid, 1, Op::Action)
            .call_with_pool(&self.pool, async |conn| deduct::<E>(conn, num).await)
            .await
    }

    /// stock-srv `deductRollback` (branch 02, compensate).
    async fn restore(&self, gid: &Gid, num: i64) -> Result<Outcome<()>, BranchError> {
        self.barrier(gid, 1, Op::Compensate)
            .call_with_pool(&self.pool, async |conn| {
                E::add_stock(conn, GOODS, num).await?;
                Ok(())
            })
            .await
    }
}

/// The article's deduction: 0 rows changed means not enough stock, a business failure.
async fn deduct<E: Engine>(conn: &mut E::Connection, num: i64) -> Result<(), BranchError> {
    if E::deduct_stock(conn, GOODS, num).await? == 0 {
        return Err(BranchError::failure("insufficient stock"));
    }
    Ok(())
}

fn new_gid() -> Gid {
    Gid::new(format!("gid-{}", uuid::Uuid::new_v4().simple())).unwrap()
}

fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort();
    rows
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/// The DDL can be applied at every start: no error, no second seed, no refill.
async fn schema_files_are_idempotent<E: Engine>() {
    let f = Fixture::<E>::new().await;
    assert!(matches!(f.deduct(&new_gid(), 10).await, Ok(Outcome::Ran(()))));
    for _ in 0..2 {
        schema::ensure_barrier_table(&f.pool, &f.table).await.expect("barrier again");
        business_tables(&f.pool).await;
    }
    assert_eq!(E::stock_rows(&f.pool).await, 1);
    assert_eq!(f.stock().await, 90, "re-applying the seed must not refill the stock");
    assert_eq!(f.rows().await.len(), 1, "re-applying the DDL must not touch the barrier rows");
}

/// Article, 六.1: a successful quick order leaves exactly two barrier rows.
async fn quick_order_success_leaves_two_barrier_rows<E: Engine>() {
    let f = Fixture::<E>::new().await;
    let gid = new_gid();

    assert_eq!(f.create_order(&gid, 2).await.unwrap(), Outcome::Ran(()));
    assert_eq!(f.deduct(&gid, 2).await.unwrap(), Outcome::Ran(()));

    let g = gid.as_str();
    assert_eq!(
        f.rows().await,
        vec![Row::saga(g, "01", "action", "01", "action"), Row::saga(g, "02", "action", "01", "action")]
    );
    assert_eq!(E::orders(&f.pool).await, vec![(g.to_string(), USER, GOODS, 2, 0)]);
    assert_eq!(f.stock().await, 98);
}

/// Article, 六.2: not enough stock. The stock action fails (its barrier row
/// rolls back with it), dtm compensates in reverse: the stock compensation is
/// a null compensation, the order compensation cancels this saga's order.
async fn insufficient_stock_leaves_four_rows_and_rolls_the_order_back<E: Engine>() {
    let f = Fixture::<E>::new().await;
    let gid = new_gid();
    let g = gid.as_str();
    // Another user's live order of the same goods: the Go demo's "latest
    // order of this user+goods" rollback could hit the wrong one; ours can't.
    let other = new_gid();
    assert_eq!(f.create_order(&other, 1).await.unwrap(), Outcome::Ran(()));
    let other_rows = f.rows().await;

    assert_eq!(f.create_order(&gid, 101).await.unwrap(), Outcome::Ran(()));
    let error = f.deduct(&gid, 101).await.unwrap_err();
    assert!(matches!(error, BranchError::Failure(_)), "{error:?}");
    let mine = |rows: Vec<Row>| rows.into_iter().filter(|r| r.gid == g).collect::<Vec<_>>();
    assert_eq!(
        mine(f.rows().await),
        vec![Row::saga(g, "01", "action", "01", "action")],
        "the failed action's barrier row rolled back with it"
    );

    assert_eq!(f.restore(&gid, 101).await.unwrap(), Outcome::Skipped(Skipped::NullCompensation));
    assert_eq!(f.cancel_order(&gid).await.unwrap(), Outcome::Ran(()));

    assert_eq!(
        sorted(mine(f.rows().await)),
        sorted(vec![
            Row::saga(g, "01", "action", "01", "action"),
            Row::saga(g, "01", "compensate", "01", "compensate"),
            // Inserted by the compensation: the action never committed.
            Row::saga(g, "02", "action", "01", "compensate"),
            Row::saga(g, "02", "compensate", "01", "compensate"),
        ])
    );
    assert_eq!(f.rows().await.len(), other_rows.len() + 4);
    assert_eq!(
        E::orders(&f.pool).await,
        vec![(other.to_string(), USER, GOODS, 1, 0), (g.to_string(), USER, GOODS, 101, -1)],
        "only this saga's order is rolled back"
    );
    assert_eq!(f.stock().await, 100, "stock untouched");
}

/// The same action delivered twice: business runs once.
async fn duplicate_action_runs_business_once<E: Engine>() {
    let f = Fixture::<E>::new().await;
    let gid = new_gid();
    assert_eq!(f.deduct(&gid, 1).await.unwrap(), Outcome::Ran(()));
    assert_eq!(f.deduct(&gid, 1).await.unwrap(), Outcome::Skipped(Skipped::Duplicate));
    assert_eq!(f.stock().await, 99);
    assert_eq!(f.rows().await, vec![Row::saga(gid.as_str(), "02", "action", "01", "action")]);
}

/// The same compensation delivered twice: business runs once.
async fn duplicate_compensation_runs_business_once<E: Engine>() {
    let f = Fixture::<E>::new().await;
    let gid = new_gid();
    assert_eq!(f.deduct(&gid, 5).await.unwrap(), Outcome::Ran(()));
    assert_eq!(f.restore(&gid, 5).await.unwrap(), Outcome::Ran(()));
    assert_eq!(f.restore(&gid, 5).await.unwrap(), Outcome::Skipped(Skipped::Duplicate));
    assert_eq!(f.stock().await, 100, "deducted once, restored once");
    // A null compensation delivered twice is a duplicate too.
    let never_acted = new_gid();
    assert_eq!(f.restore(&never_acted, 5).await.unwrap(), Outcome::Skipped(Skipped::NullCompensation));
    assert_eq!(f.restore(&never_acted, 5).await.unwrap(), Outcome::Skipped(Skipped::Duplicate));
    assert_eq!(f.stock().await, 100);
}

/// The compensation overtakes its action: null compensation, and the late
/// action is recognised as hanging and never runs.
async fn null_compensation_then_late_action_is_skipped<E: Engine>() {
    let f = Fixture::<E>::new().await;
    let gid = new_gid();
    assert_eq!(f.restore(&gid, 3).await.unwrap(), Outcome::Skipped(Skipped::NullCompensation));
    assert_eq!(f.deduct(&gid, 3).await.unwrap(), Outcome::Skipped(Skipped::Hanging));
    assert_eq!(f.deduct(&gid, 3).await.unwrap(), Outcome::Skipped(Skipped::Hanging), "and stays hanging");
    assert_eq!(f.stock().await, 100, "neither the compensation nor the late action touched the stock");
    let g = gid.as_str();
    assert_eq!(
        f.rows().await,
        vec![
            Row::saga(g, "02", "action", "01", "compensate"),
            Row::saga(g, "02", "compensate", "01", "compensate")
        ]
    );
}

/// A business error rolls back the business effect AND the barrier rows, so
/// the retried action runs, and a retryable database error stays retryable.
async fn business_error_rolls_back_barrier_rows<E: Engine>() {
    let f = Fixture::<E>::new().await;
    let gid = new_gid();
    let mut barrier = f.barrier(&gid, 1, Op::Action);
    let error = barrier
        .call_with_pool(&f.pool, async |conn| -> Result<(), BranchError> {
            deduct::<E>(conn, 1).await?; // succeeds...
            Err(BranchError::failure("then the business says no"))
        })
        .await
        .unwrap_err();
    assert!(matches!(error, BranchError::Failure(_)), "{error:?}");
    assert_eq!(f.rows().await, vec![], "barrier rows rolled back");
    assert_eq!(f.stock().await, 100, "business effect rolled back");

    let error = f
        .barrier(&gid, 1, Op::Action)
        .call_with_pool(&f.pool, async |conn| -> Result<(), BranchError> {
            E::broken_query(conn).await?;
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(error, BranchError::Retry(_)),
        "a database error is a retry, never a failure: {error:?}"
    );
    assert_eq!(f.rows().await, vec![]);

    assert_eq!(f.deduct(&gid, 1).await.unwrap(), Outcome::Ran(()), "the retry runs");
    assert_eq!(f.stock().await, 99);
}

/// 32 identical deliveries at once: exactly one runs the business code.
async fn concurrent_identical_calls_run_business_once<E: Engine>() {
    let f = Fixture::<E>::new().await;
    let gid = new_gid();
    let runs = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (pool, runs) = (f.pool.clone(), runs.clone());
            let mut barrier = f.barrier(&gid, 1, Op::Action);
            // tokio::spawn also proves the call is Send, as tonic handlers need.
            tokio::spawn(async move {
                barrier
                    .call_with_pool(&pool, async |conn| {
                        runs.fetch_add(1, Ordering::SeqCst);
                        deduct::<E>(conn, 1).await
                    })
                    .await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task").expect("every delivery succeeds"));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "business ran exactly once");
    assert_eq!(outcomes.iter().filter(|o| **o == Outcome::Ran(())).count(), 1);
    assert_eq!(outcomes.iter().filter(|o| **o == Outcome::Skipped(Skipped::Duplicate)).count(), 31);
    assert_eq!(f.stock().await, 99);
    assert_eq!(f.rows().await.len(), 1);
}

/// Several guarded transactions in one request get barrier ids 01, 02, …;
/// a redelivery (a fresh barrier) meets the same ids and skips both.
async fn barrier_ids_count_up_within_one_request<E: Engine>() {
    let f = Fixture::<E>::new().await;
    let gid = new_gid();
    let mut barrier = f.barrier(&gid, 1, Op::Action);
    for _ in 0..2 {
        let outcome = barrier.call_with_pool(&f.pool, async |conn| deduct::<E>(conn, 1).await).await;
        assert_eq!(outcome.unwrap(), Outcome::Ran(()));
    }
    let mut redelivered = f.barrier(&gid, 1, Op::Action);
    for _ in 0..2 {
        let outcome = redelivered.call_with_pool(&f.pool, async |conn| deduct::<E>(conn, 1).await).await;
        assert_eq!(outcome.unwrap(), Outcome::Skipped(Skipped::Duplicate));
    }
    let g = gid.as_str();
    assert_eq!(
        f.rows().await,
        vec![Row::saga(g, "02", "action", "01", "action"), Row::saga(g, "02", "action", "02", "action")]
    );
    assert_eq!(f.stock().await, 98);
}

/// `call` takes a transaction the caller began, and a qualified table name works.
async fn call_on_a_caller_transaction_with_a_qualified_table<E: Engine>() {
    let f = Fixture::<E>::new().await;
    let table = E::qualified_table(&f.db, &f.pool).await;
    schema::ensure_barrier_table(&f.pool, &table).await.expect("qualified barrier table");
    let gid = new_gid();
    let tx = f.pool.begin().await.unwrap();
    let mut barrier = BranchBarrier::new(TransType::Saga, gid.clone(), BranchId::nth(1), Op::Action)
        .with_table(table.clone());
    let outcome = barrier.call(tx, async |conn| deduct::<E>(conn, 4).await).await;
    assert_eq!(outcome.unwrap(), Outcome::Ran(()));
    assert_eq!(
        E::barrier_rows(&f.pool, &table).await,
        vec![Row::saga(gid.as_str(), "02", "action", "01", "action")]
    );
    assert_eq!(f.stock().await, 96);
}

/// Two sagas whose gids differ only in letter case are two sagas: each
/// action runs its business, each compensation cancels its own order. (On
/// MySQL this needs the gid columns' binary collation: with the table's
/// default, `abc`'s barrier row would "duplicate" `AbC`'s.)
async fn gids_differing_only_in_case_are_different_transactions<E: Engine>() {
    let f = Fixture::<E>::new().await;
    let (upper, lower) = (Gid::new("AbC").unwrap(), Gid::new("abc").unwrap());
    assert_eq!(f.create_order(&upper, 1).await.unwrap(), Outcome::Ran(()));
    assert_eq!(f.create_order(&lower, 2).await.unwrap(), Outcome::Ran(()), "not a duplicate of AbC");
    assert_eq!(f.deduct(&upper, 1).await.unwrap(), Outcome::Ran(()));
    assert_eq!(f.deduct(&lower, 2).await.unwrap(), Outcome::Ran(()));
    assert_eq!(f.stock().await, 97, "both deductions ran");
    assert_eq!(f.cancel_order(&lower).await.unwrap(), Outcome::Ran(()));
    assert_eq!(f.restore(&lower, 2).await.unwrap(), Outcome::Ran(()));
    assert_eq!(f.stock().await, 99);
    let mut orders = E::orders(&f.pool).await;
    orders.sort();
    assert_eq!(
        orders,
        vec![("AbC".to_string(), USER, GOODS, 1, 0), ("abc".to_string(), USER, GOODS, 2, -1)],
        "abc's compensation cancelled abc's order only"
    );
    assert_eq!(f.rows().await.len(), 6, "two action rows each, and abc's two compensation rows");
}

/// 2-phase message: the local transaction commits, then the check-back
/// says "go" (dtm submits the message).
async fn msg_committed_local_transaction_passes_query_prepared<E: Engine>() {
    let f = Fixture::<E>::new().await;
    let gid = new_gid();
    let mut msg = MsgBarrier::new(gid.clone()).with_table(f.table.clone());
    let local = msg.call_with_pool(&f.pool, async |conn| deduct::<E>(conn, 1).await).await.unwrap();
    assert_eq!(local, MsgLocal::Committed(()));
    msg.query_prepared(&f.pool).await.expect("committed: query_prepared answers success");
    // The check-back as the service sees it: a barrier parsed from dtm's query.
    let checkback = BranchBarrier::from_query(&format!("gid={gid}&trans_type=msg&branch_id=00&op=msg"))
        .unwrap()
        .with_table(f.table.clone());
    checkback.query_prepared(&f.pool).await.expect("idempotent");
    assert_eq!(f.rows().await, vec![Row::new("msg", gid.as_str(), "00", "msg", "01", "msg")]);
    // A second run of the local transaction is dtm's ErrDuplicated.
    let mut again = MsgBarrier::new(gid.clone()).with_table(f.table.clone());
    let local = again.call_with_pool(&f.pool, async |conn| deduct::<E>(conn, 1).await).await.unwrap();
    assert_eq!(local, MsgLocal::Duplicated);
    assert_eq!(f.stock().await, 99);
}

/// 2-phase message: the check-back arrives first (the sender crashed before
/// its local transaction): FAILURE, and the late local transaction can no
/// longer commit its effect.
async fn msg_query_prepared_first_rolls_back_and_blocks_the_local_transaction<E: Engine>() {
    let f = Fixture::<E>::new().await;
    let gid = new_gid();
    let mut msg = MsgBarrier::new(gid.clone()).with_table(f.table.clone());
    let error = msg.query_prepared(&f.pool).await.unwrap_err();
    assert!(matches!(error, BranchError::Failure(_)), "{error:?}");
    let local = msg.call_with_pool(&f.pool, async |conn| deduct::<E>(conn, 1).await).await.unwrap();
    assert_eq!(local, MsgLocal::Duplicated);
    assert!(matches!(msg.query_prepared(&f.pool).await, Err(BranchError::Failure(_))), "still rolled back");
    assert_eq!(f.stock().await, 100);
    assert_eq!(f.rows().await, vec![Row::new("msg", gid.as_str(), "00", "msg", "01", "rollback")]);

    // A local transaction whose business fails leaves no row: the check-back decides rollback.
    let failed = new_gid();
    let mut msg = MsgBarrier::new(failed.clone()).with_table(f.table.clone());
    let error = msg.call_with_pool(&f.pool, async |conn| deduct::<E>(conn, 1000).await).await.unwrap_err();
    assert!(matches!(error, BranchError::Failure(_)));
    assert!(matches!(msg.query_prepared(&f.pool).await, Err(BranchError::Failure(_))));
}

/// 2-phase message: a check-back arriving while the local transaction is
/// still open waits for it, then reports its commit.
async fn msg_query_prepared_waits_for_an_in_flight_local_transaction<E: Engine>() {
    let f = Fixture::<E>::new().await;
    let gid = new_gid();
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let (release, release_rx) = tokio::sync::oneshot::channel::<()>();
    let pool = f.pool.clone();
    let mut msg = MsgBarrier::new(gid.clone()).with_table(f.table.clone());
    let checker = msg.clone();
    let local = tokio::spawn(async move {
        msg.call_with_pool(&pool, async |conn| {
            deduct::<E>(conn, 1).await?;
            let _ = started_tx.send(());
            let _ = release_rx.await;
            Ok(())
        })
        .await
    });
    started.await.expect("local transaction started");
    let pool = f.pool.clone();
    let mut check = tokio::spawn(async move { checker.query_prepared(&pool).await });
    // Not a timing assertion: if the check-back did NOT wait, it would have
    // finished (with FAILURE) by now; waiting longer can only make it pass.
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), &mut check).await;
    assert!(early.is_err(), "the check-back must wait for the open local transaction: {early:?}");
    release.send(()).unwrap();
    assert_eq!(local.await.unwrap().unwrap(), MsgLocal::Committed(()));
    check.await.unwrap().expect("the local transaction committed: success");
}

on_every_engine!(
    schema_files_are_idempotent,
    quick_order_success_leaves_two_barrier_rows,
    insufficient_stock_leaves_four_rows_and_rolls_the_order_back,
    duplicate_action_runs_business_once,
    duplicate_compensation_runs_business_once,
    null_compensation_then_late_action_is_skipped,
    business_error_rolls_back_barrier_rows,
    concurrent_identical_calls_run_business_once,
    barrier_ids_count_up_within_one_request,
    call_on_a_caller_transaction_with_a_qualified_table,
    msg_committed_local_transaction_passes_query_prepared,
    msg_query_prepared_first_rolls_back_and_blocks_the_local_transaction,
    msg_query_prepared_waits_for_an_in_flight_local_transaction,
    gids_differing_only_in_case_are_different_transactions,
);

/// Barrier tables created by the old DDL (and by dtm's own, which has the
/// same columns) compare gids case-insensitively on MySQL.
/// `ensure_barrier_table` converts them: idempotently, and with two services
/// starting at once. (order-srv's tests do the same for its `order` table.)
mod mysql_collation {
    use super::*;

    /// The DDL as it was before gid columns had a binary collation.
    fn old_ddl(ddl: &str) -> String {
        let old = ddl.replace(" CHARACTER SET utf8mb4 COLLATE utf8mb4_bin", "");
        assert_ne!(old, ddl, "the current DDL declares the binary collation");
        old
    }

    async fn collation(pool: &sqlx::MySqlPool, table: &str) -> String {
        sqlx::query_scalar(
            "SELECT CAST(COLLATION_NAME AS CHAR) FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = 'gid'",
        )
        .bind(table)
        .fetch_one(pool)
        .await
        .expect("gid collation")
    }

    #[tokio::test]
    async fn old_tables_are_migrated_to_exact_gids_by_concurrent_starts() {
        harness::init_tracing();
        let db = harness::mysql_database().await;
        let pool = PoolOptions::<sqlx::MySql>::new().max_connections(8).connect(&db.url).await.unwrap();
        let table = BarrierTable::new(BarrierTable::UNQUALIFIED).unwrap();
        schema::apply(&pool, &old_ddl(schema::mysql::BARRIER)).await.unwrap();
        business_tables(&pool).await;
        assert!(!collation(&pool, "barrier").await.ends_with("_bin"), "the old DDL reproduces the bug");

        // Saga AbC's action, on the old table.
        let f = Fixture::<sqlx::MySql> { db, pool: pool.clone(), table: table.clone() };
        let (upper, lower) = (Gid::new("AbC").unwrap(), Gid::new("abc").unwrap());
        assert_eq!(f.create_order(&upper, 1).await.unwrap(), Outcome::Ran(()));
        // The bug itself: abc's action is taken for a duplicate of AbC's.
        let probe = Gid::new("aBc").unwrap();
        assert_eq!(f.create_order(&probe, 1).await.unwrap(), Outcome::Skipped(Skipped::Duplicate));

        // Two services start at once, each migrating on its own pool; then a third, later.
        let other = PoolOptions::<sqlx::MySql>::new().max_connections(2).connect(&f.db.url).await.unwrap();
        let (a, b) = tokio::join!(
            schema::ensure_barrier_table(&pool, &table),
            schema::ensure_barrier_table(&other, &table),
        );
        a.expect("first service's migration");
        b.expect("second service's migration");
        schema::ensure_barrier_table(&pool, &table).await.expect("again: a no-op");
        assert_eq!(collation(&pool, "barrier").await, "utf8mb4_bin");

        // The rows survived, and abc is now a saga of its own.
        assert_eq!(f.create_order(&upper, 1).await.unwrap(), Outcome::Skipped(Skipped::Duplicate));
        assert_eq!(f.create_order(&lower, 2).await.unwrap(), Outcome::Ran(()));
        let gids: Vec<String> = order_gids(&pool).await;
        assert_eq!(gids, vec!["AbC".to_string(), "abc".to_string()]);
    }

    async fn order_gids(pool: &sqlx::MySqlPool) -> Vec<String> {
        let mut gids: Vec<String> =
            <sqlx::MySql as Engine>::orders(pool).await.into_iter().map(|o| o.0).collect();
        gids.sort();
        gids
    }
}
