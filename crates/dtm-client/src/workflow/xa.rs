//! A workflow's XA step: dtm's `wf.NewBranch().DoXa(dbConf, fn)`
//! (`client/workflow/workflow.go`, `imp.go`), on the XA helpers of
//! [`crate::xa`].
//!
//! The step's local transaction runs in the workflow's own process, on the
//! application's database, exactly like an XA branch's
//! ([`XaDb::local_transaction`]): xid `<gid>-<branch_id>`, `XA START`, the
//! barrier row, the business SQL, then — instead of registering an `xa`
//! branch — the progress op `business` (status `succeed`, the business's
//! result as data), then `XA END` + `XA PREPARE` and the session is closed.
//! The step's outcome is recorded afterwards as op `action`, like any step.
//! Phase 2 is the step's `on_commit` / `on_rollback`: `XA COMMIT` / `XA
//! ROLLBACK` of the xid, recorded as `commit` / `rollback`.
//!
//! Why this order survives a crash at any point:
//!
//! * before `business` is recorded: the database rolls the unprepared
//!   transaction back with its session, nothing is recorded, the resumed
//!   run executes the step afresh;
//! * `business` recorded, not yet prepared: the database rolled it back
//!   too; the resumed run finds `business` without `action` and the xid
//!   not prepared, so the step is a FAILURE and the workflow rolls back
//!   (dtm: "not resumable, to rollback");
//! * prepared, `action` not yet recorded: the resumed run finds `business`
//!   and the xid prepared — the business is done, its result is the
//!   recorded data (dtm fails the step here; we look at the database,
//!   which knows);
//! * `action` recorded, phase 2 not done: the resumed run replays the step
//!   without running it, and commits or rolls back the prepared transaction
//!   in phase 2. The coordinator calls the workflow back until it is final,
//!   and [`XaDb::spawn_recovery`] finishes a prepared xid whose workflow is
//!   already final, so no prepared transaction holds its locks forever.

use barrier::BranchError;
use dtm_protocol::{BranchStatus, Op};

use super::context::{BranchCtx, StepResult, Wf};
use crate::xa::{XaDatabase, XaDb, XaLocal, Xid, registration_error};
use crate::{ClientError, RegisterBranch};

impl Wf {
    /// An XA step on `db` (dtm's `DoXa`): `busi` runs in the local XA
    /// transaction `<gid>-<branch_id>` on a connection of its own, which is
    /// prepared, then committed if the workflow succeeds or rolled back if
    /// it fails. Returns `busi`'s result. A [`BranchError::Failure`] from
    /// `busi` fails the step (its transaction is rolled back at once);
    /// [`BranchError::Retry`] interrupts the run (it runs again on resume).
    pub async fn xa_step<DB>(
        &self,
        db: &XaDb<DB>,
        busi: impl AsyncFnOnce(&mut DB::Connection) -> Result<Vec<u8>, BranchError>,
    ) -> StepResult
    where
        DB: XaDatabase + 'static,
    {
        let (commit_db, rollback_db) = (db.clone(), db.clone());
        let step = self
            .branch()?
            .on_commit(move |ctx| async move { finish(&commit_db, &ctx, true).await })
            .on_rollback(move |ctx| async move { finish(&rollback_db, &ctx, false).await });
        let business = self.recorded_result(step.id(), Op::Business);
        step.action(async move |ctx: BranchCtx| match business {
            Some(business) => after_business(db, &ctx, business).await,
            None => {
                let local = db
                    .prepare_local(&ctx.gid, &ctx.branch_id, busi, async |data: &Vec<u8>| {
                        let progress = RegisterBranch::workflow_progress(
                            ctx.gid.clone(),
                            ctx.branch_id.clone(),
                            Op::Business,
                            BranchStatus::Succeed,
                            data.clone(),
                        );
                        self.dtm().register_branch(&progress).await.map_err(registration_error)
                    })
                    .await
                    .map_err(step_error)?;
                match local {
                    XaLocal::Prepared(data) => Ok(data),
                    // Its barrier row is committed: the business committed in
                    // an earlier run whose progress records are gone.
                    XaLocal::Duplicate => Ok(Vec::new()),
                }
            }
        })
        .await
    }
}

/// The step's `business` is recorded but not its outcome: an earlier run
/// stopped between recording the business and recording the action. The
/// database tells whether the local transaction got prepared.
async fn after_business<DB: XaDatabase>(db: &XaDb<DB>, ctx: &BranchCtx, business: StepResult) -> StepResult {
    let xid = Xid::new(&ctx.gid, &ctx.branch_id).map_err(step_error)?;
    let prepared = db.prepared_xids().await.map_err(|e| ClientError::Other(e.to_string()))?;
    if prepared.contains(&xid) {
        return business;
    }
    Err(ClientError::Failure(format!(
        "the XA step {} of {} stopped before its prepare: not resumable, rolled back",
        ctx.branch_id, ctx.gid
    )))
}

/// Phase 2 of the step: commit or roll back its prepared transaction.
async fn finish<DB: XaDatabase>(db: &XaDb<DB>, ctx: &BranchCtx, commit: bool) -> Result<(), ClientError> {
    db.finish(&ctx.gid, &ctx.branch_id, commit).await.map_err(step_error)
}

/// A branch error as a step's: a failure or a refused xid ends the step;
/// anything else interrupts the run, which repeats it on resume.
fn step_error(err: BranchError) -> ClientError {
    match err {
        BranchError::Failure(reason) | BranchError::InvalidArgument(reason) => ClientError::Failure(reason),
        BranchError::Ongoing => ClientError::Other("the XA step's database is busy".into()),
        BranchError::Retry(cause) => ClientError::Other(cause.to_string()),
    }
}
