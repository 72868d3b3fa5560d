//! Smoke tests of the harness itself: every server it promises starts, and
//! answers a real request over a real connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use harness::{Backend, Etcd, MariaDb};
use sqlx::Connection;

#[tokio::test]
async fn mariadb_database_is_fresh_and_answers() {
    let db = harness::mysql_database().await;
    assert_eq!(db.backend, Backend::MySql);
    let mut conn = sqlx::MySqlConnection::connect(&db.url).await.expect("connect to the test database");
    let current: String = sqlx::query_scalar("select database()").fetch_one(&mut conn).await.unwrap();
    assert_eq!(current, db.name);
    let tables: i64 =
        sqlx::query_scalar("select count(*) from information_schema.tables where table_schema = database()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(tables, 0, "a fresh database is empty");
    sqlx::query("create table t (id int primary key)").execute(&mut conn).await.unwrap();
    sqlx::query("insert into t values (1)").execute(&mut conn).await.unwrap();
    let version: String = sqlx::query_scalar("select version()").fetch_one(&mut conn).await.unwrap();
    assert!(
        version.to_lowercase().contains("mariadb") || std::env::var("TEST_MYSQL_URL").is_ok(),
        "{version}"
    );

    // Two calls, two different databases.
    let other = harness::mysql_database().await;
    assert_ne!(other.name, db.name);
}

#[tokio::test]
async fn postgres_database_is_fresh_and_answers() {
    let db = harness::postgres_database().await;
    assert_eq!(db.backend, Backend::Postgres);
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect to the test database");
    let current: String = sqlx::query_scalar("select current_database()").fetch_one(&mut conn).await.unwrap();
    assert_eq!(current, db.name);
    sqlx::query("create table t (id int primary key)").execute(&mut conn).await.unwrap();
    let one: i32 =
        sqlx::query_scalar("insert into t values (1) returning id").fetch_one(&mut conn).await.unwrap();
    assert_eq!(one, 1);
}

#[tokio::test]
async fn sqlite_database_is_a_fresh_file() {
    let db = harness::sqlite_database();
    assert_eq!(db.backend, Backend::Sqlite);
    let mut conn = sqlx::SqliteConnection::connect(&db.url).await.expect("open the test database");
    sqlx::query("create table t (id integer primary key)").execute(&mut conn).await.unwrap();
    sqlx::query("insert into t values (1)").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    assert!(std::path::Path::new(&db.name).is_file(), "{} exists", db.name);
    let path = db.name.clone();
    drop(db);
    assert!(!std::path::Path::new(&path).exists(), "the temp dir goes with the TestDatabase");
}

/// A private MariaDB keeps its data and port across kill + restart.
#[tokio::test]
async fn private_mariadb_survives_kill_and_restart() {
    let mut server = tokio::task::spawn_blocking(MariaDb::start).await.unwrap();
    let db = harness::mysql_database_on(&server.url()).await;
    let mut conn = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
    sqlx::query("create table t (id int primary key)").execute(&mut conn).await.unwrap();
    sqlx::query("insert into t values (42)").execute(&mut conn).await.unwrap();
    drop(conn);
    let pid = server.process().expect("running").pid();

    let mut server = tokio::task::spawn_blocking(move || {
        server.kill();
        assert!(server.process().is_none());
        server.restart();
        server
    })
    .await
    .unwrap();
    assert_ne!(server.process().expect("running again").pid(), pid);
    let mut conn = sqlx::MySqlConnection::connect(&db.url).await.expect("same URL after restart");
    let id: i32 = sqlx::query_scalar("select id from t").fetch_one(&mut conn).await.unwrap();
    assert_eq!(id, 42, "data survives the restart");
    drop(conn);
    tokio::task::spawn_blocking(move || server.kill()).await.unwrap();
}

/// etcd answers on its client port: a put and a get through its JSON gateway
/// (keys and values are base64: "smoke" = c21va2U=, "ok" = b2s=), before and
/// after a restart.
#[test]
fn etcd_starts_answers_and_restarts_with_its_data() {
    let mut etcd = Etcd::start_private();
    let endpoint = etcd.endpoints().remove(0);
    assert_eq!(etcd.hosts(), endpoint);
    assert!(post(&endpoint, "/v3/kv/put", r#"{"key":"c21va2U=","value":"b2s="}"#).contains("header"));
    assert!(post(&endpoint, "/v3/kv/range", r#"{"key":"c21va2U="}"#).contains(r#""value":"b2s=""#));

    etcd.stop();
    assert!(TcpStream::connect(&endpoint).is_err(), "stopped");
    etcd.restart();
    assert!(post(&endpoint, "/v3/kv/range", r#"{"key":"c21va2U="}"#).contains(r#""value":"b2s=""#));
}

/// A minimal HTTP/1.1 POST; returns the whole response.
fn post(endpoint: &str, path: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(endpoint).unwrap_or_else(|e| panic!("connect {endpoint}: {e}"));
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {endpoint}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

#[test]
fn a_readiness_line_is_parsed_and_log_lines_are_not() {
    let line = "ready order-srv pid=4242 grpc=127.0.0.1:40123 http=127.0.0.1:40124";
    let ready = harness::ReadyLine::parse(line).expect("a readiness line");
    assert_eq!((ready.name.as_str(), ready.pid), ("order-srv", 4242));
    assert_eq!((ready.port("grpc"), ready.port("http")), (40123, 40124));
    for other in [
        "2026-12-03T09:00:00Z INFO ready line=ready order-srv pid=1 grpc=127.0.0.1:1",
        "ready order-srv",
        "ready order-srv pid=x grpc=127.0.0.1:1",
        "ready order-srv pid=1 grpc=nowhere",
    ] {
        assert_eq!(harness::ReadyLine::parse(other), None, "{other}");
    }
}

#[test]
fn a_child_is_ready_only_when_it_says_so_and_its_pid_matches() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("child.log");
    // An earlier process's line in the same log must not count.
    std::fs::write(&log, "ready fake pid=1 http=127.0.0.1:9\n").unwrap();
    let script = "sleep 0.3; echo \"ready fake pid=$$ http=127.0.0.1:4321\"; sleep 30".to_string();
    let process = harness::GuardedProcess::spawn("sh", &["-c".into(), script], &log, None);
    let started = std::time::Instant::now();
    let ready = process.wait_ready("fake", Duration::from_secs(10));
    assert!(started.elapsed() >= Duration::from_millis(250), "the old line was taken for readiness");
    assert_eq!((ready.pid, ready.port("http")), (process.pid(), 4321));

    let quitter = harness::GuardedProcess::spawn("sh", &["-c".into(), "echo bye; exit 3".into()], &log, None);
    let err = quitter.try_wait_ready("fake", Duration::from_secs(10)).unwrap_err();
    assert!(err.contains("exited before it was ready") && err.contains("bye"), "{err}");
}

#[test]
fn a_listener_is_seen_owned_by_its_process_and_a_closed_port_refuses() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert!(harness::listens_on(std::process::id(), port));
    assert!(!harness::listens_on(1, port), "pid 1 does not own our listener");
    drop(listener);
    assert!(!harness::listens_on(std::process::id(), port));

    let closed = harness::closed_port();
    assert!(std::net::TcpStream::connect(("127.0.0.1", closed)).is_err());
    assert!(std::net::TcpListener::bind(("127.0.0.1", closed)).is_err(), "nobody else can take it");
}
