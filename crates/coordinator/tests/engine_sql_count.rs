//! The coordinator's SQL budget per saga, measured on MariaDB's own counters.
//!
//! This test binary has the test MariaDB server to itself (test-support
//! starts one per test process and this file holds a single test), so the
//! server-wide `Com_*` counters count exactly our statements.
//! Budget for a successful 2-step saga: ≤ 6 statements, ≤ 3 commits.

mod engine_support;

use std::collections::HashMap;
use std::time::Instant;

use engine_support::{Branches, engine, req, saga};

async fn counters(pool: &sqlx::MySqlPool) -> HashMap<String, i64> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Com\\_%'").fetch_all(pool).await.unwrap();
    rows.into_iter().map(|(k, v)| (k.to_lowercase(), v.parse().unwrap_or(0))).collect()
}

#[tokio::test]
async fn a_successful_two_step_saga_costs_four_statements_and_two_commits() {
    let db = test_support::mysql_database().await;
    let monitor = sqlx::MySqlPool::connect(&db.url).await.unwrap();
    let b = Branches::start().await;
    let engine = engine(&db.url).await;
    let steps = [(b.url("TransOut"), b.url("TransOutRevert")), (b.url("TransIn"), b.url("TransInRevert"))];
    // Warm up connections and statement caches.
    let mut warm = saga("warm", &steps);
    warm.wait_result = true;
    engine.submit(req(warm)).await.unwrap();

    const N: i64 = 100;
    let before = counters(&monitor).await;
    let started = Instant::now();
    for i in 0..N {
        let mut input = saga(&format!("count-{i}"), &steps);
        input.wait_result = true;
        engine.submit(req(input)).await.unwrap();
    }
    let elapsed = started.elapsed();
    let after = counters(&monitor).await;
    // The monitor's own SHOW STATUS is one statement, not counted below.
    let per = |k: &str| {
        (after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0)) as f64 / N as f64
    };
    let executed = per("com_stmt_execute");
    let (inserts, updates, selects) = (per("com_insert"), per("com_update"), per("com_select"));
    let (begins, commits, rollbacks) = (per("com_begin"), per("com_commit"), per("com_rollback"));
    println!(
        "per saga: {executed} prepared executions (insert {inserts}, update {updates}, select {selects}), \
         begin {begins}, commit {commits}, rollback {rollbacks}; {:.0} sagas/s sequential with wait_result",
        N as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(executed.round(), 4.0, "INSERT global, INSERT branches, UPDATE global, UPDATE branches");
    assert_eq!(commits, 2.0, "one commit to accept, one to finish");
    assert_eq!(rollbacks, 0.0);
    assert!(executed.round() <= 6.0 && commits <= 3.0);
}
