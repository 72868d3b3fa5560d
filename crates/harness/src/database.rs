//! A fresh database per test.

use std::sync::OnceLock;

use sqlx::Connection;

use crate::{MariaDb, Postgres};

/// Which SQL engine a [`TestDatabase`] lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// MariaDB or MySQL.
    MySql,
    /// PostgreSQL.
    Postgres,
    /// SQLite (a file).
    Sqlite,
}

/// An empty database that belongs to one test.
pub struct TestDatabase {
    /// Engine.
    pub backend: Backend,
    /// sqlx URL of the database itself.
    pub url: String,
    /// Database name (the file path for SQLite).
    pub name: String,
    /// Server URL without a database (empty for SQLite).
    pub server_url: String,
    /// Keeps a SQLite file's directory alive.
    _dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase").field("backend", &self.backend).field("url", &self.url).finish()
    }
}

fn unique_name() -> String {
    format!("t_{}", uuid::Uuid::new_v4().simple())
}

/// The MariaDB server shared by the tests of this process, started on first use.
fn shared_mariadb_url() -> String {
    if let Ok(url) = std::env::var("TEST_MYSQL_URL") {
        return url.trim_end_matches('/').to_string();
    }
    static SERVER: OnceLock<MariaDb> = OnceLock::new();
    SERVER.get_or_init(MariaDb::start).url()
}

fn shared_postgres_url() -> String {
    if let Ok(url) = std::env::var("TEST_PG_URL") {
        return url.trim_end_matches('/').to_string();
    }
    static SERVER: OnceLock<Postgres> = OnceLock::new();
    SERVER.get_or_init(Postgres::start).url()
}

/// A new empty database on the test MariaDB/MySQL server.
pub async fn mysql_database() -> TestDatabase {
    let server_url = tokio::task::spawn_blocking(shared_mariadb_url).await.expect("start mariadb");
    mysql_database_on(&server_url).await
}

/// A new empty database on a given MariaDB/MySQL server (e.g. a [`MariaDb`] a test owns).
pub async fn mysql_database_on(server_url: &str) -> TestDatabase {
    let name = unique_name();
    let mut conn = sqlx::MySqlConnection::connect(server_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to MariaDB at {server_url}: {e}"));
    sqlx::query(&format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    TestDatabase {
        backend: crate::Backend::MySql,
        url: format!("{server_url}/{name}"),
        name,
        server_url: server_url.to_string(),
        _dir: None,
    }
}

/// A new empty database on the test PostgreSQL server.
pub async fn postgres_database() -> TestDatabase {
    let server_url = tokio::task::spawn_blocking(shared_postgres_url).await.expect("start postgres");
    let name = unique_name();
    let admin = format!("{server_url}/postgres");
    // Retried: a server that has just started may still refuse sessions, and
    // CREATE DATABASE can fail while another one copies template1.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let created = async {
            let mut conn = sqlx::PgConnection::connect(&admin).await?;
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        match created {
            Ok(()) => break,
            Err(e) if attempt < 20 => {
                tracing::debug!("create database {name} on {admin} (attempt {attempt}): {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot create a database on PostgreSQL at {admin}: {e}"),
        }
    }
    TestDatabase {
        backend: Backend::Postgres,
        url: format!("{server_url}/{name}"),
        name,
        server_url,
        _dir: None,
    }
}

/// A new SQLite database file in a temp directory.
pub fn sqlite_database() -> TestDatabase {
    let dir = tempfile::Builder::new().prefix("test-sqlite-").tempdir().expect("temp dir");
    let path = dir.path().join("test.db");
    TestDatabase {
        backend: Backend::Sqlite,
        url: format!("sqlite://{}?mode=rwc", path.display()),
        name: path.display().to_string(),
        server_url: String::new(),
        _dir: Some(dir),
    }
}
