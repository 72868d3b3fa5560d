//! What `prepareWorkflow` answers: the workflow as stored and the progress
//! it has recorded, read from either API (dtm's `DtmProgressesReply`; over
//! HTTP its JSON, which dtm's Go SDK reads with protojson).

use base64::Engine as _;
use dtm_protocol::{BranchId, BranchStatus, GlobalStatus, Op};
use proto::dtmgimp::DtmProgressesReply;
use serde::Deserialize;

use crate::ClientError;

/// One recorded step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The step's branch (`01`, `02`, …).
    pub branch_id: BranchId,
    /// `action`, `commit` or `rollback`.
    pub op: Op,
    /// `succeed` or `failed`.
    pub status: BranchStatus,
    /// The step's result, or its failure's message.
    pub data: Vec<u8>,
}

/// A workflow as `prepareWorkflow` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedWorkflow {
    /// `prepared` while it runs; `succeed`/`failed` once submitted.
    pub status: GlobalStatus,
    /// Why it failed.
    pub rollback_reason: String,
    /// What it returned (decoded from the stored base64).
    pub result: Vec<u8>,
    /// The steps recorded so far, oldest first.
    pub progresses: Vec<Progress>,
}

fn unreadable(what: impl std::fmt::Display) -> ClientError {
    ClientError::Other(format!("unreadable prepareWorkflow reply: {what}"))
}

/// dtm stores a workflow's result as base64 text.
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, ClientError> {
    base64::engine::general_purpose::STANDARD.decode(text.as_bytes()).map_err(unreadable)
}

fn progress(branch_id: &str, op: &str, status: &str, data: Vec<u8>) -> Result<Progress, ClientError> {
    Ok(Progress {
        branch_id: BranchId::new(branch_id).map_err(unreadable)?,
        op: op.parse().map_err(unreadable)?,
        status: status.parse().map_err(unreadable)?,
        data,
    })
}

impl PreparedWorkflow {
    /// From the gRPC reply.
    pub fn from_grpc(reply: DtmProgressesReply) -> Result<PreparedWorkflow, ClientError> {
        let t = reply.transaction.ok_or_else(|| unreadable("no transaction"))?;
        Ok(PreparedWorkflow {
            status: t.status.parse().map_err(unreadable)?,
            rollback_reason: t.rollback_reason,
            result: decode_base64(&t.result)?,
            progresses: reply
                .progresses
                .into_iter()
                .map(|p| progress(&p.branch_id, &p.op, &p.status, p.bin_data))
                .collect::<Result<_, _>>()?,
        })
    }

    /// From the HTTP reply's JSON (`{"transaction":{…},"progresses":[…]}`).
    pub fn from_http_json(body: &str) -> Result<PreparedWorkflow, ClientError> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Transaction {
            status: String,
            rollback_reason: Option<String>,
            result: Option<String>,
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Step {
            status: String,
            bin_data: Option<String>,
            branch_id: String,
            op: String,
        }
        #[derive(Deserialize)]
        struct Reply {
            transaction: Transaction,
            #[serde(default)]
            progresses: Option<Vec<Step>>,
        }
        let reply: Reply = serde_json::from_str(body).map_err(unreadable)?;
        let t = reply.transaction;
        Ok(PreparedWorkflow {
            status: t.status.parse().map_err(unreadable)?,
            rollback_reason: t.rollback_reason.unwrap_or_default(),
            result: decode_base64(t.result.as_deref().unwrap_or_default())?,
            progresses: reply
                .progresses
                .unwrap_or_default()
                .into_iter()
                .map(|p| {
                    let data = decode_base64(p.bin_data.as_deref().unwrap_or_default())?;
                    progress(&p.branch_id, &p.op, &p.status, data)
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_reply_is_read_like_protojson_reads_it() {
        let body = r#"{"transaction":{"id":7,"gid":"w1","status":"prepared","result":"","rollback_reason":"",
            "options":"{}"},"progresses":[{"id":1,"gid":"w1","url":"","bin_data":"b2s=","branch_id":"01",
            "op":"action","status":"succeed"},{"bin_data":"bm8=","branch_id":"02","op":"action","status":"failed"}]}"#;
        let w = PreparedWorkflow::from_http_json(body).unwrap();
        assert_eq!(w.status, GlobalStatus::Prepared);
        assert_eq!(w.progresses.len(), 2);
        assert_eq!((w.progresses[0].branch_id.as_str(), w.progresses[0].data.as_slice()), ("01", &b"ok"[..]));
        assert_eq!(w.progresses[1].status, BranchStatus::Failed);
        let done = PreparedWorkflow::from_http_json(
            r#"{"transaction":{"status":"succeed","result":"aGk="},"progresses":null}"#,
        )
        .unwrap();
        assert_eq!((done.status, done.result.as_slice()), (GlobalStatus::Succeed, &b"hi"[..]));
        assert!(PreparedWorkflow::from_http_json(r#"{"transaction":{"status":"nope"}}"#).is_err());
    }
}
