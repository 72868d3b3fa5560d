//! What every global transaction sends to dtm, whatever its type.
//!
//! dtm's SDKs build one `TransBase` (gid, type, steps, payloads, options)
//! and send it either as a `DtmRequest` protobuf (gRPC) or as a JSON body
//! (HTTP). [`TransRequest`] is that common shape; [`TransRequest::to_grpc`]
//! and [`TransRequest::to_http_json`] produce the two encodings exactly as
//! dtm's Go SDK does (`dtmgimp.GetDtmRequest`, `json.Marshal(TransBase)`).
//! Saga, TCC and 2-phase messages all build one; TCC also sends
//! [`RegisterBranch`].

use std::collections::BTreeMap;
use std::time::Duration;

use dtm_protocol::{BranchId, Gid, TransType};
use proto::dtmgimp::{DtmBranchRequest, DtmRequest, DtmTransOptions};
use serde::Serialize;

use crate::ClientError;

/// Per-transaction options (dtm's `TransOptions`). Durations are sent in
/// whole seconds, rounded up (dtm's unit); `None`/zero means "server default".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransOptions {
    /// Make submit return only after dtm's first processing pass, with its
    /// outcome (FAILURE if the saga was rolled back). The article's order
    /// API uses it to answer the user synchronously.
    pub wait_result: bool,
    /// Give up (and compensate) a transaction still unfinished after this.
    /// For a saga this is the only timeout there is.
    pub timeout_to_fail: Option<Duration>,
    /// Deadline of each branch call dtm makes (server default 3 s).
    pub request_timeout: Option<Duration>,
    /// Base retry interval after a transient branch error (server default 10 s).
    pub retry_interval: Option<Duration>,
    /// Extra headers (HTTP) or metadata (gRPC) dtm adds to every branch call.
    pub branch_headers: BTreeMap<String, String>,
    /// Saga only: fail after this many retries of one branch (0 = forever).
    pub retry_limit: Option<u32>,
}

/// Whole seconds, rounded up, 0 for `None`.
fn seconds(d: Option<Duration>) -> i64 {
    d.map_or(0, |d| {
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        i64::try_from(secs).unwrap_or(i64::MAX)
    })
}

/// A transaction as sent to `submit` (and later `prepare`/`abort`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransRequest {
    /// Global transaction id.
    pub gid: Gid,
    /// `saga`, `msg`, `tcc`, …
    pub trans_type: TransType,
    /// One map per step: `{"action": url, "compensate": url}` for a saga.
    pub steps: Vec<BTreeMap<String, String>>,
    /// Request body of each step, index-aligned with `steps`: protobuf bytes
    /// (gRPC) or JSON text (HTTP).
    pub payloads: Vec<Vec<u8>>,
    /// Type-specific JSON (saga: `{"concurrent":true,"orders":{…}}`).
    pub custom_data: String,
    /// The options above.
    pub options: TransOptions,
    /// Saga/msg concurrency flag as sent in the HTTP body (dtm's SDK always
    /// sends `concurrent`, even `false`).
    pub concurrent: bool,
    /// 2-phase message check-back URL (empty for a saga).
    pub query_prepared: String,
    /// Reason recorded by `abort` (empty otherwise).
    pub rollback_reason: String,
    /// A workflow's submit: `status`, `rollback_reason`, `result` (dtm's `ReqExtra`).
    pub req_extra: BTreeMap<String, String>,
    /// The caller's W3C trace context, sent beside the request as the
    /// `traceparent`/`tracestate` header (HTTP) or metadata (gRPC), not in
    /// dtm's body: the coordinator stores it with the transaction and
    /// continues the trace on every branch call, retries included.
    pub trace: Option<dtm_protocol::TraceContext>,
}

/// dtm's JSON body, field for field and in Go's field order.
#[derive(Serialize)]
struct HttpBody<'a> {
    gid: &'a str,
    trans_type: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    custom_data: &'a str,
    #[serde(skip_serializing_if = "is_false")]
    wait_result: bool,
    #[serde(skip_serializing_if = "is_zero")]
    timeout_to_fail: i64,
    #[serde(skip_serializing_if = "is_zero")]
    request_timeout: i64,
    #[serde(skip_serializing_if = "is_zero")]
    retry_interval: i64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    branch_headers: &'a BTreeMap<String, String>,
    concurrent: bool,
    #[serde(skip_serializing_if = "is_zero")]
    retry_limit: i64,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    steps: &'a [BTreeMap<String, String>],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    payloads: Vec<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    query_prepared: &'a str,
    protocol: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    rollback_reason: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    req_extra: &'a BTreeMap<String, String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl TransRequest {
    /// A request with no steps and default options.
    pub fn new(gid: Gid, trans_type: TransType) -> TransRequest {
        TransRequest {
            gid,
            trans_type,
            steps: Vec::new(),
            payloads: Vec::new(),
            custom_data: String::new(),
            options: TransOptions::default(),
            concurrent: false,
            query_prepared: String::new(),
            rollback_reason: String::new(),
            req_extra: BTreeMap::new(),
            trace: None,
        }
    }

    /// The gRPC message (`dtmgimp.GetDtmRequest`): `Steps` is the steps as
    /// a JSON string, `BinPayloads` the raw payloads.
    pub fn to_grpc(&self) -> DtmRequest {
        let o = &self.options;
        DtmRequest {
            gid: self.gid.to_string(),
            trans_type: self.trans_type.as_str().to_string(),
            trans_options: Some(DtmTransOptions {
                wait_result: o.wait_result,
                timeout_to_fail: seconds(o.timeout_to_fail),
                retry_interval: seconds(o.retry_interval),
                branch_headers: o.branch_headers.clone().into_iter().collect(),
                request_timeout: seconds(o.request_timeout),
                retry_limit: i64::from(o.retry_limit.unwrap_or(0)),
            }),
            customed_data: self.custom_data.clone(),
            bin_payloads: self.payloads.clone(),
            query_prepared: self.query_prepared.clone(),
            // Go marshals a nil step list as "null"; we always have a list.
            steps: serde_json::to_string(&self.steps).unwrap_or_else(|_| "[]".to_string()),
            req_extra: self.req_extra.clone().into_iter().collect(),
            rollback_reason: self.rollback_reason.clone(),
        }
    }

    /// The HTTP JSON body (`json.Marshal(TransBase)`): payloads as JSON
    /// strings, so every payload must be UTF-8 text.
    pub fn to_http_json(&self) -> Result<String, ClientError> {
        let payloads = self
            .payloads
            .iter()
            .enumerate()
            .map(|(i, p)| {
                std::str::from_utf8(p).map_err(|_| {
                    ClientError::InvalidArgument(format!(
                        "payload of step {i} is not UTF-8 text; binary (protobuf) payloads need the gRPC API"
                    ))
                })
            })
            .collect::<Result<Vec<&str>, _>>()?;
        let o = &self.options;
        let body = HttpBody {
            gid: self.gid.as_str(),
            trans_type: self.trans_type.as_str(),
            custom_data: &self.custom_data,
            wait_result: o.wait_result,
            timeout_to_fail: seconds(o.timeout_to_fail),
            request_timeout: seconds(o.request_timeout),
            retry_interval: seconds(o.retry_interval),
            branch_headers: &o.branch_headers,
            concurrent: self.concurrent,
            retry_limit: i64::from(o.retry_limit.unwrap_or(0)),
            steps: &self.steps,
            payloads,
            query_prepared: &self.query_prepared,
            protocol: "",
            rollback_reason: &self.rollback_reason,
            req_extra: &self.req_extra,
        };
        serde_json::to_string(&body).map_err(|err| ClientError::InvalidArgument(err.to_string()))
    }
}

/// A `registerBranch` call: a TCC branch's phase-2 URLs and the payload
/// dtm sends them, or an XA branch's phase-2 URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterBranch {
    /// The prepared global transaction.
    pub gid: Gid,
    /// `tcc` or `xa`.
    pub trans_type: TransType,
    /// The new branch's id (`01`, `0101`, …).
    pub branch_id: BranchId,
    /// Body of the confirm/cancel calls: JSON (HTTP) or protobuf (gRPC).
    pub data: Vec<u8>,
    /// `confirm` and `cancel` URLs, or XA's `url` (dtm's `Data` map).
    pub urls: BTreeMap<String, String>,
}

impl RegisterBranch {
    /// A TCC branch registration.
    pub fn tcc(gid: Gid, branch_id: BranchId, data: Vec<u8>, confirm: &str, cancel: &str) -> RegisterBranch {
        RegisterBranch {
            gid,
            trans_type: TransType::Tcc,
            branch_id,
            data,
            urls: BTreeMap::from([
                ("confirm".to_string(), confirm.to_string()),
                ("cancel".to_string(), cancel.to_string()),
            ]),
        }
    }

    /// A workflow progress (dtm's workflow `registerBranch`): step
    /// `branch_id`'s `op` ended with `status` (`succeed`/`failed`) and
    /// `data` (its result, or the failure's message).
    pub fn workflow_progress(
        gid: Gid,
        branch_id: BranchId,
        op: dtm_protocol::Op,
        status: dtm_protocol::BranchStatus,
        data: Vec<u8>,
    ) -> RegisterBranch {
        RegisterBranch {
            gid,
            trans_type: TransType::Workflow,
            branch_id,
            data,
            urls: BTreeMap::from([
                ("op".to_string(), op.as_str().to_string()),
                ("status".to_string(), status.as_str().to_string()),
            ]),
        }
    }

    /// An XA branch registration (dtm's `XaLocalTransaction`): the URL the
    /// coordinator calls with op `commit` or `rollback`, no payload.
    pub fn xa(gid: Gid, branch_id: BranchId, phase2_url: &str) -> RegisterBranch {
        RegisterBranch {
            gid,
            trans_type: TransType::Xa,
            branch_id,
            data: Vec::new(),
            urls: BTreeMap::from([("url".to_string(), phase2_url.to_string())]),
        }
    }

    /// `DtmBranchRequest`, as `dtmgrpc` fills it: URLs in `Data`, the
    /// payload in `BusiPayload`, `Op` unused.
    pub fn to_grpc(&self) -> DtmBranchRequest {
        DtmBranchRequest {
            gid: self.gid.to_string(),
            trans_type: self.trans_type.as_str().to_string(),
            branch_id: self.branch_id.to_string(),
            op: String::new(),
            data: self.urls.clone().into_iter().collect(),
            busi_payload: self.data.clone(),
        }
    }

    /// The flat string map `dtmcli` posts (keys sorted, as Go marshals a
    /// map); the payload goes in `data`, so it must be UTF-8 text.
    pub fn to_http_json(&self) -> Result<String, ClientError> {
        let data = std::str::from_utf8(&self.data).map_err(|_| {
            ClientError::InvalidArgument(
                "the branch payload is not UTF-8 text; binary (protobuf) payloads need the gRPC API".into(),
            )
        })?;
        let mut map: BTreeMap<&str, &str> = self.urls.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        map.insert("gid", self.gid.as_str());
        map.insert("trans_type", self.trans_type.as_str());
        map.insert("branch_id", self.branch_id.as_str());
        map.insert("data", data);
        serde_json::to_string(&map).map_err(|err| ClientError::InvalidArgument(err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_branch_has_dtms_shapes() {
        let branch = RegisterBranch::tcc(
            Gid::new("g1").unwrap(),
            BranchId::new("01").unwrap(),
            br#"{"amount":30}"#.to_vec(),
            "http://h/Confirm",
            "http://h/Cancel",
        );
        assert_eq!(
            branch.to_http_json().unwrap(),
            r#"{"branch_id":"01","cancel":"http://h/Cancel","confirm":"http://h/Confirm","data":"{\"amount\":30}","gid":"g1","trans_type":"tcc"}"#
        );
        let grpc = branch.to_grpc();
        assert_eq!(
            (grpc.gid.as_str(), grpc.trans_type.as_str(), grpc.branch_id.as_str()),
            ("g1", "tcc", "01")
        );
        assert_eq!(grpc.data.get("confirm").map(String::as_str), Some("http://h/Confirm"));
        assert_eq!(grpc.busi_payload, br#"{"amount":30}"#);
        let binary = RegisterBranch { data: vec![0xff], ..branch };
        assert!(matches!(binary.to_http_json(), Err(ClientError::InvalidArgument(_))));
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(seconds(None), 0);
        assert_eq!(seconds(Some(Duration::from_millis(1))), 1);
        assert_eq!(seconds(Some(Duration::from_secs(3))), 3);
        assert_eq!(seconds(Some(Duration::from_millis(3001))), 4);
    }
}
