//! The SQL store: one generic implementation, three engines.
//!
//! [`SqlStore<D>`] is written once for any engine `D` (`sqlx::MySql`,
//! `sqlx::Postgres`, `sqlx::Sqlite`); [`MySqlStore`], [`PostgresStore`] and
//! [`SqliteStore`] name the three instances. The few real differences
//! between the engines (the clock, insert-if-absent, the limited `UPDATE`,
//! placeholders, connect options) are items of the `Dialect` trait
//! (`dialect.rs`); statements are written as a [`Statement`] and run through
//! [`Driver`] (`driver.rs`), which holds every sqlx trait bound, so the code
//! here is plain generic Rust.
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
use chrono::{DateTime, SubsecRound, Utc};
use dtm_protocol::Gid;

use super::dialect::{LimitedUpdate, db_later, ddl_statements};
use super::driver::{Driver, On, Statement};
use super::{
    AlertKey, AlertRow, AttemptRow, BranchChange, BranchFailure, BranchRow, CreateOutcome, Delivery,
    FailureCounted, Fence, GlobalRow, LeaseToken, ListFilter, NewAttempt, NewBranch, NewGlobal, NewTrans,
    Page, ResetCount, Schedule, StatusUpdate, Store, StoreError, StoredTrans, Unfinished,
};
use crate::model::{BranchStatus, GlobalStatus};

/// Statuses a poller may pick up.
pub(super) const UNFINISHED: &str = "('prepared','submitted','aborting')";

const GLOBAL_COLUMNS: &str = "id, gid, trans_type, status, query_prepared, protocol, create_time, update_time, \
     finish_time, rollback_time, options, custom_data, next_cron_interval, next_cron_time, owner, ext_data, \
     result, rollback_reason";

const BRANCH_COLUMNS: &str =
    "id, gid, url, bin_data, branch_id, op, status, finish_time, rollback_time, create_time, update_time";

/// The gid columns (and topic names, `kv.k`) that must compare as exact
/// byte strings, as `sql/mysql/coordinator.sql` declares them. Tables
/// created by dtm's DDL or an older version of ours have the table's
/// case-insensitive collation: saga `abc` would be refused as a duplicate of
/// saga `AbC`, and `topic://orders` would reach the subscribers of `Orders`.
/// [`open`] converts them (MySQL only; see `barrier::schema::ensure_exact_columns`).
///
/// [`open`]: SqlStore::open
const EXACT_GID_COLUMNS: [(&str, barrier::schema::ExactColumn); 3] = [
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
    (
        "kv",
        barrier::schema::ExactColumn {
            name: "k",
            mysql_definition: "k varchar(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL",
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

/// A branch result to record: the transaction's gid and the change.
type BranchResult<'a> = (&'a Gid, &'a BranchChange);

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

/// A [`Store`] on the SQL engine `D`: a connection pool, nothing else.
pub struct SqlStore<D: Driver> {
    pool: sqlx::Pool<D>,
}

/// MySQL / MariaDB store (dtm's production setup).
pub type MySqlStore = SqlStore<sqlx::MySql>;
/// PostgreSQL store.
pub type PostgresStore = SqlStore<sqlx::Postgres>;
/// SQLite store: the embedded default for a single coordinator.
pub type SqliteStore = SqlStore<sqlx::Sqlite>;

impl<D: Driver> std::fmt::Debug for SqlStore<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore").field("pool", &self.pool).finish()
    }
}

impl<D: Driver> Clone for SqlStore<D> {
    fn clone(&self) -> Self {
        SqlStore { pool: self.pool.clone() }
    }
}

impl<D: Driver> SqlStore<D> {
    /// Connects and applies the schema (idempotent).
    pub async fn open(url: &str, max_connections: u32) -> Result<SqlStore<D>, StoreError> {
        let pool = sqlx::pool::PoolOptions::<D>::new()
            .max_connections(max_connections.max(1))
            .connect_with(D::connect_options(url)?)
            .await?;
        for statement in ddl_statements(D::DDL) {
            D::run(Statement::new(statement), &pool).await?;
        }
        if let Some(statement) = D::EXTRA_INDEX {
            match D::run(Statement::new(statement), &pool).await {
                // ER_DUP_KEYNAME: the index is there (MySQL has no ADD INDEX IF NOT EXISTS).
                Err(sqlx::Error::Database(e)) if e.message().contains("Duplicate key name") => {}
                other => {
                    other?;
                }
            }
        }
        ensure_exact_gids(&pool).await?;
        Ok(SqlStore { pool })
    }

    /// The connection pool (tests and tools).
    pub fn pool(&self) -> &sqlx::Pool<D> {
        &self.pool
    }

    /// `SELECT` of the global row of `gid`.
    fn select_global(gid: &Gid) -> Statement<D> {
        let mut q = Statement::new(format!("SELECT {GLOBAL_COLUMNS} FROM trans_global WHERE gid = "));
        q.push_bind(gid.as_str());
        q
    }

    /// Starts `UPDATE trans_global SET …` limited to the first `limit` rows
    /// (by `next_cron_time`) matching the WHERE part: pushes the SET part
    /// via `set` and the WHERE part via `filter`, in the engine's
    /// [`LimitedUpdate`] shape.
    fn limited_update(
        set: impl FnOnce(&mut Statement<D>),
        filter: impl FnOnce(&mut Statement<D>),
        limit: i64,
    ) -> Statement<D> {
        Self::limited_update_of("trans_global", "next_cron_time", set, filter, limit)
    }

    /// [`SqlStore::limited_update`] on any table with an `id` key, oldest
    /// `order_by` first (the alert outbox leases by `next_attempt_time`).
    pub(super) fn limited_update_of(
        table: &str,
        order_by: &str,
        set: impl FnOnce(&mut Statement<D>),
        filter: impl FnOnce(&mut Statement<D>),
        limit: i64,
    ) -> Statement<D> {
        let mut q = Statement::new(format!("UPDATE {table} SET "));
        set(&mut q);
        match D::LIMITED_UPDATE {
            LimitedUpdate::OrderByLimit => {
                q.push(" WHERE ");
                filter(&mut q);
                q.push(format!(" ORDER BY {order_by} LIMIT ")).push_bind(limit);
            }
            LimitedUpdate::InSubSelect { skip_locked } => {
                q.push(format!(" WHERE id IN (SELECT id FROM {table} WHERE "));
                filter(&mut q);
                q.push(format!(" ORDER BY {order_by} LIMIT ")).push_bind(limit);
                if skip_locked {
                    q.push(" FOR UPDATE SKIP LOCKED");
                }
                q.push(")");
            }
        }
        q
    }

    /// The branch rows of `gids`, in id order.
    async fn branches_of(on: impl Into<On<'_, D>>, gids: &[Gid]) -> Result<Vec<BranchRow>, StoreError> {
        if gids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = Statement::new(format!("SELECT {BRANCH_COLUMNS} FROM trans_branch_op WHERE gid IN ("));
        let mut list = q.separated(", ");
        for gid in gids {
            list.push_bind(gid.as_str());
        }
        q.push(") ORDER BY id");
        D::fetch_all(q, on).await?.iter().map(D::branch_row).collect()
    }

    /// `INSERT` of global rows; with `IGNORE` / `ON CONFLICT DO NOTHING`,
    /// so the affected rows count the gids that were new.
    fn insert_globals<'a>(globals: impl IntoIterator<Item = &'a NewGlobal>) -> Statement<D> {
        let (insert, on_conflict) = D::INSERT_IF_ABSENT;
        let mut q = Statement::new(insert);
        q.push(
            " (gid, trans_type, status, query_prepared, protocol, create_time, update_time, options, \
             custom_data, next_cron_interval, next_cron_time, owner, ext_data, result, rollback_reason) ",
        );
        q.push_values(globals, |mut row, g| {
            row.push_bind(g.gid.as_str())
                .push_bind(g.trans_type.as_str())
                .push_bind(g.status.as_str())
                .push_bind(g.query_prepared.as_str())
                .push_bind(g.protocol.as_str())
                .push_bind(g.now)
                .push_bind(g.now)
                .push_bind(g.options.as_str())
                .push_bind(g.custom_data.as_str())
                .push_bind(i32::try_from(g.next_cron_interval).unwrap_or(i32::MAX))
                .push(db_later::<D>(g.lease))
                .push_bind(g.owner.as_ref().map_or("", LeaseToken::as_str))
                .push_bind(g.ext_data.as_str())
                .push_bind("")
                .push_bind(g.rollback_reason.as_str());
        });
        q.push(on_conflict);
        q
    }

    /// One multi-row `INSERT` of branch rows (status `prepared`), of one or many transactions.
    fn insert_branches(rows: &[(&Gid, &NewBranch, DateTime<Utc>)]) -> Statement<D> {
        let mut q = Statement::new(
            "INSERT INTO trans_branch_op (gid, url, bin_data, branch_id, op, status, create_time, update_time) ",
        );
        q.push_values(rows, |mut row, (gid, b, now)| {
            row.push_bind(gid.as_str())
                .push_bind(b.url.as_str())
                .push_bind(b.bin_data.clone())
                .push_bind(b.branch_id.as_str())
                .push_bind(b.op.as_str())
                .push_bind(BranchStatus::Prepared.as_str())
                .push_bind(*now)
                .push_bind(*now);
        });
        q
    }

    /// The conditional `UPDATE` of global rows that share one change
    /// (status, schedule, time and, for a take-over, the token): each row
    /// changes only if it is still in status `expected` and — for a pass's
    /// write — still owned by that pass's token. The affected rows count
    /// those that did.
    ///
    /// Several passes' tokens are matched with one `owner IN (…)` next to
    /// `gid IN (…)`. That is exact because no token of ours can be the
    /// current owner of another gid of the group: tokens are fresh per
    /// grant, and a gid this instance is driving is never leased again by it
    /// (`lease_due`'s `skip`).
    fn update_globals(group: &[&StatusUpdate]) -> Statement<D> {
        let first = group[0];
        let (change, now) = (&first.change, first.now);
        let mut q = Statement::new("UPDATE trans_global SET update_time = ");
        q.push_bind(now);
        let (Schedule::Hold(delay) | Schedule::Release(delay)) = change.schedule;
        q.push(", next_cron_time = ").push(db_later::<D>(delay));
        match (&change.schedule, &first.fence) {
            (Schedule::Release(_), _) => {
                q.push(", owner = ''");
            }
            (Schedule::Hold(_), Fence::TakeOver(token)) => {
                q.push(", owner = ").push_bind(token.as_str());
            }
            (Schedule::Hold(_), Fence::Owner(_)) => {}
        }
        q.push(", next_cron_interval = ")
            .push_bind(i32::try_from(change.next_cron_interval).unwrap_or(i32::MAX));
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

    /// Records branch results, of one or many transactions: one `UPDATE`
    /// per distinct new status (a finished saga: one), naming each row by
    /// its unique key `(gid, branch_id, op)`.
    async fn update_branches(
        conn: &mut D::Connection,
        rows: &[BranchResult<'_>],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        for status in [BranchStatus::Succeed, BranchStatus::Failed, BranchStatus::Prepared] {
            let rows: Vec<_> = rows.iter().filter(|(_, b)| b.status == status).collect();
            if rows.is_empty() {
                continue;
            }
            let mut b = Statement::new("UPDATE trans_branch_op SET status = ");
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
            D::run(b, &mut *conn).await?;
        }
        Ok(())
    }

    /// One attempt of [`Store::update`].
    async fn update_once(&self, update: &StatusUpdate) -> Result<bool, StoreError> {
        let StatusUpdate { gid, branches, now, .. } = update;
        let q = Self::update_globals(&[update]);
        if branches.is_empty() {
            return Ok(D::run(q, &self.pool).await? > 0);
        }
        let mut tx = self.pool.begin().await?;
        // The global row first: on MySQL/Postgres this locks it, so a
        // concurrent writer of the same transaction waits for us and then
        // sees the new status.
        if D::run(q, &mut *tx).await? == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let rows: Vec<BranchResult<'_>> = branches.iter().map(|b| (gid, b)).collect();
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
            let inserted = D::run(Self::insert_globals(creates.iter().map(|c| &c.global)), &mut *tx).await?;
            if inserted != creates.len() as u64 {
                tx.rollback().await?;
                return Ok(false);
            }
            let rows: Vec<(&Gid, &NewBranch, DateTime<Utc>)> = creates
                .iter()
                .flat_map(|c| c.branches.iter().map(|b| (&c.global.gid, b, c.global.now)))
                .collect();
            if !rows.is_empty() {
                D::run(Self::insert_branches(&rows), &mut *tx).await.map_err(map_unique)?;
            }
        }
        // Global rows first (see `update_once`), one statement per distinct
        // change — sagas finishing in the same second share one. Passes'
        // writes share a statement whatever their tokens (see
        // `update_globals`); a take-over writes its own token.
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
            let moved = D::run(Self::update_globals(group), &mut *tx).await?;
            if moved != group.len() as u64 {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        let mut by_time: Vec<(DateTime<Utc>, Vec<BranchResult<'_>>)> = Vec::new();
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
impl<D: Driver> Store for SqlStore<D> {
    async fn create(&self, g: &NewGlobal, branches: &[NewBranch]) -> Result<CreateOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        if D::run(Self::insert_globals([g]), &mut *tx).await? == 0 {
            let row = D::fetch_optional(Self::select_global(&g.gid), &mut *tx).await?;
            let row = row.ok_or(sqlx::Error::RowNotFound)?;
            tx.rollback().await?;
            return Ok(CreateOutcome::Exists(Box::new(D::global_row(&row)?)));
        }
        if !branches.is_empty() {
            let rows: Vec<_> = branches.iter().map(|b| (&g.gid, b, g.now)).collect();
            D::run(Self::insert_branches(&rows), &mut *tx).await.map_err(map_unique)?;
        }
        tx.commit().await?;
        Ok(CreateOutcome::Created)
    }

    async fn write_batch(&self, creates: &[NewTrans], updates: &[StatusUpdate]) -> Result<bool, StoreError> {
        // Two writes of one gid cannot share a transaction: the second must
        // see the first's outcome.
        let mut gids = std::collections::HashSet::new();
        if !creates
            .iter()
            .map(|c| &c.global.gid)
            .chain(updates.iter().map(|u| &u.gid))
            .all(|g| gids.insert(g))
        {
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
        let Some(row) = D::fetch_optional(Self::select_global(gid), &self.pool).await? else {
            return Ok(None);
        };
        let global = D::global_row(&row)?;
        let branches = Self::branches_of(&self.pool, std::slice::from_ref(gid)).await?;
        Ok(Some(StoredTrans { global, branches }))
    }

    /// A page is read in two steps, in one statement (a "deferred join"):
    /// the ids of the page, newest first, found from the narrowest index
    /// the filters allow (`gid`, `status_id`, the primary key) without
    /// reading a row, then those 50 rows. Sorting the ids of 100 000
    /// matches is cheap; sorting 100 000 whole rows is not
    /// (`crates/coordinator/tests/console_store.rs` times every filter on a
    /// million rows).
    async fn list(&self, f: &ListFilter) -> Result<Page, StoreError> {
        let columns = GLOBAL_COLUMNS.split(", ").map(|c| format!("g.{c}")).collect::<Vec<_>>().join(", ");
        // `page CROSS JOIN g`: SQLite keeps that order (the 50 ids drive the
        // lookups); the other engines choose it anyway.
        let hint = D::list_index_hint(f.status.is_some(), f.gid.is_some() || f.gid_prefix.is_some());
        let mut q =
            Statement::new(format!("SELECT {columns} FROM (SELECT id FROM trans_global{hint} WHERE 1 = 1"));
        if let Some(gid) = &f.gid {
            q.push(" AND gid = ").push_bind(gid.as_str());
        }
        if let Some((low, high)) = f.gid_prefix.as_deref().and_then(super::prefix_range) {
            // The range walks the gid index; LIKE keeps it exact where the
            // column's collation is not byte order (PostgreSQL's default).
            let gid = D::BYTE_ORDER_GID;
            q.push(format!(" AND {gid} >= ")).push_bind(low).push(format!(" AND {gid} < ")).push_bind(high);
            q.push(" AND gid LIKE ").push_bind(super::like_prefix(f.gid_prefix.as_deref().unwrap_or("")));
            q.push(" ESCAPE '!'");
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
        // Stored times have whole seconds; compare like with like (SQLite
        // compares the text).
        if let Some(start) = f.create_time_start {
            q.push(" AND create_time >= ").push_bind(start.trunc_subsecs(0));
        }
        if let Some(end) = f.create_time_end {
            q.push(" AND create_time <= ").push_bind(end.trunc_subsecs(0));
        }
        let limit = limit_of(f.limit);
        q.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
        q.push(") page CROSS JOIN trans_global g WHERE g.id = page.id ORDER BY g.id DESC");
        let rows = D::fetch_all(q, &self.pool).await?;
        let transactions = rows.iter().map(D::global_row).collect::<Result<Vec<_>, _>>()?;
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
        // A write, not a SELECT … FOR UPDATE: it checks the status and takes
        // the row lock in one step on every engine (SQLite has no FOR UPDATE
        // and must start its write transaction early).
        let mut q = Statement::new("UPDATE trans_global SET update_time = ");
        q.push_bind(now).push(" WHERE gid = ").push_bind(gid.as_str());
        q.push(" AND status = ").push_bind(expected.as_str());
        if D::run(q, &mut *tx).await? == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        if !branches.is_empty() {
            let rows: Vec<_> = branches.iter().map(|b| (gid, b, now)).collect();
            D::run(Self::insert_branches(&rows), &mut *tx).await.map_err(map_unique)?;
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
        let q = Self::limited_update(
            |q| {
                q.push("owner = ").push_bind(owner.as_str());
                q.push(", next_cron_time = ").push(db_later::<D>(lease_for));
                q.push(", update_time = ").push_bind(now);
            },
            |q| {
                q.push(format!("status IN {UNFINISHED} AND next_cron_time <= {}", D::db_now()));
                if !skip.is_empty() {
                    q.push(" AND gid NOT IN (");
                    let mut list = q.separated(", ");
                    for gid in skip {
                        list.push_bind(gid.as_str());
                    }
                    q.push(")");
                }
            },
            limit_of(limit),
        );
        if D::run(q, &self.pool).await? == 0 {
            return Ok(Vec::new());
        }
        let mut q = Statement::new(format!("SELECT {GLOBAL_COLUMNS} FROM trans_global WHERE owner = "));
        q.push_bind(owner.as_str()).push(" ORDER BY id");
        let rows = D::fetch_all(q, &self.pool).await?;
        let globals = rows.iter().map(D::global_row).collect::<Result<Vec<_>, _>>()?;
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
        let mut q = Statement::new("UPDATE trans_global SET owner = ");
        q.push_bind(owner.as_str());
        q.push(", next_cron_time = ").push(db_later::<D>(lease_for));
        q.push(", update_time = ").push_bind(now);
        q.push(" WHERE gid = ").push_bind(gid.as_str());
        q.push(format!(
            " AND status IN {UNFINISHED} AND (owner = '' OR next_cron_time IS NULL OR next_cron_time <= {})",
            D::db_now()
        ));
        if D::run(q, &mut *tx).await? == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        // Read under the new lease, in the same transaction: what the pass
        // decides on is exactly what its token now guards.
        let row =
            D::fetch_optional(Self::select_global(gid), &mut *tx).await?.ok_or(sqlx::Error::RowNotFound)?;
        let global = D::global_row(&row)?;
        let branches = Self::branches_of(&mut *tx, std::slice::from_ref(gid)).await?;
        tx.commit().await?;
        Ok(Some(StoredTrans { global, branches }))
    }

    async fn release(&self, held: &[(Gid, LeaseToken)], now: DateTime<Utc>) -> Result<u64, StoreError> {
        if held.is_empty() {
            return Ok(0);
        }
        let mut q = Statement::new(format!(
            "UPDATE trans_global SET owner = '', next_cron_time = {}, update_time = ",
            D::db_now()
        ));
        q.push_bind(now);
        q.push(format!(" WHERE status IN {UNFINISHED} AND ("));
        for (i, (gid, token)) in held.iter().enumerate() {
            if i > 0 {
                q.push(" OR ");
            }
            q.push("(gid = ").push_bind(gid.as_str());
            q.push(" AND owner = ").push_bind(token.as_str()).push(")");
        }
        q.push(")");
        Ok(D::run(q, &self.pool).await?)
    }

    async fn force_stop(&self, gid: &Gid, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut q = Statement::new("UPDATE trans_global SET status = ");
        q.push_bind(GlobalStatus::Failed.as_str());
        q.push(", owner = '', rollback_time = ").push_bind(now).push(", update_time = ").push_bind(now);
        q.push(" WHERE gid = ").push_bind(gid.as_str());
        q.push(format!(" AND status IN {UNFINISHED}"));
        Ok(D::run(q, &self.pool).await? > 0)
    }

    async fn reset_next_cron_time(&self, gid: &Gid, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut q = Statement::new(format!(
            "UPDATE trans_global SET next_cron_time = {}, update_time = ",
            D::db_now()
        ));
        q.push_bind(now);
        q.push(" WHERE gid = ").push_bind(gid.as_str());
        // A live lease means a pass is running right now: moving its expiry
        // would let a second instance start another pass.
        q.push(format!(" AND (owner = '' OR next_cron_time IS NULL OR next_cron_time <= {})", D::db_now()));
        if D::run(q, &self.pool).await? > 0 {
            return Ok(true);
        }
        let mut exists = Statement::new("SELECT id FROM trans_global WHERE gid = ");
        exists.push_bind(gid.as_str());
        Ok(D::fetch_optional(exists, &self.pool).await?.is_some())
    }

    async fn reset_stale_cron_times(
        &self,
        later_than: Duration,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<ResetCount, StoreError> {
        let q = Self::limited_update(
            |q| {
                q.push(format!("next_cron_time = {}, update_time = ", D::db_now())).push_bind(now);
            },
            |q| {
                q.push(format!(
                    "status IN {UNFINISHED} AND owner = '' AND next_cron_time > {}",
                    db_later::<D>(later_than)
                ));
            },
            limit_of(limit),
        );
        let count = D::run(q, &self.pool).await?;
        Ok(ResetCount { has_remaining: count >= u64::from(limit.max(1)), succeed_count: count })
    }

    async fn count_failure(
        &self,
        failure: &BranchFailure,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<FailureCounted, StoreError> {
        self.count_failure_sql(failure, limit, now).await
    }

    async fn lease_alerts(
        &self,
        owner: &LeaseToken,
        lease_for: Duration,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<AlertRow>, StoreError> {
        self.lease_alerts_sql(owner, lease_for, limit, now).await
    }

    async fn settle_alert(
        &self,
        key: &AlertKey,
        owner: &LeaseToken,
        delivery: &Delivery,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.settle_alert_sql(key, owner, delivery, now).await
    }

    async fn alerts_of(&self, gid: &Gid) -> Result<Vec<AlertRow>, StoreError> {
        self.alerts_of_sql(gid).await
    }

    async fn unfinished(&self) -> Result<Unfinished, StoreError> {
        self.unfinished_sql().await
    }

    async fn record_attempts(&self, attempts: &[NewAttempt]) -> Result<(), StoreError> {
        self.record_attempts_sql(attempts).await
    }

    async fn trim_attempts(&self, gid: &Gid, keep: u32) -> Result<(), StoreError> {
        self.trim_attempts_sql(gid, keep).await
    }

    async fn prune_attempts(&self, started_before_ms: i64) -> Result<u64, StoreError> {
        self.prune_attempts_sql(started_before_ms).await
    }

    async fn attempts_of(&self, gid: &Gid, limit: u32) -> Result<Vec<AttemptRow>, StoreError> {
        self.attempts_of_sql(gid, limit).await
    }

    async fn status_counts(&self) -> Result<Vec<(GlobalStatus, u64)>, StoreError> {
        self.status_counts_sql().await
    }

    fn kv(&self) -> &dyn super::KvStore {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_gid_definitions_are_the_ddl_files_own() {
        // The migration must give an old table exactly what a fresh one gets.
        let flat = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let statements = ddl_statements(<sqlx::MySql as super::super::Dialect>::DDL);
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
