//! The two writes of dtm's workflow mode (`dtmsvr/trans_type_workflow.go`,
//! `dtmsvr/api.go`), beside the saga/TCC/msg statements of `sql.rs`.
//!
//! A workflow runs in the application (the SDK), not in the coordinator:
//! the coordinator only records what the application tells it —
//!
//! * a **progress** ([`Store::add_progress`](super::Store::add_progress)):
//!   one `trans_branch_op` row with the op (`action`, `commit`, `rollback`),
//!   the final status (`succeed`/`failed`) and the step's result as
//!   `bin_data`, inserted only while the workflow is still `prepared`
//!   (checked under the global row's lock, as `registerBranch` of TCC is);
//! * the **outcome** ([`Store::finish_workflow`](super::Store::finish_workflow)):
//!   `prepared` → `succeed`/`failed` with `rollback_reason` and `result` in
//!   one conditional `UPDATE`. It is the application's decision, like a
//!   TCC's submit: it applies whoever holds the lease and clears it, so a
//!   pass still calling the workflow's callback finds its next write refused.
//!
//! | operation | statements | commits |
//! |---|---|---|
//! | `add_progress` | UPDATE global (status check, lock), INSERT branch | 1 |
//! | `finish_workflow` | UPDATE global (conditional) | 1 |

use chrono::{DateTime, Utc};
use dtm_protocol::Gid;

use super::driver::{Driver, Statement};
use super::{NewBranch, SqlStore, StoreError};
use crate::model::{BranchStatus, GlobalStatus};

/// The outcome a workflow's submit records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowOutcome {
    /// `succeed` or `failed`.
    pub status: GlobalStatus,
    /// Why it failed (`req_extra.rollback_reason`), if given.
    pub rollback_reason: Option<String>,
    /// The workflow's result, base64 as the SDK sends it (`req_extra.result`), if given.
    pub result: Option<String>,
}

impl<D: Driver> SqlStore<D> {
    /// [`Store::add_progress`](super::Store::add_progress).
    pub(super) async fn add_progress_sql(
        &self,
        gid: &Gid,
        progress: &NewBranch,
        status: BranchStatus,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        // As `add_branches`: a write checks the status and locks the row in one step.
        let mut q = Statement::<D>::new("UPDATE trans_global SET update_time = ");
        q.push_bind(now).push(" WHERE gid = ").push_bind(gid.as_str());
        q.push(" AND status = ").push_bind(GlobalStatus::Prepared.as_str());
        if D::run(q, &mut *tx).await? == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let mut q = Statement::<D>::new(
            "INSERT INTO trans_branch_op (gid, url, bin_data, branch_id, op, status, finish_time, \
             create_time, update_time) VALUES (",
        );
        q.push_bind(gid.as_str()).push(", ").push_bind(progress.url.as_str()).push(", ");
        q.push_bind(progress.bin_data.clone()).push(", ").push_bind(progress.branch_id.as_str()).push(", ");
        q.push_bind(progress.op.as_str()).push(", ").push_bind(status.as_str()).push(", ");
        q.push_bind(now).push(", ").push_bind(now).push(", ").push_bind(now).push(")");
        if let Err(e) = D::run(q, &mut *tx).await {
            let _ = tx.rollback().await;
            return Err(match &e {
                sqlx::Error::Database(d) if d.is_unique_violation() => {
                    StoreError::Duplicate(d.message().to_string())
                }
                _ => StoreError::Database(e),
            });
        }
        tx.commit().await?;
        Ok(true)
    }

    /// [`Store::finish_workflow`](super::Store::finish_workflow).
    pub(super) async fn finish_workflow_sql(
        &self,
        gid: &Gid,
        outcome: &WorkflowOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut q = Statement::<D>::new("UPDATE trans_global SET status = ");
        q.push_bind(outcome.status.as_str());
        q.push(if outcome.status == GlobalStatus::Succeed {
            ", finish_time = "
        } else {
            ", rollback_time = "
        });
        q.push_bind(now).push(", update_time = ").push_bind(now);
        // The lease is let go: nothing is left to drive.
        q.push(format!(", owner = '', next_cron_time = {}", D::db_now()));
        if let Some(reason) = &outcome.rollback_reason {
            q.push(", rollback_reason = ").push_bind(reason.as_str());
        }
        if let Some(result) = &outcome.result {
            q.push(", result = ").push_bind(result.as_str());
        }
        q.push(" WHERE gid = ").push_bind(gid.as_str());
        q.push(" AND status = ").push_bind(GlobalStatus::Prepared.as_str());
        Ok(D::run(q, self.pool()).await? > 0)
    }
}
