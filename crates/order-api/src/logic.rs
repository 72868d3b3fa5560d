//! The quick order (go-zero's `internal/logic/createLogic.go`) and the
//! status query.
//!
//! What changed from the Go demo, and why:
//!
//! * the coordinator address comes from the config, not a constant;
//! * the gid is made here ([`Gid::random`], dtm's format), not fetched with
//!   the demo's `MustGenGid` (a `NewGid` call that panics when the
//!   coordinator is down): a gid only has to be unique, and the round trip
//!   cost every order a call to the coordinator;
//! * `Submit` failing is a 503 answer, not the end of the process (the
//!   demo's `dtmimp.FatalIfError`);
//! * the saga is submitted with `wait_result`, so the caller learns the
//!   outcome: the demo always answered `{}`, even when the stock was short
//!   and the order had been rolled back.

use axum::http::StatusCode;
use dtm_client::{ClientError, Saga, TransStatus};
use dtm_protocol::{Gid, TraceContext};
use proto::order::{
    CREATE_HTTP, CREATE_PATH, CREATE_ROLLBACK_HTTP, CREATE_ROLLBACK_PATH, CreateBody, CreateReq,
};
use proto::stock::{
    DEDUCT_HTTP, DEDUCT_PATH, DEDUCT_ROLLBACK_HTTP, DEDUCT_ROLLBACK_PATH, DeductBody, DeductReq,
};

use prost::Message as _;
use tracing::Instrument;

use crate::config::TransMode;
use crate::error::ApiError;
use crate::svc::ServiceContext;
use crate::types::{BranchView, OrderStatus, QuickCreateReq, QuickCreateResp, SagaView};

/// Where the two steps' branches are: the gRPC prefixes from the
/// `RpcClientConf`s, and the HTTP bases when `OrderHttpUrl`/`StockHttpUrl`
/// are set. The saga and the workflow build their steps from it alike.
#[derive(Debug, Clone)]
pub struct BranchBases {
    /// `etcd://127.0.0.1:2379/order.rpc` (or an endpoint): order branch URL prefix.
    pub order_rpc: String,
    /// The same for stock-srv.
    pub stock_rpc: String,
    /// `OrderHttpUrl` without a trailing `/`: when set, the order step
    /// goes to order-srv's HTTP branches instead.
    pub order_http: Option<String>,
    /// `StockHttpUrl`, the same for the stock step.
    pub stock_http: Option<String>,
}

/// One step of the quick order: its action, its compensation, and the
/// payload both receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderStep {
    /// Forward branch URL.
    pub action: String,
    /// Undo branch URL.
    pub compensate: String,
    /// Protobuf (gRPC URLs) or JSON (HTTP URLs).
    pub payload: Vec<u8>,
}

impl BranchBases {
    /// Step 1 creates the order, step 2 deducts the stock. Each over gRPC
    /// (protobuf payload) or, when its HTTP URL is configured, over dtm's
    /// HTTP branch protocol (JSON payload; the paths and bodies order-srv
    /// and stock-srv serve, from `proto`). Writing a body of integers
    /// cannot fail; the error is passed on all the same.
    pub fn steps(&self, req: &QuickCreateReq) -> Result<[OrderStep; 2], serde_json::Error> {
        let create = CreateReq { user_id: req.user_id, goods_id: req.goods_id, num: req.num };
        let deduct = DeductReq { goods_id: req.goods_id, num: req.num };
        let (order, stock) = (&self.order_rpc, &self.stock_rpc);
        let order_step = match &self.order_http {
            Some(base) => OrderStep {
                action: format!("{base}{CREATE_HTTP}"),
                compensate: format!("{base}{CREATE_ROLLBACK_HTTP}"),
                payload: serde_json::to_vec(&CreateBody::from(&create))?,
            },
            None => OrderStep {
                action: format!("{order}{CREATE_PATH}"),
                compensate: format!("{order}{CREATE_ROLLBACK_PATH}"),
                payload: create.encode_to_vec(),
            },
        };
        let stock_step = match &self.stock_http {
            Some(base) => OrderStep {
                action: format!("{base}{DEDUCT_HTTP}"),
                compensate: format!("{base}{DEDUCT_ROLLBACK_HTTP}"),
                payload: serde_json::to_vec(&DeductBody::from(&deduct))?,
            },
            None => OrderStep {
                action: format!("{stock}{DEDUCT_PATH}"),
                compensate: format!("{stock}{DEDUCT_ROLLBACK_PATH}"),
                payload: deduct.encode_to_vec(),
            },
        };
        Ok([order_step, stock_step])
    }
}

/// Creates the order and deducts the stock in one saga; returns the HTTP
/// status with the answer: 200 succeed, 409 failed, 202 submitted.
///
/// `incoming` is the request's trace context: with tracing off it is sent
/// to the coordinator unchanged; with tracing on the submit is a client
/// span of its own and sends that span's context.
pub async fn quick_create(
    svc: &ServiceContext,
    req: QuickCreateReq,
    incoming: Option<&TraceContext>,
) -> Result<(StatusCode, QuickCreateResp), ApiError> {
    req.validate(svc.config.max_num)?;

    let gid = Gid::random();
    tracing::Span::current().record("gid", gid.as_str());

    if svc.config.trans_mode == TransMode::Workflow {
        return crate::workflow::quick_create(svc, &gid, &req).await;
    }
    let saga = svc
        .branches
        .steps(&req)
        .map_err(|err| ApiError::bad_body(err.to_string()))?
        .into_iter()
        .fold(Saga::new(gid.clone()), |saga, step| saga.add_raw(step.action, step.compensate, step.payload));
    // The coordinator call is a client span; the coordinator continues the
    // trace from it (and stores it, for the retries).
    let submit_span = tracing::info_span!(
        "dtm submit",
        otel.name = "dtm submit",
        otel.kind = "client",
        gid = %gid,
        dtm = %svc.dtm.address(),
        trace_id = tracing::field::Empty,
    );
    // A child of the request's span already: no parent to set, only the
    // trace id to record.
    service_kit::trace::continue_from(&submit_span, None);
    let trace = service_kit::trace::outgoing(&submit_span, incoming);
    let saga = saga.wait_result(true).trace_context(trace);

    let answer = |status: OrderStatus, reason: Option<String>| QuickCreateResp {
        gid: gid.as_str().to_string(),
        status,
        reason,
    };
    let submit = svc.dtm.submit(&saga).instrument(submit_span);
    let started = std::time::Instant::now();
    let submitted = tokio::time::timeout(svc.config.submit_wait(), submit).await;
    svc.metrics.record_dtm_call("submit", submit_outcome(&submitted), started.elapsed());
    match submitted {
        Ok(Ok(())) => {
            tracing::info!("saga succeeded");
            Ok((StatusCode::OK, answer(OrderStatus::Succeed, None)))
        }
        Ok(Err(ClientError::Failure(reason))) => {
            tracing::info!(%reason, "saga rolled back");
            Ok((StatusCode::CONFLICT, answer(OrderStatus::Failed, Some(failure_reason(&reason)))))
        }
        Ok(Err(ClientError::Ongoing)) => {
            tracing::info!("saga still running");
            Ok((StatusCode::ACCEPTED, answer(OrderStatus::Submitted, None)))
        }
        Ok(Err(ClientError::Unavailable(cause) | ClientError::Other(cause))) => {
            // The submit may or may not have been stored: no answer, or an
            // error after the store (a coordinator killed mid-call, its
            // database restarting during a wait_result pass). Only the
            // coordinator knows; a 502 here would make clients order twice.
            tracing::warn!(%cause, "outcome of the submit unknown");
            settle_unknown(svc, &gid).await
        }
        Err(_elapsed) => settle_unknown(svc, &gid).await,
        Ok(Err(err)) => {
            tracing::error!(%err, "the coordinator refused the saga");
            Err(ApiError::BadGateway {
                gid: Some(gid.as_str().to_string()),
                message: "the coordinator refused the saga".into(),
            })
        }
    }
}

/// The `outcome` label of a submit in `dtm_client_requests_total`.
fn submit_outcome(submitted: &Result<Result<(), ClientError>, tokio::time::error::Elapsed>) -> &'static str {
    match submitted {
        Ok(Ok(())) => "succeed",
        Ok(Err(ClientError::Failure(_))) => "failed",
        Ok(Err(ClientError::Ongoing)) => "ongoing",
        Ok(Err(ClientError::Unavailable(_))) => "unavailable",
        Ok(Err(_)) => "error",
        Err(_elapsed) => "timeout",
    }
}

/// The submit's outcome is unknown (no answer in time): ask the coordinator
/// whether it holds the saga, and report its state if it does. Otherwise the
/// answer is 503 *with the gid*: the saga may still be stored a moment
/// later, so the client should look it up before ordering again, or it may
/// order twice.
pub(crate) async fn settle_unknown(
    svc: &ServiceContext,
    gid: &Gid,
) -> Result<(StatusCode, QuickCreateResp), ApiError> {
    let resp = |status| QuickCreateResp { gid: gid.as_str().to_string(), status, reason: None };
    match query(svc, gid).await {
        Ok(view) => match view.status.as_str() {
            "succeed" => Ok((StatusCode::OK, resp(OrderStatus::Succeed))),
            "failed" => Ok((
                StatusCode::CONFLICT,
                QuickCreateResp {
                    reason: Some(failure_reason(view.rollback_reason.as_deref().unwrap_or_default())),
                    ..resp(OrderStatus::Failed)
                },
            )),
            _ => {
                tracing::info!(status = %view.status, "saga still running after SubmitWait");
                Ok((StatusCode::ACCEPTED, resp(OrderStatus::Submitted)))
            }
        },
        Err(err) => {
            tracing::warn!(%err, "outcome of the submit unknown");
            Err(ApiError::Unavailable {
                gid: Some(gid.as_str().to_string()),
                message: format!(
                    "no answer from the coordinator; check GET /order/status/{gid} before retrying"
                ),
            })
        }
    }
}

/// The saga `gid` and its branches, from the coordinator's query API.
pub async fn query(svc: &ServiceContext, gid: &Gid) -> Result<SagaView, ApiError> {
    let Some(dtm) = &svc.dtm_query else {
        return Err(ApiError::Unavailable {
            gid: Some(gid.as_str().to_string()),
            message: "no DtmHttpServer configured: the coordinator cannot be queried".into(),
        });
    };
    let started = std::time::Instant::now();
    let result = dtm.query(gid).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(ClientError::Unavailable(_)) => "unavailable",
        Err(_) => "error",
    };
    svc.metrics.record_dtm_call("query", outcome, started.elapsed());
    let result = result.map_err(|err| {
        tracing::warn!(%err, "query failed");
        unavailable(Some(gid), &err)
    })?;
    let Some(transaction) = result.transaction else {
        return Err(ApiError::NotFound(format!("no saga with gid {gid}")));
    };
    Ok(SagaView {
        gid: transaction.gid,
        status: status_name(transaction.status).to_string(),
        rollback_reason: transaction.rollback_reason.filter(|r| !r.is_empty()),
        branches: result
            .branches
            .into_iter()
            .map(|b| BranchView {
                branch_id: b.branch_id,
                op: b.op,
                status: format!("{:?}", b.status).to_lowercase(),
                url: b.url,
            })
            .collect(),
    })
}

fn status_name(status: TransStatus) -> &'static str {
    match status {
        TransStatus::Prepared => "prepared",
        TransStatus::Submitted => "submitted",
        TransStatus::Aborting => "aborting",
        TransStatus::Succeed => "succeed",
        TransStatus::Failed => "failed",
    }
}

/// What the client is told about a rollback. The stock branch can only say
/// `FAILURE` (dtm's protocol has no room for details), and the only business
/// failure in this saga is the stock's.
pub(crate) fn failure_reason(coordinator_says: &str) -> String {
    if coordinator_says.trim().is_empty() || coordinator_says.contains(dtm_protocol::FAILURE) {
        "insufficient stock or unknown goods".to_string()
    } else {
        coordinator_says.to_string()
    }
}

fn unavailable(gid: Option<&Gid>, err: &ClientError) -> ApiError {
    match err {
        ClientError::Unavailable(_) => ApiError::Unavailable {
            gid: gid.map(|g| g.as_str().to_string()),
            message: "the coordinator is unavailable; try again later".into(),
        },
        _ => ApiError::BadGateway {
            gid: gid.map(|g| g.as_str().to_string()),
            message: "unexpected answer from the coordinator".into(),
        },
    }
}
