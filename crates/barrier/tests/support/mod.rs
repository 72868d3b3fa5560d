//! What the barrier scenarios need from each engine: a fresh database, and
//! the demo's business SQL written once with `?` placeholders, and the
//! business tables it runs on.
//!
//! The `order` and `stock` tables belong to order-srv and stock-srv, which
//! sit above this crate; the scenarios only need some business table in the
//! barrier's transaction, and take the shipped files (`sql/<engine>/`) as
//! they are rather than depend upward.
//!
//! The barrier crate itself hides sqlx's executor bounds behind its sealed
//! trait; the tests do the same with [`Engine`], implemented by one macro for
//! the three engines so that each scenario is written once.

use std::future::Future;

use barrier::{BarrierDatabase, BarrierTable};
use harness::TestDatabase;
use sqlx::Pool;

/// One barrier row, as the tests compare it (everything but id and times).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    pub trans_type: String,
    pub gid: String,
    pub branch_id: String,
    pub op: String,
    pub barrier_id: String,
    pub reason: String,
}

impl Row {
    /// A row as written by a saga branch.
    pub fn saga(gid: &str, branch_id: &str, op: &str, barrier_id: &str, reason: &str) -> Row {
        Row::new("saga", gid, branch_id, op, barrier_id, reason)
    }

    pub fn new(
        trans_type: &str,
        gid: &str,
        branch_id: &str,
        op: &str,
        barrier_id: &str,
        reason: &str,
    ) -> Row {
        Row {
            trans_type: trans_type.into(),
            gid: gid.into(),
            branch_id: branch_id.into(),
            op: op.into(),
            barrier_id: barrier_id.into(),
            reason: reason.into(),
        }
    }
}

/// One `order` row: (gid, user_id, goods_id, num, row_state).
pub type OrderRow = (String, i64, i64, i64, i64);

/// An engine the scenarios run on.
pub trait Engine: BarrierDatabase {
    /// `sql/<engine>/order.sql`.
    const ORDER_DDL: &'static str;
    /// `sql/<engine>/stock.sql` (goods 1 seeded with 100 units).
    const STOCK_DDL: &'static str;

    /// A fresh, empty database on a throwaway server.
    fn database() -> impl Future<Output = TestDatabase> + Send;

    /// A barrier table name qualified with a schema that exists in `db`
    /// (creating that schema if the engine needs it).
    fn qualified_table(db: &TestDatabase, pool: &Pool<Self>) -> impl Future<Output = BarrierTable> + Send;

    /// The article's order insert, plus the saga's gid.
    fn insert_order<'a>(
        conn: &'a mut Self::Connection,
        gid: &'a str,
        user_id: i64,
        goods_id: i64,
        num: i64,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;

    /// The order compensation: cancel the order of THIS saga (by gid).
    fn cancel_order<'a>(
        conn: &'a mut Self::Connection,
        gid: &'a str,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;

    /// The article's deduction; returns the rows changed (0: not enough stock).
    fn deduct_stock(
        conn: &mut Self::Connection,
        goods_id: i64,
        num: i64,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + '_;

    /// The stock compensation.
    fn add_stock(
        conn: &mut Self::Connection,
        goods_id: i64,
        num: i64,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + '_;

    /// A statement the database rejects (a table that does not exist).
    fn broken_query(conn: &mut Self::Connection)
    -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_;

    /// Units of `goods_id` in stock.
    fn stock(pool: &Pool<Self>, goods_id: i64) -> impl Future<Output = i64> + Send;

    /// Number of stock rows.
    fn stock_rows(pool: &Pool<Self>) -> impl Future<Output = i64> + Send;

    /// Every order, by id.
    fn orders(pool: &Pool<Self>) -> impl Future<Output = Vec<OrderRow>> + Send;

    /// Every row of `table`, by id.
    fn barrier_rows(pool: &Pool<Self>, table: &BarrierTable) -> impl Future<Output = Vec<Row>> + Send;
}

/// Creates the business tables (`order`, `stock`) if they do not exist.
pub async fn business_tables<E: Engine>(pool: &Pool<E>) {
    barrier::schema::apply(pool, E::ORDER_DDL).await.expect("order table");
    barrier::schema::apply(pool, E::STOCK_DDL).await.expect("stock table");
}

/// `?` placeholders as the engine wants them.
fn placeholders(sql: &str, dollar: bool) -> String {
    if !dollar {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

macro_rules! engine {
    ($db:ty, dir: $dir:literal, database: $database:expr, qualified: $qualified:expr, order: $order:literal,
     bigint: $bigint:literal, text: $text:literal, dollar: $dollar:literal) => {
        impl Engine for $db {
            const ORDER_DDL: &'static str = include_str!(concat!("../../../../sql/", $dir, "/order.sql"));
            const STOCK_DDL: &'static str = include_str!(concat!("../../../../sql/", $dir, "/stock.sql"));

            async fn database() -> TestDatabase {
                $database
            }

            async fn qualified_table(db: &TestDatabase, pool: &Pool<Self>) -> BarrierTable {
                let qualified: fn(&TestDatabase) -> (Option<&'static str>, String) = $qualified;
                let (setup, name) = qualified(db);
                if let Some(setup) = setup {
                    sqlx::query(setup).execute(pool).await.expect("create schema");
                }
                BarrierTable::new(&name).expect("valid qualified name")
            }

            async fn insert_order<'a>(
                conn: &'a mut Self::Connection,
                gid: &'a str,
                user_id: i64,
                goods_id: i64,
                num: i64,
            ) -> Result<(), sqlx::Error> {
                let sql = placeholders(
                    concat!(
                        "insert into ",
                        $order,
                        " (user_id, goods_id, num, row_state, gid) values (?, ?, ?, 0, ?)"
                    ),
                    $dollar,
                );
                sqlx::query(&sql)
                    .bind(user_id)
                    .bind(goods_id)
                    .bind(num)
                    .bind(gid)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            async fn cancel_order<'a>(
                conn: &'a mut Self::Connection,
                gid: &'a str,
            ) -> Result<u64, sqlx::Error> {
                let sql =
                    placeholders(concat!("update ", $order, " set row_state = -1 where gid = ?"), $dollar);
                Ok(sqlx::query(&sql).bind(gid).execute(&mut *conn).await?.rows_affected())
            }

            async fn deduct_stock(
                conn: &mut Self::Connection,
                goods_id: i64,
                num: i64,
            ) -> Result<u64, sqlx::Error> {
                let sql =
                    placeholders("update stock set num = num - ? where goods_id = ? and num >= ?", $dollar);
                let done = sqlx::query(&sql).bind(num).bind(goods_id).bind(num).execute(&mut *conn).await?;
                Ok(done.rows_affected())
            }

            async fn add_stock(
                conn: &mut Self::Connection,
                goods_id: i64,
                num: i64,
            ) -> Result<u64, sqlx::Error> {
                let sql = placeholders("update stock set num = num + ? where goods_id = ?", $dollar);
                Ok(sqlx::query(&sql).bind(num).bind(goods_id).execute(&mut *conn).await?.rows_affected())
            }

            async fn broken_query(conn: &mut Self::Connection) -> Result<(), sqlx::Error> {
                sqlx::query("select * from no_such_table").execute(&mut *conn).await?;
                Ok(())
            }

            async fn stock(pool: &Pool<Self>, goods_id: i64) -> i64 {
                let sql = placeholders(
                    concat!("select cast(num as ", $bigint, ") from stock where goods_id = ?"),
                    $dollar,
                );
                sqlx::query_scalar(&sql).bind(goods_id).fetch_one(pool).await.expect("read stock")
            }

            async fn stock_rows(pool: &Pool<Self>) -> i64 {
                let sql = concat!("select cast(count(*) as ", $bigint, ") from stock");
                sqlx::query_scalar(sql).fetch_one(pool).await.expect("count stock")
            }

            async fn orders(pool: &Pool<Self>) -> Vec<OrderRow> {
                let sql = concat!(
                    // gid is cast to text: MySQL's binary-collated gid column
                    // (exact gids) is VARBINARY to sqlx, not a String.
                    "select cast(gid as ",
                    $text,
                    "), cast(user_id as ",
                    $bigint,
                    "), cast(goods_id as ",
                    $bigint,
                    "), cast(num as ",
                    $bigint,
                    "), cast(row_state as ",
                    $bigint,
                    ") from ",
                    $order,
                    " order by id"
                );
                sqlx::query_as(sql).fetch_all(pool).await.expect("read orders")
            }

            async fn barrier_rows(pool: &Pool<Self>, table: &BarrierTable) -> Vec<Row> {
                let sql = format!(
                    "select trans_type, cast(gid as {}), branch_id, op, barrier_id, reason from {table} order by id",
                    $text
                );
                let rows: Vec<(String, String, String, String, String, String)> =
                    sqlx::query_as(&sql).fetch_all(pool).await.expect("read barrier rows");
                rows.into_iter()
                    .map(|(trans_type, gid, branch_id, op, barrier_id, reason)| Row {
                        trans_type,
                        gid,
                        branch_id,
                        op,
                        barrier_id,
                        reason,
                    })
                    .collect()
            }
        }
    };
}

engine!(
    sqlx::MySql,
    dir: "mysql",
    database: harness::mysql_database().await,
    // The test database itself is a MySQL "schema".
    qualified: |db| (None, format!("{}.barrier", db.name)),
    order: "`order`",
    bigint: "signed",
    text: "char",
    dollar: false
);

engine!(
    sqlx::Postgres,
    dir: "postgres",
    database: harness::postgres_database().await,
    qualified: |_| (Some("CREATE SCHEMA IF NOT EXISTS dtm_barrier"), "dtm_barrier.barrier".to_string()),
    order: "\"order\"",
    bigint: "bigint",
    text: "text",
    dollar: true
);

engine!(
    sqlx::Sqlite,
    dir: "sqlite",
    database: harness::sqlite_database(),
    // `main` is the name of SQLite's primary database.
    qualified: |_| (None, "main.barrier".to_string()),
    order: "\"order\"",
    bigint: "integer",
    text: "text",
    dollar: false
);

/// Runs each generic scenario `fn name<DB>()` as one test per engine:
/// `mysql::name`, `postgres::name`, `sqlite::name`.
macro_rules! on_every_engine {
    ($($scenario:ident),+ $(,)?) => {
        mod mysql {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $scenario() { super::$scenario::<sqlx::MySql>().await } )+
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $scenario() { super::$scenario::<sqlx::Postgres>().await } )+
        }
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $scenario() { super::$scenario::<sqlx::Sqlite>().await } )+
        }
    };
}
