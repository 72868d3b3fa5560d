//! Calls the application itself makes to branches: TCC *try* ops, XA
//! *actions* and the 2-phase message's own check-back (dtm's
//! `TransRequestBranch`).
//!
//! In a saga or a message, only the coordinator calls branches. In TCC and
//! XA the application (the "AP") calls every Try / action itself, and `DoAndSubmit` may ask
//! its own QueryPrepared handler. These calls carry the same protocol values
//! as the coordinator's — `gid`, `trans_type`, `branch_id`, `op` — plus
//! `dtm`, the coordinator's address, so that a branch can act as a sub-AP
//! (nested TCC, [`crate::TccBranch`]):
//!
//! * HTTP (`http(s)://…`): query parameters, JSON body, POST (GET when
//!   there is no body, like the check-back, except in an XA), the transaction's
//!   `branch_headers` as headers;
//! * gRPC (`host:port/pkg.Svc/Method`, `etcd://hosts/key/pkg.Svc/Method`):
//!   `dtm-` metadata, the protobuf bytes as the message ([`RawCodec`]).
//!
//! Both encodings are `dtm_protocol`'s [`BranchCall`], the coordinator's
//! too, and the answer is classified with `dtm_protocol`'s rules, the same
//! ones the coordinator applies (409/`Aborted` FAILURE,
//! 425/`FailedPrecondition` ONGOING, anything else an error).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use discovery::ChannelCache;
use dtm_protocol::{
    BranchCall, BranchId, BranchResult, Gid, MetadataError, ProtocolError, RawCodec, Received,
};

use crate::ClientError;

/// Longest parent id [`BranchIdGen`] accepts (dtm's limit).
const MAX_PARENT_LEN: usize = 20;
/// Most sub-branches one parent may have (two digits).
const MAX_CHILDREN: u32 = 99;

/// dtm's `BranchIDGen`: the ids of the branches one (sub-)transaction
/// registers. At the top `"01"`, `"02"`, …; inside branch `"01"` acting as
/// a nested TCC, `"0101"`, `"0102"`, … (the parent id plus two digits).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BranchIdGen {
    /// The id of the branch that owns the sub-branches (empty at the top).
    parent: String,
    /// How many ids were handed out.
    issued: u32,
}

impl BranchIdGen {
    /// A generator for the top level.
    pub fn new() -> BranchIdGen {
        BranchIdGen::default()
    }

    /// A generator for the sub-branches of `parent` (a nested TCC).
    pub fn nested(parent: &BranchId) -> BranchIdGen {
        BranchIdGen { parent: parent.as_str().to_string(), issued: 0 }
    }

    /// The next id. Fails after 99 ids, or when the parent id is 20
    /// characters or longer (dtm's limits: ids must fit its columns).
    pub fn next_id(&mut self) -> Result<BranchId, ClientError> {
        if self.issued >= MAX_CHILDREN {
            return Err(ClientError::InvalidArgument(format!(
                "a transaction has at most {MAX_CHILDREN} branches"
            )));
        }
        if self.parent.len() >= MAX_PARENT_LEN {
            return Err(ClientError::InvalidArgument(format!(
                "branch {} is nested too deep (parent ids must be shorter than {MAX_PARENT_LEN})",
                self.parent
            )));
        }
        self.issued += 1;
        BranchId::new(format!("{}{:02}", self.parent, self.issued))
            .map_err(|err| ClientError::InvalidArgument(err.to_string()))
    }
}

/// One call from the application to a branch.
#[derive(Debug, Clone)]
pub(crate) struct BranchRequest<'a> {
    /// Branch URL (HTTP, or gRPC as dtm splits it).
    pub url: &'a str,
    /// JSON body or protobuf bytes; empty means an HTTP GET.
    pub payload: &'a [u8],
    /// The dtm values: gid, type, branch, op (`try`, or `msg` for the
    /// check-back) and the coordinator's address, sent as `dtm`.
    pub call: BranchCall,
    /// The transaction's `branch_headers`.
    pub headers: &'a BTreeMap<String, String>,
    /// Values beyond the dtm four, as query parameters (HTTP) or `dtm-`
    /// metadata (gRPC): an XA action's `phase2_url`.
    pub extra: &'a [(&'static str, &'a str)],
    /// Deadline of the call.
    pub timeout: Duration,
}

/// Calls branches over HTTP and gRPC; cheap to clone (shared pools).
#[derive(Clone)]
pub(crate) struct BranchCaller {
    /// Connection pool for HTTP branches.
    http: reqwest::Client,
    /// gRPC channels by server, etcd targets resolved.
    channels: ChannelCache,
}

impl fmt::Debug for BranchCaller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BranchCaller").field("channels", &self.channels).finish_non_exhaustive()
    }
}

impl BranchCaller {
    /// A caller using `channels` for gRPC branches.
    pub(crate) fn new(channels: ChannelCache) -> Result<BranchCaller, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|err| ClientError::InvalidArgument(err.to_string()))?;
        Ok(BranchCaller { http, channels })
    }

    /// Calls the branch; `Ok` carries the reply body (HTTP) or message
    /// bytes (gRPC).
    pub(crate) async fn call(&self, request: &BranchRequest<'_>) -> Result<Vec<u8>, ClientError> {
        if request.url.starts_with("http://") || request.url.starts_with("https://") {
            self.call_http(request).await
        } else {
            self.call_grpc(request).await
        }
    }

    async fn call_http(&self, r: &BranchRequest<'_>) -> Result<Vec<u8>, ClientError> {
        // dtm's rule: POST when there is a body or the transaction is an XA.
        let mut builder = if r.payload.is_empty() && r.call.trans_type != dtm_protocol::TransType::Xa {
            self.http.get(r.url)
        } else {
            self.http
                .post(r.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(r.payload.to_vec())
        };
        builder = builder.query(&r.call.query_pairs()).query(r.extra).timeout(r.timeout);
        for (name, value) in r.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let response = builder.send().await.map_err(|err| ClientError::from_reqwest(&err))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|err| ClientError::from_reqwest(&err))?;
        match BranchResult::from_http(status, &String::from_utf8_lossy(&body)) {
            BranchResult::Success => Ok(body.to_vec()),
            BranchResult::Failure(body) => Err(ClientError::Failure(message_of(&body))),
            BranchResult::Ongoing => Err(ClientError::Ongoing),
            BranchResult::Retry(message) => Err(ClientError::Other(format!("branch {}: {message}", r.url))),
        }
    }

    async fn call_grpc(&self, r: &BranchRequest<'_>) -> Result<Vec<u8>, ClientError> {
        let (server, method) = discovery::parse_server_method(r.url)
            .map_err(|err| ClientError::InvalidArgument(err.to_string()))?;
        let path = http::uri::PathAndQuery::try_from(method.as_str())
            .map_err(|err| ClientError::InvalidArgument(format!("bad gRPC method {method:?}: {err}")))?;
        let channel = self.channels.get(&server).await.map_err(ClientError::from_discovery)?;
        let mut request = tonic::Request::new(Bytes::copy_from_slice(r.payload));
        request.set_timeout(r.timeout);
        let headers = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        r.call
            .insert_metadata(request.metadata_mut(), headers)
            .map_err(|err: MetadataError| ClientError::InvalidArgument(err.to_string()))?;
        for (name, value) in r.extra {
            let key = tonic::metadata::MetadataKey::from_bytes(format!("dtm-{name}").as_bytes())
                .map_err(|err| ClientError::InvalidArgument(err.to_string()))?;
            let value = value
                .parse()
                .map_err(|_| ClientError::InvalidArgument(format!("{name} is not valid gRPC metadata")))?;
            request.metadata_mut().insert(key, value);
        }
        let mut grpc = tonic::client::Grpc::new(channel);
        let call = async {
            grpc.ready().await.map_err(|err| tonic::Status::unavailable(format!("connecting: {err}")))?;
            grpc.unary(request, path, RawCodec).await
        };
        match tokio::time::timeout(r.timeout, call).await {
            Ok(Ok(reply)) => Ok(Vec::from(reply.into_inner())),
            Ok(Err(status)) => Err(match BranchResult::from_grpc(Err(&status)) {
                BranchResult::Failure(message) => ClientError::Failure(message),
                BranchResult::Ongoing => ClientError::Ongoing,
                _ if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) => {
                    ClientError::Unavailable(format!("branch {}: {}", r.url, status.message()))
                }
                _ => {
                    ClientError::Other(format!("branch {}: {:?}: {}", r.url, status.code(), status.message()))
                }
            }),
            Err(_) => Err(ClientError::Unavailable(format!(
                "branch {} did not answer within {:?}",
                r.url, r.timeout
            ))),
        }
    }
}

/// The `message` of a JSON error body (`{"dtm_result":"FAILURE","message":…}`),
/// else the body itself.
fn message_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_else(|| body.to_string())
}

/// The dtm values a branch receives, for a branch that acts on them itself
/// (a nested TCC: dtm's `TccFromQuery` / `TccFromGrpc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TccBranch {
    /// The coordinator's address the AP used (`dtm` / `dtm-dtm`).
    pub dtm: String,
    /// The global transaction.
    pub gid: Gid,
    /// This branch's id: the parent of the sub-branches it registers.
    pub branch_id: BranchId,
}

impl TccBranch {
    /// From an HTTP query string (`dtm=…&gid=…&branch_id=…&…`).
    pub fn from_query(query: &str) -> Result<TccBranch, ProtocolError> {
        TccBranch::from_received(&Received::from_query(query))
    }

    /// From gRPC metadata (`dtm-dtm`, `dtm-gid`, `dtm-branch_id`).
    pub fn from_grpc(metadata: &tonic::metadata::MetadataMap) -> Result<TccBranch, ProtocolError> {
        TccBranch::from_received(&Received::from_grpc(metadata))
    }

    /// The three values a sub-AP needs, checked in the order dtm, gid,
    /// branch_id; the call's `trans_type` and `op` are not looked at.
    fn from_received(received: &Received) -> Result<TccBranch, ProtocolError> {
        let dtm = received.dtm()?.to_string();
        let gid = received.gid()?;
        let branch_id = received.branch_id()?;
        Ok(TccBranch { dtm, gid, branch_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_ids_count_up_and_nest_like_dtms_generator() {
        let mut top = BranchIdGen::new();
        assert_eq!(top.next_id().unwrap().as_str(), "01");
        assert_eq!(top.next_id().unwrap().as_str(), "02");
        let mut nested = BranchIdGen::nested(&BranchId::new("01").unwrap());
        assert_eq!(nested.next_id().unwrap().as_str(), "0101");
        assert_eq!(nested.next_id().unwrap().as_str(), "0102");
        let mut deeper = BranchIdGen::nested(&BranchId::new("0102").unwrap());
        assert_eq!(deeper.next_id().unwrap().as_str(), "010201");

        let mut full = BranchIdGen::new();
        for _ in 0..99 {
            full.next_id().unwrap();
        }
        assert!(matches!(full.next_id(), Err(ClientError::InvalidArgument(_))), "at most 99 children");
        let mut deep = BranchIdGen::nested(&BranchId::new("01".repeat(10)).unwrap());
        assert!(matches!(deep.next_id(), Err(ClientError::InvalidArgument(_))), "parent too long");
    }

    #[test]
    fn a_tcc_branch_reads_the_dtm_values_from_query_or_metadata() {
        let branch = TccBranch::from_query(
            "dtm=http%3A%2F%2F127.0.0.1%3A36789%2Fapi%2Fdtmsvr&gid=g1&trans_type=tcc&branch_id=01&op=try",
        )
        .unwrap();
        assert_eq!(branch.dtm, "http://127.0.0.1:36789/api/dtmsvr");
        assert_eq!((branch.gid.as_str(), branch.branch_id.as_str()), ("g1", "01"));
        assert_eq!(TccBranch::from_query("gid=g1&branch_id=01"), Err(ProtocolError::Missing("dtm")));

        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("dtm-dtm", "127.0.0.1:36790".parse().unwrap());
        metadata.insert("dtm-gid", "g2".parse().unwrap());
        metadata.insert("dtm-branch_id", "02".parse().unwrap());
        let branch = TccBranch::from_grpc(&metadata).unwrap();
        assert_eq!(
            (branch.dtm.as_str(), branch.gid.as_str(), branch.branch_id.as_str()),
            ("127.0.0.1:36790", "g2", "02")
        );
    }
}
