//! The SQL stores: one body, three engines.
//!
//! sqlx's types differ per engine (`Pool<MySql>`, `Pool<Postgres>`, …) and
//! writing the code generically drowns it in trait bounds, so the body is
//! written once inside [`sql_store!`] and instantiated three times. The few
//! real dialect differences are in [`Dialect`]. Every statement is built with
//! [`QueryBuilder`], which writes the right placeholder (`?` or `$n`).
//!
//! Statements per operation (what the performance budget counts):
//!
//! | operation | statements | commits |
//! |---|---|---|
//! | `create` (new gid) | INSERT global, INSERT all branches (one multi-row insert) | 1 |
//! | `update` with branch results | UPDATE global (conditional), one UPDATE per distinct branch status | 1 |
//! | `update` without branch results | UPDATE global (autocommit) | 1 |
//! | `lease_due` | UPDATE … LIMIT n, SELECT by owner, SELECT branches | 1 |
//! | `acquire` | UPDATE (conditional), SELECT global, SELECT branches | 1 |
//! | `write_batch` (group commit of n creates, m updates) | INSERT globals, INSERT branches, one UPDATE per distinct global change, one UPDATE per branch status | 1 |

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use barrier::Gid;
use chrono::{DateTime, SubsecRound, Utc};
use sqlx::{QueryBuilder, Row};

use super::{
    BranchChange, BranchRow, CreateOutcome, Fence, GlobalRow, LeaseToken, ListFilter, NewBranch, NewGlobal,
    NewTrans, Page, ResetCount, Schedule, StatusUpdate, Store, StoreError, StoredTrans,
};
use crate::model::{BranchStatus, GlobalStatus};

/// Statuses a poller may pick up.
const UNFINISHED: &str = "('prepared','submitted','aborting')";

const GLOBAL_COLUMNS: &str = "id, gid, trans_type, status, query_prepared, protocol, create_time, update_time, \
     finish_time, rollback_time, options, custom_data, next_cron_interval, next_cron_time, owner, ext_data, \
     result, rollback_reason";

const BRANCH_COLUMNS: &str =
    "id, gid, url, bin_data, branch_id, op, status, finish_time, rollback_time, create_time, update_time";

/// The gid columns that must compare as exact byte strings, as
/// `sql/mysql/coordinator.sql` declares them. Tables created by dtm's DDL or
/// an older version of ours have the table's case-insensitive collation:
/// saga `abc` would be refused as a duplicate of saga `AbC`. [`open`]
/// converts them (MySQL only; see `barrier::schema::ensure_exact_columns`).
///
/// [`open`]: MySqlStore::open
const EXACT_GID_COLUMNS: [(&str, barrier::schema::ExactColumn); 2] = [
    (
        "trans_global",
        barrier::schema::ExactColumn {
            name: "gid",
            mysql_definition: "gid varchar(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL \
                               COMMENT 'global transaction id'",
        },
    ),
    (
        "trans_branch_op",
        barrier::schema::ExactColumn {
            name: "gid",
            mysql_definition: "gid varchar(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL",
        },
    ),
];

/// Applies [`EXACT_GID_COLUMNS`] (idempotent, safe with concurrent starts).
async fn ensure_exact_gids<DB: barrier::BarrierDatabase>(pool: &sqlx::Pool<DB>) -> Result<(), StoreError> {
    for (table, column) in EXACT_GID_COLUMNS {
        let table = barrier::BarrierTable::new(table)
            .map_err(|e| StoreError::Corrupt(format!("table {table}: {e}")))?;
        barrier::schema::ensure_exact_columns(pool, &table, &[column]).await?;
    }
    Ok(())
}

/// What differs between the engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    MySql,
    Postgres,
    Sqlite,
}

impl Dialect {
    /// The schema script (`sql/<engine>/coordinator.sql`).
    fn ddl(self) -> &'static str {
        match self {
            Dialect::MySql => include_str!("../../../../sql/mysql/coordinator.sql"),
            Dialect::Postgres => include_str!("../../../../sql/postgres/coordinator.sql"),
            Dialect::Sqlite => include_str!("../../../../sql/sqlite/coordinator.sql"),
        }
    }

    /// The statements of the schema script, comments removed.
    fn ddl_statements(self) -> Vec<String> {
        let without_comments: String =
            self.ddl().lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
        without_comments.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
    }

    /// The database's current time, as stored in `next_cron_time` (UTC,
    /// whole seconds): every lease is judged on this one clock.
    fn db_now(self) -> &'static str {
        match self {
            Dialect::MySql => "UTC_TIMESTAMP()",
            Dialect::Postgres => "date_trunc('second', statement_timestamp())",
            // sqlx writes chrono times to SQLite as RFC 3339 text; compare like with like.
            Dialect::Sqlite => "strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now')",
        }
    }

    /// The database's current time plus `d` (whole seconds, rounded up).
    /// The number is ours, formatted into the SQL: no injection is possible.
    fn db_later(self, d: Duration) -> String {
        let secs = super::schedule_secs(d);
        if secs == 0 {
            return self.db_now().to_string();
        }
        match self {
            Dialect::MySql => format!("(UTC_TIMESTAMP() + INTERVAL {secs} SECOND)"),
            Dialect::Postgres => {
                format!("(date_trunc('second', statement_timestamp()) + INTERVAL '{secs} seconds')")
            }
            Dialect::Sqlite => format!("strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now', '+{secs} seconds')"),
        }
    }

    /// Insert-if-absent: `INSERT IGNORE` on MySQL, `ON CONFLICT DO NOTHING` elsewhere.
    fn insert_global(self) -> (&'static str, &'static str) {
        match self {
            Dialect::MySql => ("INSERT IGNORE INTO trans_global", ""),
            Dialect::Postgres | Dialect::Sqlite => {
                ("INSERT INTO trans_global", " ON CONFLICT (gid) DO NOTHING")
            }
        }
    }

    /// Starts `UPDATE trans_global SET …` limited to the first `limit` rows
    /// (by `next_cron_time`) matching `where_clause` — pushes the SET part
    /// via `set` and the WHERE part via `filter`. MySQL has `UPDATE … ORDER
    /// BY … LIMIT`; the others update `WHERE id IN (SELECT … LIMIT)`, and
    /// Postgres skips rows another instance is leasing right now.
    fn limited_update<'a, DB: sqlx::Database>(
        self,
        q: &mut QueryBuilder<'a, DB>,
        set: impl FnOnce(&mut QueryBuilder<'a, DB>),
        filter: impl FnOnce(&mut QueryBuilder<'a, DB>),
        limit: i64,
    ) where
        i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    {
        q.push("UPDATE trans_global SET ");
        set(q);
        match self {
            Dialect::MySql => {
                q.push(" WHERE ");
                filter(q);
                q.push(" ORDER BY next_cron_time LIMIT ").push_bind(limit);
            }
            Dialect::Postgres | Dialect::Sqlite => {
                q.push(" WHERE id IN (SELECT id FROM trans_global WHERE ");
                filter(q);
                q.push(" ORDER BY next_cron_time LIMIT ").push_bind(limit);
                if self == Dialect::Postgres {
                    q.push(" FOR UPDATE SKIP LOCKED");
                }
                q.push(")");
            }
        }
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn map_unique(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Duplicate(d.message().to_string()),
        _ => StoreError::Database(e),
    }
}

/// How often a transaction the database aborted to break a deadlock is run
/// again before the error reaches the caller.
const CONFLICT_RETRIES: u32 = 3;

/// A deadlock or serialization failure: InnoDB's 1213 and PostgreSQL's
/// 40P01 / 40001. The database has rolled the whole transaction back, so
/// running it again is safe (every status change is conditional anyway).
fn is_transient_conflict(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(d)) => {
            matches!(d.code().as_deref(), Some("40001" | "40P01")) || d.message().contains("Deadlock found")
        }
        _ => false,
    }
}

fn limit_of(limit: u32) -> i64 {
    i64::from(limit.max(1))
}

/// Groups branch rows (ordered by id) under their global rows.
fn attach(globals: Vec<GlobalRow>, branches: Vec<BranchRow>) -> Vec<StoredTrans> {
    let mut by_gid: BTreeMap<Gid, Vec<BranchRow>> = BTreeMap::new();
    for b in branches {
        by_gid.entry(b.gid.clone()).or_default().push(b);
    }
    globals
        .into_iter()
        .map(|g| {
            let branches = by_gid.remove(&g.gid).unwrap_or_default();
            StoredTrans { global: g, branches }
        })
        .collect()
}

macro_rules! sql_store {
    ($(#[$doc:meta])* $name:ident, $db:ty, $options:ty, $dialect:expr, $tune:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            pool: sqlx::Pool<$db>,
        }

        impl $name {
            /// Connects and applies the schema (idempotent).
            pub async fn open(url: &str, max_connections: u32) -> Result<$name, StoreError> {
                let options: $options = url.parse()?;
                let tune: fn($options) -> $options = $tune;
                let pool = sqlx::pool::PoolOptions::<$db>::new()
                    .max_connections(max_connections.max(1))
                    .connect_with(tune(options))
                    .await?;
                for statement in $dialect.ddl_statements() {
                    sqlx::query(&statement).execute(&pool).await?;
                }
                ensure_exact_gids(&pool).await?;
                Ok($name { pool })
            }

            /// The connection pool (tests and tools).
            pub fn pool(&self) -> &sqlx::Pool<$db> {
                &self.pool
            }

            /// The `gid` column. On MySQL it has a binary collation (exact
            /// gids), which sqlx reports as `VARBINARY` and refuses to decode
            /// as a `String`: read the bytes then. Checked with
            /// [`Gid::from_storage`]: a row accepted before gids had to be
            /// visible ASCII stays readable (one unreadable row would fail
            /// every lease of a batch holding it).
            fn gid_of(row: &<$db as sqlx::Database>::Row) -> Result<Gid, StoreError> {
                let text = match row.try_get::<String, _>("gid") {
                    Ok(text) => text,
                    Err(sqlx::Error::ColumnDecode { .. }) => String::from_utf8(row.try_get::<Vec<u8>, _>("gid")?)
                        .map_err(|e| corrupt("gid", e))?,
                    Err(e) => return Err(e.into()),
                };
                Gid::from_storage(text).map_err(|e| corrupt("gid", e))
            }

            fn global_row(row: &<$db as sqlx::Database>::Row) -> Result<GlobalRow, StoreError> {
                let text = |col: &str| -> Result<String, StoreError> {
                    Ok(row.try_get::<Option<String>, _>(col)?.unwrap_or_default())
                };
                Ok(GlobalRow {
                    id: row.try_get("id")?,
                    gid: Self::gid_of(row)?,
                    trans_type: text("trans_type")?.parse().map_err(|e| corrupt("trans_type", e))?,
                    status: text("status")?.parse().map_err(|e| corrupt("status", e))?,
                    query_prepared: text("query_prepared")?,
                    protocol: crate::model::Protocol::parse_or_default(&text("protocol")?)
                        .map_err(|e| corrupt("protocol", e))?,
                    create_time: row.try_get("create_time")?,
                    update_time: row.try_get("update_time")?,
                    finish_time: row.try_get("finish_time")?,
                    rollback_time: row.try_get("rollback_time")?,
                    options: text("options")?,
                    custom_data: text("custom_data")?,
                    next_cron_interval: i64::from(row.try_get::<Option<i32>, _>("next_cron_interval")?.unwrap_or(0)),
                    next_cron_time: row.try_get("next_cron_time")?,
                    owner: text("owner")?,
                    ext_data: text("ext_data")?,
                    result: text("result")?,
                    rollback_reason: text("rollback_reason")?,
                })
            }

            fn branch_row(row: &<$db as sqlx::Database>::Row) -> Result<BranchRow, StoreError> {
                let text = |col: &str| -> Result<String, StoreError> {
                    Ok(row.try_get::<Option<String>, _>(col)?.unwrap_or_default())
                };
                Ok(BranchRow {
                    id: row.try_get("id")?,
                    gid: Self::gid_of(row)?,
                    url: text("url")?,
                    bin_data: row.try_get::<Option<Vec<u8>>, _>("bin_data")?.unwrap_or_default(),
                    branch_id: barrier::BranchId::new(text("branch_id")?).map_err(|e| corrupt("branch_id", e))?,
                    op: text("op")?.parse().map_err(|e| corrupt("op", e))?,
                    status: text("status")?.parse().map_err(|e| corrupt("branch status", e))?,
                    finish_time: row.try_get("finish_time")?,
                    rollback_time: row.try_get("rollback_time")?,
                    create_time: row.try_get("create_time")?,
                    update_time: row.try_get("update_time")?,
                })
            }

            async fn branches_of<'e, E>(executor: E, gids: &[Gid]) -> Result<Vec<BranchRow>, StoreError>
            where
                E: sqlx::Executor<'e, Database = $db>,
            {
                if gids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut q = QueryBuilder::<$db>::new(format!("SELECT {BRANCH_COLUMNS} FROM trans_branch_op WHERE gid IN ("));
                let mut list = q.separated(", ");
                for gid in gids {
                    list.push_bind(gid.as_str().to_string());
                }
                q.push(") ORDER BY id");
                q.build().fetch_all(executor).await?.iter().map(Self::branch_row).collect()
            }

            /// `INSERT` of global rows; with `IGNORE` / `ON CONFLICT DO NOTHING`,
            /// so `rows_affected` counts the gids that were new.
            fn insert_globals<'a>(globals: impl IntoIterator<Item = &'a NewGlobal>) -> QueryBuilder<'a, $db> {
                let (insert, on_conflict) = $dialect.insert_global();
                let mut q = QueryBuilder::<$db>::new(insert);
                q.push(
                    " (gid, trans_type, status, query_prepared, protocol, create_time, update_time, options, \
                     custom_data, next_cron_interval, next_cron_time, owner, ext_data, result, rollback_reason) ",
                );
                q.push_values(globals, |mut row, g| {
                    row.push_bind(g.gid.as_str().to_string())
                        .push_bind(g.trans_type.as_str())
                        .push_bind(g.status.as_str())
                        .push_bind(g.query_prepared.clone())
                        .push_bind(g.protocol.as_str())
                        .push_bind(g.now)
                        .push_bind(g.now)
                        .push_bind(g.options.clone())
                        .push_bind(g.custom_data.clone())
                        .push_bind(i32::try_from(g.next_cron_interval).unwrap_or(i32::MAX))
                        .push($dialect.db_later(g.lease))
                        .push_bind(g.owner.as_ref().map(|t| t.as_str().to_string()).unwrap_or_default())
                        .push_bind("")
                        .push_bind("")
                        .push_bind(g.rollback_reason.clone());
                });
                q.push(on_conflict);
                q
            }

            /// One multi-row `INSERT` of branch rows (status `prepared`), of one or many transactions.
            fn insert_branches<'a>(rows: &'a [(&'a Gid, &'a NewBranch, DateTime<Utc>)]) -> QueryBuilder<'a, $db> {
                let mut q = QueryBuilder::<$db>::new(
                    "INSERT INTO trans_branch_op (gid, url, bin_data, branch_id, op, status, create_time, update_time) ",
                );
                q.push_values(rows, |mut row, (gid, b, now)| {
                    row.push_bind(gid.as_str().to_string())
                        .push_bind(b.url.clone())
                        .push_bind(b.bin_data.clone())
                        .push_bind(b.branch_id.as_str().to_string())
                        .push_bind(b.op.as_str())
                        .push_bind(BranchStatus::Prepared.as_str())
                        .push_bind(*now)
                        .push_bind(*now);
                });
                q
            }

            /// The conditional `UPDATE` of global rows that share one change
            /// (status, schedule, time and, for a take-over, the token): each
            /// row changes only if it is still in status `expected` and — for
            /// a pass's write — still owned by that pass's token.
            /// `rows_affected` counts those that did.
            ///
            /// Several passes' tokens are matched with one `owner IN (…)`
            /// next to `gid IN (…)`. That is exact because no token of ours
            /// can be the current owner of another gid of the group: tokens
            /// are fresh per grant, and a gid this instance is driving is
            /// never leased again by it (`lease_due`'s `skip`).
            fn update_globals<'a>(group: &[&'a StatusUpdate]) -> QueryBuilder<'a, $db> {
                let first = group[0];
                let (change, now) = (&first.change, first.now);
                let mut q = QueryBuilder::<$db>::new("UPDATE trans_global SET update_time = ");
                q.push_bind(now);
                let (Schedule::Hold(delay) | Schedule::Release(delay)) = change.schedule;
                q.push(", next_cron_time = ").push($dialect.db_later(delay));
                match (&change.schedule, &first.fence) {
                    (Schedule::Release(_), _) => {
                        q.push(", owner = ''");
                    }
                    (Schedule::Hold(_), Fence::TakeOver(token)) => {
                        q.push(", owner = ").push_bind(token.as_str());
                    }
                    (Schedule::Hold(_), Fence::Owner(_)) => {}
                }
                q.push(", next_cron_interval = ").push_bind(i32::try_from(change.next_cron_interval).unwrap_or(i32::MAX));
                if let Some(status) = change.status {
                    q.push(", status = ").push_bind(status.as_str());
                    match status {
                        GlobalStatus::Succeed => {
                            q.push(", finish_time = ").push_bind(now);
                        }
                        GlobalStatus::Failed => {
                            q.push(", rollback_time = ").push_bind(now);
                        }
                        _ => {}
                    }
                }
                if let Some(reason) = &change.rollback_reason {
                    q.push(", rollback_reason = ").push_bind(reason.as_str());
                }
                if let [u] = group {
                    q.push(" WHERE gid = ").push_bind(u.gid.as_str());
                } else {
                    q.push(" WHERE gid IN (");
                    let mut list = q.separated(", ");
                    for u in group {
                        list.push_bind(u.gid.as_str());
                    }
                    q.push(")");
                }
                q.push(" AND status = ").push_bind(first.expected.as_str());
                if let Fence::Owner(_) = first.fence {
                    let mut tokens: Vec<&str> = group.iter().map(|u| u.fence.token().as_str()).collect();
                    tokens.sort_unstable();
                    tokens.dedup();
                    if let [token] = tokens[..] {
                        q.push(" AND owner = ").push_bind(token);
                    } else {
                        q.push(" AND owner IN (");
                        let mut list = q.separated(", ");
                        for token in tokens {
                            list.push_bind(token);
                        }
                        q.push(")");
                    }
                }
                q
            }

            /// Records branch results, of one or many transactions: one
            /// `UPDATE` per distinct new status (a finished saga: one),
            /// naming each row by its unique key `(gid, branch_id, op)`.
            async fn update_branches(
                tx: &mut sqlx::Transaction<'_, $db>,
                rows: &[(&Gid, &BranchChange)],
                now: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                for status in [BranchStatus::Succeed, BranchStatus::Failed, BranchStatus::Prepared] {
                    let rows: Vec<_> = rows.iter().filter(|(_, b)| b.status == status).collect();
                    if rows.is_empty() {
                        continue;
                    }
                    let mut b = QueryBuilder::<$db>::new("UPDATE trans_branch_op SET status = ");
                    b.push_bind(status.as_str()).push(", update_time = ").push_bind(now);
                    b.push(", finish_time = ").push_bind((status != BranchStatus::Prepared).then_some(now));
                    b.push(" WHERE ");
                    for (i, (gid, row)) in rows.iter().enumerate() {
                        if i > 0 {
                            b.push(" OR ");
                        }
                        b.push("(gid = ").push_bind(gid.as_str());
                        b.push(" AND branch_id = ").push_bind(row.branch_id.as_str());
                        b.push(" AND op = ").push_bind(row.op.as_str()).push(")");
                    }
                    b.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// One attempt of [`Store::update`].
            async fn update_once(&self, update: &StatusUpdate) -> Result<bool, StoreError> {
                let StatusUpdate { gid, branches, now, .. } = update;
                let mut q = Self::update_globals(&[update]);
                if branches.is_empty() {
                    return Ok(q.build().execute(&self.pool).await?.rows_affected() > 0);
                }
                let mut tx = self.pool.begin().await?;
                // The global row first: on MySQL/Postgres this locks it, so a
                // concurrent writer of the same transaction waits for us and
                // then sees the new status.
                if q.build().execute(&mut *tx).await?.rows_affected() == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                let rows: Vec<(&Gid, &BranchChange)> = branches.iter().map(|b| (gid, b)).collect();
                Self::update_branches(&mut tx, &rows, *now).await?;
                tx.commit().await?;
                Ok(true)
            }

            /// One attempt of [`Store::write_batch`].
            async fn write_batch_once(
                &self,
                creates: &[NewTrans],
                updates: &[StatusUpdate],
            ) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin().await?;
                if !creates.is_empty() {
                    let inserted = Self::insert_globals(creates.iter().map(|c| &c.global))
                        .build()
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if inserted != creates.len() as u64 {
                        tx.rollback().await?;
                        return Ok(false);
                    }
                    let rows: Vec<(&Gid, &NewBranch, DateTime<Utc>)> = creates
                        .iter()
                        .flat_map(|c| c.branches.iter().map(|b| (&c.global.gid, b, c.global.now)))
                        .collect();
                    if !rows.is_empty() {
                        Self::insert_branches(&rows).build().execute(&mut *tx).await.map_err(map_unique)?;
                    }
                }
                // Global rows first (see `update_once`), one statement per
                // distinct change — sagas finishing in the same second share one.
                // Passes' writes share a statement whatever their tokens
                // (see `update_globals`); a take-over writes its own token.
                let group_key = |u: &StatusUpdate| {
                    let takeover = match &u.fence {
                        Fence::Owner(_) => None,
                        Fence::TakeOver(token) => Some(token.clone()),
                    };
                    (u.expected, u.change.clone(), u.now, takeover)
                };
                let mut groups: Vec<Vec<&StatusUpdate>> = Vec::new();
                for u in updates {
                    match groups.iter_mut().find(|group| group_key(group[0]) == group_key(u)) {
                        Some(group) => group.push(u),
                        None => groups.push(vec![u]),
                    }
                }
                for group in &groups {
                    let moved = Self::update_globals(group)
                        .build()
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if moved != group.len() as u64 {
                        tx.rollback().await?;
                        return Ok(false);
                    }
                }
                let mut by_time: Vec<(DateTime<Utc>, Vec<(&Gid, &BranchChange)>)> = Vec::new();
                for u in updates {
                    let rows = u.branches.iter().map(|b| (&u.gid, b));
                    match by_time.iter_mut().find(|(now, _)| *now == u.now) {
                        Some((_, all)) => all.extend(rows),
                        None => by_time.push((u.now, rows.collect())),
                    }
                }
                for (now, rows) in &by_time {
                    Self::update_branches(&mut tx, rows, *now).await?;
                }
                tx.commit().await?;
                Ok(true)
            }
        }

        #[async_trait]
        impl Store for $name {
            async fn create(&self, g: &NewGlobal, branches: &[NewBranch]) -> Result<CreateOutcome, StoreError> {
                let mut tx = self.pool.begin().await?;
                let inserted = Self::insert_globals([g]).build().execute(&mut *tx).await?.rows_affected();
                if inserted == 0 {
                    let row = sqlx::QueryBuilder::<$db>::new(format!("SELECT {GLOBAL_COLUMNS} FROM trans_global WHERE gid = "))
                        .push_bind(g.gid.as_str().to_string())
                        .build()
                        .fetch_one(&mut *tx)
                        .await?;
                    tx.rollback().await?;
                    return Ok(CreateOutcome::Exists(Box::new(Self::global_row(&row)?)));
                }
                if !branches.is_empty() {
                    let rows: Vec<_> = branches.iter().map(|b| (&g.gid, b, g.now)).collect();
                    Self::insert_branches(&rows).build().execute(&mut *tx).await.map_err(map_unique)?;
                }
                tx.commit().await?;
                Ok(CreateOutcome::Created)
            }

            async fn write_batch(&self, creates: &[NewTrans], updates: &[StatusUpdate]) -> Result<bool, StoreError> {
                // Two writes of one gid cannot share a transaction: the
                // second must see the first's outcome.
                let mut gids = std::collections::HashSet::new();
                if !creates.iter().map(|c| &c.global.gid).chain(updates.iter().map(|u| &u.gid)).all(|g| gids.insert(g)) {
                    return Ok(false);
                }
                let mut attempt = 0;
                loop {
                    match self.write_batch_once(creates, updates).await {
                        Err(e) if attempt < CONFLICT_RETRIES && is_transient_conflict(&e) => {
                            attempt += 1;
                            tracing::debug!(attempt, error = %e, "batch hit a deadlock; running it again");
                        }
                        outcome => return outcome,
                    }
                }
            }

            async fn find(&self, gid: &Gid) -> Result<Option<StoredTrans>, StoreError> {
                let row = QueryBuilder::<$db>::new(format!("SELECT {GLOBAL_COLUMNS} FROM trans_global WHERE gid = "))
                    .push_bind(gid.as_str().to_string())
                    .build()
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(row) = row else { return Ok(None) };
                let global = Self::global_row(&row)?;
                let branches = Self::branches_of(&self.pool, std::slice::from_ref(gid)).await?;
                Ok(Some(StoredTrans { global, branches }))
            }

            async fn list(&self, f: &ListFilter) -> Result<Page, StoreError> {
                let mut q = QueryBuilder::<$db>::new(format!("SELECT {GLOBAL_COLUMNS} FROM trans_global WHERE 1 = 1"));
                if let Some(gid) = &f.gid {
                    q.push(" AND gid = ").push_bind(gid.as_str().to_string());
                }
                if let Some(position) = f.position {
                    q.push(" AND id < ").push_bind(position);
                }
                if let Some(status) = f.status {
                    q.push(" AND status = ").push_bind(status.as_str());
                }
                if let Some(trans_type) = f.trans_type {
                    q.push(" AND trans_type = ").push_bind(trans_type.as_str());
                }
                // Stored times have whole seconds; compare like with like
                // (SQLite compares the text).
                if let Some(start) = f.create_time_start {
                    q.push(" AND create_time >= ").push_bind(start.trunc_subsecs(0));
                }
                if let Some(end) = f.create_time_end {
                    q.push(" AND create_time <= ").push_bind(end.trunc_subsecs(0));
                }
                let limit = limit_of(f.limit);
                q.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
                let rows = q.build().fetch_all(&self.pool).await?;
                let transactions = rows.iter().map(Self::global_row).collect::<Result<Vec<_>, _>>()?;
                let next_position = match transactions.last() {
                    Some(last) if i64::try_from(transactions.len()).unwrap_or(0) == limit => last.id.to_string(),
                    _ => String::new(),
                };
                Ok(Page { transactions, next_position })
            }

            async fn update(&self, update: StatusUpdate) -> Result<bool, StoreError> {
                let mut attempt = 0;
                loop {
                    match self.update_once(&update).await {
                        Err(e) if attempt < CONFLICT_RETRIES && is_transient_conflict(&e) => {
                            attempt += 1;
                            tracing::debug!(gid = %update.gid, attempt, error = %e, "status update hit a deadlock; running it again");
                        }
                        outcome => return outcome,
                    }
                }
            }

            async fn add_branches(
                &self,
                gid: &Gid,
                expected: GlobalStatus,
                branches: &[NewBranch],
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin().await?;
                // A write, not a SELECT … FOR UPDATE: it checks the status and
                // takes the row lock in one step on every engine (SQLite has
                // no FOR UPDATE and must start its write transaction early).
                let touched = QueryBuilder::<$db>::new("UPDATE trans_global SET update_time = ")
                    .push_bind(now)
                    .push(" WHERE gid = ")
                    .push_bind(gid.as_str().to_string())
                    .push(" AND status = ")
                    .push_bind(expected.as_str())
                    .build()
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if touched == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                if !branches.is_empty() {
                    let rows: Vec<_> = branches.iter().map(|b| (gid, b, now)).collect();
                    Self::insert_branches(&rows).build().execute(&mut *tx).await.map_err(map_unique)?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn lease_due(
                &self,
                owner: &LeaseToken,
                lease_for: Duration,
                limit: u32,
                skip: &[Gid],
                now: DateTime<Utc>,
            ) -> Result<Vec<StoredTrans>, StoreError> {
                let mut q = QueryBuilder::<$db>::new("");
                $dialect.limited_update(
                    &mut q,
                    |q| {
                        q.push("owner = ").push_bind(owner.as_str().to_string());
                        q.push(", next_cron_time = ").push($dialect.db_later(lease_for));
                        q.push(", update_time = ").push_bind(now);
                    },
                    |q| {
                        q.push(format!("status IN {UNFINISHED} AND next_cron_time <= {}", $dialect.db_now()));
                        if !skip.is_empty() {
                            q.push(" AND gid NOT IN (");
                            let mut list = q.separated(", ");
                            for gid in skip {
                                list.push_bind(gid.as_str().to_string());
                            }
                            q.push(")");
                        }
                    },
                    limit_of(limit),
                );
                if q.build().execute(&self.pool).await?.rows_affected() == 0 {
                    return Ok(Vec::new());
                }
                let rows = QueryBuilder::<$db>::new(format!("SELECT {GLOBAL_COLUMNS} FROM trans_global WHERE owner = "))
                    .push_bind(owner.as_str().to_string())
                    .push(" ORDER BY id")
                    .build()
                    .fetch_all(&self.pool)
                    .await?;
                let globals = rows.iter().map(Self::global_row).collect::<Result<Vec<_>, _>>()?;
                let gids: Vec<Gid> = globals.iter().map(|g| g.gid.clone()).collect();
                let branches = Self::branches_of(&self.pool, &gids).await?;
                Ok(attach(globals, branches))
            }

            async fn acquire(
                &self,
                gid: &Gid,
                owner: &LeaseToken,
                lease_for: Duration,
                now: DateTime<Utc>,
            ) -> Result<Option<StoredTrans>, StoreError> {
                let mut tx = self.pool.begin().await?;
                let mut q = QueryBuilder::<$db>::new("UPDATE trans_global SET owner = ");
                q.push_bind(owner.as_str().to_string());
                q.push(", next_cron_time = ").push($dialect.db_later(lease_for));
                q.push(", update_time = ").push_bind(now);
                q.push(" WHERE gid = ").push_bind(gid.as_str().to_string());
                q.push(format!(
                    " AND status IN {UNFINISHED} AND (owner = '' OR next_cron_time IS NULL OR next_cron_time <= {})",
                    $dialect.db_now()
                ));
                if q.build().execute(&mut *tx).await?.rows_affected() == 0 {
                    tx.rollback().await?;
                    return Ok(None);
                }
                // Read under the new lease, in the same transaction: what the
                // pass decides on is exactly what its token now guards.
                let row = QueryBuilder::<$db>::new(format!("SELECT {GLOBAL_COLUMNS} FROM trans_global WHERE gid = "))
                    .push_bind(gid.as_str().to_string())
                    .build()
                    .fetch_one(&mut *tx)
                    .await?;
                let global = Self::global_row(&row)?;
                let branches = Self::branches_of(&mut *tx, std::slice::from_ref(gid)).await?;
                tx.commit().await?;
                Ok(Some(StoredTrans { global, branches }))
            }

            async fn release(&self, held: &[(Gid, LeaseToken)], now: DateTime<Utc>) -> Result<u64, StoreError> {
                if held.is_empty() {
                    return Ok(0);
                }
                let mut q = QueryBuilder::<$db>::new(format!(
                    "UPDATE trans_global SET owner = '', next_cron_time = {}, update_time = ",
                    $dialect.db_now()
                ));
                q.push_bind(now);
                q.push(format!(" WHERE status IN {UNFINISHED} AND ("));
                for (i, (gid, token)) in held.iter().enumerate() {
                    if i > 0 {
                        q.push(" OR ");
                    }
                    q.push("(gid = ").push_bind(gid.as_str().to_string());
                    q.push(" AND owner = ").push_bind(token.as_str().to_string()).push(")");
                }
                q.push(")");
                Ok(q.build().execute(&self.pool).await?.rows_affected())
            }

            async fn force_stop(&self, gid: &Gid, now: DateTime<Utc>) -> Result<bool, StoreError> {
                let mut q = QueryBuilder::<$db>::new("UPDATE trans_global SET status = ");
                q.push_bind(GlobalStatus::Failed.as_str());
                q.push(", owner = '', rollback_time = ").push_bind(now).push(", update_time = ").push_bind(now);
                q.push(" WHERE gid = ").push_bind(gid.as_str().to_string());
                q.push(format!(" AND status IN {UNFINISHED}"));
                Ok(q.build().execute(&self.pool).await?.rows_affected() > 0)
            }

            async fn reset_next_cron_time(&self, gid: &Gid, now: DateTime<Utc>) -> Result<bool, StoreError> {
                let mut q = QueryBuilder::<$db>::new(format!("UPDATE trans_global SET next_cron_time = {}, update_time = ", $dialect.db_now()));
                q.push_bind(now);
                q.push(" WHERE gid = ").push_bind(gid.as_str().to_string());
                // A live lease means a pass is running right now: moving its
                // expiry would let a second instance start another pass.
                q.push(format!(" AND (owner = '' OR next_cron_time IS NULL OR next_cron_time <= {})", $dialect.db_now()));
                if q.build().execute(&self.pool).await?.rows_affected() > 0 {
                    return Ok(true);
                }
                let exists = QueryBuilder::<$db>::new("SELECT id FROM trans_global WHERE gid = ")
                    .push_bind(gid.as_str().to_string())
                    .build()
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(exists.is_some())
            }

            async fn reset_stale_cron_times(
                &self,
                later_than: Duration,
                limit: u32,
                now: DateTime<Utc>,
            ) -> Result<ResetCount, StoreError> {
                let mut q = QueryBuilder::<$db>::new("");
                $dialect.limited_update(
                    &mut q,
                    |q| {
                        q.push(format!("next_cron_time = {}, update_time = ", $dialect.db_now())).push_bind(now);
                    },
                    |q| {
                        q.push(format!(
                            "status IN {UNFINISHED} AND owner = '' AND next_cron_time > {}",
                            $dialect.db_later(later_than)
                        ));
                    },
                    limit_of(limit),
                );
                let count = q.build().execute(&self.pool).await?.rows_affected();
                Ok(ResetCount { has_remaining: count >= u64::from(limit.max(1)), succeed_count: count })
            }
        }
    };
}

sql_store!(
    /// MySQL / MariaDB store (dtm's production setup).
    MySqlStore,
    sqlx::MySql,
    sqlx::mysql::MySqlConnectOptions,
    Dialect::MySql,
    // Times are bound as UTC values; make the session agree so NOW()-based
    // tooling and TIMESTAMP conversions see the same clock.
    |o| o.timezone(Some(String::from("+00:00")))
);

sql_store!(
    /// PostgreSQL store.
    PostgresStore,
    sqlx::Postgres,
    sqlx::postgres::PgConnectOptions,
    Dialect::Postgres,
    |o| o.options([("timezone", "UTC")])
);

sql_store!(
    /// SQLite store: the embedded default for a single coordinator. WAL mode
    /// lets readers run beside the one writer; `busy_timeout` makes writers
    /// queue instead of failing.
    SqliteStore,
    sqlx::Sqlite,
    sqlx::sqlite::SqliteConnectOptions,
    Dialect::Sqlite,
    |o| o
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_gid_definitions_are_the_ddl_files_own() {
        // The migration must give an old table exactly what a fresh one gets.
        let flat = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let statements = Dialect::MySql.ddl_statements();
        for (table, column) in EXACT_GID_COLUMNS {
            let create = statements
                .iter()
                .find(|s| s.starts_with(&format!("CREATE TABLE IF NOT EXISTS {table} (")))
                .unwrap_or_else(|| panic!("no CREATE TABLE {table}"));
            let body = flat(create);
            let definition = flat(column.mysql_definition);
            assert!(
                body.contains(&format!("({definition},")) || body.contains(&format!(", {definition},")),
                "{table}: {body}"
            );
            assert!(definition.contains("COLLATE utf8mb4_bin"));
        }
    }
}
