//! The store's database: created at start when the user may (as order-srv
//! and stock-srv create theirs), otherwise a start-up error naming the exact
//! statement an administrator has to run — on MariaDB and PostgreSQL.

use sqlx::Connection;

/// A name no other test uses (the servers are shared by a test binary).
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// `scheme://user:pw@host:port` of `server` (a URL without credentials).
fn as_user(server: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = server.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}:{password}@{host}")
}

/// The start-up error of a store that has no database and no right to
/// create one.
async fn open_error(url: &str) -> String {
    match coordinator::store::open(url, 2).await {
        Ok(_) => panic!("no database, no right to create it: an error"),
        Err(err) => err.to_string(),
    }
}

#[tokio::test]
async fn mysql_store_creates_its_database_or_names_the_sql_to_run() {
    let server = harness::mysql_database().await.server_url;
    let name = unique("dtm_created");
    coordinator::store::open(&format!("{server}/{name}"), 2).await.expect("the store creates its database");
    let mut conn = sqlx::MySqlConnection::connect(&format!("{server}/{name}")).await.expect("it exists");
    let tables: Vec<String> =
        sqlx::query_scalar("select table_name from information_schema.tables where table_schema = ?")
            .bind(&name)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert!(tables.iter().any(|t| t == "trans_global"), "{tables:?}");
    // Opening again (a restart, a second coordinator) is fine.
    coordinator::store::open(&format!("{server}/{name}"), 2).await.expect("a second open");

    // A user who may log in but not create databases.
    let user = unique("nocreate");
    sqlx::query(&format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'")).execute(&mut conn).await.unwrap();
    sqlx::query(&format!("CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'pw'"))
        .execute(&mut conn)
        .await
        .unwrap();
    let missing = unique("dtm_missing");
    let err = open_error(&format!("{}/{missing}", as_user(&server, &user, "pw"))).await;
    let sql = format!("CREATE DATABASE IF NOT EXISTS `{missing}` CHARACTER SET utf8mb4;");
    assert!(err.contains(&sql), "the error names {sql:?}: {err}");
    // Run by an administrator, that statement is what was missing.
    sqlx::query(sql.trim_end_matches(';')).execute(&mut conn).await.unwrap();
    sqlx::query(&format!("GRANT ALL ON `{missing}`.* TO '{user}'@'127.0.0.1'"))
        .execute(&mut conn)
        .await
        .unwrap();
    coordinator::store::open(&format!("{}/{missing}", as_user(&server, &user, "pw")), 2)
        .await
        .expect("after the administrator's statement");
}

#[tokio::test]
async fn postgres_store_creates_its_database_or_names_the_sql_to_run() {
    let server = harness::postgres_database().await.server_url;
    let name = unique("dtm_created");
    coordinator::store::open(&format!("{server}/{name}"), 2).await.expect("the store creates its database");
    coordinator::store::open(&format!("{server}/{name}"), 2).await.expect("a second open");

    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await.expect("admin");
    let user = unique("nocreate");
    sqlx::query(&format!("CREATE ROLE {user} LOGIN PASSWORD 'pw' NOCREATEDB"))
        .execute(&mut admin)
        .await
        .unwrap();
    let missing = unique("dtm_missing");
    let err = open_error(&format!("{}/{missing}", as_user(&server, &user, "pw"))).await;
    let sql = format!("CREATE DATABASE \"{missing}\";");
    assert!(err.contains(&sql), "the error names {sql:?}: {err}");
}
