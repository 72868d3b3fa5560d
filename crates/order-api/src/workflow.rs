//! The quick order as a dtm workflow (`TransMode: workflow`), beside the
//! saga of [`crate::logic`]: the same two steps on the same branches, but
//! order-api calls them itself, as ordinary async code:
//!
//! ```text
//! step 01: order-srv create   (op action)   undone by createRollback (op rollback)
//! step 02: stock-srv deduct   (op action)   undone by deductRollback (op rollback)
//! ```
//!
//! The coordinator records each step's outcome (`dtm_client::workflow`).
//! If the stock answers FAILURE, the rollbacks run newest first (the
//! stock's a null compensation for its barrier, the order's marks the
//! order rolled back) and the workflow is `failed`: 409, as the saga. If a
//! step cannot be reached (a service down), the run stops where it is and
//! the answer is 202; the coordinator calls order-api back at
//! [`CALLBACK_PATH`] until a run finishes the order, replaying the steps
//! already recorded instead of calling them again.

use axum::http::StatusCode;
use dtm_client::workflow::Workflows;
use dtm_client::{ClientError, DtmClient, TransOptions};
use dtm_protocol::Gid;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::ApiError;
use crate::logic::{BranchBases, failure_reason, settle_unknown};
use crate::svc::ServiceContext;
use crate::types::{OrderStatus, QuickCreateReq, QuickCreateResp};

/// The name the workflow is registered and resumed under.
pub const NAME: &str = "quickOrder";

/// Where order-api serves the coordinator's callback.
pub const CALLBACK_PATH: &str = "/api/workflow/resume";

/// The workflow's input, as stored with it (`custom_data`) and given back
/// on every resume.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Input {
    user_id: i64,
    goods_id: i64,
    num: i64,
}

/// The registry with the quick order registered; its callback URL is set
/// once the port is bound ([`callback_url`]).
pub fn workflows(dtm: &DtmClient, branches: &BranchBases, config: &Config) -> Workflows {
    let workflows = Workflows::new(dtm.clone(), config.workflow_callback_url.clone().unwrap_or_default());
    // A resume is one callback call running both steps: give it the
    // request deadline, and come back after a second if it was cut.
    workflows.set_options(TransOptions {
        request_timeout: Some(config.request_timeout()),
        ..TransOptions::default()
    });
    let branches = branches.clone();
    workflows.register(NAME, move |wf, input| {
        let branches = branches.clone();
        async move {
            let input: Input = serde_json::from_slice(&input)
                .map_err(|e| ClientError::InvalidArgument(format!("stored workflow input: {e}")))?;
            let req = QuickCreateReq { user_id: input.user_id, goods_id: input.goods_id, num: input.num };
            let steps = branches.steps(&req).map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
            for step in steps {
                wf.saga_step(&step.action, &step.compensate, step.payload).await?;
            }
            Ok(Vec::new())
        }
    });
    workflows
}

/// The callback URL when `WorkflowCallbackUrl` is not set: this server's
/// address (`127.0.0.1` for a wildcard `Host`).
pub fn callback_url(config: &Config, local: std::net::SocketAddr) -> String {
    if let Some(url) = &config.workflow_callback_url {
        return url.clone();
    }
    let host = if local.ip().is_unspecified() { "127.0.0.1".to_string() } else { local.ip().to_string() };
    format!("http://{host}:{}{CALLBACK_PATH}", local.port())
}

/// `quickCreate` in workflow mode: the same answers as the saga's.
pub async fn quick_create(
    svc: &ServiceContext,
    gid: &Gid,
    req: &QuickCreateReq,
) -> Result<(StatusCode, QuickCreateResp), ApiError> {
    let Some(workflows) = &svc.workflows else {
        return Err(ApiError::BadGateway { gid: None, message: "workflow mode is not set up".into() });
    };
    let input = serde_json::to_vec(&Input { user_id: req.user_id, goods_id: req.goods_id, num: req.num })
        .map_err(|e| ApiError::bad_body(e.to_string()))?;
    let answer = |status: OrderStatus, reason: Option<String>| QuickCreateResp {
        gid: gid.as_str().to_string(),
        status,
        reason,
    };
    let started = std::time::Instant::now();
    let run = tokio::time::timeout(svc.config.submit_wait(), workflows.execute(NAME, gid, &input)).await;
    let outcome = match &run {
        Ok(Ok(_)) => "succeed",
        Ok(Err(ClientError::Failure(_))) => "failed",
        Ok(Err(_)) => "error",
        Err(_) => "timeout",
    };
    svc.metrics.record_dtm_call("workflow", outcome, started.elapsed());
    match run {
        Ok(Ok(_)) => {
            tracing::info!("workflow succeeded");
            Ok((StatusCode::OK, answer(OrderStatus::Succeed, None)))
        }
        Ok(Err(ClientError::Failure(reason))) => {
            tracing::info!(%reason, "workflow rolled back");
            Ok((StatusCode::CONFLICT, answer(OrderStatus::Failed, Some(failure_reason(&reason)))))
        }
        Ok(Err(err)) => {
            // Interrupted (a branch or the coordinator unreachable): if the
            // workflow is stored, the coordinator resumes it.
            tracing::warn!(%err, "workflow interrupted; the coordinator resumes it");
            settle_unknown(svc, gid).await
        }
        Err(_elapsed) => settle_unknown(svc, gid).await,
    }
}
