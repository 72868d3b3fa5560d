//! Inside a running workflow: [`Wf`], the context a workflow function
//! receives, and [`WfBranch`], one step of it.
//!
//! dtm's Go SDK (`client/workflow/workflow.go`, `imp.go`) writes a step as
//! `wf.NewBranch().OnRollback(undo).Do(action)`; here it is
//!
//! ```text
//! let reply = wf.branch()?.on_rollback(undo).action(do_it).await?;
//! ```
//!
//! with the same rules:
//!
//! * every step gets the next branch id (`01`, `02`, …) in the order the
//!   code reaches it — which is why a workflow function must reach its
//!   steps in the same order every time it runs (no branching on the
//!   clock or on randomness; branch on the results of earlier steps only);
//! * a step's phase-2 functions (`on_rollback`, `on_commit`) are registered
//!   *before* its action runs, so a failed action is rolled back too (its
//!   barrier makes that a null compensation when nothing was done);
//! * a step's outcome is recorded with `registerBranch` before the function
//!   sees it: `Ok(data)` as `succeed` with the data, a
//!   [`ClientError::Failure`] as `failed` with its message. A transient
//!   error is not recorded: the step runs again when the workflow resumes;
//! * a step whose outcome is recorded (it came back with `prepareWorkflow`)
//!   is **not run again**: its recorded result or failure is returned.
//!
//! Branch calls made from a step carry `gid`, `trans_type=workflow`, the
//! step's `branch_id` and the op (`action`, `commit`, `rollback`), so the
//! branch's barrier recognises a repeated call and a rollback arriving
//! without its action ([`BranchCtx`]).
//!
//! # XA steps
//!
//! dtm's `wf.NewBranch().DoXa(db, fn)` is [`Wf::xa_step`] (the `xa`
//! module beside this one): a [`WfBranch`] whose `on_commit` /
//! `on_rollback` are `XA COMMIT` / `XA ROLLBACK` of its xid and whose
//! action prepares the local transaction, recording op `business` inside it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use dtm_protocol::{BranchCall, BranchId, BranchStatus, Gid, Op, TransType};

use super::progress::Progress;
use crate::branch::BranchRequest;
use crate::tcc::DEFAULT_BRANCH_TIMEOUT;
use crate::{BranchIdGen, ClientError, DtmClient, RegisterBranch, TransOptions};

/// What a step returns: its result bytes, or why not.
pub type StepResult = Result<Vec<u8>, ClientError>;

/// A boxed future, as the stored phase-2 functions return.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A phase-2 function (commit or rollback of one step), kept until the
/// workflow's outcome is known.
type Phase2 = Box<dyn FnOnce(BranchCtx) -> BoxFuture<Result<(), ClientError>> + Send>;

/// What a step's code needs to call a branch: the values a barrier checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchCtx {
    /// The workflow's gid.
    pub gid: Gid,
    /// The step's branch id.
    pub branch_id: BranchId,
    /// `action`, `commit` or `rollback`.
    pub op: Op,
}

impl BranchCtx {
    /// The dtm values of a call made by this step (`trans_type=workflow`).
    pub fn call(&self) -> BranchCall {
        BranchCall::new(self.gid.clone(), TransType::Workflow, self.branch_id.clone(), self.op)
    }
}

/// A recorded outcome, as the function sees it again.
#[derive(Debug, Clone)]
enum Recorded {
    Succeed(Vec<u8>),
    Failed(String),
}

impl Recorded {
    fn result(&self) -> StepResult {
        match self {
            Recorded::Succeed(data) => Ok(data.clone()),
            Recorded::Failed(message) => Err(ClientError::Failure(message.clone())),
        }
    }
}

/// The mutable part of a run: ids handed out, outcomes known, phase 2 to do.
#[derive(Default)]
struct RunState {
    ids: BranchIdGen,
    recorded: HashMap<(BranchId, Op), Recorded>,
    commits: Vec<(BranchId, Phase2)>,
    rollbacks: Vec<(BranchId, Phase2)>,
}

/// The context of one run of a workflow function. Cheap to clone; steps
/// are meant to run one after the other.
#[derive(Clone)]
pub struct Wf {
    gid: Gid,
    dtm: DtmClient,
    options: Arc<TransOptions>,
    state: Arc<Mutex<RunState>>,
}

impl std::fmt::Debug for Wf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wf").field("gid", &self.gid).finish_non_exhaustive()
    }
}

impl Wf {
    /// A run of workflow `gid` that has recorded `progresses` already.
    pub(crate) fn new(gid: Gid, dtm: DtmClient, options: TransOptions, progresses: Vec<Progress>) -> Wf {
        let mut state = RunState::default();
        for p in progresses {
            let outcome = match p.status {
                BranchStatus::Failed => Recorded::Failed(String::from_utf8_lossy(&p.data).into_owned()),
                _ => Recorded::Succeed(p.data),
            };
            state.recorded.insert((p.branch_id, p.op), outcome);
        }
        Wf { gid, dtm, options: Arc::new(options), state: Arc::new(Mutex::new(state)) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The workflow's gid.
    pub fn gid(&self) -> &Gid {
        &self.gid
    }

    /// The coordinator.
    pub(super) fn dtm(&self) -> &DtmClient {
        &self.dtm
    }

    /// The recorded outcome of `op` of step `id`, if any.
    pub(super) fn recorded_result(&self, id: &BranchId, op: Op) -> Option<StepResult> {
        self.state().recorded.get(&(id.clone(), op)).map(Recorded::result)
    }

    /// The next step (branch `01`, `02`, …).
    pub fn branch(&self) -> Result<WfBranch, ClientError> {
        let id = self.state().ids.next_id()?;
        Ok(WfBranch { wf: self.clone(), id, commit: None, rollback: None })
    }

    /// A saga step over dtm's branch protocol: `action_url` now (op
    /// `action`), and `compensate_url` with the same payload if the
    /// workflow fails (op `rollback`). URLs are HTTP (`http://…`, JSON
    /// payload) or gRPC (`host:port/pkg.Svc/Method`, `etcd://…`,
    /// protobuf payload). Returns the action's reply.
    pub async fn saga_step(&self, action_url: &str, compensate_url: &str, payload: Vec<u8>) -> StepResult {
        let undo = self.caller(compensate_url, payload.clone());
        let action = self.caller(action_url, payload);
        self.branch()?.on_rollback(move |ctx| async move { undo(ctx).await.map(drop) }).action(action).await
    }

    /// A TCC step: `try_url` now (op `action`), then `confirm_url` (op
    /// `commit`) if the workflow succeeds or `cancel_url` (op `rollback`)
    /// if it fails, all with `payload`. Returns the try's reply.
    pub async fn tcc_step(
        &self,
        try_url: &str,
        confirm_url: &str,
        cancel_url: &str,
        payload: Vec<u8>,
    ) -> StepResult {
        let confirm = self.caller(confirm_url, payload.clone());
        let cancel = self.caller(cancel_url, payload.clone());
        let attempt = self.caller(try_url, payload);
        self.branch()?
            .on_commit(move |ctx| async move { confirm(ctx).await.map(drop) })
            .on_rollback(move |ctx| async move { cancel(ctx).await.map(drop) })
            .action(attempt)
            .await
    }

    /// A function calling `url` with `payload` as the given step and op.
    fn caller(
        &self,
        url: &str,
        payload: Vec<u8>,
    ) -> impl FnOnce(BranchCtx) -> BoxFuture<StepResult> + Send + 'static {
        let (dtm, url, options) = (self.dtm.clone(), url.to_string(), Arc::clone(&self.options));
        move |ctx| {
            Box::pin(async move {
                let request = BranchRequest {
                    url: &url,
                    payload: &payload,
                    call: ctx.call(),
                    headers: &options.branch_headers,
                    // The workflow's `request_timeout` bounds the coordinator's
                    // callback (a whole run), not one step.
                    timeout: DEFAULT_BRANCH_TIMEOUT,
                    extra: &[],
                };
                dtm.branches().call(&request).await
            })
        }
    }

    /// Runs `f` as `op` of step `id`, unless its outcome is recorded;
    /// records a new final outcome before returning it.
    async fn recorded<F, Fut>(&self, id: &BranchId, op: Op, f: F) -> StepResult
    where
        F: FnOnce(BranchCtx) -> Fut,
        Fut: Future<Output = StepResult>,
    {
        let known = self.state().recorded.get(&(id.clone(), op)).cloned();
        if let Some(known) = known {
            tracing::debug!(gid = %self.gid, branch_id = %id, %op, "step replayed from its recorded progress");
            return known.result();
        }
        let result = f(BranchCtx { gid: self.gid.clone(), branch_id: id.clone(), op }).await;
        let (status, data) = match &result {
            Ok(data) => (BranchStatus::Succeed, data.clone()),
            Err(ClientError::Failure(message)) => (BranchStatus::Failed, message.clone().into_bytes()),
            // Not an outcome: the step runs again when the workflow resumes.
            Err(_) => return result,
        };
        let progress = RegisterBranch::workflow_progress(self.gid.clone(), id.clone(), op, status, data);
        self.dtm.register_branch(&progress).await?;
        let outcome = match &result {
            Ok(data) => Recorded::Succeed(data.clone()),
            Err(e) => Recorded::Failed(e.to_string()),
        };
        self.state().recorded.insert((id.clone(), op), outcome);
        result
    }

    /// Phase 2: the commits (`failed == false`) or rollbacks registered by
    /// the steps, newest first, each recorded like a step. A phase-2
    /// function must eventually succeed: its FAILURE is not an outcome but
    /// an error, and the workflow resumes later from the first one not done.
    pub(crate) async fn phase2(&self, failed: bool) -> Result<(), ClientError> {
        let (list, op) = {
            let mut state = self.state();
            if failed {
                (std::mem::take(&mut state.rollbacks), Op::Rollback)
            } else {
                (std::mem::take(&mut state.commits), Op::Commit)
            }
        };
        for (id, f) in list.into_iter().rev() {
            self.recorded(&id, op, |ctx| async move {
                match f(ctx).await {
                    Ok(()) => Ok(Vec::new()),
                    Err(ClientError::Failure(m)) => {
                        Err(ClientError::Other(format!("a {op} must not fail, retried later: {m}")))
                    }
                    Err(e) => Err(e),
                }
            })
            .await?;
        }
        Ok(())
    }

    /// The recorded steps, for tests and logs: `(branch id, op) → succeeded`.
    pub fn recorded_steps(&self) -> BTreeMap<(String, String), bool> {
        self.state()
            .recorded
            .iter()
            .map(|((id, op), r)| ((id.to_string(), op.to_string()), matches!(r, Recorded::Succeed(_))))
            .collect()
    }
}

/// One step of a workflow: its phase-2 functions, then its action.
pub struct WfBranch {
    wf: Wf,
    id: BranchId,
    commit: Option<Phase2>,
    rollback: Option<Phase2>,
}

impl std::fmt::Debug for WfBranch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WfBranch").field("gid", &self.wf.gid).field("id", &self.id).finish_non_exhaustive()
    }
}

impl WfBranch {
    /// The step's branch id.
    pub fn id(&self) -> &BranchId {
        &self.id
    }

    /// What undoes this step if the workflow fails (op `rollback`).
    pub fn on_rollback<F, Fut>(mut self, f: F) -> WfBranch
    where
        F: FnOnce(BranchCtx) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), ClientError>> + Send + 'static,
    {
        self.rollback = Some(Box::new(move |ctx| Box::pin(f(ctx))));
        self
    }

    /// What completes this step if the workflow succeeds (op `commit`).
    pub fn on_commit<F, Fut>(mut self, f: F) -> WfBranch
    where
        F: FnOnce(BranchCtx) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), ClientError>> + Send + 'static,
    {
        self.commit = Some(Box::new(move |ctx| Box::pin(f(ctx))));
        self
    }

    /// Registers the phase-2 functions, then runs the action (op `action`)
    /// — or returns its recorded outcome without running it.
    pub async fn action<F, Fut>(self, f: F) -> StepResult
    where
        F: FnOnce(BranchCtx) -> Fut,
        Fut: Future<Output = StepResult>,
    {
        let WfBranch { wf, id, commit, rollback } = self;
        {
            let mut state = wf.state();
            if let Some(commit) = commit {
                state.commits.push((id.clone(), commit));
            }
            if let Some(rollback) = rollback {
                state.rollbacks.push((id.clone(), rollback));
            }
        }
        wf.recorded(&id, Op::Action, f).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use discovery::ChannelCache;

    use super::*;

    fn recorded(id: &str, op: Op, status: BranchStatus, data: &[u8]) -> Progress {
        Progress { branch_id: BranchId::new(id).unwrap(), op, status, data: data.to_vec() }
    }

    /// A run whose every step is recorded never calls the coordinator (it
    /// is unreachable here) nor runs a step again.
    #[tokio::test(start_paused = true)]
    async fn recorded_steps_are_replayed_not_run_and_recorded_rollbacks_are_skipped() {
        let dtm = DtmClient::new("http://127.0.0.1:1/api/dtmsvr", ChannelCache::new()).unwrap();
        let wf = Wf::new(
            Gid::new("g1").unwrap(),
            dtm,
            TransOptions::default(),
            vec![
                recorded("01", Op::Action, BranchStatus::Succeed, b"r1"),
                recorded("02", Op::Action, BranchStatus::Failed, b"out of stock"),
                recorded("02", Op::Rollback, BranchStatus::Succeed, b""),
                recorded("01", Op::Rollback, BranchStatus::Succeed, b""),
            ],
        );
        let ran = Arc::new(AtomicUsize::new(0));
        let step = |ran: Arc<AtomicUsize>| {
            move |_ctx: BranchCtx| async move {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(b"fresh".to_vec())
            }
        };
        let undo = |ran: Arc<AtomicUsize>| {
            move |_ctx: BranchCtx| async move {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        };
        let first = wf.branch().unwrap().on_rollback(undo(ran.clone())).action(step(ran.clone())).await;
        assert_eq!(first.unwrap(), b"r1");
        let second = wf.branch().unwrap().on_rollback(undo(ran.clone())).action(step(ran.clone())).await;
        assert!(matches!(&second, Err(ClientError::Failure(m)) if m == "out of stock"), "{second:?}");
        wf.phase2(true).await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 0, "nothing ran again");
        let steps = wf.recorded_steps();
        assert_eq!(steps.get(&("02".into(), "action".into())), Some(&false));
        assert_eq!(steps.len(), 4);
    }

    /// Step ids follow the order the code reaches the steps: `01`, `02`, …
    #[tokio::test(start_paused = true)]
    async fn steps_get_consecutive_branch_ids() {
        let dtm = DtmClient::new("http://127.0.0.1:1/api/dtmsvr", ChannelCache::new()).unwrap();
        let wf = Wf::new(Gid::new("g2").unwrap(), dtm, TransOptions::default(), Vec::new());
        let ids: Vec<String> = (0..3).map(|_| wf.branch().unwrap().id().to_string()).collect();
        assert_eq!(ids, ["01", "02", "03"]);
    }
}
