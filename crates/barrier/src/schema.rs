//! The SQL of the barrier table and of the demo's two business tables, and
//! functions that apply it at service start.
//!
//! The DDL lives in `sql/<engine>/{barrier,order,stock}.sql` at the
//! repository root, where operators can read it and feed it to `mariadb` or
//! `psql` by hand; this module embeds the same files (`include_str!`), so
//! the services and the tests apply exactly what is reviewed there. Every
//! file is idempotent (`CREATE TABLE IF NOT EXISTS`, insert-ignore seed), so
//! applying it at every start is safe.
//!
//! ```no_run
//! # async fn start(pool: sqlx::MySqlPool) -> Result<(), sqlx::Error> {
//! use barrier::{BarrierTable, schema};
//! let table: BarrierTable = "dtm_barrier.barrier".parse().expect("valid name");
//! schema::ensure_barrier_table(&pool, &table).await?; // needs database `dtm_barrier`
//! schema::ensure_order_table(&pool).await?;
//! # Ok(()) }
//! ```

use sqlx::Pool;

use crate::{BarrierDatabase, BarrierTable};

/// MySQL / MariaDB DDL (`sql/mysql/*.sql`).
pub mod mysql {
    use crate::BarrierDatabase;
    /// The barrier table, named `barrier` (see [`super::barrier_statements`] for other names).
    pub const BARRIER: &str = <sqlx::MySql as BarrierDatabase>::BARRIER_DDL;
    /// The `order` table, with its `gid` column.
    pub const ORDER: &str = <sqlx::MySql as BarrierDatabase>::ORDER_DDL;
    /// The `stock` table, seeded with goods 1 = 100 units.
    pub const STOCK: &str = <sqlx::MySql as BarrierDatabase>::STOCK_DDL;
}

/// PostgreSQL DDL (`sql/postgres/*.sql`).
pub mod postgres {
    use crate::BarrierDatabase;
    /// The barrier table, named `barrier` (see [`super::barrier_statements`] for other names).
    pub const BARRIER: &str = <sqlx::Postgres as BarrierDatabase>::BARRIER_DDL;
    /// The `order` table, with its `gid` column.
    pub const ORDER: &str = <sqlx::Postgres as BarrierDatabase>::ORDER_DDL;
    /// The `stock` table, seeded with goods 1 = 100 units.
    pub const STOCK: &str = <sqlx::Postgres as BarrierDatabase>::STOCK_DDL;
}

/// SQLite DDL (`sql/sqlite/*.sql`).
pub mod sqlite {
    use crate::BarrierDatabase;
    /// The barrier table, named `barrier` (see [`super::barrier_statements`] for other names).
    pub const BARRIER: &str = <sqlx::Sqlite as BarrierDatabase>::BARRIER_DDL;
    /// The `order` table, with its `gid` column.
    pub const ORDER: &str = <sqlx::Sqlite as BarrierDatabase>::ORDER_DDL;
    /// The `stock` table, seeded with goods 1 = 100 units.
    pub const STOCK: &str = <sqlx::Sqlite as BarrierDatabase>::STOCK_DDL;
}

/// The phrase in every `barrier.sql` that [`barrier_statements`] rewrites to
/// put the configured table name in place of `barrier`.
const BARRIER_MARKER: &str = "CREATE TABLE IF NOT EXISTS barrier ";

/// Splits an SQL script into its statements: `--` comments removed, split at
/// every `;` that is not inside a quoted string or identifier, empty
/// statements dropped. Enough for our own DDL files (no procedures, no
/// `/* */` comments); not a general SQL parser.
pub fn statements(script: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut chars = script.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                current.push(c);
                if c == q {
                    quote = None; // a doubled quote ('') reopens at once: same result
                }
            }
            None if c == '-' && chars.peek() == Some(&'-') => {
                // A comment runs to the end of the line; keep the newline.
                for skipped in chars.by_ref() {
                    if skipped == '\n' {
                        current.push('\n');
                        break;
                    }
                }
            }
            None if c == ';' => statements.push(std::mem::take(&mut current)),
            None => {
                if matches!(c, '\'' | '"' | '`') {
                    quote = Some(c);
                }
                current.push(c);
            }
        }
    }
    statements.push(current);
    statements.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// The statements of engine `DB`'s barrier DDL, creating `table`.
pub fn barrier_statements<DB: BarrierDatabase>(table: &BarrierTable) -> Vec<String> {
    let create = format!("CREATE TABLE IF NOT EXISTS {table} ");
    statements(DB::BARRIER_DDL).into_iter().map(|s| s.replacen(BARRIER_MARKER, &create, 1)).collect()
}

/// Runs every statement of `script` on `pool`, one by one, on one connection.
pub async fn apply<DB: BarrierDatabase>(pool: &Pool<DB>, script: &str) -> Result<(), sqlx::Error> {
    apply_statements(pool, statements(script)).await
}

async fn apply_statements<DB: BarrierDatabase>(
    pool: &Pool<DB>,
    statements: Vec<String>,
) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    for statement in &statements {
        DB::execute(&mut conn, statement).await?;
    }
    Ok(())
}

/// Creates the barrier table `table` if it does not exist. A qualified name
/// (`dtm_barrier.barrier`) needs its database (MySQL) or schema (PostgreSQL)
/// to exist already: creating those is the server owner's job.
pub async fn ensure_barrier_table<DB: BarrierDatabase>(
    pool: &Pool<DB>,
    table: &BarrierTable,
) -> Result<(), sqlx::Error> {
    apply_statements(pool, barrier_statements::<DB>(table)).await
}

/// Creates the demo's `order` table (with `gid`) if it does not exist.
pub async fn ensure_order_table<DB: BarrierDatabase>(pool: &Pool<DB>) -> Result<(), sqlx::Error> {
    apply(pool, DB::ORDER_DDL).await
}

/// Creates the demo's `stock` table if it does not exist and seeds goods 1
/// with 100 units if it has no row yet.
pub async fn ensure_stock_table<DB: BarrierDatabase>(pool: &Pool<DB>) -> Result<(), sqlx::Error> {
    apply(pool, DB::STOCK_DDL).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_at_semicolons_outside_quotes_and_comments() {
        let script = "-- a comment; with a semicolon\nCREATE TABLE t (a varchar(3) DEFAULT ';', b int); -- x;\n\
                      INSERT INTO `we;ird` VALUES ('it''s; fine');\n\n-- trailing\n";
        assert_eq!(
            statements(script),
            vec![
                "CREATE TABLE t (a varchar(3) DEFAULT ';', b int)".to_string(),
                "INSERT INTO `we;ird` VALUES ('it''s; fine')".to_string(),
            ]
        );
    }

    #[test]
    fn every_file_splits_into_the_expected_statements() {
        let counts = [
            (mysql::BARRIER, 1),
            (mysql::ORDER, 1),
            (mysql::STOCK, 2),
            (postgres::BARRIER, 1),
            (postgres::ORDER, 2),
            (postgres::STOCK, 2),
            (sqlite::BARRIER, 1),
            (sqlite::ORDER, 2),
            (sqlite::STOCK, 2),
        ];
        for (script, count) in counts {
            let statements = statements(script);
            assert_eq!(statements.len(), count, "{statements:#?}");
            assert!(statements.iter().all(|s| !s.contains("--")), "{statements:#?}");
        }
    }

    #[test]
    fn barrier_ddl_takes_the_configured_table_name() {
        for ddl in [mysql::BARRIER, postgres::BARRIER, sqlite::BARRIER] {
            assert_eq!(ddl.matches(BARRIER_MARKER).count(), 1, "{ddl}");
        }
        let table = BarrierTable::new("dtm_barrier.barrier").unwrap();
        let mysql = barrier_statements::<sqlx::MySql>(&table);
        assert!(mysql[0].starts_with("CREATE TABLE IF NOT EXISTS dtm_barrier.barrier ("), "{mysql:?}");
        let postgres = barrier_statements::<sqlx::Postgres>(&table);
        assert!(postgres[0].contains("CONSTRAINT uniq_barrier UNIQUE (gid, branch_id, op, barrier_id)"));
    }
}
