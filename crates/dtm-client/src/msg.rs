//! 2-phase messages (dtm's `dtmcli.Msg` / `dtmgrpc.MsgGrpc`): "commit
//! this local transaction, and then these actions are guaranteed to run".
//!
//! Two ways to send one:
//!
//! * **plain**: [`Msg::submit`] alone. The coordinator runs the actions in
//!   order (or all at once with [`Msg::concurrent`], HTTP only) and retries
//!   each until it succeeds — actions cannot fail a message.
//! * **with a local transaction** ([`Msg::do_and_submit_db`]): `prepare`
//!   (with a *check-back* URL), run the local transaction through
//!   [`barrier::MsgBarrier`] (branch `00`, op `msg`), then `submit` — or
//!   `abort` if the business said no. If the application dies between its
//!   commit and the submit, the coordinator finds the message still
//!   `prepared` after `timeout_to_fail` and asks the check-back (a `GET`
//!   with `branch_id=00&op=msg`), whose handler is one call:
//!   [`barrier::BranchBarrier::query_prepared`]. It answers SUCCESS if the
//!   local transaction committed (the message is submitted) and FAILURE
//!   otherwise (the message fails, and the local transaction can no longer
//!   commit).
//!
//! [`Msg::delay`] postpones the actions (`custom_data {"delay":N}`).
//! [`Msg::add_topic_json`] (and [`Msg::add_topic`]) send a step to every
//! subscriber of a topic ([`DtmClient::subscribe`]).

use std::time::Duration;

use barrier::{BarrierDatabase, BarrierTable, BranchError, MsgBarrier, MsgLocal};
use dtm_protocol::{BranchCall, BranchId, Gid, Op, Topic, TransType};
use serde::Serialize;
use sqlx::Pool;

use crate::branch::BranchRequest;
use crate::tcc::DEFAULT_BRANCH_TIMEOUT;
use crate::{ClientError, DtmClient, TransOptions, TransRequest};

/// How [`Msg::do_and_submit`] can fail.
#[derive(Debug, thiserror::Error)]
pub enum MsgError {
    /// Talking to the coordinator failed before the local transaction ran
    /// (prepare), or the submit after it did (the check-back settles the
    /// message then).
    #[error(transparent)]
    Dtm(#[from] ClientError),
    /// The local transaction failed and rolled back. A
    /// [`BranchError::Failure`] aborted the message; any other error left
    /// the decision to the check-back (asked at once, and by the
    /// coordinator later if that did not answer).
    #[error("local transaction: {0}")]
    Local(BranchError),
    /// The local transaction's barrier row already existed, so the business
    /// code did not run now: it committed in an earlier attempt (the message
    /// was then submitted), or the check-back had already rolled the message
    /// back (it was then aborted).
    #[error("the local transaction of message {0} already ran or was rolled back")]
    Duplicated(Gid),
}

/// A 2-phase message under construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// The global transaction id.
    gid: Gid,
    /// `(action URL, payload)` per step.
    steps: Vec<(String, Vec<u8>)>,
    /// Options sent to the coordinator.
    options: TransOptions,
    /// `custom_data {"delay":N}`: no action before N s after creation.
    delay: Option<Duration>,
    /// Run the actions at once rather than in order (HTTP API only).
    concurrent: bool,
    /// Where the local transaction's barrier row goes (engine default if `None`).
    barrier_table: Option<BarrierTable>,
}

impl Msg {
    /// An empty message.
    pub fn new(gid: Gid) -> Msg {
        Msg {
            gid,
            steps: Vec::new(),
            options: TransOptions::default(),
            delay: None,
            concurrent: false,
            barrier_table: None,
        }
    }

    /// The global transaction id.
    pub fn gid(&self) -> &Gid {
        &self.gid
    }

    /// Adds a gRPC action receiving `payload`, protobuf-encoded.
    pub fn add(self, action: impl Into<String>, payload: &impl prost::Message) -> Msg {
        self.add_raw(action, payload.encode_to_vec())
    }

    /// Adds an HTTP action receiving `payload` as its JSON body.
    pub fn add_json(self, action: impl Into<String>, payload: &impl Serialize) -> Result<Msg, ClientError> {
        let body =
            serde_json::to_vec(payload).map_err(|err| ClientError::InvalidArgument(err.to_string()))?;
        Ok(self.add_raw(action, body))
    }

    /// Adds a step that goes to every subscriber of `topic` (the action
    /// `topic://name`), receiving `payload` protobuf-encoded (gRPC
    /// subscribers). The coordinator makes one branch per subscriber when
    /// the message is created, and refuses it if the topic has none.
    pub fn add_topic(self, topic: &Topic, payload: &impl prost::Message) -> Msg {
        self.add_raw(topic.target(), payload.encode_to_vec())
    }

    /// Adds a step that goes to every subscriber of `topic`, receiving
    /// `payload` as its JSON body (HTTP subscribers).
    pub fn add_topic_json(self, topic: &Topic, payload: &impl Serialize) -> Result<Msg, ClientError> {
        self.add_json(topic.target(), payload)
    }

    /// Adds an action with an already encoded payload.
    pub fn add_raw(mut self, action: impl Into<String>, payload: Vec<u8>) -> Msg {
        self.steps.push((action.into(), payload));
        self
    }

    /// Runs no action before `delay` after the message was created (whole
    /// seconds, rounded up).
    pub fn delay(mut self, delay: Duration) -> Msg {
        self.delay = Some(delay);
        self
    }

    /// Runs all actions at once. dtm's gRPC API cannot carry this option,
    /// so it needs an HTTP [`DtmClient`].
    pub fn concurrent(mut self) -> Msg {
        self.concurrent = true;
        self
    }

    /// See [`TransOptions::wait_result`].
    pub fn wait_result(mut self, wait: bool) -> Msg {
        self.options.wait_result = wait;
        self
    }

    /// How long a prepared message waits for its submit before the
    /// coordinator asks the check-back (server default: 35 s).
    pub fn timeout_to_fail(mut self, timeout: Duration) -> Msg {
        self.options.timeout_to_fail = Some(timeout);
        self
    }

    /// Deadline of each action and check-back call.
    pub fn request_timeout(mut self, timeout: Duration) -> Msg {
        self.options.request_timeout = Some(timeout);
        self
    }

    /// Base retry interval of the actions.
    pub fn retry_interval(mut self, interval: Duration) -> Msg {
        self.options.retry_interval = Some(interval);
        self
    }

    /// A header (HTTP) or metadata entry (gRPC) on every branch call.
    pub fn branch_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Msg {
        self.options.branch_headers.insert(name.into(), value.into());
        self
    }

    /// The barrier table of the local transaction (default: the engine's,
    /// `dtm_barrier.barrier` or `barrier` on SQLite). The check-back handler
    /// must use the same one.
    pub fn barrier_table(mut self, table: BarrierTable) -> Msg {
        self.barrier_table = Some(table);
        self
    }

    /// What the coordinator receives; `query_prepared` may be empty.
    pub fn request(&self, query_prepared: &str) -> TransRequest {
        let mut request = TransRequest::new(self.gid.clone(), TransType::Msg);
        request.options = self.options.clone();
        request.concurrent = self.concurrent;
        request.query_prepared = query_prepared.to_string();
        for (action, payload) in &self.steps {
            request.steps.push([("action".to_string(), action.clone())].into());
            request.payloads.push(payload.clone());
        }
        if let Some(delay) = self.delay {
            let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            request.custom_data = format!(r#"{{"delay":{seconds}}}"#);
        }
        request
    }

    /// `prepare` with the check-back URL `query_prepared`.
    pub async fn prepare(&self, dtm: &DtmClient, query_prepared: &str) -> Result<(), ClientError> {
        self.check_transport(dtm)?;
        dtm.prepare_request(&self.request(query_prepared)).await
    }

    /// `submit`: of a prepared message (its stored steps run), or of a new
    /// one (plain message).
    pub async fn submit(&self, dtm: &DtmClient) -> Result<(), ClientError> {
        self.check_transport(dtm)?;
        dtm.submit_request(&self.request("")).await
    }

    /// `abort`: a prepared message becomes `failed`; its actions never run.
    pub async fn abort(&self, dtm: &DtmClient) -> Result<(), ClientError> {
        dtm.abort_request(&self.request("")).await
    }

    /// dtm's `DoAndSubmitDB`: prepare, run `busi` in a local transaction on
    /// `pool` guarded by the message's barrier row, then submit — or abort
    /// on a business failure. See [`Msg::do_and_submit`] for the outcomes.
    pub async fn do_and_submit_db<DB, T>(
        &self,
        dtm: &DtmClient,
        query_prepared: &str,
        pool: &Pool<DB>,
        busi: impl AsyncFnOnce(&mut DB::Connection) -> Result<T, BranchError>,
    ) -> Result<T, MsgError>
    where
        DB: BarrierDatabase,
    {
        self.do_and_submit(dtm, query_prepared, async |mut barrier: MsgBarrier| {
            barrier.call_with_pool(pool, busi).await
        })
        .await
    }

    /// dtm's `DoAndSubmit`: prepare with `query_prepared`, run the local
    /// transaction `busi` (given the message's [`MsgBarrier`]), then:
    ///
    /// * committed → `submit`, `Ok(value)`;
    /// * [`BranchError::Failure`] → `abort`, [`MsgError::Local`];
    /// * any other error, or [`MsgLocal::Duplicated`] → ask the check-back
    ///   now: SUCCESS → `submit`, FAILURE → `abort`, no answer → leave it to
    ///   the coordinator's check-back; then [`MsgError::Local`] /
    ///   [`MsgError::Duplicated`].
    pub async fn do_and_submit<T>(
        &self,
        dtm: &DtmClient,
        query_prepared: &str,
        busi: impl AsyncFnOnce(MsgBarrier) -> Result<MsgLocal<T>, BranchError>,
    ) -> Result<T, MsgError> {
        self.prepare(dtm, query_prepared).await?;
        let mut barrier = MsgBarrier::new(self.gid.clone());
        if let Some(table) = &self.barrier_table {
            barrier = barrier.with_table(table.clone());
        }
        let local = busi(barrier).await;
        let error = match local {
            Ok(MsgLocal::Committed(value)) => {
                self.submit(dtm).await?;
                return Ok(value);
            }
            Err(BranchError::Failure(reason)) => {
                self.abort_quietly(dtm).await;
                return Err(MsgError::Local(BranchError::Failure(reason)));
            }
            Ok(MsgLocal::Duplicated) => MsgError::Duplicated(self.gid.clone()),
            Err(other) => MsgError::Local(other),
        };
        // The outcome is unknown here (e.g. the commit's answer was lost):
        // the check-back knows, from the barrier row.
        match self.check_back(dtm, query_prepared).await {
            Ok(()) => {
                if let Err(err) = self.submit(dtm).await {
                    tracing::warn!(gid = %self.gid, %err, "submit after the check-back failed");
                }
            }
            Err(ClientError::Failure(_)) => self.abort_quietly(dtm).await,
            Err(err) => {
                tracing::warn!(gid = %self.gid, %err, "check-back did not answer; the coordinator will ask it later");
            }
        }
        Err(error)
    }

    /// Calls the check-back as the coordinator would (`GET`, branch `00`, op `msg`).
    async fn check_back(&self, dtm: &DtmClient, query_prepared: &str) -> Result<(), ClientError> {
        let call = BranchRequest {
            url: query_prepared,
            payload: &[],
            call: BranchCall::new(self.gid.clone(), TransType::Msg, BranchId::msg(), Op::Msg)
                .with_dtm(dtm.address()),
            headers: &self.options.branch_headers,
            extra: &[],
            timeout: self.options.request_timeout.unwrap_or(DEFAULT_BRANCH_TIMEOUT),
        };
        dtm.branches().call(&call).await.map(drop)
    }

    async fn abort_quietly(&self, dtm: &DtmClient) {
        if let Err(err) = self.abort(dtm).await {
            tracing::warn!(gid = %self.gid, %err, "abort failed; the check-back will fail the message");
        }
    }

    fn check_transport(&self, dtm: &DtmClient) -> Result<(), ClientError> {
        if self.concurrent && matches!(dtm, DtmClient::Grpc(_)) {
            return Err(ClientError::InvalidArgument(
                "dtm's gRPC API has no `concurrent` option for messages; submit concurrent messages over HTTP"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use discovery::ChannelCache;

    #[test]
    fn http_body_has_steps_check_back_and_delay() {
        let msg = Msg::new(Gid::new("m1").unwrap())
            .add_json("http://h/TransOut", &serde_json::json!({"amount": 30}))
            .unwrap()
            .add_json("http://h/TransIn", &serde_json::json!({"amount": 30}))
            .unwrap()
            .delay(Duration::from_millis(1500));
        assert_eq!(
            msg.request("http://h/QueryPrepared").to_http_json().unwrap(),
            concat!(
                r#"{"gid":"m1","trans_type":"msg","custom_data":"{\"delay\":2}","concurrent":false,"#,
                r#""steps":[{"action":"http://h/TransOut"},{"action":"http://h/TransIn"}],"#,
                r#""payloads":["{\"amount\":30}","{\"amount\":30}"],"query_prepared":"http://h/QueryPrepared","protocol":""}"#
            )
        );
    }

    #[test]
    fn grpc_request_carries_protobuf_payloads() {
        let msg = Msg::new(Gid::new("m2").unwrap())
            .add("127.0.0.1:9002/pb.stock/deduct", &proto::stock::DeductReq { goods_id: 1, num: 3 });
        let grpc = msg.request("127.0.0.1:9002/pb.stock/queryPrepared").to_grpc();
        assert_eq!(grpc.trans_type, "msg");
        assert_eq!(grpc.steps, r#"[{"action":"127.0.0.1:9002/pb.stock/deduct"}]"#);
        assert_eq!(grpc.bin_payloads, vec![vec![0x08, 1, 0x10, 3]]);
        assert_eq!(grpc.query_prepared, "127.0.0.1:9002/pb.stock/queryPrepared");
    }

    #[tokio::test]
    async fn concurrent_messages_need_the_http_api() {
        let msg = Msg::new(Gid::new("m3").unwrap()).concurrent();
        let grpc = DtmClient::new("127.0.0.1:1", ChannelCache::new()).unwrap();
        assert!(matches!(msg.submit(&grpc).await, Err(ClientError::InvalidArgument(_))));
        assert!(msg.request("").to_http_json().unwrap().contains(r#""concurrent":true"#));
    }
}
