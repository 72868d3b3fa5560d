//! The `order` table (go-zero's `internal/model/ordermodel.go`).
//!
//! Two statements, written once per SQL engine. Both take the connection of
//! the barrier's transaction: the model cannot reach the database any other
//! way, so the order row and the barrier rows commit together.
//!
//! The table has one column more than the demo's: `gid`, the saga that
//! created the order (see `sql/*/order.sql`). It is what lets the
//! compensation cancel *its* order, and not "the latest order of this user
//! and goods" as the Go demo does — with two orders of one user in flight,
//! that could cancel the wrong one.

use std::future::Future;

use barrier::BarrierDatabase;

/// A new order, as the saga action inserts it (`row_state` 0: live).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder<'a> {
    /// Who orders.
    pub user_id: i64,
    /// What.
    pub goods_id: i64,
    /// How many (the column is an `int`).
    pub num: i32,
    /// The saga that creates it; its compensation looks the order up by it.
    pub gid: &'a str,
}

/// The order model's SQL on one engine (`sqlx::MySql`, `sqlx::Postgres`,
/// `sqlx::Sqlite`).
pub trait OrderModel: BarrierDatabase {
    /// The order rows of one gid (the gid bound as `?`), for the read-only
    /// admin endpoint (`service_kit::admin`).
    const ADMIN_SQL: &'static str;

    /// `insert into order (user_id, goods_id, num, row_state, gid) values (…, 0, gid)`.
    fn insert<'a>(
        conn: &'a mut Self::Connection,
        order: &'a NewOrder<'a>,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;

    /// `update order set row_state = -1 where gid = ?`: cancels the order of
    /// this saga. Returns the rows changed (0 if the action never inserted).
    fn cancel_by_gid<'a>(
        conn: &'a mut Self::Connection,
        gid: &'a str,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;
}

/// Implements [`OrderModel`] for one engine; only the SQL text differs
/// (`?` or `$n` placeholders, how `order` — a keyword — is quoted).
macro_rules! order_model {
    ($db:ty, insert: $insert:literal, cancel: $cancel:literal, admin: $admin:literal $(,)?) => {
        impl OrderModel for $db {
            const ADMIN_SQL: &'static str = $admin;

            async fn insert<'a>(
                conn: &'a mut Self::Connection,
                order: &'a NewOrder<'a>,
            ) -> Result<u64, sqlx::Error> {
                let done = sqlx::query($insert)
                    .bind(order.user_id)
                    .bind(order.goods_id)
                    .bind(order.num)
                    .bind(order.gid)
                    .execute(&mut *conn)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn cancel_by_gid<'a>(
                conn: &'a mut Self::Connection,
                gid: &'a str,
            ) -> Result<u64, sqlx::Error> {
                Ok(sqlx::query($cancel).bind(gid).execute(&mut *conn).await?.rows_affected())
            }
        }
    };
}

order_model!(
    sqlx::MySql,
    insert: "insert into `order` (user_id, goods_id, num, row_state, gid) values (?, ?, ?, 0, ?)",
    cancel: "update `order` set row_state = -1 where gid = ?",
    admin: "select id, user_id, goods_id, num, row_state from `order` where gid = ? order by id",
);

order_model!(
    sqlx::Postgres,
    insert: r#"insert into "order" (user_id, goods_id, num, row_state, gid) values ($1, $2, $3, 0, $4)"#,
    cancel: r#"update "order" set row_state = -1 where gid = $1"#,
    admin: r#"select id, user_id, goods_id, num, row_state from "order" where gid = ? order by id"#,
);

order_model!(
    sqlx::Sqlite,
    insert: r#"insert into "order" (user_id, goods_id, num, row_state, gid) values (?, ?, ?, 0, ?)"#,
    cancel: r#"update "order" set row_state = -1 where gid = ?"#,
    admin: r#"select id, user_id, goods_id, num, row_state from "order" where gid = ? order by id"#,
);
