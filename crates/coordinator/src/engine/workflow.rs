//! dtm's workflow mode (`dtmsvr/trans_type_workflow.go`, the SDK in
//! `client/workflow/`): the application runs the transaction, the
//! coordinator keeps its memory and wakes it up.
//!
//! 1. `prepareWorkflow` stores the workflow as `prepared` — its name and
//!    input in `custom_data` (`{"name":…,"data":<base64>}`), its callback
//!    URL in `query_prepared` — or finds it stored already, and answers with
//!    the transaction and every **progress** recorded so far.
//! 2. The SDK runs the workflow function. Each step (an action, a phase-2
//!    commit or rollback) is recorded with `registerBranch` {`op`,
//!    `status`, `data` = the step's result} before its result is used; a
//!    step whose progress came back in step 1 is not run again, its
//!    recorded result is returned instead.
//! 3. `submit` with `req_extra` {`status`, `rollback_reason`, `result`}
//!    finishes it: `prepared` → `succeed`/`failed`, no branch processing.
//! 4. A workflow still `prepared` when its `next_cron_time` comes (one
//!    retry interval after its creation, then after each failed resume) is
//!    leased by the poller like any transaction, and the pass calls its
//!    callback (branch `00`, op = the workflow's name, the input as the
//!    body: `crate::branch`'s `call_workflow`). The SDK runs the function
//!    again with the same gid, and step 2's replay brings it to where it
//!    stopped. A callback that does not bring the workflow to an end backs
//!    off like any branch (capped and jittered; dtm re-arms it every
//!    interval without backoff).
//!
//! Fencing is the usual one: the pass's writes carry its lease token; the
//! application's writes (progresses, submit) are its own decisions and
//! apply to a `prepared` workflow whoever holds the lease, exactly as a TCC's
//! `registerBranch` and submit do. A submit clears the lease, so a pass
//! still waiting for the callback finds its next write refused and stops.

use std::time::Duration;

use base64::Engine as _;
use dtm_protocol::{BranchCall, BranchId, BranchResult, Gid, Op, TransType};
use serde::Serialize;
use tokio::time::Instant;

use super::lease::Lease;
use super::pass::{Core, PassEnd, change};
use super::retry::{self, PassOutcome};
use super::{Engine, EngineError};
use crate::attempts::PassAttempts;
use crate::branch::BranchRequest;
use crate::model::{
    BranchUrl, GlobalStatus, MAX_TEXT_COLUMN, Protocol, RegisterBranchRequest, RegisteredUrls, TransOptions,
    TransRequest,
};
use crate::store::{
    self, BranchRow, GlobalRow, NewBranch, Schedule, StatusUpdate, StoreError, StoredTrans, WorkflowOutcome,
};

/// `prepareWorkflow`'s answer: the transaction and its recorded progresses
/// (dtm's `{"transaction":…,"progresses":[…]}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkflowProgress {
    /// The `trans_global` row (its `result` is the base64 the SDK submitted).
    pub transaction: GlobalRow,
    /// The recorded steps, in the order they were recorded.
    pub progresses: Vec<BranchRow>,
}

/// A workflow's `custom_data`: which function to run, on what input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowCall {
    /// The name the workflow was registered under (sent as the callback's op).
    pub name: String,
    /// The input, decoded from base64.
    pub data: Vec<u8>,
}

#[derive(serde::Deserialize)]
struct CustomData {
    #[serde(default)]
    name: String,
    #[serde(default)]
    data: Option<String>,
}

impl WorkflowCall {
    /// Reads `{"name":…,"data":<base64>}`. The name must be usable as an
    /// HTTP query value and gRPC metadata (printable ASCII).
    pub fn parse(custom_data: &str) -> Result<WorkflowCall, String> {
        let raw: CustomData = serde_json::from_str(custom_data)
            .map_err(|e| format!("a workflow's custom_data must be {{\"name\":…,\"data\":<base64>}}: {e}"))?;
        if raw.name.is_empty() || !raw.name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the workflow name must be non-empty printable ASCII".to_string());
        }
        let data = match raw.data {
            None => Vec::new(),
            Some(text) => base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| format!("data is not base64: {e}"))?,
        };
        Ok(WorkflowCall { name: raw.name, data })
    }
}

/// The status a workflow's submit asks for (`req_extra.status`).
fn requested_outcome(request: &TransRequest) -> Result<WorkflowOutcome, EngineError> {
    let extra = &request.req_extra;
    let status = match extra.get("status").map(String::as_str) {
        Some("succeed") => GlobalStatus::Succeed,
        Some("failed") => GlobalStatus::Failed,
        other => {
            return Err(EngineError::invalid(
                "req_extra.status",
                format!("a workflow is submitted as succeed or failed, got {other:?}"),
            ));
        }
    };
    let reason = extra
        .get("rollback_reason")
        .cloned()
        .or_else(|| (!request.rollback_reason.is_empty()).then(|| request.rollback_reason.clone()));
    let result = extra.get("result").cloned();
    for (field, value) in [("req_extra.rollback_reason", &reason), ("req_extra.result", &result)] {
        if value.as_ref().is_some_and(|v| v.len() > MAX_TEXT_COLUMN) {
            return Err(EngineError::invalid(field, format!("longer than {MAX_TEXT_COLUMN} bytes")));
        }
    }
    Ok(WorkflowOutcome { status, rollback_reason: reason, result })
}

impl Engine {
    /// dtm `prepareWorkflow`: stores the workflow as `prepared` (or finds
    /// it stored) and returns it with its recorded progresses.
    pub async fn prepare_workflow(&self, request: TransRequest) -> Result<WorkflowProgress, EngineError> {
        if request.trans_type != TransType::Workflow {
            return Err(EngineError::invalid("trans_type", "prepareWorkflow takes a workflow"));
        }
        if request.protocol == Protocol::JsonRpc {
            return Err(EngineError::invalid("protocol", "json-rpc callbacks are not supported"));
        }
        WorkflowCall::parse(&request.custom_data).map_err(|m| EngineError::invalid("custom_data", m))?;
        if let Ok(url) = BranchUrl::parse(&request.query_prepared) {
            self.inner.core.caller.supports(&url).map_err(|m| EngineError::invalid("query_prepared", m))?;
        }
        let core = &self.inner.core;
        let interval = retry::base_interval(&request.options, core.settings.retry_interval);
        let mut global = self.new_global(&request, GlobalStatus::Prepared, store::now(), interval, None);
        // Resumed if still unfinished one interval from now (dtm's saveNew).
        global.lease = interval;
        core.store.create(&global, &[]).await?;
        let stored = core.store.find(&request.gid).await?.ok_or(EngineError::NotFound)?;
        if stored.global.trans_type != TransType::Workflow {
            return Err(EngineError::Conflict(format!(
                "gid {} is a {}, not a workflow",
                request.gid, stored.global.trans_type
            )));
        }
        Ok(WorkflowProgress { transaction: stored.global, progresses: stored.branches })
    }

    /// dtm `submit` of a workflow: `prepared` → `req_extra.status`, with its
    /// reason and result. The same submit again is accepted (its reply may
    /// have been lost); the other outcome is a conflict.
    pub(super) async fn submit_workflow(&self, request: TransRequest) -> Result<(), EngineError> {
        let outcome = requested_outcome(&request)?;
        let store = &self.inner.core.store;
        if store.finish_workflow(&request.gid, &outcome, store::now()).await? {
            return Ok(());
        }
        match store.find(&request.gid).await? {
            None => Err(EngineError::NotFound),
            Some(t) if t.global.trans_type != TransType::Workflow => Err(EngineError::Conflict(format!(
                "gid {} is a {}, not a workflow",
                request.gid, t.global.trans_type
            ))),
            Some(t) if t.global.status == outcome.status => Ok(()),
            Some(t) => {
                Err(EngineError::Conflict(format!("current status '{}', cannot submit", t.global.status)))
            }
        }
    }

    /// dtm `registerBranch` of a workflow: records one progress. Recording
    /// the same progress twice (a retry whose reply was lost) is accepted;
    /// a different status or result for a recorded step is a conflict — a
    /// recorded step is never overwritten.
    pub(super) async fn register_progress(&self, request: RegisterBranchRequest) -> Result<(), EngineError> {
        let RegisteredUrls::Workflow { op, status } = request.urls else {
            return Err(EngineError::invalid("trans_type", "not a workflow progress"));
        };
        let row = NewBranch { url: String::new(), bin_data: request.data, branch_id: request.branch_id, op };
        let store = &self.inner.core.store;
        match store.add_progress(&request.gid, &row, status, store::now()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(EngineError::Conflict(format!(
                "no trans with gid: {} status: prepared found",
                request.gid
            ))),
            Err(StoreError::Duplicate(_)) => {
                let stored = store.find(&request.gid).await?.ok_or(EngineError::NotFound)?;
                let same = stored.branches.iter().any(|b| {
                    b.branch_id == row.branch_id
                        && b.op == op
                        && b.status == status
                        && b.bin_data == row.bin_data
                });
                if same {
                    Ok(())
                } else {
                    Err(EngineError::Conflict(format!(
                        "progress {} {op} of {} is already recorded",
                        row.branch_id, request.gid
                    )))
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A `prepared` workflow leased for a pass: its callback to call.
pub(crate) struct WorkflowWork {
    gid: Gid,
    status: GlobalStatus,
    options: TransOptions,
    interval: Duration,
    rollback_reason: String,
    /// `query_prepared`: where the SDK serves its callback.
    callback: String,
    /// What to run again.
    call: WorkflowCall,
}

impl WorkflowWork {
    /// From the stored rows (the progresses are the SDK's business, not the pass's).
    pub(crate) fn from_stored(t: StoredTrans) -> Result<WorkflowWork, String> {
        let g = t.global;
        let call = WorkflowCall::parse(&g.custom_data)?;
        Ok(WorkflowWork {
            options: TransOptions {
                trace: crate::trace::from_ext_data(&g.ext_data),
                ..TransOptions::from_stored_json(&g.options)
            },
            gid: g.gid,
            status: g.status,
            interval: Duration::from_secs(g.next_cron_interval.max(0).unsigned_abs()),
            rollback_reason: g.rollback_reason,
            callback: g.query_prepared,
            call,
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

    /// One pass: call the callback once, then see whether the workflow ended.
    pub(crate) async fn run(
        self,
        core: &Core,
        mut lease: Lease,
        attempts: &PassAttempts<'_>,
    ) -> Result<PassEnd, StoreError> {
        if self.status != GlobalStatus::Prepared {
            return Ok(PassEnd::Finished(self.status, self.rollback_reason));
        }
        let timeout = core.call_timeout(&self.options);
        if !lease.covers(timeout) {
            let hold = change(None, None, Schedule::Hold(lease.length()), self.interval);
            let update = self.update(&lease, hold);
            if !core.write(&mut lease, update).await? {
                return Ok(PassEnd::Lost);
            }
        }
        let outcome = match BranchUrl::parse(&self.callback) {
            Ok(url) => {
                let (started, wall) = (Instant::now(), std::time::SystemTime::now());
                let branch_id = BranchId::msg();
                let result = core
                    .caller
                    .call_workflow(
                        &BranchRequest {
                            url: &url,
                            payload: &self.call.data,
                            // The op is replaced by the workflow's name on the wire.
                            call: BranchCall::new(
                                self.gid.clone(),
                                TransType::Workflow,
                                branch_id.clone(),
                                Op::Action,
                            ),
                            headers: &self.options.branch_headers,
                            trace: self.options.trace.as_ref(),
                            timeout,
                        },
                        &self.call.name,
                    )
                    .await;
                core.observer.branch_called(
                    TransType::Workflow,
                    &branch_id,
                    Op::Action,
                    &result,
                    started.elapsed(),
                );
                attempts.record(&branch_id, Op::Action, &result, wall, started.elapsed());
                match result {
                    BranchResult::Success => PassOutcome::Progress,
                    BranchResult::Ongoing => PassOutcome::Ongoing,
                    BranchResult::Failure(m) | BranchResult::Retry(m) => {
                        tracing::debug!(gid = %self.gid, reason = %m, "workflow callback did not succeed");
                        PassOutcome::Error
                    }
                }
            }
            Err(e) => {
                tracing::warn!(gid = %self.gid, error = %e, "stored workflow callback is unusable");
                PassOutcome::Error
            }
        };
        // The SDK submits during the callback: a final status is the end.
        if let Some(t) = core.store.find(&self.gid).await?
            && t.global.status.is_final()
        {
            return Ok(PassEnd::Finished(t.global.status, t.global.rollback_reason));
        }
        let base = retry::base_interval(&self.options, core.settings.retry_interval);
        let interval = retry::next_interval(self.interval, base, core.settings.max_retry_interval, outcome);
        let release = Schedule::Release(retry::jittered(interval, rand::random::<f64>()));
        let update = self.update(&lease, change(None, None, release, interval));
        Ok(if core.write(&mut lease, update).await? {
            PassEnd::Pending(self.status, self.rollback_reason)
        } else {
            PassEnd::Lost
        })
    }

    /// A write of this pass on the still `prepared` workflow.
    fn update(&self, lease: &Lease, change: crate::store::GlobalChange) -> StatusUpdate {
        StatusUpdate {
            gid: self.gid.clone(),
            expected: GlobalStatus::Prepared,
            fence: lease.fence(),
            change,
            branches: Vec::new(),
            now: store::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_data_carries_a_name_and_base64_input() {
        let call = WorkflowCall::parse(r#"{"name":"quickOrder","data":"eyJhIjoxfQ=="}"#).unwrap();
        assert_eq!(call.name, "quickOrder");
        assert_eq!(call.data, br#"{"a":1}"#);
        assert_eq!(WorkflowCall::parse(r#"{"name":"w"}"#).unwrap().data, b"");
        for bad in ["", "[]", r#"{"data":"AA=="}"#, r#"{"name":"a b"}"#, r#"{"name":"w","data":"%%"}"#] {
            assert!(WorkflowCall::parse(bad).is_err(), "{bad}");
        }
    }
}
