//! dtm's gRPC API (`/dtmgimp.Dtm/…`, tonic), as dtm's gRPC SDKs call it.
//!
//! `NewGid`, `Submit`, `Prepare`, `Abort`, `RegisterBranch` and the topic
//! RPCs (`Subscribe`, `Unsubscribe`, `DeleteTopic`: [`crate::topics`]) are
//! implemented; `PrepareWorkflow` answers `Unimplemented` with a message
//! saying so.
//!
//! Mapping of a `DtmRequest` (dtm's `dtmgpb/dtmgimp.proto`): `Steps` is a JSON *string* holding the
//! same array of maps as the HTTP API; `BinPayloads` are raw bytes (the
//! protobuf-encoded branch requests), passed through untouched;
//! `CustomedData` is `custom_data`; the protocol is forced to `grpc`.
//!
//! Errors, as dtm's `DtmError2GrpcError`: FAILURE and status conflicts →
//! `Aborted`, ONGOING → `FailedPrecondition`, malformed input →
//! `InvalidArgument` (dtm: `Unknown`), anything else → `Internal` with a
//! generic message (the cause is logged).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use proto::dtmgimp::dtm_server::Dtm;
use proto::dtmgimp::{DtmBranchRequest, DtmGidReply, DtmProgressesReply, DtmRequest, DtmTopicRequest};
use tonic::service::Interceptor;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{Outcome, bearer_matches};
use crate::config::Secret;
use crate::engine::{Engine, EngineError};
use crate::metrics::{ApiKind, Metrics};
use crate::model::{Protocol, RegisterBranchRequest, TransRequest, TransRequestInput};
use crate::topics::{Subscription, topic_of};

/// The `dtmgimp.Dtm` service.
#[derive(Clone)]
pub struct DtmService {
    /// The transaction engine every RPC delegates to.
    engine: Engine,
    /// Request counts and latencies (`type="grpc"`).
    metrics: Arc<Metrics>,
}

impl DtmService {
    /// A service over `engine`, reporting to `metrics`.
    pub fn new(engine: Engine, metrics: Arc<Metrics>) -> DtmService {
        DtmService { engine, metrics }
    }

    /// Runs one RPC body, records its metrics, and maps its error.
    async fn serve<T>(
        &self,
        api: &'static str,
        body: impl Future<Output = Result<T, EngineError>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = body.await.map_err(|e| to_status(Outcome::from_engine(e, api)));
        self.metrics.api_call(ApiKind::Grpc, api, result.is_ok(), started.elapsed());
        result.map(Response::new)
    }
}

/// dtm's gRPC error mapping.
pub fn to_status(outcome: Outcome) -> Status {
    match outcome {
        Outcome::Invalid { field, message } => {
            Status::invalid_argument(format!("invalid {field}: {message}"))
        }
        Outcome::Failure(message) => Status::aborted(message),
        Outcome::Ongoing(message) => Status::failed_precondition(message),
        Outcome::Error(message) => Status::internal(message),
    }
}

/// Turns a `DtmRequest` into a validated [`TransRequest`].
pub fn trans_request(request: DtmRequest) -> Result<TransRequest, EngineError> {
    let steps: Vec<BTreeMap<String, String>> = if request.steps.is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&request.steps)
            .map_err(|e| EngineError::invalid("Steps", format!("must be a JSON array of string maps: {e}")))?
    };
    let options = request.trans_options.unwrap_or_default();
    let input = TransRequestInput {
        gid: request.gid,
        trans_type: request.trans_type,
        steps,
        payloads: request.bin_payloads,
        custom_data: request.customed_data,
        query_prepared: request.query_prepared,
        protocol: Protocol::Grpc.as_str().to_string(),
        wait_result: options.wait_result,
        timeout_to_fail: options.timeout_to_fail,
        request_timeout: options.request_timeout,
        retry_interval: options.retry_interval,
        branch_headers: options.branch_headers.into_iter().collect(),
        retry_limit: options.retry_limit,
        // There is no `Concurrent` option in dtm's gRPC API.
        concurrent: false,
        rollback_reason: request.rollback_reason,
        req_extra: request.req_extra.into_iter().collect(),
    };
    TransRequest::from_input(input).map_err(EngineError::from)
}

/// The server span of `api` under the request's `traceparent`, and the
/// validated request carrying the context to store (`crate::trace`).
fn traced(
    api: &'static str,
    request: Request<DtmRequest>,
) -> (tracing::Span, Result<TransRequest, EngineError>) {
    let incoming = dtm_protocol::TraceContext::from_metadata(request.metadata());
    let message = request.into_inner();
    let (span, stored) = crate::trace::api_span(api, &message.gid, incoming.as_ref());
    let request = trans_request(message).map(|mut request| {
        request.options.trace = stored;
        request
    });
    (span, request)
}

/// Turns a `DtmBranchRequest` into a validated [`RegisterBranchRequest`]:
/// `Data` carries `confirm`/`cancel` (TCC) or `url` (XA), `BusiPayload`
/// becomes the branch's `bin_data`; `Op` is unused, as in dtm.
pub fn register_request(request: DtmBranchRequest) -> Result<RegisterBranchRequest, EngineError> {
    let mut map: BTreeMap<String, String> = request.data.into_iter().collect();
    map.insert("gid".into(), request.gid);
    map.insert("trans_type".into(), request.trans_type);
    map.insert("branch_id".into(), request.branch_id);
    RegisterBranchRequest::from_map(&map, Some(request.busi_payload)).map_err(EngineError::from)
}

#[tonic::async_trait]
impl Dtm for DtmService {
    async fn new_gid(&self, _request: Request<()>) -> Result<Response<DtmGidReply>, Status> {
        self.serve("newgid", async { Ok(DtmGidReply { gid: self.engine.new_gid().as_str().to_string() }) })
            .await
    }

    async fn submit(&self, request: Request<DtmRequest>) -> Result<Response<()>, Status> {
        let (span, request) = traced("submit", request);
        self.serve("submit", async { self.engine.submit(request?).await }.instrument(span)).await
    }

    async fn prepare(&self, request: Request<DtmRequest>) -> Result<Response<()>, Status> {
        let (span, request) = traced("prepare", request);
        self.serve("prepare", async { self.engine.prepare(request?).await }.instrument(span)).await
    }

    async fn abort(&self, request: Request<DtmRequest>) -> Result<Response<()>, Status> {
        let (span, request) = traced("abort", request);
        self.serve("abort", async { self.engine.abort(request?).await }.instrument(span)).await
    }

    async fn register_branch(&self, request: Request<DtmBranchRequest>) -> Result<Response<()>, Status> {
        self.serve("registerbranch", async {
            self.engine.register_branch(register_request(request.into_inner())?).await
        })
        .await
    }

    async fn prepare_workflow(
        &self,
        _request: Request<DtmRequest>,
    ) -> Result<Response<DtmProgressesReply>, Status> {
        Err(Status::unimplemented("workflow transactions are not supported by this coordinator"))
    }

    async fn subscribe(&self, request: Request<DtmTopicRequest>) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        self.serve("subscribe", async {
            self.engine.subscribe(Subscription::from_input(&r.topic, &r.url, &r.remark)?).await
        })
        .await
    }

    async fn unsubscribe(&self, request: Request<DtmTopicRequest>) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        self.serve("unsubscribe", async {
            self.engine.unsubscribe(&topic_of("Topic", &r.topic)?, &r.url).await
        })
        .await
    }

    async fn delete_topic(&self, request: Request<DtmTopicRequest>) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        self.serve("deletetopic", async { self.engine.delete_topic(&topic_of("Topic", &r.topic)?).await })
            .await
    }
}

/// Requires `authorization: Bearer <token>` metadata when a token is
/// configured; lets everything through otherwise.
#[derive(Clone, Debug, Default)]
pub struct BearerInterceptor {
    /// The expected token, `None` = authentication off.
    token: Option<Secret>,
}

impl BearerInterceptor {
    /// An interceptor checking `token` (if any).
    pub fn new(token: Option<Secret>) -> BearerInterceptor {
        BearerInterceptor { token }
    }
}

impl Interceptor for BearerInterceptor {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else { return Ok(request) };
        let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        if bearer_matches(token.expose(), header) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("missing or invalid bearer token (authorization: Bearer <token>)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use proto::dtmgimp::DtmTransOptions;

    use super::*;

    #[test]
    fn steps_arrive_as_a_json_string_and_payloads_as_bytes() {
        let request = DtmRequest {
            gid: "g1".into(),
            trans_type: "saga".into(),
            steps: r#"[{"action":"localhost:9001/pb.order/create","compensate":"localhost:9001/pb.order/createRollback"}]"#
                .into(),
            bin_payloads: vec![vec![0x08, 0x01]],
            trans_options: Some(DtmTransOptions { wait_result: true, ..Default::default() }),
            ..Default::default()
        };
        let trans = trans_request(request).unwrap();
        assert_eq!(trans.protocol, Protocol::Grpc);
        assert_eq!(trans.payloads, vec![vec![0x08, 0x01]]);
        assert!(trans.options.wait_result);

        let bad = DtmRequest {
            gid: "g".into(),
            trans_type: "saga".into(),
            steps: "{".into(),
            ..Default::default()
        };
        let status = to_status(Outcome::from_engine(trans_request(bad).unwrap_err(), "submit"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("Steps"));
    }

    #[test]
    fn engine_errors_map_to_dtms_codes() {
        let code = |e| to_status(Outcome::from_engine(e, "submit")).code();
        assert_eq!(code(EngineError::Failure("x".into())), tonic::Code::Aborted);
        assert_eq!(code(EngineError::Conflict("x".into())), tonic::Code::Aborted);
        assert_eq!(code(EngineError::Ongoing), tonic::Code::FailedPrecondition);
        assert_eq!(code(EngineError::invalid("gid", "empty")), tonic::Code::InvalidArgument);
    }

    #[test]
    fn the_interceptor_checks_the_token_only_when_configured() {
        let mut open = BearerInterceptor::new(None);
        assert!(open.call(Request::new(())).is_ok());
        let mut closed = BearerInterceptor::new(Some(Secret::new("t")));
        assert_eq!(closed.call(Request::new(())).unwrap_err().code(), tonic::Code::Unauthenticated);
        let mut ok = Request::new(());
        ok.metadata_mut().insert("authorization", "Bearer t".parse().unwrap());
        assert!(closed.call(ok).is_ok());
    }
}
