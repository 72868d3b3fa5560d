//! Building statements and running them on any engine, with sqlx.
//!
//! The store's code (`sql.rs`) is generic over the engine `D`. Two things
//! keep sqlx's own generic API from serving it directly, and this module is
//! the answer to both:
//!
//! * sqlx's `QueryBuilder<'args, D>` keeps its SQL text and its arguments
//!   together, and running it borrows the builder for the arguments'
//!   lifetime `'args`. For a concrete engine the compiler shortens that
//!   lifetime (SQLite's arguments are covariant in it); for a generic `D` it
//!   cannot (`D::Arguments<'args>` is invariant), so generic code cannot run a
//!   `QueryBuilder` it built. A [`Statement`] instead holds its values owned
//!   ([`Value`]) and binds them only when it runs, where every lifetime is local.
//! * sqlx needs a dozen trait bounds to run a statement and decode a row
//!   generically (executors for the pool and a connection, `Encode` /
//!   `Decode` for each column type), and Rust does not carry such bounds
//!   from a trait to its users. [`Driver`] states them once, on its blanket
//!   implementation for every [`Dialect`]; code generic over `D: Driver`
//!   needs none of its own.

use std::fmt::Write as _;
use std::future::Future;
use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use dtm_protocol::Gid;
use sqlx::query::Query;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use super::alerts::{AlertKey, AlertRow};
use super::dialect::Dialect;
use super::kv::KvRow;
use super::{BranchRow, GlobalRow, StoreError};

/// A value bound to a placeholder: one of the column types of dtm's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `varchar` / `text`.
    Text(String),
    /// `bigint`.
    Int(i64),
    /// `int` (`next_cron_interval`).
    Int32(i32),
    /// `blob` / `bytea` (`bin_data`).
    Bytes(Vec<u8>),
    /// `datetime` / `timestamp`, UTC.
    Time(DateTime<Utc>),
    /// A nullable `datetime` (`finish_time`).
    MaybeTime(Option<DateTime<Utc>>),
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_string())
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Value {
        Value::Int32(v)
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Value {
        Value::Bytes(v)
    }
}

impl From<DateTime<Utc>> for Value {
    fn from(v: DateTime<Utc>) -> Value {
        Value::Time(v)
    }
}

impl From<Option<DateTime<Utc>>> for Value {
    fn from(v: Option<DateTime<Utc>>) -> Value {
        Value::MaybeTime(v)
    }
}

/// A statement being written: SQL text with the engine's placeholders, and
/// the values bound to them, in order. The same calls as sqlx's
/// `QueryBuilder` (`push`, `push_bind`, `separated`, `push_values`).
pub struct Statement<D> {
    sql: String,
    values: Vec<Value>,
    engine: PhantomData<fn() -> D>,
}

impl<D: Dialect> Statement<D> {
    /// A statement starting with `sql`.
    pub fn new(sql: impl Into<String>) -> Statement<D> {
        Statement { sql: sql.into(), values: Vec::new(), engine: PhantomData }
    }

    /// Appends SQL text.
    pub fn push(&mut self, sql: impl std::fmt::Display) -> &mut Self {
        // Writing into a String cannot fail.
        let _ = write!(self.sql, "{sql}");
        self
    }

    /// Appends a placeholder and binds `value` to it.
    pub fn push_bind(&mut self, value: impl Into<Value>) -> &mut Self {
        self.values.push(value.into());
        D::push_placeholder(&mut self.sql, self.values.len());
        self
    }

    /// Starts a list whose items are separated by `separator`.
    pub fn separated(&mut self, separator: &'static str) -> Separated<'_, D> {
        Separated { statement: self, separator, empty: true }
    }

    /// Appends `VALUES (…), (…)`: one tuple per item of `rows`, written by
    /// `tuple` into a comma-separated list.
    pub fn push_values<I>(
        &mut self,
        rows: impl IntoIterator<Item = I>,
        mut tuple: impl FnMut(Separated<'_, D>, I),
    ) {
        self.push("VALUES ");
        for (i, row) in rows.into_iter().enumerate() {
            self.push(if i == 0 { "(" } else { ", (" });
            tuple(self.separated(", "), row);
            self.push(")");
        }
    }

    /// The SQL text written so far.
    pub fn sql(&self) -> &str {
        &self.sql
    }
}

/// A list being written into a [`Statement`]: every item after the first
/// is preceded by the separator.
pub struct Separated<'s, D> {
    statement: &'s mut Statement<D>,
    separator: &'static str,
    empty: bool,
}

impl<D: Dialect> Separated<'_, D> {
    fn separate(&mut self) {
        if !std::mem::replace(&mut self.empty, false) {
            self.statement.push(self.separator);
        }
    }

    /// Appends an item of SQL text.
    pub fn push(&mut self, sql: impl std::fmt::Display) -> &mut Self {
        self.separate();
        self.statement.push(sql);
        self
    }

    /// Appends an item that is a bound value.
    pub fn push_bind(&mut self, value: impl Into<Value>) -> &mut Self {
        self.separate();
        self.statement.push_bind(value);
        self
    }
}

/// Where a statement runs: on the pool (a connection of its own,
/// autocommit) or on a connection, e.g. a transaction's (`&mut *tx`).
pub enum On<'a, D: Database> {
    /// Any connection of the pool.
    Pool(&'a Pool<D>),
    /// This connection.
    Conn(&'a mut D::Connection),
}

impl<'a, D: Database> From<&'a Pool<D>> for On<'a, D> {
    fn from(pool: &'a Pool<D>) -> On<'a, D> {
        On::Pool(pool)
    }
}

impl<'a, D: Database> From<&'a mut D::Connection> for On<'a, D> {
    fn from(conn: &'a mut D::Connection) -> On<'a, D> {
        On::Conn(conn)
    }
}

/// Running [`Statement`]s and reading rows on an engine: everything of the
/// store that needs sqlx's generic bounds. Implemented once, below, for
/// every [`Dialect`] whose sqlx driver handles the store's column types.
pub trait Driver: Dialect {
    /// Runs a statement; the number of rows it changed.
    fn run<'a>(
        statement: Statement<Self>,
        on: impl Into<On<'a, Self>>,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// Runs a query; all its rows.
    fn fetch_all<'a>(
        statement: Statement<Self>,
        on: impl Into<On<'a, Self>>,
    ) -> impl Future<Output = Result<Vec<Self::Row>, sqlx::Error>> + Send;

    /// Runs a query; its first row, if any.
    fn fetch_optional<'a>(
        statement: Statement<Self>,
        on: impl Into<On<'a, Self>>,
    ) -> impl Future<Output = Result<Option<Self::Row>, sqlx::Error>> + Send;

    /// Reads a `trans_global` row (all of `GLOBAL_COLUMNS`).
    fn global_row(row: &Self::Row) -> Result<GlobalRow, StoreError>;

    /// Reads a `trans_branch_op` row (all of `BRANCH_COLUMNS`).
    fn branch_row(row: &Self::Row) -> Result<BranchRow, StoreError>;

    /// Reads a `trans_alert` row (all of `ALERT_COLUMNS`, `alerts.rs`).
    fn alert_row(row: &Self::Row) -> Result<AlertRow, StoreError>;

    /// Reads a `kv` row (all of `KV_COLUMNS`, `kv.rs`).
    fn kv_row(row: &Self::Row) -> Result<KvRow, StoreError>;

    /// Reads `(status, n, oldest)` of the unfinished-transactions summary.
    fn status_count(row: &Self::Row) -> Result<(String, i64, Option<DateTime<Utc>>), StoreError>;

    /// Reads one text column (`NULL` reads as empty).
    fn text_column(row: &Self::Row, column: &'static str) -> Result<String, StoreError>;

    /// Reads one `bigint` column (`COUNT(*)`, ids, milliseconds).
    fn int_column(row: &Self::Row, column: &'static str) -> Result<i64, StoreError>;
}

/// Binds `values` to the placeholders of `sql`, in order.
fn query<D>(sql: &str, values: Vec<Value>) -> Query<'_, D, D::Arguments<'_>>
where
    D: Database,
    for<'q> String: Encode<'q, D> + Type<D>,
    for<'q> Vec<u8>: Encode<'q, D> + Type<D>,
    for<'q> i32: Encode<'q, D> + Type<D>,
    for<'q> i64: Encode<'q, D> + Type<D>,
    for<'q> DateTime<Utc>: Encode<'q, D> + Type<D>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, D> + Type<D>,
{
    values.into_iter().fold(sqlx::query(sql), |query, value| match value {
        Value::Text(v) => query.bind(v),
        Value::Int(v) => query.bind(v),
        Value::Int32(v) => query.bind(v),
        Value::Bytes(v) => query.bind(v),
        Value::Time(v) => query.bind(v),
        Value::MaybeTime(v) => query.bind(v),
    })
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

impl<D> Driver for D
where
    D: Dialect,
    // Executors: the pool, and a (transaction's) connection.
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    for<'q> D::Arguments<'q>: IntoArguments<'q, D>,
    // The column types bound and read.
    for<'q> String: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> Vec<u8>: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> i32: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> i64: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> DateTime<Utc>: Encode<'q, D> + Decode<'q, D> + Type<D>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, D> + Type<D>,
    &'static str: ColumnIndex<D::Row>,
{
    fn run<'a>(
        statement: Statement<D>,
        on: impl Into<On<'a, D>>,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send {
        let on = on.into();
        async move {
            let Statement { sql, values, .. } = statement;
            let done = match on {
                On::Pool(pool) => query(&sql, values).execute(pool).await?,
                On::Conn(conn) => query(&sql, values).execute(conn).await?,
            };
            Ok(D::rows_affected(&done))
        }
    }

    fn fetch_all<'a>(
        statement: Statement<D>,
        on: impl Into<On<'a, D>>,
    ) -> impl Future<Output = Result<Vec<D::Row>, sqlx::Error>> + Send {
        let on = on.into();
        async move {
            let Statement { sql, values, .. } = statement;
            match on {
                On::Pool(pool) => query(&sql, values).fetch_all(pool).await,
                On::Conn(conn) => query(&sql, values).fetch_all(conn).await,
            }
        }
    }

    fn fetch_optional<'a>(
        statement: Statement<D>,
        on: impl Into<On<'a, D>>,
    ) -> impl Future<Output = Result<Option<D::Row>, sqlx::Error>> + Send {
        let on = on.into();
        async move {
            let Statement { sql, values, .. } = statement;
            match on {
                On::Pool(pool) => query(&sql, values).fetch_optional(pool).await,
                On::Conn(conn) => query(&sql, values).fetch_optional(conn).await,
            }
        }
    }

    fn global_row(row: &D::Row) -> Result<GlobalRow, StoreError> {
        let text = |col: &'static str| -> Result<String, StoreError> {
            Ok(row.try_get::<Option<String>, _>(col)?.unwrap_or_default())
        };
        Ok(GlobalRow {
            id: row.try_get("id")?,
            gid: gid_of::<D>(row)?,
            trans_type: text("trans_type")?.parse().map_err(|e| corrupt("trans_type", e))?,
            status: text("status")?.parse().map_err(|e| corrupt("status", e))?,
            query_prepared: text("query_prepared")?,
            protocol: crate::model::Protocol::parse_or_default(&text("protocol")?)
                .map_err(|e| corrupt("protocol", e))?,
            create_time: row.try_get("create_time")?,
            update_time: row.try_get("update_time")?,
            finish_time: row.try_get("finish_time")?,
            rollback_time: row.try_get("rollback_time")?,
            options: text("options")?,
            custom_data: text("custom_data")?,
            next_cron_interval: i64::from(row.try_get::<Option<i32>, _>("next_cron_interval")?.unwrap_or(0)),
            next_cron_time: row.try_get("next_cron_time")?,
            owner: text("owner")?,
            ext_data: text("ext_data")?,
            result: text("result")?,
            rollback_reason: text("rollback_reason")?,
        })
    }

    fn branch_row(row: &D::Row) -> Result<BranchRow, StoreError> {
        let text = |col: &'static str| -> Result<String, StoreError> {
            Ok(row.try_get::<Option<String>, _>(col)?.unwrap_or_default())
        };
        Ok(BranchRow {
            id: row.try_get("id")?,
            gid: gid_of::<D>(row)?,
            url: text("url")?,
            bin_data: row.try_get::<Option<Vec<u8>>, _>("bin_data")?.unwrap_or_default(),
            branch_id: dtm_protocol::BranchId::new(text("branch_id")?)
                .map_err(|e| corrupt("branch_id", e))?,
            op: text("op")?.parse().map_err(|e| corrupt("op", e))?,
            status: text("status")?.parse().map_err(|e| corrupt("branch status", e))?,
            finish_time: row.try_get("finish_time")?,
            rollback_time: row.try_get("rollback_time")?,
            create_time: row.try_get("create_time")?,
            update_time: row.try_get("update_time")?,
        })
    }

    fn alert_row(row: &D::Row) -> Result<AlertRow, StoreError> {
        let text = |col: &'static str| D::text_column(row, col);
        let key = AlertKey {
            gid: gid_of::<D>(row)?,
            branch_id: dtm_protocol::BranchId::new(text("branch_id")?)
                .map_err(|e| corrupt("branch_id", e))?,
            op: text("op")?.parse().map_err(|e| corrupt("op", e))?,
        };
        super::alerts::alert_row(
            key,
            [text("trans_status")?, text("error")?, text("status")?, text("owner")?, text("last_error")?],
            row.try_get("retry_count")?,
            row.try_get("attempts")?,
            row.try_get("next_attempt_time")?,
        )
    }

    fn kv_row(row: &D::Row) -> Result<KvRow, StoreError> {
        Ok(KvRow {
            id: row.try_get("id")?,
            create_time: row.try_get("create_time")?,
            update_time: row.try_get("update_time")?,
            cat: D::text_column(row, "cat")?,
            k: exact_text::<D>(row, "k")?,
            v: D::text_column(row, "v")?,
            version: row.try_get::<Option<i64>, _>("version")?.unwrap_or(1),
        })
    }

    fn status_count(row: &D::Row) -> Result<(String, i64, Option<DateTime<Utc>>), StoreError> {
        Ok((D::text_column(row, "status")?, row.try_get("n")?, row.try_get("oldest")?))
    }

    fn text_column(row: &D::Row, column: &'static str) -> Result<String, StoreError> {
        Ok(row.try_get::<Option<String>, _>(column)?.unwrap_or_default())
    }

    fn int_column(row: &D::Row, column: &'static str) -> Result<i64, StoreError> {
        Ok(row.try_get::<i64, _>(column)?)
    }
}

/// The `gid` column. On MySQL it has a binary collation (exact gids), which
/// sqlx reports as `VARBINARY` and refuses to decode as a `String`: read the
/// bytes then. Checked with [`Gid::from_storage`]: a row accepted before
/// gids had to be visible ASCII stays readable (one unreadable row would
/// fail every lease of a batch holding it).
fn gid_of<D>(row: &D::Row) -> Result<Gid, StoreError>
where
    D: Database,
    for<'r> String: Decode<'r, D> + Type<D>,
    for<'r> Vec<u8>: Decode<'r, D> + Type<D>,
    &'static str: ColumnIndex<D::Row>,
{
    Gid::from_storage(exact_text::<D>(row, "gid")?).map_err(|e| corrupt("gid", e))
}

/// A text column that has a binary collation on MySQL (the gids, `kv.k`),
/// which sqlx reports as `VARBINARY`: read as text, or else as UTF-8 bytes.
fn exact_text<D>(row: &D::Row, column: &'static str) -> Result<String, StoreError>
where
    D: Database,
    for<'r> String: Decode<'r, D> + Type<D>,
    for<'r> Vec<u8>: Decode<'r, D> + Type<D>,
    &'static str: ColumnIndex<D::Row>,
{
    match row.try_get::<String, _>(column) {
        Ok(text) => Ok(text),
        Err(sqlx::Error::ColumnDecode { .. }) => {
            String::from_utf8(row.try_get::<Vec<u8>, _>(column)?).map_err(|e| corrupt(column, e))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert<D: Dialect>() -> Statement<D> {
        let mut q = Statement::<D>::new("INSERT INTO t (a, b) ");
        q.push_values([("x", 1_i64), ("y", 2)], |mut row, (a, b)| {
            row.push_bind(a).push("NOW()").push_bind(b);
        });
        q.push(" WHERE c IN (");
        let mut list = q.separated(", ");
        list.push_bind("p").push_bind("q");
        q.push(")");
        q
    }

    #[test]
    fn placeholders_follow_the_engine() {
        assert_eq!(
            insert::<sqlx::MySql>().sql(),
            "INSERT INTO t (a, b) VALUES (?, NOW(), ?), (?, NOW(), ?) WHERE c IN (?, ?)"
        );
        assert_eq!(
            insert::<sqlx::Sqlite>().sql(),
            "INSERT INTO t (a, b) VALUES (?, NOW(), ?), (?, NOW(), ?) WHERE c IN (?, ?)"
        );
        let pg = insert::<sqlx::Postgres>();
        assert_eq!(
            pg.sql(),
            "INSERT INTO t (a, b) VALUES ($1, NOW(), $2), ($3, NOW(), $4) WHERE c IN ($5, $6)"
        );
        let values = [
            Value::Text("x".into()),
            Value::Int(1),
            Value::Text("y".into()),
            Value::Int(2),
            Value::Text("p".into()),
            Value::Text("q".into()),
        ];
        assert_eq!(pg.values, values);
    }
}
