//! The one call whose `op` is not one of dtm's ops: a workflow's callback
//! (dtm's `dtmsvr/trans_type_workflow.go`). The coordinator resumes an
//! unfinished workflow by calling the application back with branch `00`
//! and `op` = the workflow's *name*, so that the SDK knows which function
//! to run again:
//!
//! * HTTP: `POST <callback>?gid=…&trans_type=workflow&branch_id=00&op=<name>`,
//!   the workflow's input as the body;
//! * gRPC: `<host>/workflow.Workflow/Execute` with `dtm-op: <name>`, the
//!   input wrapped in `workflow.WorkflowData{Data}` (dtm's
//!   `client/workflow/wfpb/wf.proto`).

use std::collections::BTreeMap;

use dtm_protocol::BranchResult;
use tracing::Instrument;

use super::{BranchCaller, BranchRequest};
use crate::model::BranchTarget;

/// The gRPC metadata key of the op, overridden with the workflow's name.
const OP_METADATA: &str = "dtm-op";

/// `workflow.WorkflowData{Data: data}` in protobuf: field 1, bytes.
pub fn workflow_data(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 11);
    out.push(0x0a); // field 1, wire type 2 (length-delimited)
    let mut len = data.len() as u64;
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(data);
    out
}

impl BranchCaller {
    /// Calls a workflow's callback: `request` as for any branch (its
    /// `call.op` is a placeholder), with `name` sent as the op. The
    /// request's payload is the raw input; over gRPC it is wrapped in
    /// `WorkflowData` here. Never fails: transport problems are `Retry`.
    pub async fn call_workflow(&self, request: &BranchRequest<'_>, name: &str) -> BranchResult {
        let (span, traceparent) = crate::trace::branch_span(
            &request.call,
            request.url.as_str(),
            match request.url.target() {
                BranchTarget::Grpc(_) => "grpc",
                _ => "http",
            },
            request.trace,
        );
        let result = match request.url.target() {
            BranchTarget::Empty => BranchResult::Success,
            BranchTarget::Http(url) => {
                let mut url = url.clone();
                let pairs: Vec<(&str, &str)> = request
                    .call
                    .query_pairs()
                    .into_iter()
                    .map(|(key, value)| if key == "op" { (key, name) } else { (key, value) })
                    .collect();
                url.query_pairs_mut().extend_pairs(pairs);
                self.send_http(url, request, traceparent.as_ref()).instrument(span.clone()).await
            }
            BranchTarget::Grpc(target) => {
                // Headers are written after the call's metadata and replace
                // a pair of the same key: `dtm-op` becomes the name.
                let mut headers: BTreeMap<String, String> = request.headers.clone();
                headers.insert(OP_METADATA.to_string(), name.to_string());
                let wrapped = workflow_data(request.payload);
                let grpc = BranchRequest { payload: &wrapped, headers: &headers, ..request.clone() };
                self.call_grpc(target, &grpc, traceparent.as_ref()).instrument(span.clone()).await
            }
        };
        super::record_outcome(&span, &result);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_data_is_field_one_bytes() {
        assert_eq!(workflow_data(b""), vec![0x0a, 0x00]);
        assert_eq!(workflow_data(b"ab"), vec![0x0a, 0x02, b'a', b'b']);
        let long = vec![7u8; 300];
        let encoded = workflow_data(&long);
        assert_eq!(&encoded[..3], &[0x0a, 0xac, 0x02]);
        assert_eq!(encoded.len(), 303);
    }
}
