//! The branch attempts' durable state (`trans_branch_attempt`) and the
//! console's reads of `trans_global` beyond dtm's `all`.
//!
//! `trans_branch_attempt` is not dtm's: dtm keeps only the last status of
//! each branch operation (`trans_branch_op`), so after the fact nobody can
//! tell when a branch was called, how long it took or what it answered the
//! five times before it succeeded. One row per branch call holds that, for
//! the console's timeline of a transaction (`crate::attempts` writes them,
//! in batches, off the saga's path).
//!
//! The table is bounded twice: per transaction (the newest
//! `AttemptsPerTransaction` rows of a gid are kept, trimmed by the writer
//! once it has written more than that for the gid) and by age
//! (`AttemptsMaxAge`, pruned by the `start_ms` index).
//!
//! Statements per operation:
//!
//! | operation | statements |
//! |---|---|
//! | `record_attempts` | one multi-row INSERT per batch |
//! | `trim_attempts` | a SELECT of the cut-off id down the `(gid, id)` index and, if over the bound, one DELETE |
//! | `prune_attempts` | one DELETE by `start_ms` |
//! | `attempts_of` | one SELECT by `(gid, id)` |
//! | `status_counts` | one SELECT … GROUP BY status (an index-only scan of `status_id`) |

use dtm_protocol::{BranchId, Gid, Op};
use serde::Serialize;

use super::StoreError;
use super::driver::{Driver, Statement};
use super::sql::SqlStore;
use crate::model::GlobalStatus;

/// How one branch call ended, as the console shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptResult {
    /// The branch succeeded.
    Success,
    /// dtm's FAILURE: the business said no.
    Failure,
    /// dtm's ONGOING: not yet, ask again later.
    Ongoing,
    /// Anything else (unreachable, timeout, 5xx, other gRPC codes): retried.
    Error,
}

impl AttemptResult {
    /// The value stored in `trans_branch_attempt.result`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Success => "success",
            AttemptResult::Failure => "failure",
            AttemptResult::Ongoing => "ongoing",
            AttemptResult::Error => "error",
        }
    }

    fn parse(text: &str) -> Result<AttemptResult, StoreError> {
        match text {
            "success" => Ok(AttemptResult::Success),
            "failure" => Ok(AttemptResult::Failure),
            "ongoing" => Ok(AttemptResult::Ongoing),
            "error" => Ok(AttemptResult::Error),
            other => Err(StoreError::Corrupt(format!("attempt result {other:?}"))),
        }
    }
}

/// One branch call to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAttempt {
    /// The transaction.
    pub gid: Gid,
    /// The branch (`01`, `02`, …).
    pub branch_id: BranchId,
    /// The operation called.
    pub op: Op,
    /// How it ended.
    pub result: AttemptResult,
    /// What the branch answered when it did not succeed (clipped to 1024 bytes).
    pub error: String,
    /// How long the call took, in milliseconds.
    pub latency_ms: i64,
    /// When it started, in milliseconds since the epoch (the coordinator's clock).
    pub start_ms: i64,
}

/// A `trans_branch_attempt` row (JSON of the console's API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRow {
    /// Auto-increment id: the order of the calls.
    pub id: i64,
    /// The branch.
    pub branch_id: String,
    /// The operation.
    pub op: String,
    /// How it ended.
    pub result: AttemptResult,
    /// What the branch answered when it did not succeed.
    pub error: String,
    /// Call duration, milliseconds.
    pub latency_ms: i64,
    /// Call start, milliseconds since the epoch.
    pub start_ms: i64,
}

const ATTEMPT_COLUMNS: &str = "id, gid, branch_id, op, result, error, latency_ms, start_ms";

/// The most rows one multi-row INSERT carries (PostgreSQL allows 65 535
/// bound values; 7 per row).
pub const MAX_INSERT_ROWS: usize = 1000;

impl<D: Driver> SqlStore<D> {
    /// [`Store::record_attempts`](super::Store::record_attempts).
    pub(super) async fn record_attempts_sql(&self, attempts: &[NewAttempt]) -> Result<(), StoreError> {
        for chunk in attempts.chunks(MAX_INSERT_ROWS) {
            let mut q = Statement::<D>::new(
                "INSERT INTO trans_branch_attempt (gid, branch_id, op, result, error, latency_ms, start_ms) ",
            );
            q.push_values(chunk, |mut row, a| {
                row.push_bind(a.gid.as_str())
                    .push_bind(a.branch_id.as_str())
                    .push_bind(a.op.as_str())
                    .push_bind(a.result.as_str())
                    .push_bind(a.error.as_str())
                    .push_bind(a.latency_ms)
                    .push_bind(a.start_ms);
            });
            D::run(q, self.pool()).await?;
        }
        Ok(())
    }

    /// Keeps the newest `keep` rows of `gid`: finds the id of the oldest
    /// one to keep (`OFFSET keep - 1` down the `(gid, id)` index) and
    /// deletes below it. Two statements, because MySQL refuses a DELETE
    /// whose sub-select reads the same table.
    pub(super) async fn trim_attempts_sql(&self, gid: &Gid, keep: u32) -> Result<(), StoreError> {
        let mut q = Statement::<D>::new("SELECT id FROM trans_branch_attempt WHERE gid = ");
        q.push_bind(gid.as_str()).push(" ORDER BY id DESC LIMIT 1 OFFSET ");
        q.push_bind(i64::from(keep.max(1) - 1));
        let Some(row) = D::fetch_optional(q, self.pool()).await? else { return Ok(()) };
        let cut = D::int_column(&row, "id")?;
        let mut q = Statement::<D>::new("DELETE FROM trans_branch_attempt WHERE gid = ");
        q.push_bind(gid.as_str()).push(" AND id < ").push_bind(cut);
        D::run(q, self.pool()).await?;
        Ok(())
    }

    /// [`Store::prune_attempts`](super::Store::prune_attempts).
    pub(super) async fn prune_attempts_sql(&self, started_before_ms: i64) -> Result<u64, StoreError> {
        let mut q = Statement::<D>::new("DELETE FROM trans_branch_attempt WHERE start_ms < ");
        q.push_bind(started_before_ms);
        Ok(D::run(q, self.pool()).await?)
    }

    /// [`Store::attempts_of`](super::Store::attempts_of).
    pub(super) async fn attempts_of_sql(&self, gid: &Gid, limit: u32) -> Result<Vec<AttemptRow>, StoreError> {
        let mut q =
            Statement::<D>::new(format!("SELECT {ATTEMPT_COLUMNS} FROM trans_branch_attempt WHERE gid = "));
        q.push_bind(gid.as_str()).push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(limit.max(1)));
        let mut rows = D::fetch_all(q, self.pool())
            .await?
            .iter()
            .map(|row| {
                Ok(AttemptRow {
                    id: D::int_column(row, "id")?,
                    branch_id: D::text_column(row, "branch_id")?,
                    op: D::text_column(row, "op")?,
                    result: AttemptResult::parse(&D::text_column(row, "result")?)?,
                    error: D::text_column(row, "error")?,
                    latency_ms: D::int_column(row, "latency_ms")?,
                    start_ms: D::int_column(row, "start_ms")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        rows.reverse();
        Ok(rows)
    }

    /// [`Store::status_counts`](super::Store::status_counts).
    pub(super) async fn status_counts_sql(&self) -> Result<Vec<(GlobalStatus, u64)>, StoreError> {
        let q = Statement::<D>::new("SELECT status, COUNT(*) AS n FROM trans_global GROUP BY status");
        let mut counts = Vec::new();
        for row in D::fetch_all(q, self.pool()).await? {
            let status: GlobalStatus = D::text_column(&row, "status")?
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("status: {e}")))?;
            counts.push((status, D::int_column(&row, "n")?.max(0).unsigned_abs()));
        }
        Ok(counts)
    }
}

/// A gid prefix as a range of the gid index: every gid that starts with
/// `prefix` is `>= prefix` and `< the prefix with its last byte raised`
/// (gids are visible ASCII, below `~`, so the raise cannot overflow).
/// `None` for an empty prefix.
pub fn prefix_range(prefix: &str) -> Option<(String, String)> {
    let last = prefix.chars().last()?;
    let next = char::from_u32(u32::from(last) + 1)?;
    let mut upper = prefix[..prefix.len() - last.len_utf8()].to_string();
    upper.push(next);
    Some((prefix.to_string(), upper))
}

/// `prefix` for `LIKE … ESCAPE '!'`: the wildcards `%` and `_` and the
/// escape character itself match only themselves.
pub fn like_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '!') {
            out.push('!');
        }
        out.push(c);
    }
    out.push('%');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_a_half_open_range() {
        assert_eq!(prefix_range("abc"), Some(("abc".into(), "abd".into())));
        assert_eq!(prefix_range("a}"), Some(("a}".into(), "a~".into())));
        assert_eq!(prefix_range(""), None);
    }

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(like_prefix("a_b%c!"), "a!_b!%c!!%");
        assert_eq!(like_prefix("plain"), "plain%");
    }
}
