//! The workflow callback over gRPC: dtm's `workflow.Workflow/Execute`
//! (`client/workflow/wfpb/wf.proto`), for applications that serve gRPC
//! rather than HTTP. The coordinator sends `WorkflowData{Data: input}` with
//! `dtm-gid` and `dtm-op` = the workflow's name; the answer is an empty
//! message, or dtm's status codes: `Aborted` never (a failed workflow is
//! finished, OK), `FailedPrecondition` while the gid runs here,
//! `InvalidArgument` for an unknown name, `Unavailable` when the run was
//! interrupted (the coordinator calls again later).

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use dtm_protocol::{Gid, RawCodec};
use prost::Message as _;
use tonic::codegen::{BoxFuture, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::Workflows;
use crate::ClientError;

/// `workflow.WorkflowData`.
#[derive(Clone, PartialEq, prost::Message)]
struct WorkflowData {
    /// The workflow's input.
    #[prost(bytes = "vec", tag = "1")]
    data: Vec<u8>,
}

/// The `workflow.Workflow` service; add it to a tonic server
/// (`Server::builder().add_service(workflows.grpc_service())`) and give the
/// coordinator `host:port/workflow.Workflow/Execute` as the callback.
#[derive(Clone, Debug)]
pub struct WorkflowService {
    workflows: Workflows,
}

impl Workflows {
    /// The gRPC callback service ([`WorkflowService`]).
    pub fn grpc_service(&self) -> WorkflowService {
        WorkflowService { workflows: self.clone() }
    }
}

impl NamedService for WorkflowService {
    const NAME: &'static str = "workflow.Workflow";
}

/// `Execute`: decodes the input, runs the workflow again.
struct Execute(Workflows);

impl UnaryService<Bytes> for Execute {
    type Response = Bytes;
    type Future = BoxFuture<Response<Bytes>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let workflows = self.0.clone();
        Box::pin(async move {
            let value =
                |key: &str| request.metadata().get(key).and_then(|v| v.to_str().ok()).map(str::to_string);
            let gid = value("dtm-gid")
                .and_then(|g| Gid::new(g).ok())
                .ok_or_else(|| Status::invalid_argument("missing or invalid dtm-gid"))?;
            let name = value("dtm-op")
                .ok_or_else(|| Status::invalid_argument("missing dtm-op (the workflow's name)"))?;
            let input = WorkflowData::decode(request.get_ref().as_ref())
                .map_err(|e| Status::invalid_argument(format!("not a WorkflowData: {e}")))?;
            match workflows.execute(&name, &gid, &input.data).await {
                Ok(_) | Err(ClientError::Failure(_)) => Ok(Response::new(Bytes::new())),
                Err(ClientError::Ongoing) => Err(Status::failed_precondition(format!("{gid} is running"))),
                Err(ClientError::InvalidArgument(m)) => Err(Status::invalid_argument(m)),
                Err(e) => {
                    tracing::warn!(%gid, workflow = %name, error = %e, "resumed workflow interrupted again");
                    Err(Status::unavailable(e.to_string()))
                }
            }
        })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for WorkflowService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let workflows = self.workflows.clone();
        Box::pin(async move {
            if request.uri().path() != "/workflow.Workflow/Execute" {
                return Ok(Status::unimplemented("workflow.Workflow has Execute only").into_http());
            }
            Ok(Grpc::new(RawCodec).unary(Execute(workflows), request).await)
        })
    }
}
