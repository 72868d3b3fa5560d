//! Durable state behind one trait.
//!
//! The engine sees only [`Store`]; one generic SQL implementation,
//! [`SqlStore`], runs it on MySQL/MariaDB, PostgreSQL and SQLite (the
//! embedded default), each described by its [`Dialect`].
//! [`open`] wraps them in [`GroupCommit`], which lets the writes of
//! concurrent sagas share one transaction and one commit.
//! The tables are exactly dtm's `trans_global`, `trans_branch_op` and `kv`
//! (`sql/<engine>/coordinator.sql`, applied idempotently by [`open`]), so
//! dtm's admin UI and scripts can read a database written by us (`kv` holds
//! dtm's message topics, [`KvStore`], `kv.rs`); one table of our own,
//! `trans_alert`, beside them holds the retry alerts (`alerts.rs`).
//!
//! # Concurrency contract: one pass per transaction
//!
//! Several coordinators may share one database. Nothing is locked for the
//! duration of a pass; instead a transaction is *leased* and every write is
//! *fenced*:
//!
//! * a lease is the pair (`owner`, `next_cron_time`): a fresh
//!   [`LeaseToken`] written into `owner` and an expiry pushed into
//!   `next_cron_time` ([`Store::create`], [`Store::lease_due`],
//!   [`Store::acquire`]). Anyone may take a transaction over once its lease
//!   has expired; taking it writes a new token;
//! * every write of a pass carries its token ([`Fence::Owner`]) and applies
//!   only while `owner` still holds it — as well as the status the pass last
//!   saw. [`Store::update`] returns `false` otherwise: the pass has lost the
//!   transaction and stops without calling another branch. (This is what dtm
//!   does not do: its status changes are conditional on the status alone.)
//! * `next_cron_time` is written and compared **on the database's clock**
//!   (`UTC_TIMESTAMP()`, `statement_timestamp()`, SQLite's `'now'`), never on
//!   a coordinator's: clocks skewed between coordinators cannot make two of
//!   them believe they hold the same lease. Writes therefore carry durations
//!   ([`Schedule`]), not instants;
//! * a pass that ends lets go: its last write clears `owner`
//!   ([`Schedule::Release`]), so a `next_cron_time` in the future with no
//!   owner is a retry time (which `resetNextCronTime` may move), and one with
//!   an owner is a live lease (which nobody but its holder touches).
//!
//! # Times
//!
//! Every time is UTC, truncated to whole seconds (dtm's column precision).
//! `next_cron_time` comes from the database's clock (above); the other
//! columns (`create_time`, `update_time`, …) are informational and come from
//! the coordinator's clock ([`now`]). dtm writes local time; a database
//! shared with a dtm server in another zone would see shifted times — do not
//! mix the two on one database.

mod alerts;
mod attempts;
mod dialect;
mod driver;
mod group_commit;
mod kv;
mod sql;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use dtm_protocol::{BranchId, Gid, Op, TransType};
use serde::Serialize;

use crate::model::{BranchStatus, GlobalStatus, Protocol};

pub use alerts::{AlertKey, AlertRow, AlertStatus, BranchFailure, Delivery, FailureCounted, Unfinished};
pub use attempts::{AttemptResult, AttemptRow, NewAttempt, like_prefix, prefix_range};
pub use dialect::{Dialect, LimitedUpdate};
pub use driver::{Driver, On, Separated, Statement, Value};
pub use group_commit::GroupCommit;
pub use kv::{KvPage, KvRow, KvStore};
pub use sql::{MySqlStore, PostgresStore, SqlStore, SqliteStore};

/// A storage failure. Internal: logged, answered with 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database returned an error or is unreachable.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A row violates the unique key (e.g. a branch registered twice).
    #[error("duplicate row: {0}")]
    Duplicate(String),
    /// A stored value cannot be read back (hand-edited row, newer schema…).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A queued write got no answer: the group-commit writer failed while
    /// its batch was in flight. Whether the write committed is unknown, as
    /// after a connection lost during `COMMIT`.
    #[error("the write's batch failed before it was answered")]
    WriteLost,
    /// The store URL names no supported engine.
    #[error(
        "unsupported store URL {0:?} (expected mysql://, mariadb://, postgres://, postgresql:// or sqlite:)"
    )]
    UnsupportedUrl(String),
    /// The store's database is missing and this user may not create it.
    /// `sql` is the exact statement an administrator has to run.
    #[error(
        "the store's database {name:?} does not exist (or this user may not use it) and this user \
         cannot create it ({cause}); as an administrator, run: {sql} and grant this user all \
         privileges on it"
    )]
    MissingDatabase {
        /// The database name (`Store.Db`).
        name: String,
        /// `CREATE DATABASE …` for this engine.
        sql: String,
        /// Why our own `CREATE DATABASE` failed.
        cause: sqlx::Error,
    },
    /// The database name cannot be spliced into `CREATE DATABASE`.
    #[error("the store's database name {0:?} must be [A-Za-z0-9_$-]+ to be created automatically")]
    BadDatabaseName(String),
}

/// The current time as stored: UTC, whole seconds.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(0)
}

/// The latest time a store holds: MySQL's `DATETIME` ends at 9999-12-31
/// 23:59:59 (PostgreSQL and SQLite go further, but one bound for all keeps
/// a row portable). [`later`] saturates here.
pub fn latest() -> DateTime<Utc> {
    // 253402300799 = 9999-12-31T23:59:59Z, in range for chrono by far.
    DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t + d`, in whole seconds (rounded up so a lease is never shorter than
/// asked), saturating at [`latest`].
///
/// Never panics, whatever `d` is: the API bounds every duration a request
/// may carry (see `crate::model`), but a row written by an older version or
/// by hand can hold any interval, and a panic here would kill the pass
/// again at every lease, forever. A time past [`latest`] means "never" in
/// practice, and is also the most a `DATETIME` column can store.
pub fn later(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    i64::try_from(secs)
        .ok()
        .and_then(chrono::TimeDelta::try_seconds)
        .and_then(|delta| t.checked_add_signed(delta))
        .map_or_else(latest, |at| at.min(latest()))
}

/// The longest delay a write may schedule: the database's date arithmetic
/// must stay far from its limits (MySQL's `DATETIME` ends in year 9999),
/// whatever a stored row or an option says.
pub const MAX_SCHEDULE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Whole seconds of `d`, rounded up (a lease is never shorter than asked)
/// and capped at [`MAX_SCHEDULE`].
pub fn schedule_secs(d: Duration) -> i64 {
    let d = d.min(MAX_SCHEDULE);
    i64::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0)).unwrap_or(i64::MAX)
}

/// Proof of ownership of a transaction: the random token a pass wrote into
/// `owner` when it took the lease. Every write of that pass is conditional
/// on the token still being there ([`Fence::Owner`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseToken(String);

impl LeaseToken {
    /// A fresh token (22 random base57 characters, like a gid: unique per grant).
    pub fn random() -> LeaseToken {
        LeaseToken(Gid::random().to_string())
    }

    /// A token as read back from `owner` (tools and tests).
    pub fn new(token: impl Into<String>) -> LeaseToken {
        LeaseToken(token.into())
    }

    /// The token as stored in `owner`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whose write a [`StatusUpdate`] is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Fence {
    /// A pass's write: applies only while `owner` still holds this token.
    Owner(LeaseToken),
    /// A client's decision on a transaction that no pass is calling branches
    /// for (submit or abort of a `prepared` TCC / msg): applies whoever holds
    /// the lease and takes it over (`owner` := token), so that a pass still
    /// holding it finds its next write refused.
    TakeOver(LeaseToken),
}

impl Fence {
    /// The token written or required.
    pub fn token(&self) -> &LeaseToken {
        match self {
            Fence::Owner(t) | Fence::TakeOver(t) => t,
        }
    }
}

/// What a write does to the lease (`owner`, `next_cron_time`), as a delay
/// on the database's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schedule {
    /// The pass goes on: the lease now ends this long after the write.
    Hold(Duration),
    /// The pass ends: `owner` is cleared and the transaction is due again
    /// this long after the write (zero: at once, or never for a final status).
    Release(Duration),
}

/// Serializes `Vec<u8>` as base64, like Go's `encoding/json` does for `[]byte`.
fn base64<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(TABLE[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    s.serialize_str(&out)
}

/// A `trans_global` row. Serializes with dtm's JSON field names (`/api/dtmsvr/query`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GlobalRow {
    /// Auto-increment id: the pagination key of `all`.
    pub id: i64,
    /// Global id.
    pub gid: Gid,
    /// Transaction type.
    pub trans_type: TransType,
    /// Current status.
    pub status: GlobalStatus,
    /// Msg check-back URL.
    pub query_prepared: String,
    /// Default branch transport.
    pub protocol: Protocol,
    /// Creation time (UTC).
    pub create_time: Option<DateTime<Utc>>,
    /// Last write.
    pub update_time: Option<DateTime<Utc>>,
    /// Set when it became `succeed`.
    pub finish_time: Option<DateTime<Utc>>,
    /// Set when it became `failed`.
    pub rollback_time: Option<DateTime<Utc>>,
    /// JSON of the options (see [`crate::model::TransOptions::to_stored_json`]).
    pub options: String,
    /// Type-specific JSON (saga orders).
    pub custom_data: String,
    /// Current retry interval, seconds.
    pub next_cron_interval: i64,
    /// When recovery may pick it up (lease expiry / next retry).
    pub next_cron_time: Option<DateTime<Utc>>,
    /// Token of the poll that last leased it.
    pub owner: String,
    /// dtm's `TransGlobalExt` JSON; we keep the trace context there
    /// (`crate::trace`), dtm leaves it empty.
    pub ext_data: String,
    /// Workflow result.
    pub result: String,
    /// Why it is rolling back.
    pub rollback_reason: String,
}

/// A `trans_branch_op` row (one operation of one branch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BranchRow {
    /// Auto-increment id; branches are read in id order.
    pub id: i64,
    /// Global id.
    pub gid: Gid,
    /// The branch URL as submitted.
    pub url: String,
    /// Payload sent with the call (base64 in JSON, like dtm).
    #[serde(serialize_with = "base64")]
    pub bin_data: Vec<u8>,
    /// `01`, `02`, …
    pub branch_id: BranchId,
    /// `action`, `compensate`, …
    pub op: Op,
    /// `prepared`, `succeed`, `failed`.
    pub status: BranchStatus,
    /// When it reached a final status.
    pub finish_time: Option<DateTime<Utc>>,
    /// Unused by sagas; kept for the schema.
    pub rollback_time: Option<DateTime<Utc>>,
    /// Creation time.
    pub create_time: Option<DateTime<Utc>>,
    /// Last write.
    pub update_time: Option<DateTime<Utc>>,
}

/// A global transaction with its branches (ordered by id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredTrans {
    /// The `trans_global` row.
    pub global: GlobalRow,
    /// Its `trans_branch_op` rows, `ORDER BY id`.
    pub branches: Vec<BranchRow>,
}

/// A new `trans_global` row.
#[derive(Debug, Clone)]
pub struct NewGlobal {
    /// Global id.
    pub gid: Gid,
    /// Type.
    pub trans_type: TransType,
    /// Initial status (`prepared` or `submitted`).
    pub status: GlobalStatus,
    /// Branch transport default.
    pub protocol: Protocol,
    /// Msg check-back URL.
    pub query_prepared: String,
    /// Options JSON.
    pub options: String,
    /// Type-specific JSON.
    pub custom_data: String,
    /// First retry interval, seconds.
    pub next_cron_interval: i64,
    /// The creating pass's lease: its token and how long it lasts from the
    /// insert (database clock). `None`: nobody processes it now (a
    /// `prepare`, or a submit while shutting down); due after `lease`.
    pub owner: Option<LeaseToken>,
    /// Lease length, or the delay before recovery may look at it.
    pub lease: Duration,
    /// Reason given at creation (abort paths).
    pub rollback_reason: String,
    /// dtm's `ext_data`: the creating request's trace context
    /// (`crate::trace::to_ext_data`), or empty.
    pub ext_data: String,
    /// Creation time.
    pub now: DateTime<Utc>,
}

/// A new `trans_branch_op` row (status `prepared`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBranch {
    /// URL to call.
    pub url: String,
    /// Payload.
    pub bin_data: Vec<u8>,
    /// Branch id.
    pub branch_id: BranchId,
    /// Operation.
    pub op: Op,
}

/// A transaction to create: its global row and its branch rows.
#[derive(Debug, Clone)]
pub struct NewTrans {
    /// The `trans_global` row.
    pub global: NewGlobal,
    /// Its `trans_branch_op` rows.
    pub branches: Vec<NewBranch>,
}

/// One conditional status change ([`Store::update`]), owned so that it can
/// wait in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    /// Global id.
    pub gid: Gid,
    /// The status the caller last saw; the update applies only if it still holds.
    pub expected: GlobalStatus,
    /// The lease the write is made under.
    pub fence: Fence,
    /// What changes on the global row.
    pub change: GlobalChange,
    /// Branch results recorded with it.
    pub branches: Vec<BranchChange>,
    /// The write time.
    pub now: DateTime<Utc>,
}

impl StatusUpdate {
    /// A change of the global row alone, no branch results.
    pub fn global(
        gid: &Gid,
        expected: GlobalStatus,
        fence: Fence,
        change: GlobalChange,
        now: DateTime<Utc>,
    ) -> StatusUpdate {
        StatusUpdate { gid: gid.clone(), expected, fence, change, branches: Vec::new(), now }
    }
}

/// What [`Store::create`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The global row and all branch rows were inserted and committed.
    Created,
    /// A transaction with that gid already exists; nothing was written.
    Exists(Box<GlobalRow>),
}

/// Changes to a global row made together with branch results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalChange {
    /// New status, if it changes. `succeed` also sets `finish_time`, `failed` `rollback_time`.
    pub status: Option<GlobalStatus>,
    /// New rollback reason, if any.
    pub rollback_reason: Option<String>,
    /// What happens to the lease.
    pub schedule: Schedule,
    /// The retry interval now in force, seconds.
    pub next_cron_interval: i64,
}

/// A branch row reaching a final status. Rows are named by their unique key
/// `(gid, branch_id, op)`, not by id, so that a transaction created a moment
/// ago needs no read-back of its generated ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchChange {
    /// Branch id.
    pub branch_id: BranchId,
    /// Operation.
    pub op: Op,
    /// New status.
    pub status: BranchStatus,
}

/// Filter of dtm's `all` query: newest first, keyset pagination by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only this gid.
    pub gid: Option<Gid>,
    /// Only gids starting with this (not dtm's: the console's filter; a
    /// range of the `gid` index).
    pub gid_prefix: Option<String>,
    /// Only rows with `id < position` (the previous page's `next_position`).
    pub position: Option<i64>,
    /// Page size (dtm default 100).
    pub limit: u32,
    /// Only this status.
    pub status: Option<GlobalStatus>,
    /// Only this type.
    pub trans_type: Option<TransType>,
    /// `create_time >= …`.
    pub create_time_start: Option<DateTime<Utc>>,
    /// `create_time <= …`.
    pub create_time_end: Option<DateTime<Utc>>,
}

/// One page of `all`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page {
    /// Rows, newest first.
    pub transactions: Vec<GlobalRow>,
    /// Id of the last row, or `""` when this was the last page.
    pub next_position: String,
}

/// Result of [`Store::reset_stale_cron_times`] (dtm's `resetCronTime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ResetCount {
    /// More rows may match; call again.
    pub has_remaining: bool,
    /// Rows reset by this call.
    pub succeed_count: u64,
}

/// Durable transaction state. Object-safe: the engine holds an `Arc<dyn Store>`.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Inserts a global row and all its branch rows in ONE transaction
    /// (one multi-row branch insert), if no row with that gid exists.
    /// Returns only after the commit: a submit acknowledged to a client survives a crash.
    async fn create(&self, global: &NewGlobal, branches: &[NewBranch]) -> Result<CreateOutcome, StoreError>;

    /// Several creates and status updates in ONE transaction (group commit,
    /// see [`GroupCommit`]). `Ok(true)`: every create inserted a new
    /// transaction and every update found its expected status, all
    /// committed. `Ok(false)`: the batch cannot apply as a whole (a gid
    /// exists, a status moved, one gid twice); nothing was written, and the
    /// caller runs the writes one by one to learn each outcome. The default
    /// batches nothing.
    async fn write_batch(&self, creates: &[NewTrans], updates: &[StatusUpdate]) -> Result<bool, StoreError> {
        let _ = (creates, updates);
        Ok(false)
    }

    /// The global row and its branches.
    async fn find(&self, gid: &Gid) -> Result<Option<StoredTrans>, StoreError>;

    /// dtm's `all`.
    async fn list(&self, filter: &ListFilter) -> Result<Page, StoreError>;

    /// In one transaction: if the global row still has status
    /// `update.expected` and the fence holds (the owner is the pass's token,
    /// or the write takes the transaction over), apply the change and record
    /// the branch results; otherwise change nothing and return `false`
    /// (another pass or instance moved it first).
    async fn update(&self, update: StatusUpdate) -> Result<bool, StoreError>;

    /// Adds branch rows to a transaction still in status `expected`
    /// (registerBranch), checked in the transaction that inserts them, under
    /// the global row's lock: an abort that commits first refuses them, one
    /// that commits after sees them. `false` if it is not in that status or absent.
    async fn add_branches(
        &self,
        gid: &Gid,
        expected: GlobalStatus,
        branches: &[NewBranch],
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Leases up to `limit` unfinished transactions whose `next_cron_time`
    /// has passed on the database's clock, except those in `skip` (the ones
    /// this instance is driving): sets `owner` and `next_cron_time = db now +
    /// lease_for` with one conditional UPDATE, then reads them back by owner.
    /// `owner` must be fresh for every call.
    async fn lease_due(
        &self,
        owner: &LeaseToken,
        lease_for: Duration,
        limit: u32,
        skip: &[Gid],
        now: DateTime<Utc>,
    ) -> Result<Vec<StoredTrans>, StoreError>;

    /// Takes one unfinished transaction if nobody holds it (no owner, or an
    /// expired lease) and returns it as stored under the new lease; `None`
    /// if it is final, absent, or another pass holds a live lease on it.
    async fn acquire(
        &self,
        gid: &Gid,
        owner: &LeaseToken,
        lease_for: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<StoredTrans>, StoreError>;

    /// Lets go of leases we hold (shutdown hands them over): each listed
    /// transaction still owned by the given token becomes due now, unowned.
    async fn release(&self, held: &[(Gid, LeaseToken)], now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Sets an unfinished transaction to `failed` (no compensation). `false`
    /// if absent or already final.
    async fn force_stop(&self, gid: &Gid, now: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Makes a transaction that waits for a retry due now. A live lease is
    /// left alone (a pass is processing it right now). `false` if the gid
    /// does not exist.
    async fn reset_next_cron_time(&self, gid: &Gid, now: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Unfinished, unowned transactions scheduled more than `later_than`
    /// ahead are made due now (up to `limit`).
    async fn reset_stale_cron_times(
        &self,
        later_than: Duration,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<ResetCount, StoreError>;

    /// Counts one transient failure of a branch operation in `trans_alert`;
    /// the failure that brings the count to `limit` makes its alert pending
    /// (due at once). Once raised, an alert is never raised again for that
    /// operation.
    async fn count_failure(
        &self,
        failure: &BranchFailure,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<FailureCounted, StoreError>;

    /// Leases up to `limit` pending alerts that are due on the database's
    /// clock (never sent, or their backoff or a dead holder's lease is
    /// over): `owner` := the fresh token, `next_attempt_time` := db now +
    /// `lease_for`. Returns them.
    async fn lease_alerts(
        &self,
        owner: &LeaseToken,
        lease_for: Duration,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<AlertRow>, StoreError>;

    /// Records how a delivery ended, if `owner` still holds the alert's
    /// lease; `false` otherwise (the lease ran out and another delivery
    /// took it: that one records its own outcome).
    async fn settle_alert(
        &self,
        key: &AlertKey,
        owner: &LeaseToken,
        delivery: &Delivery,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// The alert rows of a transaction (tools and tests).
    async fn alerts_of(&self, gid: &Gid) -> Result<Vec<AlertRow>, StoreError>;

    /// How many transactions are unfinished, per status, and the creation
    /// time of the oldest (the gauges of `/api/metrics`).
    async fn unfinished(&self) -> Result<Unfinished, StoreError>;

    /// Records branch calls in `trans_branch_attempt` (one multi-row insert).
    async fn record_attempts(&self, attempts: &[NewAttempt]) -> Result<(), StoreError>;

    /// Keeps only the newest `keep` recorded attempts of a transaction.
    async fn trim_attempts(&self, gid: &Gid, keep: u32) -> Result<(), StoreError>;

    /// Deletes the attempts that started before `started_before_ms`
    /// (milliseconds since the epoch); how many.
    async fn prune_attempts(&self, started_before_ms: i64) -> Result<u64, StoreError>;

    /// The newest `limit` recorded attempts of a transaction, oldest first.
    async fn attempts_of(&self, gid: &Gid, limit: u32) -> Result<Vec<AttemptRow>, StoreError>;

    /// How many transactions there are per status, final ones included
    /// (the console's counts).
    async fn status_counts(&self) -> Result<Vec<(GlobalStatus, u64)>, StoreError>;

    /// dtm's `kv` table (message topics), in the same database.
    fn kv(&self) -> &dyn KvStore;
}

/// Opens the store named by `url`, creating the tables if needed:
/// `mysql://` / `mariadb://`, `postgres://` / `postgresql://`, `sqlite:`.
/// Creates and status updates go through [`GroupCommit`].
pub async fn open(url: &str, max_connections: u32) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(GroupCommit::new(open_direct(url, max_connections).await?)))
}

/// Like [`open`], without group commit: every write is its own transaction.
pub async fn open_direct(url: &str, max_connections: u32) -> Result<Arc<dyn Store>, StoreError> {
    let scheme = url.split(':').next().unwrap_or_default();
    Ok(match scheme {
        "mysql" | "mariadb" => {
            let url = url.replacen("mariadb:", "mysql:", 1);
            ensure_database(&url).await?;
            Arc::new(MySqlStore::open(&url, max_connections).await?)
        }
        "postgres" | "postgresql" => {
            ensure_database(url).await?;
            Arc::new(PostgresStore::open(url, max_connections).await?)
        }
        "sqlite" => Arc::new(SqliteStore::open(url, max_connections).await?),
        _ => return Err(StoreError::UnsupportedUrl(url.to_string())),
    })
}

/// Creates the store's database (MySQL/MariaDB, PostgreSQL) when it does
/// not exist yet, as order-srv and stock-srv create theirs
/// (`service_kit::db`); dtm leaves this to its users' DDL scripts. A user
/// who may not create databases gets [`StoreError::MissingDatabase`] with
/// the statement to run instead of the driver's bare "Unknown database".
pub async fn ensure_database(url: &str) -> Result<(), StoreError> {
    use sqlx::{ConnectOptions, Connection};
    let unsupported = || StoreError::UnsupportedUrl(url.to_string());
    let parsed = url::Url::parse(url).map_err(|_| unsupported())?;
    let name = percent_encoding::percent_decode_str(parsed.path().trim_start_matches('/'))
        .decode_utf8_lossy()
        .into_owned();
    if name.is_empty() {
        return Ok(()); // the driver's default database: nothing of ours to create
    }
    let mut server = parsed.clone();
    let postgres = matches!(parsed.scheme(), "postgres" | "postgresql");
    // PostgreSQL always connects to some database: its maintenance one.
    server.set_path(if postgres { "/postgres" } else { "" });
    let valid = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '-'));
    let (sql, missing) = if postgres {
        let options: sqlx::postgres::PgConnectOptions = url.parse()?;
        // invalid_catalog_name
        let missing = match options.connect().await {
            Ok(conn) => {
                let _ = conn.close().await;
                false
            }
            Err(err) => {
                if err.as_database_error().and_then(|e| e.code()).as_deref() != Some("3D000") {
                    return Err(err.into());
                }
                true
            }
        };
        (format!("CREATE DATABASE \"{name}\";"), missing)
    } else {
        let options: sqlx::mysql::MySqlConnectOptions = url.parse()?;
        let missing = match options.connect().await {
            Ok(conn) => {
                let _ = conn.close().await;
                false
            }
            Err(err) => {
                // ER_BAD_DB_ERROR, or ER_DBACCESS_DENIED_ERROR: MariaDB and
                // MySQL answer the latter to a user with no rights on a
                // database that does not exist, without saying whether it does.
                let number = err
                    .as_database_error()
                    .and_then(|e| e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
                    .map(|e| e.number());
                if !matches!(number, Some(1049 | 1044)) {
                    return Err(err.into());
                }
                true
            }
        };
        (format!("CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4;"), missing)
    };
    if !missing {
        return Ok(());
    }
    if !valid {
        return Err(StoreError::BadDatabaseName(name));
    }
    let created = if postgres {
        let options: sqlx::postgres::PgConnectOptions = server.as_str().parse()?;
        let mut conn = options.connect().await?;
        let result = sqlx::query(sql.trim_end_matches(';')).execute(&mut conn).await;
        let _ = conn.close().await;
        match result {
            // duplicate_database: another coordinator created it meanwhile.
            Err(err) if err.as_database_error().and_then(|e| e.code()).as_deref() == Some("42P04") => Ok(()),
            other => other.map(drop),
        }
    } else {
        let options: sqlx::mysql::MySqlConnectOptions = server.as_str().parse()?;
        let mut conn = options.connect().await?;
        let result = sqlx::query(sql.trim_end_matches(';')).execute(&mut conn).await;
        let _ = conn.close().await;
        result.map(drop)
    };
    match created {
        Ok(()) => {
            tracing::info!(database = %name, "created the store's database");
            Ok(())
        }
        Err(cause) => Err(StoreError::MissingDatabase { name, sql, cause }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_go() {
        #[derive(Serialize)]
        struct B(#[serde(serialize_with = "base64")] Vec<u8>);
        for (input, want) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(serde_json::to_string(&B(input.as_bytes().to_vec())).unwrap(), format!("\"{want}\""));
        }
    }

    #[test]
    fn later_rounds_up() {
        let t = now();
        assert_eq!(later(t, Duration::from_millis(200)), t + chrono::TimeDelta::seconds(1));
        assert_eq!(later(t, Duration::from_secs(10)), t + chrono::TimeDelta::seconds(10));
    }

    #[test]
    fn later_saturates_instead_of_panicking() {
        let t = now();
        let end = latest();
        assert_eq!(end.to_rfc3339(), "9999-12-31T23:59:59+00:00");
        // 10^14 s: the hostile retry_interval that used to panic in TimeDelta::seconds.
        assert_eq!(later(t, Duration::from_secs(100_000_000_000_000)), end);
        assert_eq!(later(t, Duration::from_secs(u64::MAX)), end);
        assert_eq!(later(t, Duration::MAX), end);
        assert_eq!(later(t, Duration::from_secs(i64::MAX.unsigned_abs())), end);
        assert_eq!(later(end, Duration::from_secs(1)), end);
        // A day is still a day.
        assert_eq!(later(t, Duration::from_secs(86_400)), t + chrono::TimeDelta::days(1));
    }
}
