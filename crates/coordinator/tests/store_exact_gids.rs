//! gids are exact byte strings on MySQL/MariaDB too: two sagas whose gids
//! differ only in letter case are two sagas, on a fresh database and on one
//! whose tables were created by the old (case-insensitive) DDL and are
//! migrated by two coordinators starting at once.

mod edges_support;

use edges_support::{BranchServer, InProcess, fast_config, get, mysql_store, port_of, post, saga, steps};
use serde_json::{Value, json};
use sqlx::MySqlPool;

const DDL: &str = include_str!("../../../sql/mysql/coordinator.sql");

/// The coordinator DDL as it was before gid columns had a binary collation
/// (dtm's own has the same columns and collation).
fn old_ddl_statements() -> Vec<String> {
    let old = DDL.replace(" CHARACTER SET utf8mb4 COLLATE utf8mb4_bin", "");
    assert_ne!(old, DDL, "the current DDL declares the binary collation");
    barrier::schema::statements(&old)
}

async fn gid_collation(pool: &MySqlPool, table: &str) -> String {
    collation(pool, table, "gid").await
}

async fn collation(pool: &MySqlPool, table: &str, column: &str) -> String {
    sqlx::query_scalar(
        "SELECT CAST(COLLATION_NAME AS CHAR) FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?",
    )
    .bind(table)
    .bind(column)
    .fetch_one(pool)
    .await
    .expect("collation")
}

async fn status(c: &reqwest::Client, base: &str, gid: &str) -> Value {
    let (code, body) = get(c, &format!("{base}/api/dtmsvr/query?gid={gid}")).await;
    assert_eq!(code, 200, "{body}");
    body["transaction"]["status"].clone()
}

/// Submits `upper` to one coordinator and `lower` to the other (wait_result):
/// both must run to completion, each with its own branch calls.
async fn both_sagas_run(
    branches: &BranchServer,
    one: &InProcess,
    other: &InProcess,
    upper: &str,
    lower: &str,
) {
    let c = reqwest::Client::new();
    for (coordinator, gid) in [(one, upper), (other, lower)] {
        let body = saga(gid, &steps(branches, 2), &[json!({}), json!({})], true);
        let (code, reply) = post(&c, &format!("{}/api/dtmsvr/submit", coordinator.http), &body).await;
        assert_eq!((code, reply), (200, json!({"dtm_result": "SUCCESS"})), "{gid}");
    }
    for gid in [upper, lower] {
        assert_eq!(status(&c, &one.http, gid).await, "succeed", "{gid}");
        assert_eq!(branches.calls_for(gid).len(), 2, "{gid}'s own two actions");
    }
}

#[tokio::test]
async fn sagas_whose_gids_differ_only_in_case_both_run_on_mysql() {
    let branches = BranchServer::start().await;
    let db = harness::mysql_database().await;
    let store = mysql_store(port_of(&db.server_url), &db.name);
    let one = InProcess::start(fast_config(store.clone())).await;
    let other = InProcess::start(fast_config(store)).await;
    let pool = MySqlPool::connect(&db.url).await.unwrap();
    assert_eq!(gid_collation(&pool, "trans_global").await, "utf8mb4_bin");
    assert_eq!(gid_collation(&pool, "trans_branch_op").await, "utf8mb4_bin");
    both_sagas_run(&branches, &one, &other, "Case-Saga-AbC", "case-saga-abc").await;
    one.stop().await.expect("clean shutdown");
    other.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn old_case_insensitive_tables_are_migrated_by_concurrent_starts() {
    let branches = BranchServer::start().await;
    let db = harness::mysql_database().await;
    let pool = MySqlPool::connect(&db.url).await.unwrap();
    for statement in old_ddl_statements() {
        sqlx::query(&statement).execute(&pool).await.unwrap();
    }
    assert!(!gid_collation(&pool, "trans_global").await.ends_with("_bin"));
    assert!(!collation(&pool, "kv", "k").await.ends_with("_bin"));
    // A finished saga from before the upgrade, and the bug itself: its gid in
    // another case is "the same" gid.
    let insert = "INSERT INTO trans_global (gid, trans_type, status, query_prepared, protocol, options, \
                  custom_data, next_cron_interval, create_time, update_time) \
                  VALUES (?, 'saga', 'succeed', '', 'http', '{}', '', 10, UTC_TIMESTAMP(), UTC_TIMESTAMP())";
    sqlx::query(insert).bind("Old-AbC").execute(&pool).await.unwrap();
    let clash = sqlx::query(insert).bind("old-abc").execute(&pool).await.unwrap_err();
    assert!(clash.to_string().contains("Duplicate"), "the old DDL reproduces the bug: {clash}");

    // Two coordinators start at once: each migrates, neither fails.
    let store = mysql_store(port_of(&db.server_url), &db.name);
    let (one, other) = tokio::join!(
        InProcess::start(fast_config(store.clone())),
        InProcess::start(fast_config(store.clone()))
    );
    assert_eq!(gid_collation(&pool, "trans_global").await, "utf8mb4_bin");
    assert_eq!(gid_collation(&pool, "trans_branch_op").await, "utf8mb4_bin");
    assert_eq!(collation(&pool, "kv", "k").await, "utf8mb4_bin", "topic names are exact too");
    // A third start finds nothing to do.
    let third = InProcess::start(fast_config(store)).await;
    third.stop().await.expect("clean shutdown");

    let c = reqwest::Client::new();
    assert_eq!(status(&c, &one.http, "Old-AbC").await, "succeed", "the old row survived and reads back");
    both_sagas_run(&branches, &one, &other, "old-abc", "OLD-ABC").await;
    assert_eq!(status(&c, &one.http, "Old-AbC").await, "succeed", "untouched by its namesakes");
    one.stop().await.expect("clean shutdown");
    other.stop().await.expect("clean shutdown");
}
