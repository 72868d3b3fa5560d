//! The saga builder (dtm's `dtmgrpc.SagaGrpc` / `dtmcli.Saga`).
//!
//! A saga is an ordered list of steps, each an *action* and the
//! *compensation* that undoes it, plus the request body both receive. dtm
//! runs the actions in order; if one answers FAILURE it runs the
//! compensations of every step already attempted, in reverse order.

use std::collections::BTreeMap;
use std::time::Duration;

use dtm_protocol::{Gid, TransType};
use serde::Serialize;

use crate::{ClientError, DtmClient, TransOptions, TransRequest};

/// One step: two URLs and a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    action: String,
    compensate: String,
    payload: Vec<u8>,
}

/// A saga under construction; [`DtmClient::submit`] (or [`Saga::submit`])
/// sends it.
///
/// Step URLs are dtm branch URLs: `etcd://127.0.0.1:2379/order.rpc/pb.order/create`
/// or `127.0.0.1:9001/pb.order/create` for gRPC, `http://host/path` for HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saga {
    gid: Gid,
    steps: Vec<Step>,
    options: TransOptions,
    /// Run steps concurrently, subject to `orders`.
    concurrent: bool,
    /// step → steps that must succeed before it (only with `concurrent`).
    orders: BTreeMap<usize, Vec<usize>>,
    /// The trace the submit continues (see [`TransRequest::trace`]).
    trace: Option<dtm_protocol::TraceContext>,
}

impl Saga {
    /// An empty saga with default options.
    pub fn new(gid: Gid) -> Saga {
        Saga {
            gid,
            steps: Vec::new(),
            options: TransOptions::default(),
            concurrent: false,
            orders: BTreeMap::new(),
            trace: None,
        }
    }

    /// Sends `trace` with the submit, so the coordinator's spans and its
    /// branch calls join the caller's trace (`None`: no trace context).
    pub fn trace_context(mut self, trace: Option<dtm_protocol::TraceContext>) -> Saga {
        self.trace = trace;
        self
    }

    /// The global transaction id.
    pub fn gid(&self) -> &Gid {
        &self.gid
    }

    /// Adds a gRPC step whose action and compensation both receive
    /// `payload`, protobuf-encoded (what `dtmgrpc.SagaGrpc.Add` does).
    pub fn add(
        self,
        action: impl Into<String>,
        compensate: impl Into<String>,
        payload: &impl prost::Message,
    ) -> Saga {
        self.add_raw(action, compensate, payload.encode_to_vec())
    }

    /// Adds an HTTP step with `payload` as its JSON body (`dtmcli.Saga.Add`).
    pub fn add_json(
        self,
        action: impl Into<String>,
        compensate: impl Into<String>,
        payload: &impl Serialize,
    ) -> Result<Saga, ClientError> {
        let body =
            serde_json::to_vec(payload).map_err(|err| ClientError::InvalidArgument(err.to_string()))?;
        Ok(self.add_raw(action, compensate, body))
    }

    /// Adds a step with an already encoded payload.
    pub fn add_raw(
        mut self,
        action: impl Into<String>,
        compensate: impl Into<String>,
        payload: Vec<u8>,
    ) -> Saga {
        self.steps.push(Step { action: action.into(), compensate: compensate.into(), payload });
        self
    }

    /// See [`TransOptions::wait_result`].
    pub fn wait_result(mut self, wait: bool) -> Saga {
        self.options.wait_result = wait;
        self
    }

    /// See [`TransOptions::timeout_to_fail`].
    pub fn timeout_to_fail(mut self, timeout: Duration) -> Saga {
        self.options.timeout_to_fail = Some(timeout);
        self
    }

    /// See [`TransOptions::retry_interval`].
    pub fn retry_interval(mut self, interval: Duration) -> Saga {
        self.options.retry_interval = Some(interval);
        self
    }

    /// See [`TransOptions::request_timeout`].
    pub fn request_timeout(mut self, timeout: Duration) -> Saga {
        self.options.request_timeout = Some(timeout);
        self
    }

    /// See [`TransOptions::retry_limit`].
    pub fn retry_limit(mut self, limit: u32) -> Saga {
        self.options.retry_limit = Some(limit);
        self
    }

    /// Adds one header/metadata entry to every branch call.
    pub fn branch_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Saga {
        self.options.branch_headers.insert(name.into(), value.into());
        self
    }

    /// Replaces all options at once.
    pub fn options(mut self, options: TransOptions) -> Saga {
        self.options = options;
        self
    }

    /// Runs the steps concurrently (`EnableConcurrent`); without
    /// [`Saga::add_branch_order`] every step may run at once.
    pub fn concurrent(mut self) -> Saga {
        self.concurrent = true;
        self
    }

    /// Step `step` (0-based) starts only after every step in
    /// `prerequisites` succeeded, which must all come before it. Implies
    /// [`Saga::concurrent`], since order is implicit otherwise.
    pub fn add_branch_order(mut self, step: usize, prerequisites: &[usize]) -> Saga {
        self.concurrent = true;
        self.orders.insert(step, prerequisites.to_vec());
        self
    }

    /// The protocol-neutral request (validates the branch orders).
    pub fn request(&self) -> Result<TransRequest, ClientError> {
        for (&step, prerequisites) in &self.orders {
            if step >= self.steps.len() {
                return Err(ClientError::InvalidArgument(format!(
                    "branch order names step {step}, which does not exist"
                )));
            }
            if let Some(bad) = prerequisites.iter().find(|&&p| p >= step) {
                return Err(ClientError::InvalidArgument(format!(
                    "step {step} cannot wait for step {bad}: prerequisites must come earlier"
                )));
            }
        }
        let mut request = TransRequest::new(self.gid.clone(), TransType::Saga);
        request.options = self.options.clone();
        request.concurrent = self.concurrent;
        request.trace = self.trace.clone();
        for step in &self.steps {
            request.steps.push(BTreeMap::from([
                ("action".to_string(), step.action.clone()),
                ("compensate".to_string(), step.compensate.clone()),
            ]));
            request.payloads.push(step.payload.clone());
        }
        if self.concurrent {
            request.custom_data = custom_data(&self.orders);
        }
        Ok(request)
    }

    /// Submits this saga through `dtm` (same as `dtm.submit(self)`).
    pub async fn submit(&self, dtm: &DtmClient) -> Result<(), ClientError> {
        dtm.submit(self).await
    }
}

/// `{"concurrent":true,"orders":{"1":[0]}}` — Go marshals the map with its
/// keys as strings in string order, which a `BTreeMap<String, _>` reproduces.
fn custom_data(orders: &BTreeMap<usize, Vec<usize>>) -> String {
    #[derive(Serialize)]
    struct Concurrency {
        concurrent: bool,
        orders: BTreeMap<String, Vec<usize>>,
    }
    let orders = orders.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    serde_json::to_string(&Concurrency { concurrent: true, orders }).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::order::{CREATE_PATH, CREATE_ROLLBACK_PATH, CreateReq};
    use proto::stock::{DEDUCT_PATH, DEDUCT_ROLLBACK_PATH, DeductReq};

    const ORDER: &str = "etcd://127.0.0.1:2379/order.rpc";
    const STOCK: &str = "etcd://127.0.0.1:2379/stock.rpc";

    fn quick_order() -> Saga {
        Saga::new(Gid::new("gid-1").unwrap())
            .add(
                format!("{ORDER}{CREATE_PATH}"),
                format!("{ORDER}{CREATE_ROLLBACK_PATH}"),
                &CreateReq { goods_id: 1, user_id: 2, num: 3 },
            )
            .add(
                format!("{STOCK}{DEDUCT_PATH}"),
                format!("{STOCK}{DEDUCT_ROLLBACK_PATH}"),
                &DeductReq { goods_id: 1, num: 3 },
            )
    }

    #[test]
    fn grpc_request_has_dtms_exact_fields() {
        let saga = quick_order()
            .wait_result(true)
            .timeout_to_fail(Duration::from_secs(60))
            .retry_interval(Duration::from_secs(5))
            .request_timeout(Duration::from_millis(2500))
            .retry_limit(3)
            .branch_header("x-tenant", "t1");
        let request = saga.request().unwrap().to_grpc();
        assert_eq!(request.gid, "gid-1");
        assert_eq!(request.trans_type, "saga");
        assert_eq!(
            request.steps,
            r#"[{"action":"etcd://127.0.0.1:2379/order.rpc/pb.order/create","compensate":"etcd://127.0.0.1:2379/order.rpc/pb.order/createRollback"},{"action":"etcd://127.0.0.1:2379/stock.rpc/pb.stock/deduct","compensate":"etcd://127.0.0.1:2379/stock.rpc/pb.stock/deductRollback"}]"#
        );
        // Protobuf bytes of the requests: goodsId=1 userId=2 num=3, then goodsId=1 num=3.
        assert_eq!(request.bin_payloads, vec![vec![0x08, 1, 0x10, 2, 0x18, 3], vec![0x08, 1, 0x10, 3]]);
        let options = request.trans_options.unwrap();
        assert!(options.wait_result);
        assert_eq!(options.timeout_to_fail, 60);
        assert_eq!(options.retry_interval, 5);
        assert_eq!(options.request_timeout, 3, "rounded up to whole seconds");
        assert_eq!(options.retry_limit, 3);
        assert_eq!(options.branch_headers.get("x-tenant").map(String::as_str), Some("t1"));
        assert_eq!(request.customed_data, "", "no custom data without concurrency");
        assert_eq!(request.query_prepared, "");
        assert_eq!(request.rollback_reason, "");
    }

    #[test]
    fn http_body_is_dtms_exact_json() {
        let saga = Saga::new(Gid::new("g1").unwrap())
            .add_json("http://h/TransOut", "http://h/TransOutRevert", &serde_json::json!({"amount": 30}))
            .unwrap()
            .add_json("http://h/TransIn", "http://h/TransInRevert", &serde_json::json!({"amount": 30}))
            .unwrap();
        assert_eq!(
            saga.request().unwrap().to_http_json().unwrap(),
            r#"{"gid":"g1","trans_type":"saga","concurrent":false,"steps":[{"action":"http://h/TransOut","compensate":"http://h/TransOutRevert"},{"action":"http://h/TransIn","compensate":"http://h/TransInRevert"}],"payloads":["{\"amount\":30}","{\"amount\":30}"],"protocol":""}"#
        );
    }

    #[test]
    fn http_body_carries_every_option_in_gos_field_order() {
        let saga = Saga::new(Gid::new("g2").unwrap())
            .add_raw("http://h/a", "http://h/ca", b"{}".to_vec())
            .add_raw("http://h/b", "http://h/cb", b"{}".to_vec())
            .add_raw("http://h/c", "http://h/cc", b"{}".to_vec())
            .add_branch_order(2, &[0, 1])
            .wait_result(true)
            .timeout_to_fail(Duration::from_secs(30))
            .request_timeout(Duration::from_secs(2))
            .retry_interval(Duration::from_secs(4))
            .branch_header("h", "v")
            .retry_limit(5);
        assert_eq!(
            saga.request().unwrap().to_http_json().unwrap(),
            concat!(
                r#"{"gid":"g2","trans_type":"saga","custom_data":"{\"concurrent\":true,\"orders\":{\"2\":[0,1]}}","#,
                r#""wait_result":true,"timeout_to_fail":30,"request_timeout":2,"retry_interval":4,"#,
                r#""branch_headers":{"h":"v"},"concurrent":true,"retry_limit":5,"#,
                r#""steps":[{"action":"http://h/a","compensate":"http://h/ca"},{"action":"http://h/b","compensate":"http://h/cb"},{"action":"http://h/c","compensate":"http://h/cc"}],"#,
                r#""payloads":["{}","{}","{}"],"protocol":""}"#
            )
        );
    }

    #[test]
    fn concurrent_saga_sends_orders_as_custom_data() {
        let request = quick_order().concurrent().request().unwrap();
        assert_eq!(request.custom_data, r#"{"concurrent":true,"orders":{}}"#);
        let mut saga = quick_order();
        for _ in 0..9 {
            saga = saga.add_raw("a:1/p.S/M", "a:1/p.S/C", Vec::new());
        }
        let request = saga.add_branch_order(10, &[1]).add_branch_order(2, &[0]).request().unwrap();
        // Go sorts map keys as strings: "10" before "2".
        assert_eq!(request.custom_data, r#"{"concurrent":true,"orders":{"10":[1],"2":[0]}}"#);
        assert_eq!(request.to_grpc().customed_data, request.custom_data);
    }

    #[test]
    fn branch_orders_must_point_backwards() {
        let err = quick_order().add_branch_order(0, &[1]).request().unwrap_err();
        assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
        let err = quick_order().add_branch_order(5, &[0]).request().unwrap_err();
        assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
    }

    #[test]
    fn binary_payloads_cannot_go_over_http() {
        let saga = quick_order().add_raw("http://h/a", "http://h/c", vec![0xc8, 0x01]);
        let err = saga.request().unwrap().to_http_json().unwrap_err();
        assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
    }
}
