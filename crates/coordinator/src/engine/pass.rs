//! What every pass shares, whatever the transaction type: the engine's
//! parts a pass uses ([`Core`]: store, branch caller, settings, hooks), the
//! fenced write under a lease, how a pass ends ([`PassEnd`]), and the
//! global-row change it writes ([`change`]). The passes themselves are in
//! `process.rs` (sagas, and the dispatch on the type) and `sequence.rs`
//! (TCC and 2-phase messages); both build on this module.

use std::sync::Arc;
use std::time::Duration;

use dtm_protocol::Gid;
use tokio::time::Instant;

use super::checkpoint::{Checkpoint, PassCheckpoint};
use super::lease::Lease;
use super::observer::EngineObserver;
use super::settings::EngineSettings;
use crate::alert::Alerts;
use crate::attempts::Attempts;
use crate::branch::BranchCaller;
use crate::model::{GlobalStatus, TransOptions};
use crate::store::{GlobalChange, Schedule, StatusUpdate, Store, StoreError, StoredTrans};

/// What a pass needs from the engine.
pub(crate) struct Core {
    pub store: Arc<dyn Store>,
    pub settings: EngineSettings,
    pub caller: BranchCaller,
    pub observer: Arc<dyn EngineObserver>,
    /// Test hook that may hold a pass at named points; `None` in production.
    pub checkpoint: Option<Arc<dyn PassCheckpoint>>,
    /// Where branch failures go to be counted for retry alerts: a queue
    /// the pass never waits on.
    pub alerts: Alerts,
    /// Where branch calls go to be recorded for the console's timeline
    /// (each pass through its own `PassAttempts`): a queue the pass never
    /// waits on.
    pub attempts: Attempts,
}

impl Core {
    /// Lets a test hook hold the pass at `point`.
    pub(crate) async fn checkpoint(&self, gid: &Gid, point: Checkpoint) {
        if let Some(hook) = &self.checkpoint {
            hook.reached(gid, point).await;
        }
    }

    /// The timeout of one branch call of a transaction with `options`.
    pub(crate) fn call_timeout(&self, options: &TransOptions) -> Duration {
        options.request_timeout.unwrap_or(self.settings.request_timeout)
    }

    /// Reads the transaction back after a decision of this pass committed:
    /// `None` if it is no longer ours (owner or status changed since).
    pub(crate) async fn reload(
        &self,
        gid: &Gid,
        lease: &Lease,
        status: GlobalStatus,
    ) -> Result<Option<StoredTrans>, StoreError> {
        Ok(self
            .store
            .find(gid)
            .await?
            .filter(|t| t.global.owner == lease.token().as_str() && t.global.status == status))
    }

    /// Writes `update` under `lease`; a write that holds the lease extends
    /// it from the moment the write was sent.
    ///
    /// A status change whose reply was lost (a connection cut during
    /// `COMMIT`, a group-commit batch that failed after committing) is
    /// judged by what the store holds: applied if the new status is there
    /// with our token (or, for a final status, at all — the outcome is the
    /// same whoever wrote it). Other writes keep their error: the pass stops
    /// and its lease runs out.
    pub(crate) async fn write(&self, lease: &mut Lease, update: StatusUpdate) -> Result<bool, StoreError> {
        let sent = Instant::now();
        let holds = matches!(update.change.schedule, Schedule::Hold(_));
        let (gid, target) = (update.gid.clone(), update.change.status);
        let saved = match self.store.update(update).await {
            Ok(saved) => saved,
            Err(e) => {
                let Some(target) = target else { return Err(e) };
                let stored = self.store.find(&gid).await.ok().flatten().map(|t| t.global);
                match stored {
                    Some(g)
                        if g.status == target && (target.is_final() || g.owner == lease.token().as_str()) =>
                    {
                        tracing::warn!(error = %e, %gid, status = %target, "write reported an error but is in the store");
                        // Whether the extension applied is unknown: keep the old expiry.
                        return Ok(true);
                    }
                    _ => return Err(e),
                }
            }
        };
        if saved && holds {
            lease.extended(sent);
        }
        Ok(saved)
    }
}

/// How a pass ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PassEnd {
    /// Reached a final status (with the rollback reason when failed).
    Finished(GlobalStatus, String),
    /// Not finished; scheduled for a later pass. Carries the current status and reason.
    Pending(GlobalStatus, String),
    /// Another instance changed the transaction first; nothing more was written.
    Lost,
}

/// A global-row change; `interval` becomes `next_cron_interval` (seconds).
pub(crate) fn change(
    status: Option<GlobalStatus>,
    rollback_reason: Option<String>,
    schedule: Schedule,
    interval: Duration,
) -> GlobalChange {
    let next_cron_interval = i64::try_from(interval.as_secs()).unwrap_or(i64::MAX);
    GlobalChange { status, rollback_reason, schedule, next_cron_interval }
}
