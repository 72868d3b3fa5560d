//! What differs between the three SQL engines of the store.
//!
//! [`SqlStore`](super::sql::SqlStore) is written once, generically over a
//! [`Dialect`]; every place where MySQL/MariaDB, PostgreSQL and SQLite
//! disagree is one item of that trait, implemented here for `sqlx::MySql`,
//! `sqlx::Postgres` and `sqlx::Sqlite`: the schema script, how to connect,
//! the database's clock, insert-if-absent, the shape of a limited `UPDATE`,
//! placeholders (`?` or `$n`), and reading a statement's affected rows.

use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlQueryResult};
use sqlx::postgres::{PgConnectOptions, PgQueryResult};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteQueryResult, SqliteSynchronous};
use sqlx::{Connection, MySql, Postgres, Sqlite};

/// How an engine updates at most `n` rows, oldest `next_cron_time` first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitedUpdate {
    /// `UPDATE … WHERE … ORDER BY next_cron_time LIMIT n` (MySQL).
    OrderByLimit,
    /// `UPDATE … WHERE id IN (SELECT id … ORDER BY next_cron_time LIMIT n)`,
    /// with `FOR UPDATE SKIP LOCKED` in the sub-select if `skip_locked`
    /// (PostgreSQL: rows another instance is leasing right now are passed over).
    InSubSelect {
        /// Append `FOR UPDATE SKIP LOCKED` to the sub-select.
        skip_locked: bool,
    },
}

/// An SQL engine the store runs on: `sqlx::MySql` (MySQL and MariaDB),
/// `sqlx::Postgres` or `sqlx::Sqlite`. Builds on [`barrier::BarrierDatabase`]
/// for the migration of the exact gid columns, which the barrier tables
/// share.
pub trait Dialect: barrier::BarrierDatabase {
    /// The schema script (`sql/<engine>/coordinator.sql`).
    const DDL: &'static str;

    /// Insert-if-absent of global rows: the statement's head, up to the
    /// table name, and its tail after the `VALUES` list. `rows_affected`
    /// then counts the rows that were new.
    const INSERT_IF_ABSENT: (&'static str, &'static str);

    /// How to update at most `n` rows (leasing, `resetCronTime`).
    const LIMITED_UPDATE: LimitedUpdate;

    /// Insert-if-absent into any table with a unique key: the statement's
    /// head (`INSERT … INTO`) and its tail after the `VALUES` list. Like
    /// [`Dialect::INSERT_IF_ABSENT`], `rows_affected` counts the new rows.
    const INSERT_IGNORE: (&'static str, &'static str);

    /// An index beside dtm's DDL that the DDL script cannot add idempotently
    /// (MySQL has no `CREATE INDEX IF NOT EXISTS`): `(status, id)` on
    /// `trans_global`, for the console's pages of one status. Applied at
    /// start; "duplicate key name" means it exists. The other engines create
    /// it in their script.
    const EXTRA_INDEX: Option<&'static str> = None;

    /// The gid column compared in byte order, for a prefix as a range
    /// (`crate::store::prefix_range`). MySQL's gid columns are
    /// `utf8mb4_bin` and SQLite compares bytes; a PostgreSQL database's
    /// default collation (`en_US.UTF-8`, …) orders `stuck-order-1` after
    /// `stuck.`, which would lose rows, so it compares in collation "C"
    /// there (the `gid` index then only serves a "C" database; LIKE keeps
    /// the answer exact either way).
    const BYTE_ORDER_GID: &'static str = "gid";

    /// An index hint for the ids of a list page (`SELECT id FROM
    /// trans_global<hint> WHERE …`), given whether it filters by status and
    /// by gid. MySQL/MariaDB, given a status filter, take dtm's
    /// `status_next_cron_time` (it matches the status as well as
    /// `status_id`) and then sort every id of that status; pointed at
    /// `status_id` they walk it in id order and stop after one page.
    fn list_index_hint(status: bool, gid: bool) -> &'static str {
        let _ = (status, gid);
        ""
    }

    /// Parses a store URL into connect options, with the session settings
    /// the store relies on.
    fn connect_options(url: &str) -> Result<<Self::Connection as Connection>::Options, sqlx::Error>;

    /// The database's current time, as stored in `next_cron_time` (UTC,
    /// whole seconds): every lease is judged on this one clock.
    fn db_now() -> &'static str;

    /// The database's current time plus `secs` (> 0) whole seconds. The
    /// number is ours, formatted into the SQL: no injection is possible.
    fn db_now_plus(secs: i64) -> String;

    /// Rows changed by a statement (sqlx has no trait method for it).
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// Appends the placeholder of the `n`th bound value (from 1): `?` on
    /// MySQL and SQLite, `$n` on PostgreSQL.
    fn push_placeholder(sql: &mut String, n: usize) {
        let _ = n;
        sql.push('?');
    }
}

/// The database's current time plus `d` (whole seconds, rounded up, capped
/// by [`super::schedule_secs`]).
pub fn db_later<D: Dialect>(d: Duration) -> String {
    match super::schedule_secs(d) {
        0 => D::db_now().to_string(),
        secs => D::db_now_plus(secs),
    }
}

/// The statements of a schema script, comments removed.
pub fn ddl_statements(ddl: &str) -> Vec<String> {
    let without_comments: String =
        ddl.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
    without_comments.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// MySQL / MariaDB: dtm's production setup.
impl Dialect for MySql {
    const DDL: &'static str = include_str!("../../../../sql/mysql/coordinator.sql");
    const INSERT_IF_ABSENT: (&'static str, &'static str) = ("INSERT IGNORE INTO trans_global", "");
    const LIMITED_UPDATE: LimitedUpdate = LimitedUpdate::OrderByLimit;
    const INSERT_IGNORE: (&'static str, &'static str) = ("INSERT IGNORE INTO", "");
    const EXTRA_INDEX: Option<&'static str> =
        Some("ALTER TABLE trans_global ADD INDEX status_id (status, id)");

    fn list_index_hint(status: bool, gid: bool) -> &'static str {
        match (status, gid) {
            // A gid or prefix is narrower than any status: the gid index.
            (true, false) => " FORCE INDEX (status_id)",
            _ => " IGNORE INDEX (status_next_cron_time)",
        }
    }

    fn connect_options(url: &str) -> Result<MySqlConnectOptions, sqlx::Error> {
        // Times are bound as UTC values; make the session agree so NOW()-based
        // tooling and TIMESTAMP conversions see the same clock.
        Ok(url.parse::<MySqlConnectOptions>()?.timezone(Some(String::from("+00:00"))))
    }

    fn db_now() -> &'static str {
        "UTC_TIMESTAMP()"
    }

    fn db_now_plus(secs: i64) -> String {
        format!("(UTC_TIMESTAMP() + INTERVAL {secs} SECOND)")
    }

    fn rows_affected(result: &MySqlQueryResult) -> u64 {
        result.rows_affected()
    }
}

/// PostgreSQL.
impl Dialect for Postgres {
    const DDL: &'static str = include_str!("../../../../sql/postgres/coordinator.sql");
    const INSERT_IF_ABSENT: (&'static str, &'static str) =
        ("INSERT INTO trans_global", " ON CONFLICT (gid) DO NOTHING");
    const LIMITED_UPDATE: LimitedUpdate = LimitedUpdate::InSubSelect { skip_locked: true };
    const INSERT_IGNORE: (&'static str, &'static str) = ("INSERT INTO", " ON CONFLICT DO NOTHING");
    const BYTE_ORDER_GID: &'static str = "gid COLLATE \"C\"";

    fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
        Ok(url.parse::<PgConnectOptions>()?.options([("timezone", "UTC")]))
    }

    fn db_now() -> &'static str {
        "date_trunc('second', statement_timestamp())"
    }

    fn db_now_plus(secs: i64) -> String {
        format!("(date_trunc('second', statement_timestamp()) + INTERVAL '{secs} seconds')")
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }

    fn push_placeholder(sql: &mut String, n: usize) {
        sql.push('$');
        sql.push_str(&n.to_string());
    }
}

/// SQLite: the embedded default for a single coordinator.
impl Dialect for Sqlite {
    const DDL: &'static str = include_str!("../../../../sql/sqlite/coordinator.sql");
    const INSERT_IF_ABSENT: (&'static str, &'static str) =
        ("INSERT INTO trans_global", " ON CONFLICT (gid) DO NOTHING");
    // SQLite has no FOR UPDATE: its one writer holds the whole database.
    const LIMITED_UPDATE: LimitedUpdate = LimitedUpdate::InSubSelect { skip_locked: false };
    const INSERT_IGNORE: (&'static str, &'static str) = ("INSERT INTO", " ON CONFLICT DO NOTHING");

    /// WAL mode lets readers run beside the one writer; `busy_timeout` makes
    /// writers queue instead of failing.
    fn connect_options(url: &str) -> Result<SqliteConnectOptions, sqlx::Error> {
        Ok(url
            .parse::<SqliteConnectOptions>()?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10)))
    }

    // sqlx writes chrono times to SQLite as RFC 3339 text; compare like with like.
    fn db_now() -> &'static str {
        "strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now')"
    }

    fn db_now_plus(secs: i64) -> String {
        format!("strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now', '+{secs} seconds')")
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}
