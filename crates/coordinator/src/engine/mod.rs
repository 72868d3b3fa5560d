//! The transaction engine: the facade the APIs call, the processing of
//! passes, and the recovery poller.
//!
//! # Life of a saga
//!
//! 1. `submit` validates, then [`Store::create`] commits the global row and
//!    all branch rows at once, with a fresh lease token in `owner`: this
//!    instance holds the lease. (Under load, the creates and final writes of
//!    concurrent sagas share transactions: [`store::GroupCommit`].)
//! 2. The same instance runs a pass right away (in a spawned task, or inline
//!    for `wait_result`) from the request in memory — no read-back.
//! 3. A pass that finishes writes the final status together with all branch
//!    results in one transaction. A pass that cannot finish (a branch is
//!    down, ONGOING) writes what it learned plus the next `next_cron_time`
//!    (capped, jittered exponential backoff; see [`retry`]) and lets go of
//!    the lease.
//! 4. The recovery poller of every instance leases due transactions and runs
//!    passes on them, so a coordinator killed at any instant leaves nothing
//!    behind that another one will not finish.
//!
//! # One pass per transaction
//!
//! At most one pass drives a transaction at a time, whatever clients,
//! clocks and pauses do:
//!
//! * across instances, by the lease and its fencing token ([`lease`],
//!   [`crate::store`]): every write of a pass is conditional on its token,
//!   and the pass checks that its lease outlasts each branch call before
//!   making it;
//! * within an instance, by single flight: a gid has at most one pass in
//!   the engine's active set. A `wait_result` resubmit or an abort of a
//!   transaction being driven here waits for that pass's outcome instead of
//!   starting another; the poller never leases a gid this instance drives;
//! * a client's resubmit or abort of a transaction that another instance
//!   is driving takes the lease only once it has expired
//!   ([`Store::acquire`]); until then it waits for the outcome in the store.
//!
//! Concurrency is bounded by a semaphore on passes in flight.
//!
//! # Retry alerts
//!
//! Every branch answer that makes a transaction back off is handed to
//! [`crate::alert`] without waiting; counting and webhook delivery run on
//! tasks of their own, started with the engine and stopped with it.

pub mod checkpoint;
pub mod lease;
pub mod observer;
mod pass;
mod process;
pub mod retry;
pub mod saga;
mod sequence;
mod settings;
pub mod workflow;
mod xa;

mod error;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dtm_protocol::{Gid, TransType};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use checkpoint::{Checkpoint, PassCheckpoint};
pub use error::EngineError;
pub use observer::{EngineObserver, NoopObserver};
pub use settings::EngineSettings;

use self::lease::Lease;
use self::pass::{Core, PassEnd};
use self::process::Work;
use crate::alert::Alerts;
use crate::attempts::{Attempts, PassOrigin};
use crate::branch::{BranchCaller, BranchResolver};
use crate::model::{GlobalStatus, Protocol, RegisterBranchRequest, RegisteredUrls, Step, TransRequest};
use crate::store::{
    self, BranchRow, CreateOutcome, Fence, GlobalChange, GlobalRow, LeaseToken, ListFilter, NewGlobal, Page,
    ResetCount, Schedule, StatusUpdate, Store, StoredTrans, Unfinished,
};

/// `/api/dtmsvr/query`'s answer: the global row (or `null`) and its branches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransDetail {
    /// The `trans_global` row.
    pub transaction: Option<GlobalRow>,
    /// Its branch rows, in id order.
    pub branches: Vec<BranchRow>,
}

/// Optional collaborators of an [`Engine`].
#[derive(Clone)]
pub struct EngineHooks {
    /// Metrics sink (default: none).
    pub observer: Arc<dyn EngineObserver>,
    /// Resolver for `etcd://` branch URLs (default: a fresh
    /// [`discovery::ChannelCache`]; `None` refuses such URLs at submit).
    pub resolver: Option<Arc<dyn BranchResolver>>,
    /// Test hook that may hold passes at named points (default: none).
    pub checkpoint: Option<Arc<dyn PassCheckpoint>>,
}

impl Default for EngineHooks {
    fn default() -> Self {
        EngineHooks {
            observer: Arc::new(NoopObserver),
            resolver: Some(Arc::new(discovery::ChannelCache::new())),
            checkpoint: None,
        }
    }
}

/// The coordinator's engine. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// A pass running in this process.
struct ActivePass {
    /// The token of its lease (shutdown releases the lease by it).
    token: LeaseToken,
    /// Callers waiting for its outcome (`wait_result` resubmits, aborts).
    waiters: Vec<oneshot::Sender<PassEnd>>,
}

struct Inner {
    /// Store, settings, branch caller and observer: what a pass needs.
    core: Core,
    /// Passes in flight (submits and recovery together) ≤ `max_in_flight`.
    permits: Arc<Semaphore>,
    /// Cancelled by `shutdown`: the poller stops leasing, submits stop spawning.
    shutdown: CancellationToken,
    /// Cancelled to drop in-flight passes on the spot (shutdown timeout, crash tests).
    kill: CancellationToken,
    /// The spawned passes, so that shutdown can wait for them.
    tracker: TaskTracker,
    /// The gids with a pass running in this process, at most one each
    /// (single flight): the leases we hold.
    active: Mutex<HashMap<Gid, ActivePass>>,
}

impl Inner {
    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<Gid, ActivePass>> {
        self.active.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.inner.core.store)
            .field("settings", &self.inner.core.settings)
            .finish_non_exhaustive()
    }
}

/// What claiming a gid for a pass found.
enum Claim {
    /// No pass was running; this one is registered and runs.
    Claimed(ActiveGuard),
    /// A pass is running here already; its outcome arrives on the receiver.
    Running(oneshot::Receiver<PassEnd>),
}

/// Removes a gid from the active set when its pass ends (or is dropped),
/// and hands the outcome to whoever waits for it.
struct ActiveGuard {
    inner: Arc<Inner>,
    gid: Gid,
    end: Option<PassEnd>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let Some(pass) = self.inner.active().remove(&self.gid) else { return };
        // A pass dropped without an outcome (killed) tells its waiters it
        // lost: they read the outcome from the store.
        let end = self.end.take().unwrap_or(PassEnd::Lost);
        for waiter in pass.waiters {
            let _ = waiter.send(end.clone());
        }
    }
}

/// How a caller that did not run the pass itself learns its outcome.
enum Outcome {
    /// From a pass (ours or one we waited for).
    Pass(PassEnd),
    /// Read from the store.
    Stored(GlobalStatus, String),
}

impl Engine {
    /// An engine over `store`. Fails only if the HTTP client cannot be built (TLS setup).
    pub fn new(
        store: Arc<dyn Store>,
        settings: EngineSettings,
        hooks: EngineHooks,
    ) -> Result<Engine, reqwest::Error> {
        let caller = BranchCaller::new(hooks.resolver)?;
        let permits = Arc::new(Semaphore::new(settings.max_in_flight.max(1)));
        let (shutdown, kill) = (CancellationToken::new(), CancellationToken::new());
        // Counting and delivery run beside the passes, never inside them.
        let alerts = Alerts::start(
            Arc::clone(&store),
            &settings.alert,
            Arc::clone(&hooks.observer),
            shutdown.clone(),
            kill.clone(),
        )?;
        let attempts = Attempts::start(
            Arc::clone(&store),
            &settings.attempts,
            Arc::clone(&hooks.observer),
            kill.clone(),
        );
        Ok(Engine {
            inner: Arc::new(Inner {
                core: Core {
                    store,
                    settings,
                    caller,
                    observer: hooks.observer,
                    checkpoint: hooks.checkpoint,
                    alerts,
                    attempts,
                },
                permits,
                shutdown,
                kill,
                tracker: TaskTracker::new(),
                active: Mutex::default(),
            }),
        })
    }

    /// The store (for tools and tests).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.core.store
    }

    /// The settings in force.
    pub fn settings(&self) -> &EngineSettings {
        &self.inner.core.settings
    }

    /// A fresh gid (dtm's 22-character short UUID).
    pub fn new_gid(&self) -> Gid {
        Gid::random()
    }

    /// Refuses what this coordinator cannot process, before anything is stored.
    fn check_processable(&self, request: &TransRequest) -> Result<(), EngineError> {
        if request.trans_type == TransType::Workflow {
            // Its SDK starts it with `prepareWorkflow` and ends it with a
            // `submit` that says how it ended (`submit_workflow`).
            return Err(EngineError::invalid("trans_type", "a workflow is started with prepareWorkflow"));
        }
        if request.protocol == Protocol::JsonRpc {
            return Err(EngineError::invalid("protocol", "json-rpc branches are not supported"));
        }
        // The URL's shape picks the transport (dtm would call a gRPC URL in
        // an `http` transaction over HTTP, and fail forever).
        let caller = &self.inner.core.caller;
        for (i, step) in request.steps.iter().enumerate() {
            let urls = match step {
                Step::Saga { action, compensate } => vec![("action", action), ("compensate", compensate)],
                Step::Msg { action } => vec![("action", action)],
                // Subscribers were checked when they subscribed.
                Step::Topic { .. } => vec![],
            };
            for (name, url) in urls {
                caller.supports(url).map_err(|m| EngineError::invalid(format!("steps[{i}].{name}"), m))?;
            }
        }
        if let Ok(url) = crate::model::BranchUrl::parse(&request.query_prepared) {
            caller.supports(&url).map_err(|m| EngineError::invalid("query_prepared", m))?;
        }
        Ok(())
    }

    /// The lease length for passes of a transaction with these options.
    fn lease_length(&self, options: &crate::model::TransOptions) -> Duration {
        let core = &self.inner.core;
        lease::length_for(&core.settings, core.call_timeout(options))
    }

    /// The lease length for passes of a stored transaction (its own
    /// options decide how long a branch call may take).
    fn stored_lease_length(&self, row: &GlobalRow) -> Duration {
        self.lease_length(&crate::model::TransOptions::from_stored_json(&row.options))
    }

    /// The global row of a new transaction. `owner`: the lease of the pass
    /// that will process it at once; `None` for one that waits (prepare).
    fn new_global(
        &self,
        request: &TransRequest,
        status: GlobalStatus,
        now: chrono::DateTime<chrono::Utc>,
        interval: Duration,
        owner: Option<&Lease>,
    ) -> NewGlobal {
        let (owner, lease) = match owner {
            Some(lease) => (Some(lease.token().clone()), lease.length()),
            None => (None, self.inner.core.settings.lease_duration),
        };
        NewGlobal {
            gid: request.gid.clone(),
            trans_type: request.trans_type,
            status,
            protocol: request.protocol,
            query_prepared: request.query_prepared.clone(),
            options: request.options.to_stored_json(),
            custom_data: request.custom_data.clone(),
            next_cron_interval: i64::try_from(interval.as_secs()).unwrap_or(i64::MAX),
            owner,
            lease,
            rollback_reason: request.rollback_reason.clone(),
            ext_data: crate::trace::to_ext_data(request.options.trace.as_ref()),
            now,
        }
    }

    /// The branch rows a request creates: saga compensate+action per step,
    /// msg one action per step (one per subscriber of a `topic://` step:
    /// [`crate::topics::msg_rows`]), TCC none (branches register themselves).
    async fn branch_rows(&self, request: &TransRequest) -> Result<Vec<store::NewBranch>, EngineError> {
        match request.trans_type {
            TransType::Saga => Ok(saga::branch_rows(request)),
            _ => crate::topics::msg_rows(self.inner.core.store.kv(), request).await,
        }
    }

    /// Whether this coordinator can call `url` at all (an `etcd://` URL
    /// needs the resolver); topic subscribers are checked when they subscribe.
    pub fn can_call(&self, url: &crate::model::BranchUrl) -> Result<(), String> {
        self.inner.core.caller.supports(url)
    }

    /// dtm `prepare`: stores the transaction as `prepared` (idempotent).
    pub async fn prepare(&self, request: TransRequest) -> Result<(), EngineError> {
        self.check_processable(&request)?;
        let now = store::now();
        let interval = retry::base_interval(&request.options, self.inner.core.settings.retry_interval);
        let global = self.new_global(&request, GlobalStatus::Prepared, now, interval, None);
        match self.inner.core.store.create(&global, &self.branch_rows(&request).await?).await? {
            CreateOutcome::Created => Ok(()),
            CreateOutcome::Exists(row) if row.status == GlobalStatus::Prepared => Ok(()),
            CreateOutcome::Exists(row) => {
                Err(EngineError::Conflict(format!("current status '{}', cannot prepare", row.status)))
            }
        }
    }

    /// dtm `submit`: stores the transaction (or moves a prepared one to
    /// `submitted`) and processes it — in the background, or inline with
    /// `wait_result`, in which case the answer is `Ok` (succeed),
    /// `Failure(reason)` (failed, or rolling back), or `Ongoing` (still going forward).
    pub async fn submit(&self, request: TransRequest) -> Result<(), EngineError> {
        if request.trans_type == TransType::Workflow {
            return self.submit_workflow(request).await;
        }
        self.check_processable(&request)?;
        let now = store::now();
        let interval = retry::base_interval(&request.options, self.inner.core.settings.retry_interval);
        let lease = Lease::new(LeaseToken::random(), self.lease_length(&request.options));
        let wait = request.options.wait_result;
        // While shutting down we run no background pass and keep no lease:
        // the transaction is stored due at once, for another instance.
        let hand_over = self.inner.shutdown.is_cancelled() && !wait;
        let mut global = self.new_global(&request, GlobalStatus::Submitted, now, interval, Some(&lease));
        if hand_over {
            (global.owner, global.lease) = (None, Duration::ZERO);
        }
        let branches = self.branch_rows(&request).await?;
        match self.inner.core.store.create(&global, &branches).await? {
            CreateOutcome::Exists(_) if !branches.is_empty() => {
                // dtm accepts a re-submitted gid and silently keeps the first
                // steps; a client that reuses a gid for *other* work would
                // then be told "SUCCESS" for work that never runs. Same
                // steps: an idempotent retry. Other steps: refused.
                let stored = self.inner.core.store.find(&request.gid).await?.ok_or(EngineError::NotFound)?;
                let same = if crate::topics::has_topic_steps(&request) {
                    // Its topics' subscribers may have changed since.
                    crate::topics::same_steps(&request, &stored.branches)
                } else {
                    stored.branches.len() == branches.len()
                        && stored.branches.iter().zip(&branches).all(|(old, new)| {
                            old.url == new.url
                                && old.bin_data == new.bin_data
                                && old.branch_id == new.branch_id
                                && old.op == new.op
                        })
                };
                if !same {
                    return Err(EngineError::Conflict(format!(
                        "gid {} was already submitted with other steps",
                        request.gid
                    )));
                }
                self.submit_existing(&request, stored.global, wait).await
            }
            CreateOutcome::Exists(row) => self.submit_existing(&request, *row, wait).await,
            CreateOutcome::Created if global.owner.is_none() => Ok(()),
            CreateOutcome::Created => {
                let work = match Work::from_request(&request, GlobalStatus::Submitted, now, interval) {
                    Some(work) => work,
                    // Types whose work is built from rows: read them back
                    // (ours: we hold the lease since the create).
                    None => {
                        let stored =
                            self.inner.core.store.find(&request.gid).await?.ok_or(EngineError::NotFound)?;
                        Work::from_stored(stored).map_err(|m| EngineError::invalid("gid", m))?
                    }
                };
                let end = self.run_or_spawn(work, lease, PassOrigin::Decision, wait).await?;
                self.answer_submit(&request.gid, end).await
            }
        }
    }

    /// A submit of a gid that is already stored: a prepared one (TCC,
    /// msg) moves to `submitted`, a submitted one is a harmless retry.
    async fn submit_existing(
        &self,
        request: &TransRequest,
        row: store::GlobalRow,
        wait: bool,
    ) -> Result<(), EngineError> {
        match row.status {
            GlobalStatus::Prepared => {
                // No pass calls branches of a prepared transaction (at most
                // a msg check-back, which only reads): the client's decision
                // takes the lease over from whoever holds it.
                let lease = Lease::new(LeaseToken::random(), self.stored_lease_length(&row));
                let change = GlobalChange {
                    status: Some(GlobalStatus::Submitted),
                    rollback_reason: None,
                    schedule: Schedule::Hold(lease.length()),
                    next_cron_interval: row.next_cron_interval,
                };
                let fence = Fence::TakeOver(lease.token().clone());
                let update =
                    StatusUpdate::global(&request.gid, GlobalStatus::Prepared, fence, change, store::now());
                let Some(stored) = self.decide(update, &lease, GlobalStatus::Submitted).await? else {
                    // Someone else moved it meanwhile; judge by what it is now.
                    return self.resubmitted(&request.gid, wait).await;
                };
                if self.inner.shutdown.is_cancelled() && !wait {
                    return Ok(());
                }
                let work = Work::from_stored(stored).map_err(|m| EngineError::invalid("gid", m))?;
                let end = self.run_or_spawn(work, lease, PassOrigin::Decision, wait).await?;
                self.answer_submit(&request.gid, end).await
            }
            GlobalStatus::Submitted => self.resubmitted(&request.gid, wait).await,
            status => Err(EngineError::Conflict(format!("current status '{status}', cannot submit"))),
        }
    }

    /// Applies a client's decision (a take-over write) and reads the
    /// transaction back under the new lease. `None` if the decision did not
    /// apply. A write whose answer was lost (the commit's reply, a batch that
    /// failed after committing) is judged by what the store holds: ours if
    /// our token and the new status are there.
    async fn decide(
        &self,
        update: StatusUpdate,
        lease: &Lease,
        status: GlobalStatus,
    ) -> Result<Option<StoredTrans>, EngineError> {
        let core = &self.inner.core;
        let gid = update.gid.clone();
        let written = core.store.update(update).await;
        let reread = core.reload(&gid, lease, status).await;
        match (written, reread) {
            (_, Ok(Some(stored))) => Ok(Some(stored)),
            (Ok(_), Ok(None)) => Ok(None),
            (Err(e), _) | (_, Err(e)) => Err(e.into()),
        }
    }

    /// A submit of a gid that already exists and is (perhaps) running: accepted;
    /// with `wait_result`, the caller gets the outcome of the pass that
    /// drives it (joined, or run here if nobody holds it).
    async fn resubmitted(&self, gid: &Gid, wait: bool) -> Result<(), EngineError> {
        let Some(stored) = self.inner.core.store.find(gid).await? else { return Err(EngineError::NotFound) };
        match stored.global.status {
            GlobalStatus::Submitted | GlobalStatus::Prepared if wait => {
                let outcome = self.drive_or_join(gid).await?;
                self.answer(gid, outcome).await
            }
            GlobalStatus::Submitted | GlobalStatus::Prepared => Ok(()),
            status => Err(EngineError::Conflict(format!("current status '{status}', cannot submit"))),
        }
    }

    /// One pass's outcome for a caller that waits: joins the pass running in
    /// this process, or takes the lease and runs one, or — if another
    /// instance holds a live lease — waits for the store to show progress.
    async fn drive_or_join(&self, gid: &Gid) -> Result<Outcome, EngineError> {
        if let Some(running) = self.join(gid) {
            return Ok(Outcome::Pass(running.await.unwrap_or(PassEnd::Lost)));
        }
        let core = &self.inner.core;
        let token = LeaseToken::random();
        let sent = Instant::now();
        let length = lease::length_for(&core.settings, core.settings.request_timeout);
        match core.store.acquire(gid, &token, length, store::now()).await? {
            Some(stored) => {
                let work = Work::from_stored(stored).map_err(|m| EngineError::invalid("gid", m))?;
                // Extensions fit the transaction's own request timeout.
                let extension = lease::length_for(&core.settings, work.call_timeout(core));
                let lease = Lease::sent_at(token, length, sent).with_length(extension);
                let end = self.run_or_spawn(work, lease, PassOrigin::Resumed, true).await?;
                Ok(Outcome::Pass(end.unwrap_or(PassEnd::Lost)))
            }
            // Another pass of this process took it meanwhile: wait for it.
            None if let Some(running) = self.join(gid) => {
                Ok(Outcome::Pass(running.await.unwrap_or(PassEnd::Lost)))
            }
            None => self.await_store(gid).await,
        }
    }

    /// Waits (up to one lease) for a transaction driven by another instance
    /// to reach a final status; reports what the store holds then.
    async fn await_store(&self, gid: &Gid) -> Result<Outcome, EngineError> {
        let deadline = Instant::now() + self.inner.core.settings.lease_duration;
        let mut pause = Duration::from_millis(20);
        loop {
            let Some(stored) = self.inner.core.store.find(gid).await? else {
                return Err(EngineError::NotFound);
            };
            let global = stored.global;
            if global.status.is_final() || Instant::now() >= deadline {
                return Ok(Outcome::Stored(global.status, global.rollback_reason));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// The waiters' view of a pass that runs here, if one does.
    fn join(&self, gid: &Gid) -> Option<oneshot::Receiver<PassEnd>> {
        let mut active = self.inner.active();
        let pass = active.get_mut(gid)?;
        let (tx, rx) = oneshot::channel();
        pass.waiters.push(tx);
        Some(rx)
    }

    /// Registers a pass on `gid` under `token`, or joins the one running.
    fn claim(&self, gid: &Gid, token: &LeaseToken) -> Claim {
        let mut active = self.inner.active();
        if let Some(pass) = active.get_mut(gid) {
            let (tx, rx) = oneshot::channel();
            pass.waiters.push(tx);
            return Claim::Running(rx);
        }
        active.insert(gid.clone(), ActivePass { token: token.clone(), waiters: Vec::new() });
        Claim::Claimed(ActiveGuard { inner: Arc::clone(&self.inner), gid: gid.clone(), end: None })
    }

    /// Maps a submit's pass outcome as dtm's submit does: `Ok` only for `succeed`.
    async fn answer_submit(&self, gid: &Gid, end: Option<PassEnd>) -> Result<(), EngineError> {
        match end {
            None => Ok(()),
            Some(end) => self.answer(gid, Outcome::Pass(end)).await,
        }
    }

    /// dtm's `wait_result` answer: `Ok` for succeed, `Failure` for failed
    /// or rolling back, `Ongoing` otherwise.
    async fn answer(&self, gid: &Gid, outcome: Outcome) -> Result<(), EngineError> {
        let (status, reason) = match outcome {
            Outcome::Pass(PassEnd::Finished(status, reason) | PassEnd::Pending(status, reason)) => {
                (status, reason)
            }
            Outcome::Pass(PassEnd::Lost) => return self.outcome_now(gid).await,
            Outcome::Stored(status, reason) => (status, reason),
        };
        match status {
            GlobalStatus::Succeed => Ok(()),
            GlobalStatus::Failed | GlobalStatus::Aborting => Err(EngineError::Failure(failure_text(reason))),
            _ => Err(EngineError::Ongoing),
        }
    }

    /// Runs a pass inline (`wait`: `Some(end)`) or in the background (`None`).
    /// If a pass on the gid is already running here, the new one waits for
    /// it to end first (its lease was taken over, so it ends soon).
    async fn run_or_spawn(
        &self,
        work: Work,
        lease: Lease,
        origin: PassOrigin,
        wait: bool,
    ) -> Result<Option<PassEnd>, EngineError> {
        if wait {
            let permit = self.inner.permits.clone().acquire_owned().await;
            // Boxed: a pass's future is large, and the API futures awaiting it stay small.
            let end = Box::pin(self.run_claimed(work, lease, origin)).await;
            drop(permit);
            return end.map(Some);
        }
        if self.inner.shutdown.is_cancelled() {
            // Stored with a lease that expires: another instance takes it.
            return Ok(None);
        }
        let engine = self.clone();
        self.inner.tracker.spawn(async move {
            let Ok(permit) = engine.inner.permits.clone().acquire_owned().await else { return };
            engine.guarded_pass(work, lease, origin, permit).await;
        });
        Ok(None)
    }

    /// What a waiting caller learns after losing a race to another instance.
    async fn outcome_now(&self, gid: &Gid) -> Result<(), EngineError> {
        let Some(stored) = self.inner.core.store.find(gid).await? else { return Err(EngineError::NotFound) };
        match stored.global.status {
            GlobalStatus::Succeed => Ok(()),
            GlobalStatus::Failed | GlobalStatus::Aborting => {
                Err(EngineError::Failure(failure_text(stored.global.rollback_reason)))
            }
            _ => Err(EngineError::Ongoing),
        }
    }

    /// A pass that ends early if the engine is killed; holds its permit.
    async fn guarded_pass(&self, work: Work, lease: Lease, origin: PassOrigin, permit: OwnedSemaphorePermit) {
        let kill = self.inner.kill.clone();
        tokio::select! {
            // Checked first: a killed engine must not start a pass.
            biased;
            _ = kill.cancelled() => {}
            _ = self.run_claimed(work, lease, origin) => {}
        }
        drop(permit);
    }

    /// Runs a pass as the only one on its gid in this process: waits for a
    /// pass already running to end, then runs.
    async fn run_claimed(
        &self,
        work: Work,
        lease: Lease,
        origin: PassOrigin,
    ) -> Result<PassEnd, EngineError> {
        let gid = work.gid().clone();
        let mut guard = loop {
            match self.claim(&gid, lease.token()) {
                Claim::Claimed(guard) => break guard,
                Claim::Running(ended) => {
                    let _ = ended.await;
                }
            }
        };
        let span = crate::trace::pass_span(&gid, work.trace());
        self.inner.core.checkpoint(&gid, Checkpoint::PassStarted).await;
        let core = &self.inner.core;
        let attempts = core.attempts.for_pass(&gid, origin);
        let end = work.run(core, lease, &attempts).instrument(span.clone()).await;
        attempts.pass_ended(matches!(end, Ok(PassEnd::Finished(GlobalStatus::Succeed, _))));
        match &end {
            Ok(end) => guard.end = Some(end.clone()),
            // The lease expires and the transaction is picked up again later.
            Err(e) => span.in_scope(|| tracing::warn!(error = %e, "pass stopped by a storage error")),
        }
        Ok(end?)
    }

    /// dtm `abort`: a prepared 2-phase message becomes `failed`; a TCC or
    /// XA that is prepared (or already aborting) becomes `aborting` and its
    /// cancels / rollbacks run. Anything else — sagas included — is a 409, as in dtm. With
    /// `wait_result`, `Ok` means rolled back, `Ongoing` still rolling back.
    pub async fn abort(&self, request: TransRequest) -> Result<(), EngineError> {
        let store = &self.inner.core.store;
        let Some(stored) = store.find(&request.gid).await? else { return Err(EngineError::NotFound) };
        let global = stored.global;
        let refuse = |global: &GlobalRow| {
            EngineError::Conflict(format!(
                "trans type: '{}' current status '{}', cannot abort",
                global.trans_type, global.status
            ))
        };
        let reason = (!request.rollback_reason.is_empty()).then(|| request.rollback_reason.clone());
        let wait = request.options.wait_result;
        match (global.trans_type, global.status) {
            (TransType::Msg, GlobalStatus::Prepared) => {
                let lease = Lease::new(LeaseToken::random(), Duration::ZERO);
                let change = GlobalChange {
                    status: Some(GlobalStatus::Failed),
                    rollback_reason: reason,
                    schedule: Schedule::Release(Duration::ZERO),
                    next_cron_interval: global.next_cron_interval,
                };
                let fence = Fence::TakeOver(lease.token().clone());
                let update =
                    StatusUpdate::global(&request.gid, GlobalStatus::Prepared, fence, change, store::now());
                let written = store.update(update).await;
                // Judged by the store, not by the write's answer (a commit
                // whose reply was lost): failed is what the client asked for.
                match store.find(&request.gid).await? {
                    Some(t) if t.global.status == GlobalStatus::Failed => Ok(()),
                    Some(t) => {
                        written?;
                        Err(refuse(&t.global))
                    }
                    None => Err(EngineError::NotFound),
                }
            }
            (TransType::Tcc | TransType::Xa, GlobalStatus::Prepared)
                if request.trans_type == global.trans_type =>
            {
                let lease = Lease::new(LeaseToken::random(), self.stored_lease_length(&global));
                let change = GlobalChange {
                    status: Some(GlobalStatus::Aborting),
                    rollback_reason: reason,
                    schedule: Schedule::Hold(lease.length()),
                    next_cron_interval: global.next_cron_interval,
                };
                let fence = Fence::TakeOver(lease.token().clone());
                let update =
                    StatusUpdate::global(&request.gid, GlobalStatus::Prepared, fence, change, store::now());
                let Some(stored) = self.decide(update, &lease, GlobalStatus::Aborting).await? else {
                    // Moved meanwhile: aborting already (join it) or decided otherwise.
                    return match store.find(&request.gid).await? {
                        Some(t) if t.global.status == GlobalStatus::Aborting => {
                            self.join_abort(&request.gid, wait).await
                        }
                        Some(t) if t.global.status == GlobalStatus::Failed => Ok(()),
                        Some(t) => Err(refuse(&t.global)),
                        None => Err(EngineError::NotFound),
                    };
                };
                // The cancels to run are read after the decision committed
                // (a registerBranch racing it either committed first and is
                // here, or was refused).
                let work = Work::from_stored(stored).map_err(|m| EngineError::invalid("gid", m))?;
                let end = self.run_or_spawn(work, lease, PassOrigin::Decision, wait).await?;
                abort_answer(end.map(Outcome::Pass).as_ref())
            }
            (TransType::Tcc | TransType::Xa, GlobalStatus::Aborting)
                if request.trans_type == global.trans_type =>
            {
                self.join_abort(&request.gid, wait).await
            }
            _ => Err(refuse(&global)),
        }
    }

    /// An abort of a TCC or XA that is already rolling back.
    async fn join_abort(&self, gid: &Gid, wait: bool) -> Result<(), EngineError> {
        if !wait {
            return Ok(());
        }
        let outcome = self.drive_or_join(gid).await?;
        abort_answer(Some(&outcome))
    }

    /// dtm `registerBranch`: adds a TCC branch's `cancel` and `confirm`
    /// rows, or an XA branch's `rollback` and `commit` rows, to a
    /// transaction that is still `prepared` (checked in the same database
    /// transaction that stores them).
    pub async fn register_branch(&self, request: RegisterBranchRequest) -> Result<(), EngineError> {
        let caller = &self.inner.core.caller;
        let rows = match &request.urls {
            // A workflow's progress is one row of its own, no URL.
            RegisteredUrls::Workflow { .. } => return self.register_progress(request).await,
            RegisteredUrls::Tcc { confirm, cancel } => {
                for (name, url) in [("confirm", confirm), ("cancel", cancel)] {
                    caller.supports(url).map_err(|m| EngineError::invalid(name, m))?;
                }
                let row = |op, url: &crate::model::BranchUrl| store::NewBranch {
                    url: url.as_str().to_string(),
                    bin_data: request.data.clone(),
                    branch_id: request.branch_id.clone(),
                    op,
                };
                [row(dtm_protocol::Op::Cancel, cancel), row(dtm_protocol::Op::Confirm, confirm)]
            }
            RegisteredUrls::Xa { url } => {
                caller.supports(url).map_err(|m| EngineError::invalid("url", m))?;
                xa::registered_rows(&request, url)
            }
        };
        let store = &self.inner.core.store;
        match store.add_branches(&request.gid, GlobalStatus::Prepared, &rows, store::now()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(EngineError::Conflict(format!(
                "no trans with gid: {} status: prepared found",
                request.gid
            ))),
            Err(store::StoreError::Duplicate(_)) => {
                Err(EngineError::Conflict(format!("branch {} is already registered", request.branch_id)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// dtm `query`: the transaction and its branches, `None` if unknown.
    pub async fn query(&self, gid: &Gid) -> Result<Option<TransDetail>, EngineError> {
        Ok(self
            .inner
            .core
            .store
            .find(gid)
            .await?
            .map(|t| TransDetail { transaction: Some(t.global), branches: t.branches }))
    }

    /// The unfinished transactions per status and the creation time of the
    /// oldest, as the store holds them (every coordinator on the database
    /// sees the same): the gauges of `/api/metrics`.
    pub async fn unfinished(&self) -> Result<Unfinished, EngineError> {
        Ok(self.inner.core.store.unfinished().await?)
    }

    /// dtm `all`: newest first, keyset pagination.
    pub async fn list(&self, filter: ListFilter) -> Result<Page, EngineError> {
        Ok(self.inner.core.store.list(&filter).await?)
    }

    /// dtm `forceStop`: unfinished → `failed`, without compensation.
    pub async fn force_stop(&self, gid: &Gid) -> Result<(), EngineError> {
        let store = &self.inner.core.store;
        if store.force_stop(gid, store::now()).await? {
            return Ok(());
        }
        match store.find(gid).await? {
            None => Err(EngineError::NotFound),
            Some(t) => Err(EngineError::Conflict(format!(
                "global transaction force stop error. status: {}. gid: {gid}",
                t.global.status
            ))),
        }
    }

    /// Which branch calls are recorded (what an empty timeline means).
    pub fn attempts_recorded(&self) -> crate::attempts::AttemptsRecord {
        self.inner.core.settings.attempts.record
    }

    /// The newest `limit` recorded branch calls of a transaction, oldest
    /// first (the console's timeline; `crate::attempts`).
    pub async fn attempts_of(&self, gid: &Gid, limit: u32) -> Result<Vec<store::AttemptRow>, EngineError> {
        Ok(self.inner.core.store.attempts_of(gid, limit).await?)
    }

    /// How many transactions there are per status (the console's counts).
    pub async fn status_counts(&self) -> Result<Vec<(GlobalStatus, u64)>, EngineError> {
        Ok(self.inner.core.store.status_counts().await?)
    }

    /// The console's "retry now": [`Engine::reset_next_cron_time`] for a
    /// transaction that is not final; a final one is a conflict (dtm's
    /// `resetNextCronTime` accepts it and changes nothing useful).
    pub async fn retry_now(&self, gid: &Gid) -> Result<(), EngineError> {
        let store = &self.inner.core.store;
        match store.find(gid).await? {
            None => Err(EngineError::NotFound),
            Some(t) if t.global.status.is_final() => Err(EngineError::Conflict(format!(
                "transaction {gid} is {}: nothing to retry",
                t.global.status
            ))),
            Some(_) => self.reset_next_cron_time(gid).await,
        }
    }

    /// dtm `resetNextCronTime`: make a transaction that waits for its next
    /// retry due now. One that a pass is processing right now (a live
    /// lease) is left to that pass.
    pub async fn reset_next_cron_time(&self, gid: &Gid) -> Result<(), EngineError> {
        if self.inner.core.store.reset_next_cron_time(gid, store::now()).await? {
            Ok(())
        } else {
            Err(EngineError::NotFound)
        }
    }

    /// dtm `resetCronTime`: unfinished transactions scheduled more than
    /// `timeout` (default 3 × `timeout_to_fail`) ahead become due now.
    pub async fn reset_cron_time(
        &self,
        timeout: Option<Duration>,
        limit: u32,
    ) -> Result<ResetCount, EngineError> {
        let timeout = timeout.unwrap_or(self.inner.core.settings.timeout_to_fail * 3);
        Ok(self.inner.core.store.reset_stale_cron_times(timeout, limit, store::now()).await?)
    }

    /// Starts the recovery poller; it stops when [`Engine::shutdown`] is called.
    pub fn spawn_poller(&self) -> JoinHandle<()> {
        let engine = self.clone();
        let shutdown = self.inner.shutdown.clone();
        let interval = self.inner.core.settings.trans_cron_interval;
        tokio::spawn(async move {
            poller::run(
                shutdown,
                || poller::idle_delay(interval, rand::random::<f64>()),
                || engine.poll_once(),
            )
            .await;
        })
    }

    /// Leases as many due transactions as there are free permits (up to
    /// `lease_batch`) and spawns a pass for each. `true` if the batch was
    /// full, i.e. more work is probably waiting.
    async fn poll_once(&self) -> bool {
        let settings = &self.inner.core.settings;
        let mut permits = Vec::new();
        while permits.len() < settings.lease_batch as usize {
            match self.inner.permits.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        if permits.is_empty() {
            return false;
        }
        let want = permits.len();
        let token = LeaseToken::random();
        // Never a second pass on a gid this process is driving, even if its
        // lease lapsed (a stalled pass): that pass finds out at its next
        // write, and the transaction is leased again after it.
        let skip: Vec<Gid> = self.inner.active().keys().cloned().collect();
        let sent = Instant::now();
        let leased = match self
            .inner
            .core
            .store
            .lease_due(
                &token,
                settings.lease_duration,
                u32::try_from(want).unwrap_or(u32::MAX),
                &skip,
                store::now(),
            )
            .await
        {
            Ok(leased) => leased,
            Err(e) => {
                tracing::warn!(error = %e, "leasing due transactions failed");
                return false;
            }
        };
        let full = leased.len() >= want;
        for (trans, permit) in leased.into_iter().zip(permits) {
            let gid = trans.global.gid.clone();
            match Work::from_stored(trans) {
                Ok(work) => {
                    let engine = self.clone();
                    let extension = lease::length_for(settings, work.call_timeout(&self.inner.core));
                    let lease =
                        Lease::sent_at(token.clone(), settings.lease_duration, sent).with_length(extension);
                    self.inner.tracker.spawn(async move {
                        engine.guarded_pass(work, lease, PassOrigin::Resumed, permit).await
                    });
                }
                Err(reason) => tracing::error!(%gid, %reason, "cannot process stored transaction"),
            }
        }
        full
    }

    /// Graceful stop: no new leases, wait (up to `shutdown_timeout`) for
    /// passes in flight, then cut the remaining ones and release their
    /// leases (`next_cron_time = now`) so another instance takes over at once.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        let timeout = self.inner.core.settings.shutdown_timeout;
        if tokio::time::timeout(timeout, self.inner.tracker.wait()).await.is_ok() {
            self.stop_alerts(timeout).await;
            return;
        }
        let held: Vec<(Gid, LeaseToken)> =
            self.inner.active().iter().map(|(gid, pass)| (gid.clone(), pass.token.clone())).collect();
        self.inner.kill.cancel();
        self.inner.tracker.wait().await;
        if let Err(e) = self.inner.core.store.release(&held, store::now()).await {
            tracing::warn!(error = %e, count = held.len(), "could not release leases; they expire on their own");
        }
        self.stop_alerts(timeout).await;
    }

    /// Lets alert delivery record the round in hand (up to `timeout`), then
    /// cuts it: an alert sent but not recorded is sent again by whoever
    /// delivers next (at-least-once).
    async fn stop_alerts(&self, timeout: Duration) {
        let alerts = &self.inner.core.alerts;
        if tokio::time::timeout(timeout, alerts.stopped()).await.is_err() {
            self.inner.kill.cancel();
            alerts.stopped().await;
        }
    }

    /// Stops everything at once WITHOUT releasing leases — what a killed
    /// process leaves behind. For crash tests and drills.
    pub fn abandon(&self) {
        self.inner.shutdown.cancel();
        self.inner.kill.cancel();
        self.inner.tracker.close();
    }

    /// Number of passes currently running in this process.
    pub fn passes_in_flight(&self) -> usize {
        self.inner.active().len()
    }
}

/// An abort's answer with `wait_result`: `Ok` once rolled back.
fn abort_answer(outcome: Option<&Outcome>) -> Result<(), EngineError> {
    match outcome {
        None
        | Some(Outcome::Pass(PassEnd::Finished(GlobalStatus::Failed, _) | PassEnd::Lost))
        | Some(Outcome::Stored(GlobalStatus::Failed, _)) => Ok(()),
        Some(_) => Err(EngineError::Ongoing),
    }
}

fn failure_text(reason: String) -> String {
    if reason.is_empty() { "wait result not return success".to_string() } else { reason }
}

mod poller {
    //! The recovery loop, separated from the engine so its timing can be
    //! tested with tokio's paused clock.

    use std::future::Future;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    /// dtm sleeps `TransCronInterval − rand[0, 1)` s when idle; for short test
    /// intervals we take at most a third off.
    pub(super) fn idle_delay(interval: Duration, unit: f64) -> Duration {
        let max_cut = Duration::from_secs(1).min(interval / 3);
        interval - max_cut.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// Calls `once` until shutdown; sleeps `idle()` after a call that found
    /// no backlog, loops at once after one that did. A running `once` is
    /// never cut short (it may hold fresh leases).
    pub(super) async fn run<I, F, Fut>(shutdown: CancellationToken, mut idle: I, mut once: F)
    where
        I: FnMut() -> Duration,
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        while !shutdown.is_cancelled() {
            if once().await {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(idle()) => {}
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        use super::*;

        #[test]
        fn idle_delay_is_jittered_down_by_at_most_a_second() {
            assert_eq!(idle_delay(Duration::from_secs(3), 0.0), Duration::from_secs(3));
            assert_eq!(idle_delay(Duration::from_secs(3), 1.0), Duration::from_secs(2));
            assert_eq!(idle_delay(Duration::from_millis(300), 1.0), Duration::from_millis(200));
        }

        #[tokio::test(start_paused = true)]
        async fn idle_poller_ticks_once_per_interval_and_stops_on_shutdown() {
            let calls = Arc::new(AtomicUsize::new(0));
            let shutdown = CancellationToken::new();
            let task = tokio::spawn({
                let (calls, shutdown) = (calls.clone(), shutdown.clone());
                async move {
                    run(
                        shutdown,
                        || Duration::from_secs(3),
                        || {
                            calls.fetch_add(1, Ordering::SeqCst);
                            async { false }
                        },
                    )
                    .await
                }
            });
            // Calls at t = 0, 3, 6, 9.
            tokio::time::sleep(Duration::from_millis(10_500)).await;
            assert_eq!(calls.load(Ordering::SeqCst), 4);
            shutdown.cancel();
            task.await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            assert_eq!(calls.load(Ordering::SeqCst), 4);
        }

        #[tokio::test(start_paused = true)]
        async fn busy_poller_does_not_sleep_until_the_backlog_is_gone() {
            let calls = Arc::new(AtomicUsize::new(0));
            let shutdown = CancellationToken::new();
            let task = tokio::spawn({
                let (calls, shutdown) = (calls.clone(), shutdown.clone());
                async move {
                    run(
                        shutdown,
                        || Duration::from_secs(3),
                        move || {
                            // Five full batches, then idle.
                            let n = calls.fetch_add(1, Ordering::SeqCst);
                            async move { n < 5 }
                        },
                    )
                    .await
                }
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(
                calls.load(Ordering::SeqCst),
                6,
                "five busy rounds and one idle one, no sleep between"
            );
            shutdown.cancel();
            task.await.unwrap();
        }
    }
}
