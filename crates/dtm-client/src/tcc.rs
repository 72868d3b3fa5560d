//! TCC — Try, Confirm, Cancel (dtm's `dtmcli.TccGlobalTransaction` /
//! `dtmgrpc.TccGlobalTransaction`).
//!
//! The application drives the first phase itself:
//!
//! 1. `prepare` the global transaction at the coordinator;
//! 2. for each branch, `registerBranch` (its confirm and cancel URLs and the
//!    payload they will receive), then call the branch's **try** op itself,
//!    with `op=try` and `dtm=<coordinator>` (query or `dtm-` metadata);
//! 3. every try succeeded → `submit`: the coordinator calls every confirm
//!    (newest branch first) until each succeeds; a try failed → `abort`: it
//!    calls every cancel the same way. A transaction left `prepared` (the
//!    application crashed) is cancelled once its `timeout_to_fail` passes.
//!
//! [`Tcc::run`] does 1 and 3 around your code, which does 2 with
//! [`Tcc::call_branch`] (gRPC, protobuf messages) or
//! [`Tcc::call_branch_json`] (HTTP, JSON bodies). Branch ids come from
//! [`BranchIdGen`]: `01`, `02`, … A try handler may itself register
//! sub-branches (`0101`, `0102`, …) with a nested [`Tcc::from_branch`].
//!
//! Branch handlers guard try/confirm/cancel with the barrier
//! ([`barrier::BranchBarrier`], ops `try`/`confirm`/`cancel`): a cancel
//! that overtakes its try is a null compensation, and the late try is then
//! skipped (anti-hanging).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use dtm_protocol::{BranchCall, Gid, Op, TransType};
use serde::Serialize;

use crate::branch::{BranchIdGen, BranchRequest, TccBranch};
use crate::two_phase;
use crate::{ClientError, DtmClient, RegisterBranch, TransOptions, TransRequest};

/// Deadline of a try call when the transaction sets no `request_timeout`
/// (dtm's default branch timeout).
pub const DEFAULT_BRANCH_TIMEOUT: Duration = Duration::from_secs(3);

/// A TCC global transaction, or — from [`Tcc::from_branch`] — the part of
/// one that a branch registers as a nested sub-transaction.
///
/// `&Tcc` is enough to call branches, so several tries may run at once
/// (`tokio::join!`); ids are handed out in call order.
#[derive(Debug)]
pub struct Tcc {
    /// The coordinator; its address is sent to branches as `dtm`.
    dtm: DtmClient,
    /// The global transaction id.
    gid: Gid,
    /// Options sent with prepare/submit/abort; `request_timeout` and
    /// `branch_headers` also apply to the try calls.
    options: TransOptions,
    /// Hands out branch ids; behind a lock so `&self` can call branches.
    ids: Mutex<BranchIdGen>,
    /// Set for a nested TCC: only branch calls are allowed, the top-level
    /// application prepares and submits.
    nested: bool,
}

two_phase::two_phase_type!(Tcc, "confirms/cancels", "try");

impl Tcc {
    /// A new global transaction `gid` at `dtm` (not prepared yet).
    pub fn new(dtm: DtmClient, gid: Gid) -> Tcc {
        Tcc { dtm, gid, options: TransOptions::default(), ids: Mutex::default(), nested: false }
    }

    /// The sub-transaction of branch `branch` (dtm's `TccFromQuery` /
    /// `TccFromGrpc`): its [`Tcc::call_branch`] registers `0101`, `0102`, …
    /// in the same global transaction. `dtm` must reach `branch.dtm`.
    pub fn from_branch(dtm: DtmClient, branch: &TccBranch) -> Tcc {
        Tcc {
            dtm,
            gid: branch.gid.clone(),
            options: TransOptions::default(),
            ids: Mutex::new(BranchIdGen::nested(&branch.branch_id)),
            nested: true,
        }
    }

    /// The global transaction id.
    pub fn gid(&self) -> &Gid {
        &self.gid
    }

    /// The coordinator client.
    pub fn dtm(&self) -> &DtmClient {
        &self.dtm
    }

    /// What prepare, submit and abort send.
    pub fn request(&self) -> TransRequest {
        let mut request = TransRequest::new(self.gid.clone(), TransType::Tcc);
        request.options = self.options.clone();
        request
    }

    /// `prepare`: the coordinator now knows the transaction (idempotent).
    pub async fn prepare(&self) -> Result<(), ClientError> {
        self.top_level("prepare")?;
        self.dtm.prepare_request(&self.request()).await
    }

    /// `submit`: every registered branch will be confirmed.
    pub async fn submit(&self) -> Result<(), ClientError> {
        self.top_level("submit")?;
        self.dtm.submit_request(&self.request()).await
    }

    /// `abort`: every registered branch will be cancelled; `reason` is
    /// recorded as the rollback reason.
    pub async fn abort(&self, reason: &str) -> Result<(), ClientError> {
        self.top_level("abort")?;
        let mut request = self.request();
        request.rollback_reason = two_phase::truncate(reason, two_phase::MAX_REASON_BYTES).to_string();
        self.dtm.abort_request(&request).await
    }

    /// Registers a gRPC branch and calls its try op (`dtmgrpc`'s
    /// `CallBranch`): `req` is sent protobuf-encoded to `try_url` now, and
    /// stored for `confirm_url` / `cancel_url`. Returns the try's reply.
    ///
    /// URLs are dtm gRPC branch URLs: `127.0.0.1:9002/pb.stock/TryDeduct`
    /// or `etcd://127.0.0.1:2379/stock.rpc/pb.stock/TryDeduct`.
    pub async fn call_branch<Req, Resp>(
        &self,
        req: &Req,
        try_url: &str,
        confirm_url: &str,
        cancel_url: &str,
    ) -> Result<Resp, ClientError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let reply = self.call_branch_raw(req.encode_to_vec(), try_url, confirm_url, cancel_url).await?;
        Resp::decode(reply.as_slice())
            .map_err(|err| ClientError::Other(format!("unreadable reply of {try_url}: {err}")))
    }

    /// Registers an HTTP branch and POSTs its try op (`dtmcli`'s
    /// `CallBranch`): `body` as JSON, now to `try_url` and later to
    /// `confirm_url` / `cancel_url`. Returns the try's response body.
    pub async fn call_branch_json(
        &self,
        body: &impl Serialize,
        try_url: &str,
        confirm_url: &str,
        cancel_url: &str,
    ) -> Result<Vec<u8>, ClientError> {
        let payload =
            serde_json::to_vec(body).map_err(|err| ClientError::InvalidArgument(err.to_string()))?;
        self.call_branch_raw(payload, try_url, confirm_url, cancel_url).await
    }

    /// [`Tcc::call_branch`] with an already encoded payload, for any transport.
    ///
    /// A try answering FAILURE (409 / `Aborted`) is
    /// [`ClientError::Failure`]; ONGOING is [`ClientError::Ongoing`]. The
    /// branch stays registered either way, so the abort cancels it (a null
    /// cancel, with the barrier).
    pub async fn call_branch_raw(
        &self,
        payload: Vec<u8>,
        try_url: &str,
        confirm_url: &str,
        cancel_url: &str,
    ) -> Result<Vec<u8>, ClientError> {
        let branch_id = self.ids.lock().unwrap_or_else(PoisonError::into_inner).next_id()?;
        let registration =
            RegisterBranch::tcc(self.gid.clone(), branch_id.clone(), payload, confirm_url, cancel_url);
        self.dtm.register_branch(&registration).await?;
        let call = BranchRequest {
            url: try_url,
            payload: &registration.data,
            call: BranchCall::new(self.gid.clone(), TransType::Tcc, branch_id, Op::Try)
                .with_dtm(self.dtm.address()),
            headers: &self.options.branch_headers,
            extra: &[],
            timeout: self.options.request_timeout.unwrap_or(DEFAULT_BRANCH_TIMEOUT),
        };
        self.dtm.branches().call(&call).await
    }

    /// The whole global transaction: prepare, run `body` (which calls the
    /// branches), then submit if it returned `Ok`, or abort with its error
    /// as the rollback reason. Returns `body`'s value, or its error (after
    /// the abort; a failed abort is logged: the transaction is then
    /// cancelled by its timeout instead).
    ///
    /// If `body` panics, nothing is aborted here; the coordinator cancels
    /// the transaction when `timeout_to_fail` passes.
    pub async fn run<T>(
        self,
        body: impl AsyncFnOnce(&Tcc) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.top_level("run")?;
        two_phase::run(self, body).await
    }

    fn top_level(&self, what: &str) -> Result<(), ClientError> {
        if self.nested {
            return Err(ClientError::InvalidArgument(format!(
                "a nested TCC (branch of {}) only calls branches; the application that started it does {what}",
                self.gid
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use discovery::ChannelCache;

    #[test]
    fn the_request_is_a_bare_tcc_with_its_options() {
        let dtm = DtmClient::new("http://127.0.0.1:1/api/dtmsvr", ChannelCache::new()).unwrap();
        let tcc = Tcc::new(dtm, Gid::new("t1").unwrap())
            .timeout_to_fail(Duration::from_secs(30))
            .branch_header("x-tenant", "a");
        assert_eq!(
            tcc.request().to_http_json().unwrap(),
            r#"{"gid":"t1","trans_type":"tcc","timeout_to_fail":30,"branch_headers":{"x-tenant":"a"},"concurrent":false,"protocol":""}"#
        );
        let grpc = tcc.request().to_grpc();
        assert_eq!((grpc.trans_type.as_str(), grpc.steps.as_str()), ("tcc", "[]"));
    }

    #[tokio::test]
    async fn a_nested_tcc_refuses_to_prepare_submit_or_abort() {
        let dtm = DtmClient::new("127.0.0.1:1", ChannelCache::new()).unwrap();
        let branch = TccBranch {
            dtm: "127.0.0.1:1".into(),
            gid: Gid::new("t1").unwrap(),
            branch_id: dtm_protocol::BranchId::new("01").unwrap(),
        };
        let nested = Tcc::from_branch(dtm, &branch);
        assert!(matches!(nested.prepare().await, Err(ClientError::InvalidArgument(_))));
        assert!(matches!(nested.abort("x").await, Err(ClientError::InvalidArgument(_))));
        let run = nested.run(async |_| Ok(())).await;
        assert!(matches!(run, Err(ClientError::InvalidArgument(_))));
    }
}
