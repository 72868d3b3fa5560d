//! The `order` table on MariaDB: an old table, whose `gid` compared
//! case-insensitively (the DDL before gids were exact), is converted to the
//! binary collation at start — idempotently, and with two instances
//! starting at once. (The barrier crate's tests do the same for its table.)

use sqlx::mysql::MySqlPoolOptions;

async fn collation(pool: &sqlx::MySqlPool) -> String {
    sqlx::query_scalar(
        "SELECT CAST(COLLATION_NAME AS CHAR) FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'order' AND COLUMN_NAME = 'gid'",
    )
    .fetch_one(pool)
    .await
    .expect("gid collation")
}

async fn orders_of(pool: &sqlx::MySqlPool, gid: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM `order` WHERE gid = ?").bind(gid).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_order_table_gets_exact_gids_when_two_instances_start_at_once() {
    harness::init_tracing();
    let db = harness::mysql_database().await;
    let pool = MySqlPoolOptions::new().max_connections(4).connect(&db.url).await.unwrap();
    let ddl = order_srv::schema::mysql::ORDER;
    let old = ddl.replace(" CHARACTER SET utf8mb4 COLLATE utf8mb4_bin", "");
    assert_ne!(old, ddl, "the current DDL declares the binary collation");
    barrier::schema::apply(&pool, &old).await.unwrap();
    sqlx::query("INSERT INTO `order` (user_id, goods_id, num, row_state, gid) VALUES (1, 1, 1, 0, 'AbC')")
        .execute(&pool)
        .await
        .unwrap();
    assert!(!collation(&pool).await.ends_with("_bin"), "the old DDL reproduces the bug");
    assert_eq!(orders_of(&pool, "abc").await, 1, "the bug itself: abc finds AbC's order");

    let other = MySqlPoolOptions::new().max_connections(2).connect(&db.url).await.unwrap();
    let (a, b) = tokio::join!(
        order_srv::schema::ensure_order_table(&pool),
        order_srv::schema::ensure_order_table(&other),
    );
    a.expect("first instance's migration");
    b.expect("second instance's migration");
    order_srv::schema::ensure_order_table(&pool).await.expect("again: a no-op");
    assert_eq!(collation(&pool).await, "utf8mb4_bin");

    // The row survived, and abc is no longer AbC.
    assert_eq!(orders_of(&pool, "AbC").await, 1);
    assert_eq!(orders_of(&pool, "abc").await, 0);
}
