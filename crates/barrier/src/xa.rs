//! The barrier rows of an XA branch (dtm's `dtmimp/trans_xa_base.go`).
//!
//! An XA branch needs no compensation logic — the database undoes the local
//! transaction — but it has the same race as any other branch: the
//! coordinator's `rollback` may reach the branch *before* its local
//! transaction does (the application gave up on a slow call, or the
//! transaction timed out). `XA ROLLBACK` of an xid that does not exist yet
//! does nothing; a local transaction that prepared after it would hold its
//! locks until someone finishes it ("hanging"). What stops it: its
//! `registerBranch`, which comes before `PREPARE`, is refused once the
//! global transaction is no longer `prepared` — and, checked first, before
//! any business SQL, a row the rollback leaves behind.
//!
//! Both sides therefore write the same row, `(gid, branch_id, action, 01)`:
//!
//! * the local transaction inserts it with reason `action`, inside the XA
//!   transaction ([`XaBarrier::action`]);
//! * the phase-2 `rollback`, after `XA ROLLBACK`, inserts it with reason
//!   `rollback` ([`XaBarrier::rolled_back`]).
//!
//! Whoever comes first owns the row. A local transaction that finds the row
//! owned by a rollback gives up ([`XaAction::RolledBack`]); a rollback that
//! finds it owned by a local transaction that committed or rolled back
//! changes nothing. The unique key makes the second writer wait while the
//! first one's transaction is open (or prepared), so they never both win.

use dtm_protocol::{BranchId, Gid, Op, TransType};

use crate::database::sealed::BarrierRow;
use crate::{BarrierDatabase, BarrierTable};

/// The `barrier_id` of both XA rows (dtm's `XaBarrier1`).
const XA_BARRIER_ID: &str = "01";

/// What the local transaction found when it inserted its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "only Fresh means the local transaction may go on"]
pub enum XaAction {
    /// The row is new: run the business SQL and prepare.
    Fresh,
    /// The row was inserted by an earlier local transaction of this branch
    /// that committed: the same call delivered twice. Do nothing again.
    Duplicate,
    /// The phase-2 rollback came first: the global transaction is rolled
    /// back, and this local transaction must not prepare (anti-hanging).
    RolledBack,
}

/// The XA rows of one branch of one global transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XaBarrier {
    /// The global transaction.
    gid: Gid,
    /// The branch.
    branch_id: BranchId,
    /// Where the rows go; `None`: the engine's default table.
    table: Option<BarrierTable>,
}

impl XaBarrier {
    /// The rows of branch `branch_id` of `gid`, in the default table.
    pub fn new(gid: Gid, branch_id: BranchId) -> XaBarrier {
        XaBarrier { gid, branch_id, table: None }
    }

    /// Uses `table` instead of the engine's default barrier table.
    pub fn with_table(mut self, table: Option<BarrierTable>) -> XaBarrier {
        self.table = table;
        self
    }

    fn row<'a>(&'a self, reason: Op) -> BarrierRow<'a> {
        BarrierRow {
            trans_type: TransType::Xa.as_str(),
            gid: self.gid.as_str(),
            branch_id: self.branch_id.as_str(),
            op: Op::Action.as_str(),
            barrier_id: XA_BARRIER_ID,
            reason: reason.as_str(),
        }
    }

    fn table_for<DB: BarrierDatabase>(&self) -> BarrierTable {
        self.table.clone().unwrap_or_else(|| BarrierTable::trusted(DB::DEFAULT_TABLE))
    }

    /// Inside the local XA transaction, before the business SQL: inserts
    /// the row with reason `action` and says whether to go on.
    pub async fn action<DB: BarrierDatabase>(
        &self,
        conn: &mut DB::Connection,
    ) -> Result<XaAction, sqlx::Error> {
        let table = self.table_for::<DB>();
        if DB::insert_row(conn, &DB::insert_ignore_sql(&table), &self.row(Op::Action)).await? == 1 {
            return Ok(XaAction::Fresh);
        }
        let key = [self.gid.as_str(), self.branch_id.as_str(), Op::Action.as_str(), XA_BARRIER_ID];
        let reason = DB::select_reason(conn, &DB::select_reason_sql(&table), key).await?;
        Ok(if reason.as_deref() == Some(Op::Rollback.as_str()) {
            XaAction::RolledBack
        } else {
            XaAction::Duplicate
        })
    }

    /// After the phase-2 rollback: inserts the row with reason `rollback`,
    /// so that a local transaction arriving later finds it and gives up. A
    /// row already there (the local transaction's own, committed or rolled
    /// back by now) is left as it is.
    pub async fn rolled_back<DB: BarrierDatabase>(
        &self,
        conn: &mut DB::Connection,
    ) -> Result<(), sqlx::Error> {
        let table = self.table_for::<DB>();
        DB::insert_row(conn, &DB::insert_ignore_sql(&table), &self.row(Op::Rollback)).await?;
        Ok(())
    }
}
