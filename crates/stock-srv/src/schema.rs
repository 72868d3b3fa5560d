//! The `stock` table's DDL and seed (`sql/<engine>/stock.sql`) and the
//! function that applies it at start.
//!
//! The files live at the repository root, where operators read them and
//! feed them to `mariadb` or `psql` by hand; this module embeds the same
//! files, so the service and its tests apply exactly what is reviewed there.
//! They are idempotent (`CREATE TABLE IF NOT EXISTS`, an insert-ignore seed
//! of goods 1 = 100 units that never refills): safe at every start.

use barrier::BarrierDatabase;
use sqlx::Pool;

/// MySQL / MariaDB (`sql/mysql/stock.sql`).
pub mod mysql {
    /// The `stock` table, seeded with goods 1 = 100 units.
    pub const STOCK: &str = include_str!("../../../sql/mysql/stock.sql");
}

/// PostgreSQL (`sql/postgres/stock.sql`).
pub mod postgres {
    /// The `stock` table, seeded with goods 1 = 100 units.
    pub const STOCK: &str = include_str!("../../../sql/postgres/stock.sql");
}

/// SQLite (`sql/sqlite/stock.sql`).
pub mod sqlite {
    /// The `stock` table, seeded with goods 1 = 100 units.
    pub const STOCK: &str = include_str!("../../../sql/sqlite/stock.sql");
}

/// Creates the `stock` table if it does not exist and seeds goods 1 with
/// 100 units if it has no row yet.
pub async fn ensure_stock_table<DB: StockDdl>(pool: &Pool<DB>) -> Result<(), sqlx::Error> {
    barrier::schema::apply(pool, DB::STOCK_DDL).await
}

/// The table's DDL on one engine: `sqlx::MySql`, `sqlx::Postgres` or `sqlx::Sqlite`.
pub trait StockDdl: BarrierDatabase {
    /// `sql/<engine>/stock.sql`.
    const STOCK_DDL: &'static str;
}

impl StockDdl for sqlx::MySql {
    const STOCK_DDL: &'static str = mysql::STOCK;
}

impl StockDdl for sqlx::Postgres {
    const STOCK_DDL: &'static str = postgres::STOCK;
}

impl StockDdl for sqlx::Sqlite {
    const STOCK_DDL: &'static str = sqlite::STOCK;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_file_splits_into_the_table_and_its_seed() {
        for script in [mysql::STOCK, postgres::STOCK, sqlite::STOCK] {
            let statements = barrier::schema::statements(script);
            assert_eq!(statements.len(), 2, "{statements:#?}");
            assert!(statements.iter().all(|s| !s.contains("--")), "{statements:#?}");
        }
    }
}
