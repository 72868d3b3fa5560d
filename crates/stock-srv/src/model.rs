//! The `stock` table (go-zero's `internal/model/stockmodel.go`).
//!
//! Three statements, written once per SQL engine, all on the connection of
//! the barrier's transaction. The deduction is a single conditional update,
//! `update stock set num = num - ? where goods_id = ? and num >= ?`: the
//! database checks and subtracts atomically, so concurrent sagas can never
//! drive the stock below zero, and "0 rows changed" is the business failure.

use std::future::Future;

use barrier::BarrierDatabase;

/// The stock model's SQL on one engine (`sqlx::MySql`, `sqlx::Postgres`,
/// `sqlx::Sqlite`).
pub trait StockModel: BarrierDatabase {
    /// Subtracts `num` if at least `num` units are left. Returns the rows
    /// changed: 1, or 0 for "not enough stock" *or* "unknown goods".
    fn deduct<'a>(
        conn: &'a mut Self::Connection,
        goods_id: i64,
        num: i32,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;

    /// Adds `num` back. Returns the rows changed.
    fn add<'a>(
        conn: &'a mut Self::Connection,
        goods_id: i64,
        num: i32,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;

    /// Units in stock, `None` for goods without a stock row. Only used to
    /// explain a failed deduction in the log.
    fn find_num<'a>(
        conn: &'a mut Self::Connection,
        goods_id: i64,
    ) -> impl Future<Output = Result<Option<i32>, sqlx::Error>> + Send + 'a;
}

/// Implements [`StockModel`] for one engine; only the placeholders differ.
macro_rules! stock_model {
    ($db:ty, deduct: $deduct:literal, add: $add:literal, find: $find:literal $(,)?) => {
        impl StockModel for $db {
            async fn deduct(
                conn: &mut Self::Connection,
                goods_id: i64,
                num: i32,
            ) -> Result<u64, sqlx::Error> {
                let done =
                    sqlx::query($deduct).bind(num).bind(goods_id).bind(num).execute(&mut *conn).await?;
                Ok(done.rows_affected())
            }

            async fn add(conn: &mut Self::Connection, goods_id: i64, num: i32) -> Result<u64, sqlx::Error> {
                Ok(sqlx::query($add).bind(num).bind(goods_id).execute(&mut *conn).await?.rows_affected())
            }

            async fn find_num(
                conn: &mut Self::Connection,
                goods_id: i64,
            ) -> Result<Option<i32>, sqlx::Error> {
                sqlx::query_scalar($find).bind(goods_id).fetch_optional(&mut *conn).await
            }
        }
    };
}

stock_model!(
    sqlx::MySql,
    deduct: "update stock set num = num - ? where goods_id = ? and num >= ?",
    add: "update stock set num = num + ? where goods_id = ?",
    find: "select num from stock where goods_id = ?",
);

stock_model!(
    sqlx::Postgres,
    deduct: "update stock set num = num - $1 where goods_id = $2 and num >= $3",
    add: "update stock set num = num + $1 where goods_id = $2",
    find: "select num from stock where goods_id = $1",
);

stock_model!(
    sqlx::Sqlite,
    deduct: "update stock set num = num - ? where goods_id = ? and num >= ?",
    add: "update stock set num = num + ? where goods_id = ?",
    find: "select num from stock where goods_id = ?",
);
