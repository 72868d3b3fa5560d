//! The `order` table's DDL (`sql/<engine>/order.sql`) and the function that
//! applies it at start.
//!
//! The files live at the repository root, where operators read them and
//! feed them to `mariadb` or `psql` by hand; this module embeds the same
//! files, so the service and its tests apply exactly what is reviewed there.
//! They are idempotent (`CREATE TABLE IF NOT EXISTS`): safe at every start.
//! Applying statements and the migration of `gid` to a binary collation are
//! the barrier crate's tools ([`barrier::schema`]), shared with the barrier
//! table.

use barrier::schema::{ExactColumn, apply, ensure_exact_columns};
use barrier::{BarrierDatabase, BarrierTable};
use sqlx::Pool;

/// MySQL / MariaDB (`sql/mysql/order.sql`).
pub mod mysql {
    use super::ExactColumn;

    /// The `order` table, with its `gid` column.
    pub const ORDER: &str = include_str!("../../../sql/mysql/order.sql");

    /// The `order` table's `gid`, exactly as [`ORDER`] declares it: tables
    /// created before gids compared as bytes are converted to it.
    pub const ORDER_GID: ExactColumn = ExactColumn {
        name: "gid",
        mysql_definition: "`gid` varchar(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '' \
                           COMMENT 'dtm gid of the saga that created this order'",
    };
}

/// PostgreSQL (`sql/postgres/order.sql`).
pub mod postgres {
    /// The `order` table, with its `gid` column.
    pub const ORDER: &str = include_str!("../../../sql/postgres/order.sql");
}

/// SQLite (`sql/sqlite/order.sql`).
pub mod sqlite {
    /// The `order` table, with its `gid` column.
    pub const ORDER: &str = include_str!("../../../sql/sqlite/order.sql");
}

/// Creates the `order` table (with `gid`) if it does not exist, and gives
/// an older table's `gid` the binary collation on MySQL.
pub async fn ensure_order_table<DB: OrderDdl>(pool: &Pool<DB>) -> Result<(), sqlx::Error> {
    apply(pool, DB::ORDER_DDL).await?;
    // A constant name of [A-Za-z0-9_]: never refused.
    let table = BarrierTable::new("order").map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    ensure_exact_columns(pool, &table, &[mysql::ORDER_GID]).await
}

/// The table's DDL on one engine: `sqlx::MySql`, `sqlx::Postgres` or `sqlx::Sqlite`.
pub trait OrderDdl: BarrierDatabase {
    /// `sql/<engine>/order.sql`.
    const ORDER_DDL: &'static str;
}

impl OrderDdl for sqlx::MySql {
    const ORDER_DDL: &'static str = mysql::ORDER;
}

impl OrderDdl for sqlx::Postgres {
    const ORDER_DDL: &'static str = postgres::ORDER;
}

impl OrderDdl for sqlx::Sqlite {
    const ORDER_DDL: &'static str = sqlite::ORDER;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_file_splits_into_its_statements() {
        for (script, count) in [(mysql::ORDER, 1), (postgres::ORDER, 2), (sqlite::ORDER, 2)] {
            let statements = barrier::schema::statements(script);
            assert_eq!(statements.len(), count, "{statements:#?}");
            assert!(statements.iter().all(|s| !s.contains("--")), "{statements:#?}");
        }
    }

    #[test]
    fn the_exact_gid_column_is_the_ddl_files_own() {
        let statement = &barrier::schema::statements(mysql::ORDER)[0];
        assert!(mysql::ORDER_GID.is_declared_in(statement), "{statement}");
    }
}
