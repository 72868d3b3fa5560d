//! The SQL of the barrier table, the functions that apply DDL at service
//! start, and the migration of gid columns to exact (binary) comparison.
//!
//! The DDL lives in `sql/<engine>/barrier.sql` at the repository root, where
//! operators can read it and feed it to `mariadb` or `psql` by hand; this
//! module embeds the same files (`include_str!`), so the services and the
//! tests apply exactly what is reviewed there. Every file is idempotent
//! (`CREATE TABLE IF NOT EXISTS`), so applying it at every start is safe.
//! The services' own tables (`order.sql`, `stock.sql`) are theirs: each
//! service embeds its file and applies it with [`apply`] and
//! [`ensure_exact_columns`] from here.
//!
//! ```no_run
//! # async fn start(pool: sqlx::MySqlPool) -> Result<(), sqlx::Error> {
//! use barrier::{BarrierTable, schema};
//! let table: BarrierTable = "dtm_barrier.barrier".parse().expect("valid name");
//! schema::ensure_barrier_table(&pool, &table).await?; // needs database `dtm_barrier`
//! # Ok(()) }
//! ```

use sqlx::Pool;

use crate::{BarrierDatabase, BarrierTable};

/// MySQL / MariaDB DDL (`sql/mysql/*.sql`).
pub mod mysql {
    use super::ExactColumn;
    use crate::BarrierDatabase;
    /// The barrier table, named `barrier` (see [`super::barrier_statements`] for other names).
    pub const BARRIER: &str = <sqlx::MySql as BarrierDatabase>::BARRIER_DDL;

    /// The barrier table's `gid`, exactly as [`BARRIER`] declares it.
    pub const BARRIER_GID: ExactColumn = ExactColumn {
        name: "gid",
        mysql_definition: "gid varchar(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT '' \
                           COMMENT 'global transaction id'",
    };
}

/// A column whose values must compare as exact byte strings (a gid), and
/// its full MySQL definition with a binary collation.
///
/// MySQL and MariaDB give a new column the table's collation, and every
/// default collation is case-insensitive: `'AbC' = 'abc'` holds, and a
/// unique key treats the two as one value. For a gid that is a correctness
/// bug — a second saga is taken for a duplicate of the first, in the
/// coordinator (refused at submit) and in the barrier (its business
/// skipped). The DDL files declare gid columns `COLLATE utf8mb4_bin`;
/// [`ensure_exact_columns`] converts tables created before that.
/// PostgreSQL (deterministic collations) and SQLite (`BINARY`) already
/// compare bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExactColumn {
    /// The column's name.
    pub name: &'static str,
    /// What follows `ALTER TABLE t MODIFY`: the definition as the DDL file has it.
    pub mysql_definition: &'static str,
}

impl ExactColumn {
    /// Whether `create_table` (a `CREATE TABLE` statement) declares this
    /// column exactly as [`ExactColumn::mysql_definition`] says, binary
    /// collation included, white space aside: the migration must produce
    /// exactly what a fresh table gets. For the tests of whoever owns a DDL file.
    pub fn is_declared_in(&self, create_table: &str) -> bool {
        let flat = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        self.mysql_definition.contains("COLLATE utf8mb4_bin")
            && flat(create_table).contains(&flat(self.mysql_definition))
    }
}

/// PostgreSQL DDL (`sql/postgres/*.sql`).
pub mod postgres {
    use crate::BarrierDatabase;
    /// The barrier table, named `barrier` (see [`super::barrier_statements`] for other names).
    pub const BARRIER: &str = <sqlx::Postgres as BarrierDatabase>::BARRIER_DDL;
}

/// SQLite DDL (`sql/sqlite/*.sql`).
pub mod sqlite {
    use crate::BarrierDatabase;
    /// The barrier table, named `barrier` (see [`super::barrier_statements`] for other names).
    pub const BARRIER: &str = <sqlx::Sqlite as BarrierDatabase>::BARRIER_DDL;
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
///
/// On MySQL an existing table whose `gid` still has a case-insensitive
/// collation (dtm's own DDL, our older one) is converted to the binary one
/// (see [`ensure_exact_columns`]).
pub async fn ensure_barrier_table<DB: BarrierDatabase>(
    pool: &Pool<DB>,
    table: &BarrierTable,
) -> Result<(), sqlx::Error> {
    apply_statements(pool, barrier_statements::<DB>(table)).await?;
    ensure_exact_columns(pool, table, &[mysql::BARRIER_GID]).await
}

/// Makes `columns` of `table` compare as exact byte strings.
///
/// MySQL / MariaDB: reads each column's collation from
/// `information_schema.COLUMNS`; if it is not binary (`…_bin`, or none for
/// a `VARBINARY`), runs `ALTER TABLE table MODIFY <definition>`. Idempotent
/// (a binary column is left alone, so the second run does nothing), and
/// safe when several services start at once: the check and the `ALTER` run
/// under the server-wide named lock `GET_LOCK('quickorder.exact_columns')`,
/// so the second process waits, then finds the column already binary. A
/// table or column that does not exist is skipped. PostgreSQL and SQLite:
/// nothing to do.
pub async fn ensure_exact_columns<DB: BarrierDatabase>(
    pool: &Pool<DB>,
    table: &BarrierTable,
    columns: &[ExactColumn],
) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    DB::exact_columns(&mut conn, table, columns).await
}

/// The server-wide lock that serialises [`ensure_exact_columns`] across processes.
const EXACT_COLUMNS_LOCK: &str = "quickorder.exact_columns";

/// Longest wait for another process's migration, in seconds. An `ALTER` of
/// a large barrier table copies it; a minute is generous for the tables
/// these services keep, and a timeout is an error, not a silent skip.
const EXACT_COLUMNS_LOCK_WAIT_SECS: i64 = 60;

/// [`ensure_exact_columns`] on MySQL / MariaDB.
pub(crate) async fn mysql_exact_columns(
    conn: &mut sqlx::MySqlConnection,
    table: &BarrierTable,
    columns: &[ExactColumn],
) -> Result<(), sqlx::Error> {
    let (schema, name) = match table.as_str().split_once('.') {
        Some((schema, name)) => (Some(schema), name),
        None => (None, table.as_str()),
    };
    // Every part of a BarrierTable is [A-Za-z0-9_]: quoting cannot be escaped,
    // and it makes reserved words such as `order` usable.
    let quoted = match schema {
        Some(schema) => format!("`{schema}`.`{name}`"),
        None => format!("`{name}`"),
    };
    let needs_change = async |conn: &mut sqlx::MySqlConnection| -> Result<Vec<ExactColumn>, sqlx::Error> {
        let mut pending = Vec::new();
        for column in columns {
            let collation: Option<Option<String>> = sqlx::query_scalar(
                "SELECT CAST(COLLATION_NAME AS CHAR) FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? AND COLUMN_NAME = ?",
            )
            .bind(schema)
            .bind(name)
            .bind(column.name)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(Some(collation)) = collation
                && !collation.ends_with("_bin")
            {
                pending.push(*column);
            }
        }
        Ok(pending)
    };
    // The common case, every start after the first: nothing to convert, no lock taken.
    if needs_change(conn).await?.is_empty() {
        return Ok(());
    }
    let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
        .bind(EXACT_COLUMNS_LOCK)
        .bind(EXACT_COLUMNS_LOCK_WAIT_SECS)
        .fetch_one(&mut *conn)
        .await?;
    if locked != Some(1) {
        return Err(sqlx::Error::Protocol(format!(
            "could not take the lock {EXACT_COLUMNS_LOCK:?} within {EXACT_COLUMNS_LOCK_WAIT_SECS} s \
             to give {quoted}'s gid columns a binary collation"
        )));
    }
    let result = async {
        // Another process may have converted them while we waited for the lock.
        for column in needs_change(conn).await? {
            tracing::info!(table = %table, column = column.name, "giving the column a binary collation (exact gids)");
            sqlx::query(&format!("ALTER TABLE {quoted} MODIFY {}", column.mysql_definition))
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
    .await;
    let released = sqlx::query("SELECT RELEASE_LOCK(?)").bind(EXACT_COLUMNS_LOCK).execute(&mut *conn).await;
    result.and(released.map(|_| ()))
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
        let counts = [(mysql::BARRIER, 1), (postgres::BARRIER, 1), (sqlite::BARRIER, 1)];
        for (script, count) in counts {
            let statements = statements(script);
            assert_eq!(statements.len(), count, "{statements:#?}");
            assert!(statements.iter().all(|s| !s.contains("--")), "{statements:#?}");
        }
    }

    #[test]
    fn exact_column_definitions_are_the_ddl_files_own() {
        // The migration must produce exactly what a fresh table gets.
        let statement = &statements(mysql::BARRIER)[0];
        assert!(mysql::BARRIER_GID.is_declared_in(statement), "{statement}");
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
