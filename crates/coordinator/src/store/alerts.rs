//! The retry alerts' durable state (`trans_alert`) and the store's view of
//! unfinished transactions for the metrics.
//!
//! `trans_alert` is not dtm's: dtm keeps no alert state at all (it posts to
//! its `AlertWebHook` from the branch path, at every retry past the limit,
//! and forgets). Here one row per branch operation holds, in turn:
//!
//! 1. `counting` — the transient failures of that operation counted so far
//!    ([`Store::count_failure`](super::Store::count_failure));
//! 2. `pending` — the count reached `AlertRetryLimit`: an alert waits in the
//!    outbox. Delivery *leases* pending rows exactly as the poller leases
//!    transactions — a fresh token in `owner`, the expiry in
//!    `next_attempt_time`, on the database's clock
//!    ([`Store::lease_alerts`](super::Store::lease_alerts)) — and settles
//!    them fenced by that token ([`Store::settle_alert`](super::Store::settle_alert)):
//!    sent, or due again after a backoff;
//! 3. `sent` — delivered; the row stays, so the same crossing never alerts
//!    again, whatever the branch does afterwards.
//!
//! A coordinator that dies between the receiver's answer and the settle
//! leaves the row pending under a lease that expires: the alert is sent
//! again. Delivery is therefore at-least-once, never lost, and the receiver
//! deduplicates by the key (`crate::alert`).
//!
//! Statements per operation:
//!
//! | operation | statements |
//! |---|---|
//! | `count_failure` | UPDATE (crossing), else UPDATE (count), else INSERT-if-absent; one to three, each autocommit |
//! | `lease_alerts` | UPDATE … LIMIT n, SELECT by owner |
//! | `settle_alert` | UPDATE (fenced by owner) |
//! | `unfinished` | one SELECT … GROUP BY status over the unfinished rows only |

use std::time::Duration;

use chrono::{DateTime, Utc};
use dtm_protocol::{BranchId, Gid, Op};

use super::dialect::db_later;
use super::driver::{Driver, Statement};
use super::sql::SqlStore;
use super::{LeaseToken, StoreError};
use crate::model::GlobalStatus;

/// Where an alert row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertStatus {
    /// Below the limit: failures are being counted.
    Counting,
    /// The limit was reached; the alert waits to be delivered.
    Pending,
    /// Delivered (the receiver answered 2xx).
    Sent,
}

impl AlertStatus {
    /// The value stored in `trans_alert.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Counting => "counting",
            AlertStatus::Pending => "pending",
            AlertStatus::Sent => "sent",
        }
    }

    fn parse(text: &str) -> Result<AlertStatus, StoreError> {
        match text {
            "counting" => Ok(AlertStatus::Counting),
            "pending" => Ok(AlertStatus::Pending),
            "sent" => Ok(AlertStatus::Sent),
            other => Err(StoreError::Corrupt(format!("alert status {other:?}"))),
        }
    }
}

/// Which branch operation an alert row is about: its unique key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AlertKey {
    /// The transaction.
    pub gid: Gid,
    /// The branch (`01`, `02`, …).
    pub branch_id: BranchId,
    /// The operation (`action`, `compensate`, `confirm`, …).
    pub op: Op,
}

/// One transient failure of a branch operation, to count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchFailure {
    /// The operation that failed.
    pub key: AlertKey,
    /// The global status when it failed (dtm's alert field `status`).
    pub trans_status: GlobalStatus,
    /// What the call answered (clipped to the column's 1024 bytes).
    pub error: String,
}

/// What counting one failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCounted {
    /// Counted; still below the limit.
    Counting,
    /// This failure reached the limit: the alert is now pending.
    Crossed,
    /// The alert was raised before; nothing changed.
    AlreadyRaised,
}

/// A `trans_alert` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRow {
    /// The operation it is about.
    pub key: AlertKey,
    /// The global status at the last counted failure.
    pub trans_status: String,
    /// Failures counted (frozen at the limit once the alert is raised).
    pub retry_count: u32,
    /// The last counted failure.
    pub error: String,
    /// Where it stands.
    pub status: AlertStatus,
    /// Deliveries tried so far.
    pub attempts: u32,
    /// Next delivery, or the lease expiry while a delivery holds it.
    pub next_attempt_time: Option<DateTime<Utc>>,
    /// Lease token of the delivery holding it (empty: none).
    pub owner: String,
    /// Why the last delivery failed.
    pub last_error: String,
}

/// How a delivery attempt ended ([`Store::settle_alert`](super::Store::settle_alert)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The receiver answered 2xx: the row becomes `sent`.
    Sent,
    /// It did not: the row is due again after `retry_in`.
    Failed {
        /// What went wrong (kept in `last_error`).
        error: String,
        /// The backoff before the next attempt.
        retry_in: Duration,
    },
}

/// The unfinished transactions as the store holds them (for the gauges).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unfinished {
    /// How many per unfinished status (`prepared`, `submitted`, `aborting`);
    /// a status with none is absent.
    pub counts: Vec<(GlobalStatus, u64)>,
    /// The `create_time` of the oldest one, if any.
    pub oldest: Option<DateTime<Utc>>,
}

const ALERT_COLUMNS: &str = "gid, branch_id, op, trans_status, retry_count, error, status, attempts, \
     next_attempt_time, owner, last_error";

/// `WHERE` the row of `key`.
fn where_key<D: Driver>(q: &mut Statement<D>, key: &AlertKey) {
    q.push(" WHERE gid = ").push_bind(key.gid.as_str());
    q.push(" AND branch_id = ").push_bind(key.branch_id.as_str());
    q.push(" AND op = ").push_bind(key.op.as_str());
}

fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl<D: Driver> SqlStore<D> {
    /// [`Store::count_failure`](super::Store::count_failure).
    pub(super) async fn count_failure_sql(
        &self,
        failure: &BranchFailure,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<FailureCounted, StoreError> {
        let limit = limit.max(1);
        // The assignments never read a column assigned before them in the
        // same SET (MySQL evaluates SET left to right with the new values).
        let update = |crossing: bool| {
            let mut q = Statement::<D>::new("UPDATE trans_alert SET error = ");
            q.push_bind(failure.error.as_str());
            q.push(", trans_status = ").push_bind(failure.trans_status.as_str());
            q.push(", update_time = ").push_bind(now);
            if crossing {
                q.push(", status = ").push_bind(AlertStatus::Pending.as_str());
                q.push(format!(", next_attempt_time = {}", D::db_now()));
            }
            q.push(", retry_count = retry_count + 1");
            where_key(&mut q, &failure.key);
            q.push(" AND status = ").push_bind(AlertStatus::Counting.as_str());
            if crossing {
                q.push(" AND retry_count + 1 >= ").push_bind(int(limit));
            }
            q
        };
        // Twice at most: an insert that loses the race to another
        // coordinator's insert of the same row counts on the row it found.
        for _ in 0..2 {
            if D::run(update(true), self.pool()).await? > 0 {
                return Ok(FailureCounted::Crossed);
            }
            if D::run(update(false), self.pool()).await? > 0 {
                return Ok(FailureCounted::Counting);
            }
            let crossed = limit <= 1;
            let status = if crossed { AlertStatus::Pending } else { AlertStatus::Counting };
            let (insert, on_conflict) = D::INSERT_IGNORE;
            let mut q = Statement::<D>::new(format!(
                "{insert} trans_alert (gid, branch_id, op, trans_status, retry_count, error, status, \
                 next_attempt_time, create_time, update_time) "
            ));
            q.push_values([()], |mut row, ()| {
                row.push_bind(failure.key.gid.as_str())
                    .push_bind(failure.key.branch_id.as_str())
                    .push_bind(failure.key.op.as_str())
                    .push_bind(failure.trans_status.as_str())
                    .push_bind(1_i32)
                    .push_bind(failure.error.as_str())
                    .push_bind(status.as_str())
                    .push(D::db_now())
                    .push_bind(now)
                    .push_bind(now);
            });
            q.push(on_conflict);
            if D::run(q, self.pool()).await? > 0 {
                return Ok(if crossed { FailureCounted::Crossed } else { FailureCounted::Counting });
            }
            // The row exists. Past counting: the alert was raised before.
            let mut q = Statement::<D>::new("SELECT status FROM trans_alert");
            where_key(&mut q, &failure.key);
            let row = D::fetch_optional(q, self.pool()).await?;
            let status = match row {
                Some(row) => D::text_column(&row, "status")?,
                None => continue,
            };
            if AlertStatus::parse(&status)? != AlertStatus::Counting {
                return Ok(FailureCounted::AlreadyRaised);
            }
        }
        // Two lost races in a row: this one failure goes uncounted.
        Ok(FailureCounted::Counting)
    }

    /// [`Store::lease_alerts`](super::Store::lease_alerts).
    pub(super) async fn lease_alerts_sql(
        &self,
        owner: &LeaseToken,
        lease_for: Duration,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<AlertRow>, StoreError> {
        let q = Self::limited_update_of(
            "trans_alert",
            "next_attempt_time",
            |q| {
                q.push("owner = ").push_bind(owner.as_str());
                q.push(", next_attempt_time = ").push(db_later::<D>(lease_for));
                q.push(", update_time = ").push_bind(now);
            },
            |q| {
                q.push("status = ").push_bind(AlertStatus::Pending.as_str());
                q.push(format!(" AND next_attempt_time <= {}", D::db_now()));
            },
            i64::from(limit.max(1)),
        );
        if D::run(q, self.pool()).await? == 0 {
            return Ok(Vec::new());
        }
        let mut q = Statement::<D>::new(format!("SELECT {ALERT_COLUMNS} FROM trans_alert WHERE owner = "));
        q.push_bind(owner.as_str()).push(" AND status = ").push_bind(AlertStatus::Pending.as_str());
        q.push(" ORDER BY id");
        D::fetch_all(q, self.pool()).await?.iter().map(D::alert_row).collect()
    }

    /// [`Store::settle_alert`](super::Store::settle_alert).
    pub(super) async fn settle_alert_sql(
        &self,
        key: &AlertKey,
        owner: &LeaseToken,
        delivery: &Delivery,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut q = Statement::<D>::new("UPDATE trans_alert SET owner = '', attempts = attempts + 1");
        match delivery {
            Delivery::Sent => {
                q.push(", status = ").push_bind(AlertStatus::Sent.as_str());
                q.push(", last_error = ''");
            }
            Delivery::Failed { error, retry_in } => {
                q.push(", next_attempt_time = ").push(db_later::<D>(*retry_in));
                q.push(", last_error = ").push_bind(error.as_str());
            }
        }
        q.push(", update_time = ").push_bind(now);
        where_key(&mut q, key);
        q.push(" AND status = ").push_bind(AlertStatus::Pending.as_str());
        q.push(" AND owner = ").push_bind(owner.as_str());
        Ok(D::run(q, self.pool()).await? > 0)
    }

    /// [`Store::alerts_of`](super::Store::alerts_of).
    pub(super) async fn alerts_of_sql(&self, gid: &Gid) -> Result<Vec<AlertRow>, StoreError> {
        let mut q = Statement::<D>::new(format!("SELECT {ALERT_COLUMNS} FROM trans_alert WHERE gid = "));
        q.push_bind(gid.as_str()).push(" ORDER BY id");
        D::fetch_all(q, self.pool()).await?.iter().map(D::alert_row).collect()
    }

    /// [`Store::unfinished`](super::Store::unfinished): one `GROUP BY` over
    /// the unfinished rows, which the `(status, next_cron_time)` index finds
    /// without reading a finished one — the cost follows the backlog, not
    /// the history.
    pub(super) async fn unfinished_sql(&self) -> Result<Unfinished, StoreError> {
        let q = Statement::<D>::new(format!(
            "SELECT status, COUNT(*) AS n, MIN(create_time) AS oldest FROM trans_global \
             WHERE status IN {} GROUP BY status",
            super::sql::UNFINISHED
        ));
        let mut summary = Unfinished::default();
        for row in D::fetch_all(q, self.pool()).await? {
            let (status, n, oldest) = D::status_count(&row)?;
            let status: GlobalStatus =
                status.parse().map_err(|e| StoreError::Corrupt(format!("status: {e}")))?;
            summary.counts.push((status, n.max(0).unsigned_abs()));
            summary.oldest = match (summary.oldest, oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(summary)
    }
}

/// Reads an alert row's typed values (the driver decodes the columns).
pub(super) fn alert_row(
    key: AlertKey,
    texts: [String; 5],
    retry_count: i32,
    attempts: i32,
    next_attempt_time: Option<DateTime<Utc>>,
) -> Result<AlertRow, StoreError> {
    let [trans_status, error, status, owner, last_error] = texts;
    Ok(AlertRow {
        key,
        trans_status,
        retry_count: u32::try_from(retry_count.max(0)).unwrap_or(0),
        error,
        status: AlertStatus::parse(&status)?,
        attempts: u32::try_from(attempts.max(0)).unwrap_or(0),
        next_attempt_time,
        owner,
        last_error,
    })
}
