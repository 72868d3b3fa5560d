//! A branch service binds its port only once its database is prepared.
//!
//! The kernel accepts connections on a bound listener before anything
//! serves them, so a service that bound first and created its tables second
//! let a TCP probe, a harness polling the port or a first request in while
//! the `stock` table did not exist yet ("Table … doesn't exist"). Here the
//! database is held locked so that preparing it blocks, and the process
//! must not listen on any port meanwhile.
//!
//! Alone in its test binary on purpose: it counts every listening socket of
//! this process, which parallel tests in the same binary would add to.

use std::path::Path;
use std::time::Duration;

use sqlx::Connection;

#[tokio::test(flavor = "multi_thread")]
async fn no_port_is_bound_before_the_tables_exist() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stock.db");
    let url = format!("sqlite://{}?mode=rwc", file.display());
    let me = std::process::id();
    assert_eq!(harness::listening_ports(me), Vec::<u16>::new(), "nothing listens before the test");

    // Another connection holds the database: creating tables must wait.
    let mut holder = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut holder).await.unwrap();

    let yaml = format!(
        "Name: stock.rpc\nListenOn: 127.0.0.1:0\nDB:\n  DataSource: \"sqlite://{}\"\n",
        file.display()
    );
    let config: stock_srv::Config =
        service_kit::config::parse_yaml(Path::new("test.yaml"), &yaml, |_| None).unwrap();
    let build = tokio::spawn(async move { stock_srv::build(&config).await });

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!build.is_finished(), "the build cannot have prepared a locked database");
    assert_eq!(harness::listening_ports(me), Vec::<u16>::new(), "a port was bound before the tables exist");

    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    let server = tokio::time::timeout(Duration::from_secs(30), build)
        .await
        .unwrap()
        .unwrap()
        .expect("stock-srv builds");
    assert_eq!(harness::listening_ports(me), vec![server.local_addr().port()]);
    let tables: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
        .fetch_all(&mut holder)
        .await
        .unwrap();
    assert!(tables.iter().any(|t| t == "stock"), "{tables:?}");
}
