//! The three SQL engines the barrier runs on, and what differs between them.
//!
//! The barrier algorithm is the same everywhere; only two things change per
//! engine: how to say "insert this row unless its unique key already exists"
//! (dtm's `GetInsertIgnoreTemplate`), and how bind parameters are written
//! (`?` or `$1`). [`BarrierDatabase`] captures exactly that, for
//! [`sqlx::MySql`] (MySQL and MariaDB), [`sqlx::Postgres`] and
//! [`sqlx::Sqlite`].
//!
//! The trait is *sealed*: the barrier is only correct on an engine whose
//! insert-ignore waits for a concurrent insert of the same key and then
//! reports 0 rows, and we have checked (and test) that for these three only.

use std::future::Future;

use crate::BarrierTable;

/// An SQL engine the barrier supports: `sqlx::MySql`, `sqlx::Postgres` or
/// `sqlx::Sqlite`. Sealed: it cannot be implemented outside this crate.
pub trait BarrierDatabase: sqlx::Database + sealed::Engine {
    /// The barrier table used when a [`crate::BranchBarrier`] is not given
    /// one: dtm's `dtm_barrier.barrier` on MySQL and PostgreSQL, `barrier`
    /// on SQLite.
    const DEFAULT_TABLE: &'static str;

    /// The engine's insert-ignore of one barrier row. Binds, in order:
    /// `trans_type, gid, branch_id, op, barrier_id, reason`.
    ///
    /// * MySQL: `insert ignore into … values(?,?,?,?,?,?)`
    /// * PostgreSQL: `insert into … values($1,…,$6) on conflict ON CONSTRAINT uniq_barrier do nothing`
    /// * SQLite: `insert or ignore into … values(?,?,?,?,?,?)`
    ///
    /// All three report 1 affected row for a new key and 0 for an existing
    /// one, and all three make a concurrent insert of the same key wait for
    /// the first transaction to end.
    fn insert_ignore_sql(table: &BarrierTable) -> String;

    /// `select reason from <table> where gid=? and branch_id=? and op=? and barrier_id=?`.
    fn select_reason_sql(table: &BarrierTable) -> String;

    /// The barrier table's DDL (`sql/<engine>/barrier.sql`), for the unqualified name `barrier`.
    const BARRIER_DDL: &'static str;
}

/// The private half of [`BarrierDatabase`]: the few queries the barrier runs,
/// written once per engine so that the generic code never needs sqlx's
/// executor bounds. Not nameable outside the crate, hence "sealed".
pub(crate) mod sealed {
    use super::*;

    /// One barrier row to insert.
    pub struct BarrierRow<'a> {
        pub trans_type: &'a str,
        pub gid: &'a str,
        pub branch_id: &'a str,
        pub op: &'a str,
        pub barrier_id: &'a str,
        /// The op of the call that inserts the row.
        pub reason: &'a str,
    }

    /// Per-engine execution of the barrier's statements.
    pub trait Engine: sqlx::Database {
        /// Runs an insert-ignore, returning the affected rows (1 new, 0 existing).
        fn insert_row<'a>(
            conn: &'a mut Self::Connection,
            sql: &'a str,
            row: &'a BarrierRow<'a>,
        ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;

        /// Reads the `reason` of the row with this key, if it exists.
        fn select_reason<'a>(
            conn: &'a mut Self::Connection,
            sql: &'a str,
            key: [&'a str; 4],
        ) -> impl Future<Output = Result<Option<String>, sqlx::Error>> + Send + 'a;

        /// Runs one statement without parameters (DDL).
        fn execute<'a>(
            conn: &'a mut Self::Connection,
            sql: &'a str,
        ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send + 'a;

        /// Gives `columns` of `table` a byte-exact collation where the engine
        /// needs it (see [`crate::schema::ensure_exact_columns`]).
        fn exact_columns<'a>(
            conn: &'a mut Self::Connection,
            table: &'a BarrierTable,
            columns: &'a [crate::schema::ExactColumn],
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'a;
    }
}

/// Implements both halves for one engine. Only the SQL text differs.
macro_rules! barrier_database {
    (
        $db:ty, dir: $dir:literal, default_table: $default:expr,
        insert: $insert:literal, select: $select:literal, exact_columns: $exact:expr $(,)?
    ) => {
        impl BarrierDatabase for $db {
            const DEFAULT_TABLE: &'static str = $default;

            fn insert_ignore_sql(table: &BarrierTable) -> String {
                format!($insert, table = table)
            }

            fn select_reason_sql(table: &BarrierTable) -> String {
                format!($select, table = table)
            }

            const BARRIER_DDL: &'static str = include_str!(concat!("../../../sql/", $dir, "/barrier.sql"));
        }

        impl sealed::Engine for $db {
            async fn insert_row<'a>(
                conn: &'a mut Self::Connection,
                sql: &'a str,
                row: &'a sealed::BarrierRow<'a>,
            ) -> Result<u64, sqlx::Error> {
                let done = sqlx::query(sql)
                    .bind(row.trans_type)
                    .bind(row.gid)
                    .bind(row.branch_id)
                    .bind(row.op)
                    .bind(row.barrier_id)
                    .bind(row.reason)
                    .execute(&mut *conn)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn select_reason<'a>(
                conn: &'a mut Self::Connection,
                sql: &'a str,
                key: [&'a str; 4],
            ) -> Result<Option<String>, sqlx::Error> {
                let [gid, branch_id, op, barrier_id] = key;
                // `reason` is nullable in dtm's DDL (DEFAULT '' but no NOT NULL).
                let reason: Option<Option<String>> = sqlx::query_scalar(sql)
                    .bind(gid)
                    .bind(branch_id)
                    .bind(op)
                    .bind(barrier_id)
                    .fetch_optional(&mut *conn)
                    .await?;
                Ok(reason.map(Option::unwrap_or_default))
            }

            async fn execute<'a>(conn: &'a mut Self::Connection, sql: &'a str) -> Result<u64, sqlx::Error> {
                Ok(sqlx::query(sql).execute(&mut *conn).await?.rows_affected())
            }

            async fn exact_columns<'a>(
                conn: &'a mut Self::Connection,
                table: &'a BarrierTable,
                columns: &'a [crate::schema::ExactColumn],
            ) -> Result<(), sqlx::Error> {
                $exact(conn, table, columns).await
            }
        }
    };
}

barrier_database!(
    sqlx::MySql,
    dir: "mysql",
    default_table: BarrierTable::DTM_DEFAULT,
    insert: "insert ignore into {table}(trans_type, gid, branch_id, op, barrier_id, reason) values(?,?,?,?,?,?)",
    select: "select reason from {table} where gid=? and branch_id=? and op=? and barrier_id=?",
    exact_columns: crate::schema::mysql_exact_columns,
);

barrier_database!(
    sqlx::Postgres,
    dir: "postgres",
    default_table: BarrierTable::DTM_DEFAULT,
    insert: "insert into {table}(trans_type, gid, branch_id, op, barrier_id, reason) values($1,$2,$3,$4,$5,$6) \
             on conflict ON CONSTRAINT uniq_barrier do nothing",
    select: "select reason from {table} where gid=$1 and branch_id=$2 and op=$3 and barrier_id=$4",
    // Deterministic collations (the only kind a database default can be) compare bytes.
    exact_columns: already_exact,
);

barrier_database!(
    sqlx::Sqlite,
    dir: "sqlite",
    default_table: BarrierTable::UNQUALIFIED,
    insert: "insert or ignore into {table}(trans_type, gid, branch_id, op, barrier_id, reason) values(?,?,?,?,?,?)",
    select: "select reason from {table} where gid=? and branch_id=? and op=? and barrier_id=?",
    // SQLite's default collation is BINARY.
    exact_columns: already_exact,
);

/// [`sealed::Engine::exact_columns`] of an engine that already compares bytes.
async fn already_exact<C>(
    _conn: &mut C,
    _table: &BarrierTable,
    _columns: &[crate::schema::ExactColumn],
) -> Result<(), sqlx::Error> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: &str = "(trans_type, gid, branch_id, op, barrier_id, reason)";

    #[test]
    fn each_engine_has_its_own_insert_ignore() {
        let table = BarrierTable::new("dtm_barrier.barrier").unwrap();
        let mysql = sqlx::MySql::insert_ignore_sql(&table);
        let postgres = sqlx::Postgres::insert_ignore_sql(&table);
        let sqlite = sqlx::Sqlite::insert_ignore_sql(&table);
        assert!(mysql.starts_with("insert ignore into dtm_barrier.barrier(trans_type,"), "{mysql}");
        assert!(postgres.ends_with("on conflict ON CONSTRAINT uniq_barrier do nothing"), "{postgres}");
        assert!(sqlite.starts_with("insert or ignore into dtm_barrier.barrier"), "{sqlite}");
        for sql in [&mysql, &postgres, &sqlite] {
            assert!(sql.contains(COLUMNS), "{sql}");
        }
        assert!(sqlx::Postgres::select_reason_sql(&table).contains("barrier_id=$4"));
    }
}
