//! dtm's workflow mode (the Rust counterpart of dtm's Go
//! `client/workflow`: `workflow.go`, `imp.go`, `factory.go`): a global
//! transaction written as ordinary async code, whose every step is
//! recorded by the coordinator so that a crash resumes it where it stopped.
//!
//! ```no_run
//! use dtm_client::workflow::Workflows;
//! use dtm_client::{ClientError, DtmClient};
//!
//! # async fn demo() -> Result<(), ClientError> {
//! let dtm = DtmClient::new("http://127.0.0.1:36789/api/dtmsvr", discovery::ChannelCache::new())?;
//! // Where the coordinator calls back to resume an interrupted workflow
//! // (`Workflows::router` serves it).
//! let workflows = Workflows::new(dtm.clone(), "http://127.0.0.1:8081/api/workflow/resume");
//! workflows.register("transfer", async |wf, input| {
//!     let busi = "http://127.0.0.1:8082/api/busi";
//!     wf.saga_step(&format!("{busi}/TransOut"), &format!("{busi}/TransOutRevert"), input.clone()).await?;
//!     wf.saga_step(&format!("{busi}/TransIn"), &format!("{busi}/TransInRevert"), input).await?;
//!     Ok(b"done".to_vec())
//! });
//! let gid = dtm.new_gid().await?;
//! match workflows.execute("transfer", &gid, br#"{"amount":30}"#).await {
//!     Ok(result) => println!("succeeded: {result:?}"),
//!     Err(ClientError::Failure(reason)) => println!("rolled back: {reason}"),
//!     Err(other) => println!("interrupted, the coordinator resumes it: {other}"),
//! }
//! # Ok(()) }
//! ```
//!
//! One execution ([`Workflows::execute`]):
//!
//! 1. `prepareWorkflow` (gid, `custom_data` `{"name":…,"data":<base64>}`,
//!    the callback URL): the workflow is stored, or found with the
//!    progress it recorded before. One already finished returns its stored
//!    result (or failure) without running anything;
//! 2. the function runs on a fresh [`Wf`] holding that progress: recorded
//!    steps are replayed, the others run and are recorded (`context.rs`);
//! 3. the function returned `Ok` → the steps' `on_commit`s run, newest
//!    first; it returned [`ClientError::Failure`] → their `on_rollback`s;
//!    each recorded too;
//! 4. `submit` with `req_extra` {`status`, `rollback_reason`, `result`}.
//!
//! Any other error (a branch or the coordinator unreachable) stops the run
//! without a submit: the workflow stays `prepared`, and the coordinator
//! calls the callback ([`Workflows::router`] over HTTP, or
//! [`Workflows::grpc_service`], dtm's `workflow.Workflow/Execute`) until a
//! run finishes it. In
//! one process a gid runs at most once at a time; a callback arriving
//! while it runs is answered ONGOING (425).

mod context;
mod grpc;
mod progress;
mod xa;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use dtm_protocol::{Gid, GlobalStatus, TransType};

pub use context::{BranchCtx, StepResult, Wf, WfBranch};
pub use grpc::WorkflowService;
pub use progress::{PreparedWorkflow, Progress};

use crate::{ClientError, DtmClient, TransOptions, TransRequest};
use context::BoxFuture;

/// A registered workflow function.
type Handler = Arc<dyn Fn(Wf, Vec<u8>) -> BoxFuture<StepResult> + Send + Sync>;

/// The workflows of one process and the client they run with (dtm's
/// `workflow.InitHTTP`/`InitGrpc` plus its registry). Cheap to clone.
#[derive(Clone)]
pub struct Workflows {
    inner: Arc<Inner>,
}

struct Inner {
    /// The coordinator.
    dtm: DtmClient,
    /// Where the coordinator calls back to resume (`query_prepared`); may
    /// be set after the server that serves it has bound its port.
    callback: Mutex<String>,
    /// Options sent with every workflow (`retry_interval`: how soon an
    /// interrupted one is resumed; `request_timeout`: how long a resume may take).
    options: Mutex<TransOptions>,
    /// Functions by name.
    handlers: Mutex<HashMap<String, Handler>>,
    /// The gids running in this process (a run at a time per gid).
    running: Mutex<HashSet<Gid>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes a gid out of the running set when its run ends, however it ends.
struct Running {
    inner: Arc<Inner>,
    gid: Gid,
}

impl Drop for Running {
    fn drop(&mut self) {
        lock(&self.inner.running).remove(&self.gid);
    }
}

impl std::fmt::Debug for Workflows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflows").field("callback", &*lock(&self.inner.callback)).finish_non_exhaustive()
    }
}

impl Workflows {
    /// Workflows run against `dtm`, resumed through `callback` (an HTTP
    /// URL served by [`Workflows::router`]).
    pub fn new(dtm: DtmClient, callback: impl Into<String>) -> Workflows {
        Workflows {
            inner: Arc::new(Inner {
                dtm,
                callback: Mutex::new(callback.into()),
                options: Mutex::new(TransOptions::default()),
                handlers: Mutex::default(),
                running: Mutex::default(),
            }),
        }
    }

    /// Sets the callback URL (once the serving port is known).
    pub fn set_callback(&self, callback: impl Into<String>) {
        *lock(&self.inner.callback) = callback.into();
    }

    /// Sets the options sent with every workflow.
    pub fn set_options(&self, options: TransOptions) {
        *lock(&self.inner.options) = options;
    }

    /// Registers `f` under `name` (replacing an earlier one). `f` receives
    /// the run's context and the input; it must reach its steps in the
    /// same order on every run (`context.rs`).
    pub fn register<F, Fut>(&self, name: &str, f: F)
    where
        F: Fn(Wf, Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = StepResult> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |wf, input| Box::pin(f(wf, input)));
        lock(&self.inner.handlers).insert(name.to_string(), handler);
    }

    /// Runs workflow `name` as `gid` on `input` (or resumes it: the same
    /// call with the same gid replays what is recorded). `Ok`: it
    /// succeeded, with its result; [`ClientError::Failure`]: it failed and
    /// was rolled back; [`ClientError::Ongoing`]: the gid is running in
    /// this process already; any other error: interrupted, the coordinator
    /// resumes it through the callback.
    pub async fn execute(&self, name: &str, gid: &Gid, input: &[u8]) -> StepResult {
        let handler = lock(&self.inner.handlers)
            .get(name)
            .cloned()
            .ok_or_else(|| ClientError::InvalidArgument(format!("no workflow registered as {name:?}")))?;
        if !lock(&self.inner.running).insert(gid.clone()) {
            return Err(ClientError::Ongoing);
        }
        let _running = Running { inner: Arc::clone(&self.inner), gid: gid.clone() };
        let dtm = &self.inner.dtm;
        let options = lock(&self.inner.options).clone();
        let mut request = TransRequest::new(gid.clone(), TransType::Workflow);
        request.custom_data = serde_json::json!({
            "name": name,
            "data": base64::engine::general_purpose::STANDARD.encode(input),
        })
        .to_string();
        request.query_prepared = lock(&self.inner.callback).clone();
        request.options = options.clone();
        let prepared = dtm.prepare_workflow(&request).await?;
        match prepared.status {
            GlobalStatus::Succeed => return Ok(prepared.result),
            GlobalStatus::Failed => return Err(ClientError::Failure(prepared.rollback_reason)),
            _ => {}
        }
        let wf = Wf::new(gid.clone(), dtm.clone(), options.clone(), prepared.progresses);
        let outcome = handler(wf.clone(), input.to_vec()).await;
        let failed = match &outcome {
            Ok(_) => false,
            Err(ClientError::Failure(_)) => true,
            // Interrupted: no decision, the coordinator resumes it.
            Err(_) => return outcome,
        };
        wf.phase2(failed).await?;
        let mut submit = TransRequest::new(gid.clone(), TransType::Workflow);
        submit.options = options;
        match &outcome {
            Ok(result) => {
                submit.req_extra.insert("status".into(), "succeed".into());
                submit
                    .req_extra
                    .insert("result".into(), base64::engine::general_purpose::STANDARD.encode(result));
            }
            Err(e) => {
                let reason = match e {
                    ClientError::Failure(reason) => reason.clone(),
                    other => other.to_string(),
                };
                submit.req_extra.insert("status".into(), "failed".into());
                submit.req_extra.insert("rollback_reason".into(), reason);
            }
        }
        dtm.submit_request(&submit).await?;
        outcome
    }

    /// An axum router serving the callback at `path` (`POST
    /// path?gid=…&trans_type=workflow&branch_id=00&op=<name>`, the input as
    /// the body): 200 when the run finished the workflow (either way),
    /// 425 when the gid is running here, 400 for an unknown name, 500 when
    /// the run was interrupted (the coordinator calls again later).
    pub fn router(&self, path: &str) -> axum::Router {
        axum::Router::new().route(path, axum::routing::post(callback)).with_state(self.clone())
    }
}

/// The coordinator's callback: run the workflow named by `op` again.
async fn callback(State(workflows): State<Workflows>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let query = query.unwrap_or_default();
    let value = |key: &str| {
        url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
    };
    let answer = |status: StatusCode, result: &str, message: String| {
        (status, axum::Json(serde_json::json!({"dtm_result": result, "message": message}))).into_response()
    };
    let gid = match value("gid").map(Gid::new) {
        Some(Ok(gid)) => gid,
        _ => return answer(StatusCode::BAD_REQUEST, "FAILURE", "missing or invalid gid".into()),
    };
    let Some(name) = value("op") else {
        return answer(StatusCode::BAD_REQUEST, "FAILURE", "missing op (the workflow's name)".into());
    };
    match workflows.execute(&name, &gid, &body).await {
        // Finished either way: nothing left for the coordinator to drive.
        Ok(_) | Err(ClientError::Failure(_)) => answer(StatusCode::OK, "SUCCESS", String::new()),
        Err(ClientError::Ongoing) => answer(StatusCode::TOO_EARLY, "ONGOING", format!("{gid} is running")),
        Err(ClientError::InvalidArgument(m)) => answer(StatusCode::BAD_REQUEST, "ERROR", m),
        Err(e) => {
            tracing::warn!(%gid, workflow = %name, error = %e, "resumed workflow interrupted again");
            answer(StatusCode::INTERNAL_SERVER_ERROR, "ERROR", e.to_string())
        }
    }
}
