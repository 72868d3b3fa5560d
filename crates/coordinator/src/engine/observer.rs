//! The metrics hook: the engine reports what happened, the observer counts it.
//!
//! The engine knows nothing about Prometheus; the server crate implements
//! [`EngineObserver`] (dtm's `dtm_transaction_process_total`,
//! `dtm_branch_process_total`, …) and hands it to [`crate::engine::Engine::new`].

use std::time::Duration;

use dtm_protocol::{BranchId, BranchResult, Op, TransType};

use crate::model::GlobalStatus;

/// Callbacks for metrics. Called on the hot path: keep them cheap and non-blocking.
pub trait EngineObserver: Send + Sync + 'static {
    /// A transaction reached a final status in this process. `duration` is
    /// the time since its `create_time` (dtm's `dtm_transaction_handled_duration`).
    fn transaction_finished(&self, trans_type: TransType, outcome: GlobalStatus, duration: Duration) {
        let _ = (trans_type, outcome, duration);
    }

    /// One branch call returned (or failed to connect).
    fn branch_called(
        &self,
        trans_type: TransType,
        branch_id: &BranchId,
        op: Op,
        outcome: &BranchResult,
        latency: Duration,
    ) {
        let _ = (trans_type, branch_id, op, outcome, latency);
    }

    /// A branch operation was retried up to `AlertRetryLimit`: its alert
    /// was raised (recorded as pending in the store) by this process.
    fn alert_raised(&self) {}

    /// A branch attempt was not recorded for the console's timeline: the
    /// writer's queue was full (`crate::attempts`).
    fn attempt_dropped(&self) {}

    /// A delivery of an alert to the webhook ended: `sent` if the receiver
    /// answered 2xx.
    fn alert_delivered(&self, sent: bool) {
        let _ = sent;
    }
}

/// The default observer: ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;

impl EngineObserver for NoopObserver {}
