//! `BusinessDb::connect` on real servers: it creates a missing business
//! database and the barrier table, is idempotent, accepts the Go DSN, and
//! reports an unreachable server precisely without leaking the password.

use std::path::Path;
use std::time::Duration;

use service_kit::config::{DbConf, parse_yaml};
use service_kit::{BusinessDb, DbError};

fn conf(data_source: &str) -> DbConf {
    let yaml = format!("DataSource: \"{data_source}\"\n");
    parse_yaml(Path::new("test.yaml"), &yaml, |_| None).unwrap()
}

const TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn mysql_database_and_barrier_table_are_created_from_a_go_dsn() {
    let existing = harness::mysql_database().await;
    // root@tcp(127.0.0.1:port)/<new name> — the Go demo's DSN shape.
    let port = existing.server_url.rsplit(':').next().unwrap();
    let name = format!("kit-{}", &existing.name[2..14]);
    let dsn = format!("root@tcp(127.0.0.1:{port})/{name}?charset=utf8mb4&parseTime=true");

    for _ in 0..2 {
        let db = BusinessDb::connect(&conf(&dsn), TIMEOUT).await.expect("connect creates what is missing");
        let BusinessDb::MySql(pool) = db else { panic!("a Go DSN is MySQL") };
        let current: String = sqlx::query_scalar("select database()").fetch_one(&pool).await.unwrap();
        assert_eq!(current, name);
        let rows: i64 =
            sqlx::query_scalar("select count(*) from dtm_barrier.barrier").fetch_one(&pool).await.unwrap();
        assert_eq!(rows, 0);
        pool.close().await;
    }
}

#[tokio::test]
async fn postgres_database_and_barrier_schema_are_created() {
    let existing = harness::postgres_database().await;
    let url = format!("{}/kit_{}", existing.server_url, &existing.name[2..14]);
    let db = BusinessDb::connect(&conf(&url), TIMEOUT).await.expect("connect creates what is missing");
    let BusinessDb::Postgres(pool) = db else { panic!("postgres") };
    let rows: i64 =
        sqlx::query_scalar("select count(*) from dtm_barrier.barrier").fetch_one(&pool).await.unwrap();
    assert_eq!(rows, 0);
    assert_eq!(BusinessDb::Postgres(pool).barrier_table().as_str(), "dtm_barrier.barrier");
}

#[tokio::test]
async fn sqlite_file_is_created_with_an_unqualified_barrier_table() {
    let existing = harness::sqlite_database();
    let db = BusinessDb::connect(&conf(&existing.url), TIMEOUT).await.unwrap();
    assert_eq!(db.barrier_table().as_str(), "barrier");
    let BusinessDb::Sqlite(pool) = db else { panic!("sqlite") };
    let rows: i64 = sqlx::query_scalar("select count(*) from barrier").fetch_one(&pool).await.unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn an_unreachable_server_is_a_precise_error_without_the_password() {
    let port = harness::closed_port();
    let err = BusinessDb::connect(&conf(&format!("root:hunter2@tcp(127.0.0.1:{port})/x")), TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::Connect { .. }), "{err}");
    let text = err.to_string();
    assert!(!text.contains("hunter2") && text.contains("***"), "{text}");
    assert!(!text.contains("timed out"), "the real cause, not a pool timeout: {text}");
}

#[tokio::test]
async fn sqlite_in_memory_keeps_its_tables() {
    let db = BusinessDb::connect(&conf("sqlite::memory:"), TIMEOUT).await.unwrap();
    let BusinessDb::Sqlite(pool) = db else { panic!("sqlite") };
    for _ in 0..3 {
        let rows: i64 = sqlx::query_scalar("select count(*) from barrier").fetch_one(&pool).await.unwrap();
        assert_eq!(rows, 0);
    }
}
