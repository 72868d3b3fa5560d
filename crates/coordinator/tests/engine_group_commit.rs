//! Group commit, measured on MariaDB's own counters: concurrent sagas share
//! transactions. One by one, a saga costs two commits
//! (`engine_sql_count.rs`); 64 at once must cost far fewer.
//!
//! This test binary has the test MariaDB server to itself (harness
//! starts one per test process and this file holds a single test), so the
//! server-wide `Com_*` counters count exactly our statements.

mod engine_support;

use engine_support::{CountedEngine, per_saga};

#[tokio::test]
async fn concurrent_sagas_share_commits() {
    let counted = CountedEngine::start().await;
    const N: usize = 64;
    let before = counted.counters().await;
    let outcomes = futures::future::join_all(
        (0..N).map(|i| counted.engine.submit(counted.saga(&format!("together-{i}")))),
    )
    .await;
    let after = counted.counters().await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let per = |k: &str| per_saga(&before, &after, k, N);
    let (commits, executed, rollbacks) = (per("com_commit"), per("com_stmt_execute"), per("com_rollback"));
    println!(
        "per saga, {N} at once: {commits:.2} commits, {executed:.2} prepared executions, {rollbacks:.2} rollbacks"
    );
    assert!(commits < 1.5, "64 concurrent sagas must share commits (one by one: 2.0), got {commits:.2}");
    assert!(executed < 4.0, "and statements (one by one: 4.0), got {executed:.2}");
    assert_eq!(rollbacks, 0.0, "no batch may have fallen back");
    for i in 0..N {
        let t = counted.engine.query(&format!("together-{i}").parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(t.transaction.unwrap().status.to_string(), "succeed");
        assert_eq!(t.branches.iter().filter(|b| b.status.to_string() == "succeed").count(), 2);
    }
}
