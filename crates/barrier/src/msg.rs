//! The barrier side of dtm's 2-phase message (`trans_type` `msg`).
//!
//! A 2-phase message is "do this local transaction, then guarantee these
//! follow-up actions". The sender (dtm's `DoAndSubmit`) prepares the message
//! at dtm, runs its local transaction, then submits. If it crashes between
//! the commit and the submit, dtm asks it back ("QueryPrepared") whether the
//! local transaction committed. Both sides use the same barrier row
//! `(gid, "00", "msg", "01")`, and whoever inserts it first decides:
//!
//! * the local transaction ([`MsgBarrier::call`]) inserts it with reason
//!   `msg` and commits it together with the business effect;
//! * the check-back ([`crate::BranchBarrier::query_prepared`]) inserts it with
//!   reason `rollback` — after which the local transaction can no longer
//!   commit its effect ([`MsgLocal::Duplicated`]).
//!
//! The client crate builds `DoAndSubmit` (prepare, call, submit/abort) on
//! top of this.

use sqlx::{Pool, Transaction};

use dtm_protocol::{BranchId, Gid, Op, TransType};

use crate::{BarrierDatabase, BarrierTable, BranchBarrier, BranchError, Outcome};

/// What happened to a 2-phase message's local transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a Duplicated local transaction did not commit its business effect"]
pub enum MsgLocal<T> {
    /// The business code ran and committed, with the barrier row: submit the message.
    Committed(T),
    /// dtm's `ErrDuplicated`: the row `(gid, 00, msg, 01)` already existed,
    /// so the business code did not run. Either the local transaction
    /// already committed once, or QueryPrepared decided to roll the message
    /// back; asking QueryPrepared tells which.
    Duplicated,
}

/// The barrier of a 2-phase message's own local transaction: branch `00`,
/// op `msg`, trans_type `msg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgBarrier {
    /// A plain barrier with the message's fixed branch and op.
    barrier: BranchBarrier,
}

impl MsgBarrier {
    /// The barrier for the local transaction of message `gid`.
    pub fn new(gid: Gid) -> MsgBarrier {
        MsgBarrier { barrier: BranchBarrier::new(TransType::Msg, gid, BranchId::msg(), Op::Msg) }
    }

    /// Uses `table` instead of the engine's default barrier table.
    pub fn with_table(self, table: BarrierTable) -> MsgBarrier {
        MsgBarrier { barrier: self.barrier.with_table(table) }
    }

    /// The message's gid.
    pub fn gid(&self) -> &Gid {
        self.barrier.gid()
    }

    /// Runs the message's local transaction: `busi` inside `tx`, guarded by
    /// the row `(gid, 00, msg, 01)` (see [`BranchBarrier::call`]).
    pub async fn call<DB, T>(
        &mut self,
        tx: Transaction<'_, DB>,
        busi: impl AsyncFnOnce(&mut DB::Connection) -> Result<T, BranchError>,
    ) -> Result<MsgLocal<T>, BranchError>
    where
        DB: BarrierDatabase,
    {
        Ok(match self.barrier.call(tx, busi).await? {
            Outcome::Ran(value) => MsgLocal::Committed(value),
            // Op `msg` has no origin op, so Duplicate is the only possible skip.
            Outcome::Skipped(_) => MsgLocal::Duplicated,
        })
    }

    /// [`MsgBarrier::call`], beginning the transaction on `pool`.
    pub async fn call_with_pool<DB, T>(
        &mut self,
        pool: &Pool<DB>,
        busi: impl AsyncFnOnce(&mut DB::Connection) -> Result<T, BranchError>,
    ) -> Result<MsgLocal<T>, BranchError>
    where
        DB: BarrierDatabase,
    {
        let tx = pool.begin().await?;
        self.call(tx, busi).await
    }

    /// The check-back for this message (see [`BranchBarrier::query_prepared`]).
    pub async fn query_prepared<DB: BarrierDatabase>(&self, pool: &Pool<DB>) -> Result<(), BranchError> {
        self.barrier.query_prepared(pool).await
    }
}
