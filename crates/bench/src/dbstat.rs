//! What the database did, from MariaDB's / MySQL's server-wide counters.
//!
//! `SHOW GLOBAL STATUS` before and after the measured window; the
//! difference divided by the sagas finished is "SQL per saga". The counters
//! are server-wide: anything else using the same server during the run is
//! counted too, which is why the bench creates its own databases but cannot
//! exclude other clients — run it on a quiet server (the smoke test uses a
//! private one).
//!
//! | counter | what it says |
//! |---|---|
//! | `Questions` | statements sent by clients (text and prepared), the total SQL cost |
//! | `Com_select/insert/update/delete` | statements of each kind (prepared ones included) |
//! | `Com_stmt_execute` | executions of prepared statements (sqlx prepares every query) |
//! | `Com_begin`, `Com_commit`, `Com_rollback` | explicit transactions; an autocommit write commits without a `Com_commit` |
//! | `Handler_commit` | every internal commit, autocommit statements included |
//! | `Innodb_data_fsyncs` | every InnoDB fsync, the redo log's included (MariaDB ≥ 10.5 has no separate log counter): the durability cost, after group commit |
//! | `Innodb_log_writes` | writes to the redo log |

use std::collections::BTreeMap;

use sqlx::{Connection, MySqlConnection};

/// The counters the report shows, in this order.
pub const COUNTERS: &[&str] = &[
    "Questions",
    "Com_select",
    "Com_insert",
    "Com_update",
    "Com_delete",
    "Com_stmt_execute",
    "Com_begin",
    "Com_commit",
    "Com_rollback",
    "Handler_commit",
    "Innodb_data_fsyncs",
    "Innodb_log_writes",
];

/// A connection kept open for the two readings, so that connecting is not
/// counted in between.
pub struct Monitor {
    /// Its own connection to the server (no database selected).
    conn: MySqlConnection,
}

/// Counter name → value.
pub type Counters = BTreeMap<String, u64>;

/// The numeric `SHOW GLOBAL STATUS` variables among `names`, as the server
/// spells them.
pub async fn global_status(conn: &mut MySqlConnection, names: &[&str]) -> Result<Counters, sqlx::Error> {
    let list = names.iter().map(|name| format!("'{name}'")).collect::<Vec<_>>().join(",");
    let rows: Vec<(String, String)> =
        sqlx::query_as(&format!("SHOW GLOBAL STATUS WHERE Variable_name IN ({list})"))
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().filter_map(|(name, value)| Some((name, value.parse().ok()?))).collect())
}

impl Monitor {
    /// Connects to the server URL (`mysql://root@127.0.0.1:3306`).
    pub async fn connect(server_url: &str) -> Result<Monitor, sqlx::Error> {
        Ok(Monitor { conn: MySqlConnection::connect(server_url).await? })
    }

    /// Reads [`COUNTERS`].
    pub async fn snapshot(&mut self) -> Result<Counters, sqlx::Error> {
        global_status(&mut self.conn, COUNTERS).await
    }

    /// The server's pid, when its pid file is readable from here (the
    /// server runs on this machine): its CPU time goes into the report.
    pub async fn server_pid(&mut self) -> Option<u32> {
        let path: Option<String> =
            sqlx::query_scalar("SELECT @@pid_file").fetch_one(&mut self.conn).await.ok()?;
        super::procstat::pid_from_file(std::path::Path::new(&path?))
    }

    /// `@@max_connections`: with the pools of the coordinator, order-srv
    /// and stock-srv (64 each by default) a small limit turns load into
    /// "Too many connections" errors.
    pub async fn max_connections(&mut self) -> Option<u64> {
        let limit: i64 = sqlx::query_scalar("SELECT CAST(@@max_connections AS SIGNED)")
            .fetch_one(&mut self.conn)
            .await
            .ok()?;
        u64::try_from(limit).ok()
    }

    /// `innodb_flush_log_at_trx_commit` and the server version, for the
    /// report's notes: whether a commit waits for an fsync changes
    /// everything.
    pub async fn describe(&mut self) -> String {
        let version: String =
            sqlx::query_scalar("SELECT VERSION()").fetch_one(&mut self.conn).await.unwrap_or_default();
        let flush: Option<i64> =
            sqlx::query_scalar("SELECT CAST(@@innodb_flush_log_at_trx_commit AS SIGNED)")
                .fetch_one(&mut self.conn)
                .await
                .ok();
        match flush {
            Some(flush) => format!("{version}, innodb_flush_log_at_trx_commit={flush}"),
            None => version,
        }
    }
}

/// `after - before` for every counter present in both.
pub fn delta(before: &Counters, after: &Counters) -> Counters {
    after
        .iter()
        .filter_map(|(name, &value)| Some((name.clone(), value.saturating_sub(*before.get(name)?))))
        .collect()
}

/// DML statements in a delta: `Com_select + Com_insert + Com_update + Com_delete`.
pub fn statements(delta: &Counters) -> u64 {
    ["Com_select", "Com_insert", "Com_update", "Com_delete"].iter().filter_map(|name| delta.get(*name)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_and_statement_count() {
        let before: Counters = [("Com_insert", 10), ("Com_update", 5), ("Questions", 100)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let after: Counters = [("Com_insert", 30), ("Com_update", 15), ("Questions", 150), ("Com_select", 4)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let d = delta(&before, &after);
        assert_eq!(d["Com_insert"], 20);
        assert_eq!(d["Questions"], 50);
        assert!(!d.contains_key("Com_select"), "absent before: not a delta");
        assert_eq!(statements(&d), 30);
    }
}
