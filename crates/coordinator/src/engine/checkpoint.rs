//! Points where a test may hold a pass.
//!
//! Races between passes happen in gaps of microseconds; a test that waits
//! for them by sleeping proves nothing when it passes. A [`PassCheckpoint`]
//! is told when a pass reaches one of a few named points and may keep it
//! there (it is awaited), so a test can stop pass A right before a branch
//! call, run pass B to its end, then let A go and check what A does. The
//! production engine has none: the hook is `None` and costs a branch.

use async_trait::async_trait;
use dtm_protocol::{BranchId, Gid, Op};

/// Where a pass is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// A pass holds its lease and is about to start (nothing decided yet).
    PassStarted,
    /// About to check its lease and call `op` of `branch_id` (the check and
    /// the call follow at once when this returns).
    BeforeCall {
        /// The branch.
        branch_id: BranchId,
        /// The operation.
        op: Op,
    },
    /// Its decision to roll back (saga `aborting`) or cancel (TCC) was
    /// committed; it is about to read what to undo from the store.
    AfterAbortDecided,
}

/// Told about every checkpoint of every pass; awaited.
#[async_trait]
pub trait PassCheckpoint: Send + Sync + 'static {
    /// A pass on `gid` reached `point`; it continues when this returns.
    async fn reached(&self, gid: &Gid, point: Checkpoint);
}
