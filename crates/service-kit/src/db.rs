//! Opening a branch service's business database, ready for the barrier.
//!
//! The demo's README leaves three manual steps to the reader: create the
//! business database, create the `dtm_barrier` database, create the barrier
//! table in it (dtm's SDK hard-codes `dtm_barrier.barrier`, on the *same*
//! server as the business data, because the barrier rows are written in the
//! business transaction). [`BusinessDb::connect`] does all three at start-up,
//! idempotently, as far as the database user is allowed to:
//!
//! | engine | business database | barrier table |
//! |---|---|---|
//! | MySQL / MariaDB | `CREATE DATABASE IF NOT EXISTS` when missing | `dtm_barrier.barrier` (creates the `dtm_barrier` database when allowed) |
//! | PostgreSQL | `CREATE DATABASE` when missing | `dtm_barrier.barrier` (creates the schema) |
//! | SQLite | the file is created | `barrier` in the same file (one file, no schemas) |
//!
//! A user without the right to create databases gets a warning, and start-up
//! then fails only if the object really is missing, with a message saying
//! what to create.

use std::str::FromStr;
use std::time::Duration;

use barrier::{BarrierDatabase, BarrierTable};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{ConnectOptions, Connection, MySqlPool, PgPool, SqlitePool};

use crate::config::DbConf;
use crate::datasource::{Backend, DataSource};

/// Why the business database could not be prepared. The data source is
/// always shown redacted.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The server could not be reached or refused the login.
    #[error("cannot connect to {source_name}: {cause}")]
    Connect {
        /// The data source, password redacted.
        source_name: String,
        /// The driver's error.
        cause: sqlx::Error,
    },
    /// A schema statement failed.
    #[error("cannot prepare {what} on {source_name}: {cause}")]
    Schema {
        /// What we were creating.
        what: String,
        /// The data source, password redacted.
        source_name: String,
        /// The driver's error.
        cause: sqlx::Error,
    },
    /// The data source is unusable as given.
    #[error("invalid DataSource {source_name}: {reason}")]
    Invalid {
        /// The data source, password redacted.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
}

/// A pool on the business database, one variant per engine.
///
/// The services are generic over the engine (`barrier::BarrierDatabase`);
/// this enum is where the configured URL picks the engine, once.
#[derive(Debug, Clone)]
pub enum BusinessDb {
    /// MySQL or MariaDB.
    MySql(MySqlPool),
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite.
    Sqlite(SqlitePool),
}

/// A snapshot of a pool ([`BusinessDb::pool_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open, in use or idle.
    pub open: u32,
    /// Connections open and idle.
    pub idle: u32,
    /// The pool's limit (`DB.MaxOpenConns`).
    pub max: u32,
}

impl PoolStats {
    /// Connections lent out right now.
    pub fn in_use(&self) -> u32 {
        self.open.saturating_sub(self.idle)
    }
}

/// The database name used for the barrier table on MySQL, and the schema
/// on PostgreSQL: dtm's fixed `dtm_barrier`.
pub const BARRIER_SCHEMA: &str = "dtm_barrier";

impl BusinessDb {
    /// Connects to `conf.data_source`, creating what is missing (see the
    /// module docs) and the barrier table. `acquire_timeout` bounds how long
    /// a request waits for a connection: keep it below the RPC deadline so a
    /// dead database gives a clean retryable error rather than a timeout.
    pub async fn connect(conf: &DbConf, acquire_timeout: Duration) -> Result<BusinessDb, DbError> {
        let ds = &conf.data_source;
        if !ds.ignored_params().is_empty() {
            tracing::info!(params = ?ds.ignored_params(), "DataSource parameters without a sqlx meaning are ignored");
        }
        let db = match ds.backend() {
            Backend::MySql => BusinessDb::MySql(connect_mysql(conf, acquire_timeout).await?),
            Backend::Postgres => BusinessDb::Postgres(connect_postgres(conf, acquire_timeout).await?),
            Backend::Sqlite => BusinessDb::Sqlite(connect_sqlite(conf, acquire_timeout).await?),
        };
        db.ensure_barrier_table(ds).await?;
        tracing::info!(data_source = %ds, "business database ready");
        Ok(db)
    }

    /// The pool's connections now: what the metrics' `sql_client_*`
    /// gauges report at each scrape.
    pub fn pool_stats(&self) -> PoolStats {
        let (open, idle, max) = match self {
            BusinessDb::MySql(pool) => (pool.size(), pool.num_idle(), pool.options().get_max_connections()),
            BusinessDb::Postgres(pool) => {
                (pool.size(), pool.num_idle(), pool.options().get_max_connections())
            }
            BusinessDb::Sqlite(pool) => (pool.size(), pool.num_idle(), pool.options().get_max_connections()),
        };
        PoolStats { open, idle: u32::try_from(idle).unwrap_or(u32::MAX), max }
    }

    /// The barrier table every branch of this database writes to.
    pub fn barrier_table(&self) -> BarrierTable {
        let name = match self {
            BusinessDb::MySql(_) => <sqlx::MySql as BarrierDatabase>::DEFAULT_TABLE,
            BusinessDb::Postgres(_) => <sqlx::Postgres as BarrierDatabase>::DEFAULT_TABLE,
            BusinessDb::Sqlite(_) => <sqlx::Sqlite as BarrierDatabase>::DEFAULT_TABLE,
        };
        BarrierTable::new(name).unwrap_or_else(|_| unreachable!("barrier's default table names are valid"))
    }

    async fn ensure_barrier_table(&self, ds: &DataSource) -> Result<(), DbError> {
        let table = self.barrier_table();
        let schema_error =
            |what: &str, cause| DbError::Schema { what: what.to_string(), source_name: ds.redacted(), cause };
        match self {
            BusinessDb::MySql(pool) => {
                let create = format!("CREATE DATABASE IF NOT EXISTS {BARRIER_SCHEMA}");
                if let Err(err) = sqlx::query(&create).execute(pool).await {
                    tracing::warn!(%err, "cannot create database {BARRIER_SCHEMA}; assuming an administrator did");
                }
                barrier::schema::ensure_barrier_table(pool, &table).await.map_err(|cause| {
                    schema_error(
                        &format!("{table} (create database {BARRIER_SCHEMA} and grant access to it)"),
                        cause,
                    )
                })
            }
            BusinessDb::Postgres(pool) => {
                let create = format!("CREATE SCHEMA IF NOT EXISTS {BARRIER_SCHEMA}");
                if let Err(err) = sqlx::query(&create).execute(pool).await {
                    tracing::warn!(%err, "cannot create schema {BARRIER_SCHEMA}; assuming an administrator did");
                }
                barrier::schema::ensure_barrier_table(pool, &table).await.map_err(|cause| {
                    schema_error(
                        &format!("{table} (create schema {BARRIER_SCHEMA} and grant access to it)"),
                        cause,
                    )
                })
            }
            BusinessDb::Sqlite(pool) => barrier::schema::ensure_barrier_table(pool, &table)
                .await
                .map_err(|cause| schema_error(table.as_str(), cause)),
        }
    }
}

/// A database name we are willing to splice into `CREATE DATABASE`.
fn checked_database_name(ds: &DataSource) -> Result<String, DbError> {
    let name = ds
        .database()
        .ok_or_else(|| DbError::Invalid { source_name: ds.redacted(), reason: "no database name".into() })?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$')
    {
        return Err(DbError::Invalid {
            source_name: ds.redacted(),
            reason: format!("database name {name:?} must be [A-Za-z0-9_-$]+"),
        });
    }
    Ok(name)
}

fn connect_error(ds: &DataSource) -> impl Fn(sqlx::Error) -> DbError + '_ {
    move |cause| DbError::Connect { source_name: ds.redacted(), cause }
}

async fn connect_mysql(conf: &DbConf, acquire_timeout: Duration) -> Result<MySqlPool, DbError> {
    let ds = &conf.data_source;
    let options = MySqlConnectOptions::from_str(ds.expose_url()).map_err(connect_error(ds))?;
    // One direct connection first: a pool would report any failure as "pool
    // timed out", where this reports "connection refused", "access denied"…
    match options.connect().await {
        Ok(conn) => {
            let _ = conn.close().await;
        }
        // ER_BAD_DB_ERROR: the database does not exist yet. Create it.
        Err(err) if mysql_error_number(&err) == Some(1049) => {
            let name = checked_database_name(ds)?;
            let server = ds.server_url().unwrap_or_default();
            let mut conn = MySqlConnectOptions::from_str(&server)
                .map_err(connect_error(ds))?
                .connect()
                .await
                .map_err(connect_error(ds))?;
            sqlx::query(&format!("CREATE DATABASE IF NOT EXISTS `{name}`"))
                .execute(&mut conn)
                .await
                .map_err(|cause| DbError::Schema {
                    what: format!("database {name}"),
                    source_name: ds.redacted(),
                    cause,
                })?;
            let _ = conn.close().await;
            tracing::info!(database = %name, "created the business database");
        }
        Err(err) => return Err(connect_error(ds)(err)),
    }
    MySqlPoolOptions::new()
        .max_connections(conf.max_open_conns)
        .acquire_timeout(acquire_timeout)
        .connect_with(options)
        .await
        .map_err(connect_error(ds))
}

fn mysql_error_number(err: &sqlx::Error) -> Option<u16> {
    err.as_database_error()
        .and_then(|db| db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .map(|db| db.number())
}

async fn connect_postgres(conf: &DbConf, acquire_timeout: Duration) -> Result<PgPool, DbError> {
    let ds = &conf.data_source;
    let options = PgConnectOptions::from_str(ds.expose_url()).map_err(connect_error(ds))?;
    // One direct connection first, for a precise error (see connect_mysql).
    match options.connect().await {
        Ok(conn) => {
            let _ = conn.close().await;
        }
        // invalid_catalog_name: the database does not exist yet. Create it.
        Err(err) if err.as_database_error().and_then(|db| db.code()).as_deref() == Some("3D000") => {
            let name = checked_database_name(ds)?;
            let server = ds.server_url().unwrap_or_default();
            let mut conn = PgConnectOptions::from_str(&server)
                .map_err(connect_error(ds))?
                .connect()
                .await
                .map_err(connect_error(ds))?;
            let created = sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut conn).await;
            let _ = conn.close().await;
            match created {
                Ok(_) => tracing::info!(database = %name, "created the business database"),
                // duplicate_database: another instance created it meanwhile.
                Err(err) if err.as_database_error().and_then(|db| db.code()).as_deref() == Some("42P04") => {}
                Err(cause) => {
                    return Err(DbError::Schema {
                        what: format!("database {name}"),
                        source_name: ds.redacted(),
                        cause,
                    });
                }
            }
        }
        Err(err) => return Err(connect_error(ds)(err)),
    }
    PgPoolOptions::new()
        .max_connections(conf.max_open_conns)
        .acquire_timeout(acquire_timeout)
        .connect_with(options)
        .await
        .map_err(connect_error(ds))
}

async fn connect_sqlite(conf: &DbConf, acquire_timeout: Duration) -> Result<SqlitePool, DbError> {
    let ds = &conf.data_source;
    let options = SqliteConnectOptions::from_str(ds.expose_url())
        .map_err(connect_error(ds))?
        .create_if_missing(true)
        // Writers wait for each other instead of failing with SQLITE_BUSY.
        .busy_timeout(Duration::from_secs(5));
    // Every connection to `sqlite::memory:` opens its own empty database:
    // one connection, or the tables created at start vanish for the others.
    let url = ds.expose_url();
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let max_connections = if in_memory { 1 } else { conf.max_open_conns };
    SqlitePoolOptions::new()
        .max_connections(max_connections)
        // An idle in-memory connection must never be closed: it *is* the database.
        .idle_timeout(if in_memory { None } else { Some(Duration::from_secs(600)) })
        .max_lifetime(if in_memory { None } else { Some(Duration::from_secs(1800)) })
        .acquire_timeout(acquire_timeout)
        .connect_with(options)
        .await
        .map_err(connect_error(ds))
}
