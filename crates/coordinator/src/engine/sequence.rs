//! TCC and 2-phase messages: transactions whose work is a list of branch
//! operations to deliver until each succeeds (dtm's `dtmsvr/trans_type_tcc.go` and `trans_type_msg.go`).
//!
//! * **TCC** — the client registers branches (`cancel` and `confirm` rows)
//!   and calls the Try ops itself. Once submitted, the coordinator calls
//!   every `confirm` in *reverse registration order*; once aborting (abort
//!   or timeout of a prepared TCC), every `cancel`. A pass stops at the
//!   first op that does not succeed; FAILURE of a confirm/cancel is a
//!   transient error — they must eventually succeed.
//! * **2-phase message** — one `action` row per step. Once submitted, the
//!   actions run in order (stopping at the first one that does not
//!   succeed) or all at once with the `concurrent` option; FAILURE is
//!   retried. A message still `prepared` after its timeout is decided by
//!   asking the application's `query_prepared` URL (branch `00`, op `msg`):
//!   SUCCESS submits it, FAILURE fails it.
//! * **XA** — TCC's life with ops `commit` and `rollback`, called in
//!   registration order (dtm's `trans_type_xa.go`); see [`super::xa`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use dtm_protocol::{BranchCall, BranchId, BranchResult, Gid, Op, TransType};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;

use super::checkpoint::Checkpoint;
use super::lease::Lease;
use super::pass::{Core, PassEnd, change};
use super::retry::{self, PassOutcome};
use crate::attempts::PassAttempts;
use crate::branch::BranchRequest;
use crate::model::{BranchStatus, BranchTarget, BranchUrl, GlobalStatus, TransOptions};
use crate::store::{
    self, BranchChange, BranchRow, GlobalChange, Schedule, StatusUpdate, StoreError, StoredTrans,
};

/// One branch operation row.
pub(crate) struct OpRow {
    branch_id: BranchId,
    op: Op,
    url: BranchUrl,
    payload: Vec<u8>,
    status: BranchStatus,
}

/// A TCC, XA or msg transaction loaded for a pass.
pub(crate) struct SequenceWork {
    trans_type: TransType,
    gid: Gid,
    status: GlobalStatus,
    create_time: DateTime<Utc>,
    options: TransOptions,
    interval: Duration,
    rollback_reason: String,
    query_prepared: String,
    /// msg `custom_data` `{"delay":N}`: actions wait until N s after creation.
    delay: Option<Duration>,
    rows: Vec<OpRow>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct MsgCustomData {
    delay: u64,
}

fn op_rows(branches: Vec<BranchRow>) -> Result<Vec<OpRow>, String> {
    branches
        .into_iter()
        .map(|r| {
            let url = BranchUrl::parse(&r.url).map_err(|e| format!("branch {}: {e}", r.branch_id))?;
            Ok(OpRow { branch_id: r.branch_id, op: r.op, url, payload: r.bin_data, status: r.status })
        })
        .collect()
}

impl SequenceWork {
    /// From stored rows (also used right after creation: rows are known then too).
    pub(crate) fn from_stored(t: StoredTrans) -> Result<SequenceWork, String> {
        let g = t.global;
        let rows = op_rows(t.branches)?;
        let delay = if g.trans_type == TransType::Msg && !g.custom_data.is_empty() {
            let custom: MsgCustomData = serde_json::from_str(&g.custom_data).unwrap_or_default();
            (custom.delay > 0).then(|| Duration::from_secs(custom.delay))
        } else {
            None
        };
        Ok(SequenceWork {
            trans_type: g.trans_type,
            gid: g.gid,
            status: g.status,
            create_time: g.create_time.unwrap_or_else(store::now),
            options: TransOptions {
                trace: crate::trace::from_ext_data(&g.ext_data),
                ..TransOptions::from_stored_json(&g.options)
            },
            interval: Duration::from_secs(g.next_cron_interval.max(0).unsigned_abs()),
            rollback_reason: g.rollback_reason,
            query_prepared: g.query_prepared,
            delay,
            rows,
        })
    }

    /// The transaction's gid.
    pub(crate) fn gid(&self) -> &Gid {
        &self.gid
    }

    /// The transaction's options.
    pub(crate) fn options(&self) -> &TransOptions {
        &self.options
    }

    /// Prepared TCC/XA/msg time out after their own `timeout_to_fail`, else the server's.
    fn timed_out(&self, core: &Core, now: DateTime<Utc>) -> Option<Duration> {
        let limit = self.options.timeout_to_fail.unwrap_or(core.settings.timeout_to_fail);
        let age = (now - self.create_time).to_std().unwrap_or_default();
        (age >= limit).then_some(limit)
    }

    async fn call(
        &self,
        core: &Core,
        attempts: &PassAttempts<'_>,
        url: &BranchUrl,
        payload: &[u8],
        branch_id: &BranchId,
        op: Op,
    ) -> BranchResult {
        if *url.target() == BranchTarget::Empty {
            return BranchResult::Success;
        }
        let (started, wall) = (Instant::now(), std::time::SystemTime::now());
        let timeout = core.call_timeout(&self.options);
        let result = core
            .caller
            .call(&BranchRequest {
                url,
                payload,
                call: BranchCall::new(self.gid.clone(), self.trans_type, branch_id.clone(), op),
                headers: &self.options.branch_headers,
                trace: self.options.trace.as_ref(),
                timeout,
            })
            .await;
        core.observer.branch_called(self.trans_type, branch_id, op, &result, started.elapsed());
        core.alerts.branch_called(&self.gid, self.trans_type, self.status, branch_id, op, &result);
        attempts.record(branch_id, op, &result, wall, started.elapsed());
        result
    }

    /// Writes a change under the lease; `false`: another pass owns it now.
    async fn save(
        &mut self,
        core: &Core,
        lease: &mut Lease,
        change: GlobalChange,
        changes: &[BranchChange],
    ) -> Result<bool, StoreError> {
        let (status, reason) = (change.status, change.rollback_reason.clone());
        let update = StatusUpdate {
            gid: self.gid.clone(),
            expected: self.status,
            fence: lease.fence(),
            change,
            branches: changes.to_vec(),
            now: store::now(),
        };
        let saved = core.write(lease, update).await?;
        if saved {
            if let Some(status) = status {
                self.status = status;
            }
            if let Some(reason) = reason {
                self.rollback_reason = reason;
            }
        }
        Ok(saved)
    }

    /// Before calling a branch: lets a test hold the pass, then makes sure
    /// the lease outlasts the call, extending it if not. `false`: lost, do
    /// not call.
    async fn before_call(
        &self,
        core: &Core,
        lease: &mut Lease,
        branch_id: &BranchId,
        op: Op,
    ) -> Result<bool, StoreError> {
        core.checkpoint(&self.gid, Checkpoint::BeforeCall { branch_id: branch_id.clone(), op }).await;
        if lease.covers(core.call_timeout(&self.options)) {
            return Ok(true);
        }
        let update = StatusUpdate {
            gid: self.gid.clone(),
            expected: self.status,
            fence: lease.fence(),
            change: change(None, None, Schedule::Hold(lease.length()), self.interval),
            branches: Vec::new(),
            now: store::now(),
        };
        core.write(lease, update).await
    }

    /// Runs one pass.
    pub(crate) async fn run(
        mut self,
        core: &Core,
        mut lease: Lease,
        attempts: &PassAttempts<'_>,
    ) -> Result<PassEnd, StoreError> {
        if self.status == GlobalStatus::Prepared {
            let Some(limit) = self.timed_out(core, store::now()) else {
                return Ok(PassEnd::Pending(self.status, self.rollback_reason));
            };
            match self.trans_type {
                TransType::Msg => {
                    if !self.before_call(core, &mut lease, &BranchId::msg(), Op::Msg).await? {
                        return Ok(PassEnd::Lost);
                    }
                    match self.check_back(core, attempts).await {
                        BranchResult::Success => {
                            let hold = Schedule::Hold(lease.length());
                            let submitted = Some(GlobalStatus::Submitted);
                            if !self
                                .save(core, &mut lease, change(submitted, None, hold, self.interval), &[])
                                .await?
                            {
                                return Ok(PassEnd::Lost);
                            }
                        }
                        BranchResult::Failure(_) => {
                            return self.finish(core, lease, GlobalStatus::Failed, &[]).await;
                        }
                        BranchResult::Ongoing => {
                            return self.reschedule(core, lease, PassOutcome::Ongoing, &[]).await;
                        }
                        BranchResult::Retry(_) => {
                            return self.reschedule(core, lease, PassOutcome::Error, &[]).await;
                        }
                    }
                }
                _ => {
                    let reason = format!("Timeout after {} seconds", limit.as_secs());
                    let (aborting, hold) = (Some(GlobalStatus::Aborting), Schedule::Hold(lease.length()));
                    if !self
                        .save(core, &mut lease, change(aborting, Some(reason), hold, self.interval), &[])
                        .await?
                    {
                        return Ok(PassEnd::Lost);
                    }
                    // A registerBranch that committed before the decision is
                    // in the store now; one after it was refused. Cancel
                    // what the store holds, not what was loaded before.
                    core.checkpoint(&self.gid, Checkpoint::AfterAbortDecided).await;
                    let Some(stored) = core.reload(&self.gid, &lease, GlobalStatus::Aborting).await? else {
                        return Ok(PassEnd::Lost);
                    };
                    self.rows = op_rows(stored.branches).map_err(StoreError::Corrupt)?;
                }
            }
        }
        let (op, done) = match (self.trans_type, self.status) {
            (TransType::Msg, GlobalStatus::Submitted) => (Op::Action, GlobalStatus::Succeed),
            (TransType::Tcc, GlobalStatus::Submitted) => (Op::Confirm, GlobalStatus::Succeed),
            (TransType::Tcc, GlobalStatus::Aborting) => (Op::Cancel, GlobalStatus::Failed),
            (TransType::Xa, status) => match super::xa::phase_two(status) {
                Some(phase_two) => phase_two,
                None => return Ok(PassEnd::Finished(status, self.rollback_reason)),
            },
            (_, status) => return Ok(PassEnd::Finished(status, self.rollback_reason)),
        };
        if let Some(delay) = self.delay {
            let age = (store::now() - self.create_time).to_std().unwrap_or_default();
            if age < delay {
                // Not yet: come back when the delay is over.
                let wait = Schedule::Release(delay - age);
                return if self.save(core, &mut lease, change(None, None, wait, self.interval), &[]).await? {
                    Ok(PassEnd::Pending(self.status, self.rollback_reason))
                } else {
                    Ok(PassEnd::Lost)
                };
            }
        }
        let (changes, outcome, lost) = self.deliver(core, attempts, &mut lease, op).await?;
        if lost {
            return Ok(PassEnd::Lost);
        }
        if self.rows.iter().filter(|r| r.op == op).all(|r| r.status == BranchStatus::Succeed) {
            self.finish(core, lease, done, &changes).await
        } else {
            self.reschedule(core, lease, outcome, &changes).await
        }
    }

    /// msg: asks the application whether its local transaction committed.
    async fn check_back(&self, core: &Core, attempts: &PassAttempts<'_>) -> BranchResult {
        match BranchUrl::parse(&self.query_prepared) {
            // An empty URL answers SUCCESS without a call, as in dtm: a
            // message prepared without a check-back is delivered.
            Ok(url) => self.call(core, attempts, &url, &[], &BranchId::msg(), Op::Msg).await,
            Err(e) => BranchResult::Retry(format!("stored query_prepared is unusable: {e}")),
        }
    }

    /// Calls the due `op` rows: TCC in reverse registration order, XA and msg in
    /// order, one at a time (stopping at the first that does not succeed),
    /// or msg all at once with `concurrent`.
    /// `Ok((.., true))` if the lease was lost on the way (nothing more may be written).
    async fn deliver(
        &mut self,
        core: &Core,
        attempts: &PassAttempts<'_>,
        lease: &mut Lease,
        op: Op,
    ) -> Result<(Vec<BranchChange>, PassOutcome, bool), StoreError> {
        let mut due: Vec<usize> = (0..self.rows.len())
            .filter(|&i| self.rows[i].op == op && self.rows[i].status != BranchStatus::Succeed)
            .collect();
        if self.trans_type == TransType::Tcc {
            due.reverse();
        }
        let concurrent = self.trans_type == TransType::Msg && self.options.concurrent;
        let mut outcome = PassOutcome::Progress;
        let mut succeeded = Vec::new();
        let mut lost = false;
        {
            let this = &*self;
            let call = |i: usize| async move {
                let r = &this.rows[i];
                (i, this.call(core, attempts, &r.url, &r.payload, &r.branch_id, r.op).await)
            };
            let mut calls = FuturesUnordered::new();
            let mut queue = due.into_iter();
            let first: Vec<usize> =
                if concurrent { queue.by_ref().collect() } else { queue.next().into_iter().collect() };
            for i in first {
                if !this.before_call(core, lease, &this.rows[i].branch_id, op).await? {
                    lost = true;
                    break;
                }
                calls.push(call(i));
            }
            while !lost && let Some((i, result)) = calls.next().await {
                match result {
                    BranchResult::Success => {
                        succeeded.push(i);
                        if !concurrent && let Some(next) = queue.next() {
                            if !this.before_call(core, lease, &this.rows[next].branch_id, op).await? {
                                lost = true;
                                break;
                            }
                            calls.push(call(next));
                        }
                    }
                    BranchResult::Ongoing => outcome = outcome.max_with(PassOutcome::Ongoing),
                    // Only a saga action may fail for good; here FAILURE is retried.
                    BranchResult::Failure(_) | BranchResult::Retry(_) => outcome = PassOutcome::Error,
                }
            }
        }
        let changes = succeeded
            .into_iter()
            .map(|i| {
                self.rows[i].status = BranchStatus::Succeed;
                BranchChange { branch_id: self.rows[i].branch_id.clone(), op, status: BranchStatus::Succeed }
            })
            .collect();
        Ok((changes, outcome, lost))
    }

    async fn finish(
        mut self,
        core: &Core,
        mut lease: Lease,
        outcome: GlobalStatus,
        changes: &[BranchChange],
    ) -> Result<PassEnd, StoreError> {
        let now = store::now();
        let release = Schedule::Release(Duration::ZERO);
        if !self.save(core, &mut lease, change(Some(outcome), None, release, self.interval), changes).await? {
            return Ok(PassEnd::Lost);
        }
        let age = (now - self.create_time).to_std().unwrap_or_default();
        core.observer.transaction_finished(self.trans_type, outcome, age);
        Ok(PassEnd::Finished(outcome, self.rollback_reason))
    }

    async fn reschedule(
        mut self,
        core: &Core,
        mut lease: Lease,
        outcome: PassOutcome,
        changes: &[BranchChange],
    ) -> Result<PassEnd, StoreError> {
        let base = retry::base_interval(&self.options, core.settings.retry_interval);
        let interval = retry::next_interval(self.interval, base, core.settings.max_retry_interval, outcome);
        let release = Schedule::Release(retry::jittered(interval, rand::random::<f64>()));
        Ok(if self.save(core, &mut lease, change(None, None, release, interval), changes).await? {
            PassEnd::Pending(self.status, self.rollback_reason)
        } else {
            PassEnd::Lost
        })
    }
}

impl PassOutcome {
    /// The worse of two outcomes (Error > Ongoing > Progress).
    pub(crate) fn max_with(self, other: PassOutcome) -> PassOutcome {
        match (self, other) {
            (PassOutcome::Error, _) | (_, PassOutcome::Error) => PassOutcome::Error,
            (PassOutcome::Ongoing, _) | (_, PassOutcome::Ongoing) => PassOutcome::Ongoing,
            _ => PassOutcome::Progress,
        }
    }
}
