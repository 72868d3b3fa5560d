//! Retry alerts: dtm's `AlertRetryLimit` and `AlertWebHook`, durable and
//! off the saga's path.
//!
//! # What dtm does
//!
//! After every branch call that fails transiently, dtm doubles the
//! transaction's `next_cron_interval` and takes `log2(interval / base
//! interval)` as the retry count; when that count is at least
//! `AlertRetryLimit` (default 3) and `AlertWebHook` is set, it POSTs
//! `{"gid", "status", "branch", "error", "retry_count"}` to the webhook
//! (`dtmsvr/trans_status.go`) — at every such retry, from the branch path,
//! once, and forgets.
//!
//! # The retry count here
//!
//! Our backoff stops doubling at `MaxRetryInterval` ([`crate::engine::retry`]),
//! so dtm's formula would stop growing at `log2(MaxRetryInterval /
//! RetryInterval)` — with the defaults, 60 s and 10 s, at 2, below the
//! default limit of 3: no alert would ever fire. We count instead what the
//! formula counts while the interval is below the cap: **the calls of a
//! branch operation that made its transaction back off** — transient
//! errors, and FAILURE of an operation that must eventually succeed
//! ([`RetryCause::backs_off`]); ONGOING keeps the interval in dtm and is not
//! counted. With one failing branch, the usual case, this is exactly dtm's
//! number. It is counted per branch operation (`gid`, `branch_id`, `op`),
//! durably, in the store's `trans_alert` table ([`crate::store`]), so it
//! survives restarts and is shared by every coordinator driving the
//! transaction; an operation that succeeds is never called again, so its
//! count never needs a reset.
//!
//! # Once per crossing, delivered at least once
//!
//! The failure that brings the count to the limit turns the row into a
//! *pending* alert — once per branch operation and transaction, where dtm
//! posts at every retry past the limit. Further failures change nothing.
//!
//! Nothing of this runs on the branch path: a pass hands each counted
//! failure to a bounded queue without waiting ([`Alerts::branch_called`];
//! when the queue is full the failure is dropped and logged, the saga never
//! waits), a counting task writes it to the store, and the delivery task
//! ([`delivery`]) posts pending alerts with a capped, jittered exponential
//! backoff, leasing them in the store like transactions. A webhook that is
//! down loses nothing: the alert stays pending across restarts, and any
//! coordinator on the database delivers it once the webhook is back.
//!
//! The guarantee is **at-least-once**: a coordinator that dies after the
//! receiver accepted an alert but before recording it leaves it pending,
//! and it is sent again once its lease expires. Each POST therefore carries
//! an `Idempotency-Key` header, `<gid>/<branch>/<op>/<retry_count>`, the same
//! for every delivery of one alert.

pub mod delivery;

use std::sync::Arc;
use std::time::Duration;

use dtm_protocol::{BranchId, BranchResult, Gid, Op, TransType};
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::EngineObserver;
use crate::engine::retry::retry_cause;
use crate::model::{GlobalStatus, MAX_TEXT_COLUMN};
use crate::store::{self, AlertKey, AlertRow, BranchFailure, FailureCounted, Store};

/// How retry alerts behave. The config layer fills the first two from
/// dtm's keys; the others are ours, with defaults fit for production.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSettings {
    /// dtm's `AlertRetryLimit`: the failure that brings a branch
    /// operation's count to this raises its alert (default 3).
    pub retry_limit: u32,
    /// dtm's `AlertWebHook`: where alerts are POSTed. `None`: alerts are
    /// off, and nothing is counted.
    pub webhook: Option<url::Url>,
    /// The backoff after the first failed delivery; it doubles after each
    /// further one.
    pub min_backoff: Duration,
    /// The cap of that backoff: a webhook down for a day is tried again
    /// within this long of coming back.
    pub max_backoff: Duration,
    /// How long one POST may take.
    pub request_timeout: Duration,
    /// How often delivery looks for due alerts when nothing woke it
    /// (alerts raised here wake it at once; this finds those of other
    /// coordinators, and of a previous run).
    pub poll_interval: Duration,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            retry_limit: 3,
            webhook: None,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            request_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_secs(3),
        }
    }
}

/// Counted failures waiting for the counting task. Large enough for a
/// burst of failing sagas; beyond it failures are dropped, not waited for.
const QUEUE: usize = 4096;

/// The pass's side of the alerts: a non-blocking handle on the counting
/// queue. Cheap to clone; `off` when no webhook is configured.
#[derive(Debug, Clone, Default)]
pub struct Alerts {
    /// The counting task's queue; `None` when alerts are off.
    queue: Option<mpsc::Sender<BranchFailure>>,
    /// The delivery task, so that a shutdown can wait for the round in
    /// hand to be recorded (a restarted process then starts from the truth).
    delivery: TaskTracker,
}

impl Alerts {
    /// Alerts switched off: [`Alerts::branch_called`] does nothing.
    pub fn off() -> Alerts {
        Alerts::default()
    }

    /// Starts counting and delivery on the current runtime, if a webhook
    /// is configured. Both tasks stop when `kill` is cancelled; delivery
    /// also stops (after the batch in hand) when `shutdown` is.
    pub fn start(
        store: Arc<dyn Store>,
        settings: &AlertSettings,
        observer: Arc<dyn EngineObserver>,
        shutdown: CancellationToken,
        kill: CancellationToken,
    ) -> Result<Alerts, reqwest::Error> {
        let Some(webhook) = settings.webhook.clone() else { return Ok(Alerts::off()) };
        let (queue, failures) = mpsc::channel(QUEUE);
        let wake = Arc::new(Notify::new());
        let sender = delivery::Sender::new(webhook, settings.request_timeout)?;
        let deliveries = delivery::Deliveries {
            store: Arc::clone(&store),
            sender,
            settings: settings.clone(),
            observer: Arc::clone(&observer),
        };
        tokio::spawn(count(store, settings.retry_limit, failures, observer, Arc::clone(&wake), kill.clone()));
        let delivery = TaskTracker::new();
        delivery.spawn(deliveries.run(wake, shutdown, kill));
        delivery.close();
        Ok(Alerts { queue: Some(queue), delivery })
    }

    /// Waits until delivery has stopped (after `shutdown` or `kill` was
    /// cancelled, see [`Alerts::start`]); at once when alerts are off.
    pub async fn stopped(&self) {
        self.delivery.close();
        self.delivery.wait().await;
    }

    /// Reports a branch call's answer. One that makes the transaction back
    /// off is queued for counting; never waits.
    pub fn branch_called(
        &self,
        gid: &Gid,
        trans_type: TransType,
        trans_status: GlobalStatus,
        branch_id: &BranchId,
        op: Op,
        result: &BranchResult,
    ) {
        let Some(queue) = &self.queue else { return };
        if !retry_cause(trans_type, op, result).is_some_and(|cause| cause.backs_off()) {
            return;
        }
        let error = match result {
            BranchResult::Failure(m) | BranchResult::Retry(m) => m.as_str(),
            BranchResult::Success | BranchResult::Ongoing => "",
        };
        let failure = BranchFailure {
            key: AlertKey { gid: gid.clone(), branch_id: branch_id.clone(), op },
            trans_status,
            error: clip(error),
        };
        if let Err(e) = queue.try_send(failure) {
            // Full (a storm of failures, a stalled database) or closed
            // (shutting down): the saga goes on; this failure is not counted.
            tracing::warn!(%gid, %branch_id, %op, error = %e, "retry alert queue refused a failure; not counted");
        }
    }
}

/// dtm's columns are 1024 bytes wide; cut at a character boundary.
fn clip(text: &str) -> String {
    let mut end = text.len().min(MAX_TEXT_COLUMN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// The counting task: writes each queued failure to the store and wakes
/// delivery when one raises an alert. Ends when the queue closes (the
/// engine is gone) or `kill` is cancelled.
async fn count(
    store: Arc<dyn Store>,
    limit: u32,
    mut failures: mpsc::Receiver<BranchFailure>,
    observer: Arc<dyn EngineObserver>,
    wake: Arc<Notify>,
    kill: CancellationToken,
) {
    loop {
        let failure = tokio::select! {
            biased;
            _ = kill.cancelled() => return,
            failure = failures.recv() => match failure {
                Some(failure) => failure,
                None => return,
            },
        };
        let key = &failure.key;
        match store.count_failure(&failure, limit, store::now()).await {
            Ok(FailureCounted::Crossed) => {
                tracing::warn!(
                    gid = %key.gid, branch_id = %key.branch_id, op = %key.op, limit,
                    "branch retried up to AlertRetryLimit; alert raised"
                );
                observer.alert_raised();
                wake.notify_one();
            }
            Ok(FailureCounted::Counting | FailureCounted::AlreadyRaised) => {}
            Err(e) => tracing::warn!(gid = %key.gid, error = %e, "could not count a branch failure"),
        }
    }
}

/// The body POSTed to the webhook: dtm's fields, plus `op`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertBody<'a> {
    /// The transaction.
    pub gid: &'a str,
    /// Its global status at the last counted failure (`submitted`, `aborting`, …).
    pub status: &'a str,
    /// The branch id (`01`, `02`, …), as dtm sends it.
    pub branch: &'a str,
    /// What the last counted call answered.
    pub error: &'a str,
    /// The retry count that raised the alert (`AlertRetryLimit`).
    pub retry_count: u32,
    /// Ours: which operation of the branch (`action`, `compensate`, …), since
    /// a branch's action and compensation may each raise one.
    pub op: &'a str,
}

impl<'a> AlertBody<'a> {
    /// The body of a stored alert.
    pub fn of(row: &'a AlertRow) -> AlertBody<'a> {
        AlertBody {
            gid: row.key.gid.as_str(),
            status: &row.trans_status,
            branch: row.key.branch_id.as_str(),
            error: &row.error,
            retry_count: row.retry_count,
            op: row.key.op.as_str(),
        }
    }

    /// The `Idempotency-Key` of every delivery of this alert. gid, branch
    /// id and op cannot be confused: branch ids are digits, ops letters.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}/{}/{}", self.gid, self.branch, self.op, self.retry_count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_at_a_character_boundary() {
        let long = "é".repeat(MAX_TEXT_COLUMN);
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_TEXT_COLUMN && clipped.len() >= MAX_TEXT_COLUMN - 1);
        assert_eq!(clip("short"), "short");
    }

    #[test]
    fn the_body_has_dtms_fields_and_the_key_names_the_crossing() {
        let row = AlertRow {
            key: AlertKey { gid: "g-1".parse().unwrap(), branch_id: BranchId::nth(1), op: Op::Action },
            trans_status: "submitted".into(),
            retry_count: 3,
            error: "503".into(),
            status: store::AlertStatus::Pending,
            attempts: 0,
            next_attempt_time: None,
            owner: String::new(),
            last_error: String::new(),
        };
        let body = AlertBody::of(&row);
        let json: serde_json::Value = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"gid": "g-1", "status": "submitted", "branch": "02", "error": "503",
                               "retry_count": 3, "op": "action"})
        );
        assert_eq!(body.idempotency_key(), "g-1/02/action/3");
    }

    #[test]
    fn only_answers_that_back_off_are_counted() {
        // With alerts off, nothing is queued whatever the answer.
        Alerts::off().branch_called(
            &"g".parse().unwrap(),
            TransType::Saga,
            GlobalStatus::Submitted,
            &BranchId::nth(0),
            Op::Action,
            &BranchResult::Retry("x".into()),
        );
        let (queue, mut failures) = mpsc::channel(8);
        let alerts = Alerts { queue: Some(queue), delivery: TaskTracker::new() };
        let call = |op, result: BranchResult| {
            alerts.branch_called(
                &"g".parse().unwrap(),
                TransType::Saga,
                GlobalStatus::Submitted,
                &BranchId::nth(0),
                op,
                &result,
            )
        };
        call(Op::Action, BranchResult::Success);
        call(Op::Action, BranchResult::Ongoing);
        call(Op::Action, BranchResult::Failure("no".into()));
        call(Op::Action, BranchResult::Retry("boom".into()));
        call(Op::Compensate, BranchResult::Failure("not yet".into()));
        let mut counted = Vec::new();
        while let Ok(f) = failures.try_recv() {
            counted.push((f.key.op, f.error));
        }
        assert_eq!(counted, [(Op::Action, "boom".to_string()), (Op::Compensate, "not yet".to_string())]);
    }
}
