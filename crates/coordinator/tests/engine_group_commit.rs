//! Group commit, measured on MariaDB's own counters: concurrent sagas share
//! transactions. One by one, a saga costs two commits
//! (`engine_sql_count.rs`); 64 at once must cost far fewer.
//!
//! This test binary has the test MariaDB server to itself (test-support
//! starts one per test process and this file holds a single test), so the
//! server-wide `Com_*` counters count exactly our statements.

mod engine_support;

use std::collections::HashMap;

use engine_support::{Branches, engine, req, saga};

async fn counters(pool: &sqlx::MySqlPool) -> HashMap<String, i64> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Com\\_%'").fetch_all(pool).await.unwrap();
    rows.into_iter().map(|(k, v)| (k.to_lowercase(), v.parse().unwrap_or(0))).collect()
}

#[tokio::test]
async fn concurrent_sagas_share_commits() {
    let db = test_support::mysql_database().await;
    let monitor = sqlx::MySqlPool::connect(&db.url).await.unwrap();
    let b = Branches::start().await;
    let engine = engine(&db.url).await;
    let steps = [(b.url("TransOut"), b.url("TransOutRevert")), (b.url("TransIn"), b.url("TransInRevert"))];
    let mut warm = saga("warm", &steps);
    warm.wait_result = true;
    engine.submit(req(warm)).await.unwrap();

    const N: usize = 64;
    let before = counters(&monitor).await;
    let outcomes = futures::future::join_all((0..N).map(|i| {
        let engine = engine.clone();
        let mut input = saga(&format!("together-{i}"), &steps);
        input.wait_result = true;
        async move { engine.submit(req(input)).await }
    }))
    .await;
    let after = counters(&monitor).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let per = |k: &str| {
        (after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0)) as f64 / N as f64
    };
    let (commits, executed, rollbacks) = (per("com_commit"), per("com_stmt_execute"), per("com_rollback"));
    println!(
        "per saga, {N} at once: {commits:.2} commits, {executed:.2} prepared executions, {rollbacks:.2} rollbacks"
    );
    assert!(commits < 1.5, "64 concurrent sagas must share commits (one by one: 2.0), got {commits:.2}");
    assert!(executed < 4.0, "and statements (one by one: 4.0), got {executed:.2}");
    assert_eq!(rollbacks, 0.0, "no batch may have fallen back");
    for i in 0..N {
        let t = engine.query(&format!("together-{i}").parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(t.transaction.unwrap().status.to_string(), "succeed");
        assert_eq!(t.branches.iter().filter(|b| b.status.to_string() == "succeed").count(), 2);
    }
}
