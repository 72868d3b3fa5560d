//! The read-only admin endpoint of a branch service (`AdminListenOn`, off
//! unless configured): what one gid left in this service's database — its
//! barrier rows and the business rows it touched — as JSON, for the
//! coordinator's console to show beside the transaction.
//!
//! `GET /admin/gid?gid=<gid>` →
//!
//! ```json
//! {"service":"order-srv","tables":[
//!   {"name":"dtm_barrier.barrier","columns":["trans_type","branch_id","op","barrier_id","reason"],
//!    "rows":[["saga","01","action","01","action"]]},
//!   {"name":"order","columns":["id","user_id","goods_id","num","row_state"],"rows":[["1","1","1","1","0"]]}]}
//! ```
//!
//! Values are strings (`null` for SQL `NULL`): the console prints them. It
//! only ever runs the fixed `SELECT`s below with the gid bound as a
//! parameter; still, it shows business data, so it listens on an address
//! of its own — loopback in `quickorder up`, absent from the shipped
//! `etc/*.yaml` — never on the branch ports.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use barrier::BarrierTable;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{Column, ColumnIndex, Database, Decode, Row, Type};

use crate::BusinessDb;

/// One table of the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminTable {
    /// The table's name (`dtm_barrier.barrier`, `order`, …).
    pub name: String,
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Rows, each value as text (`None`: SQL `NULL`).
    pub rows: Vec<Vec<Option<String>>>,
}

/// A business query of a service: a title and a `SELECT` whose only
/// parameter, written `?`, is the gid (`$1` on PostgreSQL is made here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminQuery {
    /// The table's name as shown.
    pub name: &'static str,
    /// The statement.
    pub sql: &'static str,
}

/// What the handler needs.
struct AdminState {
    service: String,
    db: BusinessDb,
    queries: Vec<AdminQuery>,
}

/// The admin router of service `service` on `db`, showing its barrier
/// rows and the rows of `queries`.
pub fn router(service: &str, db: BusinessDb, queries: Vec<AdminQuery>) -> axum::Router {
    let state = Arc::new(AdminState { service: service.to_string(), db, queries });
    axum::Router::new().route("/admin/gid", get(gid_rows)).with_state(state)
}

#[derive(Debug, Deserialize)]
struct GidQuery {
    #[serde(default)]
    gid: String,
}

async fn gid_rows(State(state): State<Arc<AdminState>>, Query(query): Query<GidQuery>) -> Response {
    let gid = match dtm_protocol::Gid::new(query.gid) {
        Ok(gid) => gid,
        Err(e) => return (StatusCode::BAD_REQUEST, Json(json!({"message": e.to_string()}))).into_response(),
    };
    let barrier = state.db.barrier_table();
    let mut statements = vec![(barrier.as_str().to_string(), barrier_sql(&barrier))];
    statements.extend(state.queries.iter().map(|q| (q.name.to_string(), q.sql.to_string())));
    let mut tables = Vec::new();
    for (name, sql) in statements {
        let rows = match &state.db {
            BusinessDb::MySql(pool) => rows_of(pool, &sql, gid.as_str()).await,
            BusinessDb::Postgres(pool) => rows_of(pool, &sql.replacen('?', "$1", 1), gid.as_str()).await,
            BusinessDb::Sqlite(pool) => rows_of(pool, &sql, gid.as_str()).await,
        };
        match rows {
            Ok((columns, rows)) => tables.push(AdminTable { name, columns, rows }),
            Err(e) => {
                tracing::warn!(table = %name, error = %e, "admin endpoint: query failed");
                let body = json!({"message": format!("cannot read {name}, see the service's log")});
                return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
            }
        }
    }
    Json(json!({"service": state.service, "tables": tables})).into_response()
}

/// The barrier rows of a gid (the gid column itself is left out: it is
/// the one asked for, and binary on MySQL).
fn barrier_sql(table: &BarrierTable) -> String {
    format!("SELECT trans_type, branch_id, op, barrier_id, reason FROM {table} WHERE gid = ? ORDER BY id")
}

type Rows = (Vec<String>, Vec<Vec<Option<String>>>);

/// Runs `sql` with `gid` bound and reads every value as text.
async fn rows_of<DB>(pool: &sqlx::Pool<DB>, sql: &str, gid: &str) -> Result<Rows, sqlx::Error>
where
    DB: Database,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    for<'r> i32: Decode<'r, DB> + Type<DB>,
    for<'r> i16: Decode<'r, DB> + Type<DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    let rows = sqlx::query(sql).bind(gid).fetch_all(pool).await?;
    let columns = rows
        .first()
        .map_or_else(Vec::new, |row| row.columns().iter().map(|c| c.name().to_string()).collect::<Vec<_>>());
    let values = rows.iter().map(|row| (0..row.len()).map(|i| cell::<DB>(row, i)).collect()).collect();
    Ok((columns, values))
}

/// One value as text, whatever its SQL type among those the services use.
fn cell<DB>(row: &DB::Row, i: usize) -> Option<String>
where
    DB: Database,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    for<'r> i32: Decode<'r, DB> + Type<DB>,
    for<'r> i16: Decode<'r, DB> + Type<DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    if let Ok(v) = row.try_get::<Option<String>, _>(i) {
        return v;
    }
    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
        return v.map(|v| v.to_string());
    }
    if let Ok(v) = row.try_get::<Option<i32>, _>(i) {
        return v.map(|v| v.to_string());
    }
    if let Ok(v) = row.try_get::<Option<i16>, _>(i) {
        return v.map(|v| v.to_string());
    }
    match row.try_get::<Option<Vec<u8>>, _>(i) {
        Ok(v) => v.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        Err(_) => Some("?".to_string()),
    }
}
