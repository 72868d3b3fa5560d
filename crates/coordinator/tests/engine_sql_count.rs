//! The coordinator's SQL budget per saga, measured on MariaDB's own counters.
//!
//! This test binary has the test MariaDB server to itself (harness
//! starts one per test process and this file holds a single test), so the
//! server-wide `Com_*` counters count exactly our statements.
//! Budget for a successful 2-step saga: ≤ 6 statements, ≤ 3 commits.

mod engine_support;

use std::time::Instant;

use engine_support::{CountedEngine, per_saga};

#[tokio::test]
async fn a_successful_two_step_saga_costs_four_statements_and_two_commits() {
    let counted = CountedEngine::start().await;
    const N: usize = 100;
    let before = counted.counters().await;
    let started = Instant::now();
    for i in 0..N {
        counted.engine.submit(counted.saga(&format!("count-{i}"))).await.unwrap();
    }
    let elapsed = started.elapsed();
    let after = counted.counters().await;
    // The monitor's own SHOW STATUS is one statement, not counted below.
    let per = |k: &str| per_saga(&before, &after, k, N);
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
