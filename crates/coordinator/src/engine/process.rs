//! One processing pass over one transaction.
//!
//! A pass starts from what is known (the request just committed, or rows
//! leased from the store), calls branches until it cannot go further, and
//! writes the outcome with conditional updates. It never waits for a retry:
//! a pass that cannot finish records when to come back (`next_cron_time`)
//! and ends; the recovery poller — of this or any other instance — runs
//! the next pass.
//!
//! A pass runs under a [`Lease`]: every write is fenced by its token, and
//! before every branch call the pass makes sure the lease outlasts the call
//! (extending it if not). A refused write means another pass owns the
//! transaction now; this one stops at once, without another call or write.
//! What to undo after a decision to roll back is read back from the store
//! once that decision has committed, never taken from the pass's memory.
//!
//! What to do next depends on the transaction type; [`Work`] is the one
//! place that matches on it: sagas here (rules in [`super::saga`]), TCC,
//! XA and 2-phase messages in [`super::sequence`] (XA's own rules in
//! [`super::xa`]), workflows in [`super::workflow`].

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
use super::saga::{Ordering, StepState};
use super::sequence::SequenceWork;
use super::workflow::WorkflowWork;
use crate::attempts::PassAttempts;
use crate::branch::BranchRequest;
use crate::model::{
    BranchStatus, BranchTarget, BranchUrl, GlobalStatus, MAX_TEXT_COLUMN, SagaOrders, Step, TransOptions,
    TransRequest,
};
use crate::store::{
    self, BranchChange, BranchRow, GlobalChange, Schedule, StatusUpdate, StoreError, StoredTrans,
};

/// A transaction loaded for a pass, per type.
pub(crate) enum Work {
    /// A saga.
    Saga(SagaWork),
    /// TCC, XA or 2-phase message: a list of ops to deliver.
    Sequence(SequenceWork),
    /// A workflow: its callback to call ([`super::workflow`]).
    Workflow(WorkflowWork),
}

impl Work {
    /// Work for a transaction just created from `request` (no read-back).
    pub(crate) fn from_request(
        request: &TransRequest,
        status: GlobalStatus,
        create_time: DateTime<Utc>,
        interval: Duration,
    ) -> Option<Work> {
        match request.trans_type {
            TransType::Saga => {
                let orders = SagaOrders::parse(&request.custom_data, request.steps.len()).ok()?;
                let steps = request
                    .steps
                    .iter()
                    .enumerate()
                    .filter_map(|(k, step)| match step {
                        Step::Saga { action, compensate } => Some(SagaStep {
                            branch_id: BranchId::nth(k),
                            action: action.clone(),
                            compensate: compensate.clone(),
                            payload: request.payloads.get(k).cloned().unwrap_or_default(),
                        }),
                        Step::Msg { .. } | Step::Topic { .. } => None,
                    })
                    .collect();
                Some(Work::Saga(SagaWork::new(
                    request.gid.clone(),
                    status,
                    create_time,
                    request.options.clone(),
                    &orders,
                    interval,
                    request.rollback_reason.clone(),
                    steps,
                    None,
                )))
            }
            _ => None,
        }
    }

    /// Work for stored rows (recovery). `Err` describes rows we cannot process.
    pub(crate) fn from_stored(t: StoredTrans) -> Result<Work, String> {
        let g = t.global;
        match g.trans_type {
            TransType::Saga => {
                let mut steps: Vec<SagaStep> = Vec::new();
                let mut state: Vec<StepState> = Vec::new();
                // Rows come in id order: c01, a01, c02, a02, …
                for row in t.branches {
                    let url =
                        BranchUrl::parse(&row.url).map_err(|e| format!("branch {}: {e}", row.branch_id))?;
                    let k = match steps.iter().position(|s| s.branch_id == row.branch_id) {
                        Some(k) => k,
                        None => {
                            steps.push(SagaStep {
                                branch_id: row.branch_id.clone(),
                                action: BranchUrl::empty(),
                                compensate: BranchUrl::empty(),
                                payload: row.bin_data.clone(),
                            });
                            state.push(StepState::NEW);
                            steps.len() - 1
                        }
                    };
                    match row.op {
                        Op::Action => {
                            steps[k].action = url;
                            state[k].action = row.status;
                        }
                        Op::Compensate => {
                            steps[k].compensate = url;
                            state[k].compensate = row.status;
                        }
                        other => return Err(format!("saga branch {} has op {other}", row.branch_id)),
                    }
                }
                let orders = SagaOrders::parse(&g.custom_data, steps.len()).map_err(|e| e.to_string())?;
                let mut options = TransOptions::from_stored_json(&g.options);
                options.trace = crate::trace::from_ext_data(&g.ext_data);
                let interval = Duration::from_secs(g.next_cron_interval.max(0).unsigned_abs());
                let create_time = g.create_time.unwrap_or_else(store::now);
                Ok(Work::Saga(SagaWork::new(
                    g.gid,
                    g.status,
                    create_time,
                    options,
                    &orders,
                    interval,
                    g.rollback_reason,
                    steps,
                    Some(state),
                )))
            }
            TransType::Tcc | TransType::Msg | TransType::Xa => {
                Ok(Work::Sequence(SequenceWork::from_stored(StoredTrans {
                    global: g,
                    branches: t.branches,
                })?))
            }
            TransType::Workflow => Ok(Work::Workflow(WorkflowWork::from_stored(StoredTrans {
                global: g,
                branches: t.branches,
            })?)),
        }
    }

    /// The transaction's gid.
    pub(crate) fn gid(&self) -> &Gid {
        match self {
            Work::Saga(w) => &w.spec.gid,
            Work::Sequence(w) => w.gid(),
            Work::Workflow(w) => w.gid(),
        }
    }

    /// The trace context stored with the transaction.
    pub(crate) fn trace(&self) -> Option<&dtm_protocol::TraceContext> {
        match self {
            Work::Saga(w) => w.spec.options.trace.as_ref(),
            Work::Sequence(w) => w.options().trace.as_ref(),
            Work::Workflow(w) => w.options().trace.as_ref(),
        }
    }

    /// The timeout of one branch call of this transaction.
    pub(crate) fn call_timeout(&self, core: &Core) -> Duration {
        match self {
            Work::Saga(w) => core.call_timeout(&w.spec.options),
            Work::Sequence(w) => core.call_timeout(w.options()),
            Work::Workflow(w) => core.call_timeout(w.options()),
        }
    }

    /// Runs one pass under `lease`, its branch calls recorded by `attempts`.
    pub(crate) async fn run(
        self,
        core: &Core,
        lease: Lease,
        attempts: &PassAttempts<'_>,
    ) -> Result<PassEnd, StoreError> {
        match self {
            Work::Saga(w) => w.run(core, lease, attempts).await,
            Work::Sequence(w) => w.run(core, lease, attempts).await,
            Work::Workflow(w) => w.run(core, lease, attempts).await,
        }
    }
}

/// One saga step: its id, both URLs and the shared payload.
pub(crate) struct SagaStep {
    branch_id: BranchId,
    action: BranchUrl,
    compensate: BranchUrl,
    payload: Vec<u8>,
}

/// What does not change during a saga pass (borrowed by in-flight calls).
pub(crate) struct SagaSpec {
    gid: Gid,
    create_time: DateTime<Utc>,
    options: TransOptions,
    ordering: Ordering,
    /// Write each action result at once (dtm's `trans_type_saga.go`: concurrent sagas and
    /// sagas with a timeout), so that a timeout decided by a later pass
    /// knows every action that ran. Plain sagas batch all results into the
    /// final write: a crash before it only re-runs idempotent actions, and a
    /// plain saga aborts only on a FAILURE seen by the same pass, which has
    /// itself (re-)run every earlier action.
    sync_writes: bool,
    steps: Vec<SagaStep>,
}

/// Everything a saga pass reads and changes.
pub(crate) struct SagaWork {
    spec: SagaSpec,
    status: GlobalStatus,
    interval: Duration,
    rollback_reason: String,
    state: Vec<StepState>,
}

/// Results gathered during a pass, written together at its end.
struct Pass {
    changes: Vec<BranchChange>,
    outcome: PassOutcome,
    lease: Lease,
    retries: u32,
}

impl Pass {
    fn note(&mut self, outcome: PassOutcome) {
        self.outcome = self.outcome.max_with(outcome);
    }
}

/// dtm's columns are 1024 bytes wide; cut at a character boundary.
fn clip(mut reason: String) -> String {
    if reason.len() > MAX_TEXT_COLUMN {
        let mut end = MAX_TEXT_COLUMN;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// How the forward phase ended.
enum Forward {
    Done,
    Abort(String),
    Pending,
    Lost,
}

impl SagaSpec {
    fn timed_out(&self, now: DateTime<Utc>) -> Option<Duration> {
        let limit = self.options.timeout_to_fail?;
        let age = (now - self.create_time).to_std().unwrap_or_default();
        (age >= limit).then_some(limit)
    }

    /// Calls one branch op of step `k` and reports to the observer.
    async fn call(
        &self,
        core: &Core,
        attempts: &PassAttempts<'_>,
        k: usize,
        op: Op,
    ) -> (usize, BranchResult) {
        let step = &self.steps[k];
        let url = if op == Op::Action { &step.action } else { &step.compensate };
        if *url.target() == BranchTarget::Empty {
            // dtm: an empty URL is an immediate success, not a call.
            return (k, BranchResult::Success);
        }
        let (started, wall) = (Instant::now(), std::time::SystemTime::now());
        let result = core
            .caller
            .call(&BranchRequest {
                url,
                payload: &step.payload,
                call: BranchCall::new(self.gid.clone(), TransType::Saga, step.branch_id.clone(), op),
                headers: &self.options.branch_headers,
                trace: self.options.trace.as_ref(),
                timeout: core.call_timeout(&self.options),
            })
            .await;
        core.observer.branch_called(TransType::Saga, &step.branch_id, op, &result, started.elapsed());
        // A saga's actions run while it is submitted, its compensations while aborting.
        let status = if op == Op::Action { GlobalStatus::Submitted } else { GlobalStatus::Aborting };
        core.alerts.branch_called(&self.gid, TransType::Saga, status, &step.branch_id, op, &result);
        attempts.record(&step.branch_id, op, &result, wall, started.elapsed());
        if !matches!(result, BranchResult::Success) {
            tracing::debug!(branch_id = %step.branch_id, %op, ?result, "branch did not succeed");
        }
        (k, result)
    }

    fn record(&self, state: &mut [StepState], pass: &mut Pass, k: usize, op: Op, status: BranchStatus) {
        if op == Op::Action {
            state[k].action = status;
        } else {
            state[k].compensate = status;
        }
        pass.changes.push(BranchChange { branch_id: self.steps[k].branch_id.clone(), op, status });
    }

    /// Writes a change if the status is still `expected` and the lease
    /// still ours; takes the pending branch results along. `false`: another
    /// pass owns the transaction now.
    async fn save(
        &self,
        core: &Core,
        expected: GlobalStatus,
        pass: &mut Pass,
        change: GlobalChange,
    ) -> Result<bool, StoreError> {
        let update = StatusUpdate {
            gid: self.gid.clone(),
            expected,
            fence: pass.lease.fence(),
            change,
            branches: pass.changes.clone(),
            now: store::now(),
        };
        let saved = core.write(&mut pass.lease, update).await?;
        pass.changes.clear();
        Ok(saved)
    }

    /// Before calling `op` of step `k`: lets a test hold the pass, then makes
    /// sure the lease outlasts the call, extending it (and flushing pending
    /// results with it) if not. `false`: the lease is lost, do not call.
    async fn before_call(
        &self,
        core: &Core,
        expected: GlobalStatus,
        interval: Duration,
        pass: &mut Pass,
        k: usize,
        op: Op,
    ) -> Result<bool, StoreError> {
        core.checkpoint(&self.gid, Checkpoint::BeforeCall { branch_id: self.steps[k].branch_id.clone(), op })
            .await;
        if pass.lease.covers(core.call_timeout(&self.options)) {
            return Ok(true);
        }
        let hold = Schedule::Hold(pass.lease.length());
        self.save(core, expected, pass, change(None, None, hold, interval)).await
    }
}

impl SagaWork {
    #[allow(clippy::too_many_arguments)]
    fn new(
        gid: Gid,
        status: GlobalStatus,
        create_time: DateTime<Utc>,
        options: TransOptions,
        orders: &SagaOrders,
        interval: Duration,
        rollback_reason: String,
        steps: Vec<SagaStep>,
        state: Option<Vec<StepState>>,
    ) -> SagaWork {
        let n = steps.len();
        SagaWork {
            spec: SagaSpec {
                gid,
                create_time,
                sync_writes: orders.concurrent || options.timeout_to_fail.is_some(),
                options,
                ordering: Ordering::new(orders, n),
                steps,
            },
            status,
            interval,
            rollback_reason,
            state: state.unwrap_or_else(|| vec![StepState::NEW; n]),
        }
    }

    async fn run(
        mut self,
        core: &Core,
        lease: Lease,
        attempts: &PassAttempts<'_>,
    ) -> Result<PassEnd, StoreError> {
        let mut pass = Pass { changes: Vec::new(), outcome: PassOutcome::Progress, lease, retries: 0 };
        if self.status == GlobalStatus::Prepared {
            // A prepared saga only moves when it times out (dtm's needProcess).
            let Some(limit) = self.spec.timed_out(store::now()) else {
                return Ok(PassEnd::Pending(self.status, self.rollback_reason));
            };
            if !self
                .start_abort(core, &mut pass, format!("Timeout after {} seconds", limit.as_secs()))
                .await?
            {
                return Ok(PassEnd::Lost);
            }
        }
        if self.status == GlobalStatus::Submitted {
            match self.forward(core, attempts, &mut pass).await? {
                Forward::Lost => return Ok(PassEnd::Lost),
                Forward::Pending => return self.reschedule(core, pass).await,
                Forward::Done => return self.finish(core, pass, GlobalStatus::Succeed).await,
                Forward::Abort(reason) => {
                    if !self.start_abort(core, &mut pass, reason).await? {
                        return Ok(PassEnd::Lost);
                    }
                }
            }
        }
        if self.status == GlobalStatus::Aborting {
            return match self.backward(core, attempts, &mut pass).await? {
                None => Ok(PassEnd::Lost),
                Some(true) => self.finish(core, pass, GlobalStatus::Failed).await,
                Some(false) => self.reschedule(core, pass).await,
            };
        }
        // Already final: another instance finished it between lease and load.
        Ok(PassEnd::Finished(self.status, self.rollback_reason))
    }

    async fn start_abort(
        &mut self,
        core: &Core,
        pass: &mut Pass,
        reason: String,
    ) -> Result<bool, StoreError> {
        let reason = clip(reason);
        let hold = Schedule::Hold(pass.lease.length());
        let aborting = change(Some(GlobalStatus::Aborting), Some(reason.clone()), hold, self.interval);
        if !self.spec.save(core, self.status, pass, aborting).await? {
            return Ok(false);
        }
        tracing::info!(%reason, "saga aborting");
        self.status = GlobalStatus::Aborting;
        self.rollback_reason = reason;
        // What to compensate comes from the store, as it stands after the
        // decision (which carried this pass's own results along): the same
        // view any pass that takes over later will have.
        core.checkpoint(&self.spec.gid, Checkpoint::AfterAbortDecided).await;
        let Some(stored) = core.reload(&self.spec.gid, &pass.lease, GlobalStatus::Aborting).await? else {
            return Ok(false);
        };
        self.load_state(&stored.branches);
        Ok(true)
    }

    /// Replaces the step states with the stored branch statuses.
    fn load_state(&mut self, rows: &[BranchRow]) {
        for row in rows {
            let Some(k) = self.spec.steps.iter().position(|s| s.branch_id == row.branch_id) else { continue };
            match row.op {
                Op::Action => self.state[k].action = row.status,
                Op::Compensate => self.state[k].compensate = row.status,
                _ => {}
            }
        }
    }

    /// Runs actions until all succeeded, one failed, or none can proceed.
    async fn forward(
        &mut self,
        core: &Core,
        attempts: &PassAttempts<'_>,
        pass: &mut Pass,
    ) -> Result<Forward, StoreError> {
        let spec = &self.spec;
        let state = &mut self.state;
        let n = spec.steps.len();
        let mut busy = vec![false; n];
        let mut parked = vec![false; n];
        let mut abort: Option<String> = None;
        let mut calls = FuturesUnordered::new();
        loop {
            if abort.is_none()
                && let Some(limit) = spec.timed_out(store::now())
            {
                abort = Some(format!("Timeout after {} seconds", limit.as_secs()));
            }
            if abort.is_none() {
                let blocked: Vec<bool> = busy.iter().zip(&parked).map(|(b, p)| *b || *p).collect();
                let ready = spec.ordering.runnable_actions(state, &blocked);
                for k in ready {
                    if !spec.before_call(core, self.status, self.interval, pass, k, Op::Action).await? {
                        // Calls already sent still finish (their results are
                        // dropped: the new owner re-runs them through the barrier).
                        return Ok(Forward::Lost);
                    }
                    busy[k] = true;
                    calls.push(spec.call(core, attempts, k, Op::Action));
                }
            }
            let Some((k, result)) = calls.next().await else { break };
            busy[k] = false;
            match result {
                BranchResult::Success => {
                    pass.note(PassOutcome::Progress);
                    spec.record(state, pass, k, Op::Action, BranchStatus::Succeed);
                    if spec.sync_writes {
                        let hold = Schedule::Hold(pass.lease.length());
                        if !spec
                            .save(core, self.status, pass, change(None, None, hold, self.interval))
                            .await?
                        {
                            return Ok(Forward::Lost);
                        }
                    }
                }
                BranchResult::Failure(reason) => {
                    // Only a saga action's FAILURE is a business "no" (dtm's `dtmcli/consts.go`, ResultFailure).
                    spec.record(state, pass, k, Op::Action, BranchStatus::Failed);
                    abort.get_or_insert(reason);
                }
                BranchResult::Ongoing | BranchResult::Retry(_) => {
                    if let Some(limit) = spec.options.retry_limit {
                        // dtm's `trans_type_saga.go`: re-invoke at once, abort when the count reaches the limit.
                        pass.retries += 1;
                        if pass.retries >= limit {
                            abort.get_or_insert(format!(
                                "RetryCount is greater than RetryLimit, RetryLimit: {limit}"
                            ));
                        } else if abort.is_none() {
                            if !spec
                                .before_call(core, self.status, self.interval, pass, k, Op::Action)
                                .await?
                            {
                                return Ok(Forward::Lost);
                            }
                            busy[k] = true;
                            calls.push(spec.call(core, attempts, k, Op::Action));
                            continue;
                        }
                    }
                    parked[k] = true;
                    pass.note(if result == BranchResult::Ongoing {
                        PassOutcome::Ongoing
                    } else {
                        PassOutcome::Error
                    });
                }
            }
        }
        Ok(if let Some(reason) = abort {
            Forward::Abort(reason)
        } else if state.iter().all(|s| s.action == BranchStatus::Succeed) {
            Forward::Done
        } else {
            Forward::Pending
        })
    }

    /// Runs the compensations that are due. `Some(true)`: rolled back
    /// completely; `Some(false)`: some must be retried; `None`: lost the lease race.
    async fn backward(
        &mut self,
        core: &Core,
        attempts: &PassAttempts<'_>,
        pass: &mut Pass,
    ) -> Result<Option<bool>, StoreError> {
        let spec = &self.spec;
        let state = &mut self.state;
        let n = spec.steps.len();
        let need = spec.ordering.needs_compensation(state);
        let mut busy = vec![false; n];
        let mut parked = vec![false; n];
        let mut calls = FuturesUnordered::new();
        loop {
            let blocked: Vec<bool> = busy.iter().zip(&parked).map(|(b, p)| *b || *p).collect();
            let ready = spec.ordering.runnable_compensations(state, &need, &blocked);
            for k in ready {
                if !spec.before_call(core, self.status, self.interval, pass, k, Op::Compensate).await? {
                    return Ok(None);
                }
                busy[k] = true;
                calls.push(spec.call(core, attempts, k, Op::Compensate));
            }
            let Some((k, result)) = calls.next().await else { break };
            busy[k] = false;
            match result {
                BranchResult::Success => {
                    pass.note(PassOutcome::Progress);
                    spec.record(state, pass, k, Op::Compensate, BranchStatus::Succeed);
                }
                // A compensation must eventually succeed: FAILURE is retried like an error.
                BranchResult::Failure(_) | BranchResult::Retry(_) => {
                    parked[k] = true;
                    pass.note(PassOutcome::Error);
                }
                BranchResult::Ongoing => {
                    parked[k] = true;
                    pass.note(PassOutcome::Ongoing);
                }
            }
        }
        Ok(Some(Ordering::rolled_back(state, &need)))
    }

    async fn finish(self, core: &Core, mut pass: Pass, outcome: GlobalStatus) -> Result<PassEnd, StoreError> {
        let now = store::now();
        let release = Schedule::Release(Duration::ZERO);
        let saved = self
            .spec
            .save(core, self.status, &mut pass, change(Some(outcome), None, release, self.interval))
            .await?;
        if !saved {
            return Ok(PassEnd::Lost);
        }
        let age = (now - self.spec.create_time).to_std().unwrap_or_default();
        core.observer.transaction_finished(TransType::Saga, outcome, age);
        Ok(PassEnd::Finished(outcome, self.rollback_reason))
    }

    /// Not finished: record the results so far and when to come back.
    async fn reschedule(self, core: &Core, mut pass: Pass) -> Result<PassEnd, StoreError> {
        let base = retry::base_interval(&self.spec.options, core.settings.retry_interval);
        let interval =
            retry::next_interval(self.interval, base, core.settings.max_retry_interval, pass.outcome);
        let delay = retry::jittered(interval, rand::random::<f64>());
        let release = Schedule::Release(delay);
        let saved =
            self.spec.save(core, self.status, &mut pass, change(None, None, release, interval)).await?;
        Ok(if saved { PassEnd::Pending(self.status, self.rollback_reason) } else { PassEnd::Lost })
    }
}
