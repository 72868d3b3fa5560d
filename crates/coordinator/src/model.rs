//! The transaction model shared by the HTTP, JSON-RPC and gRPC APIs.
//!
//! Both APIs receive loosely typed input (dtm's JSON body, or `DtmRequest`
//! whose `Steps` is a JSON string). They fill a [`TransRequestInput`] and call
//! [`TransRequest::from_input`] — the ONE place where a request is validated.
//! After that, everything downstream works with typed values: a parsed
//! [`BranchUrl`] cannot be malformed, a [`GlobalStatus`] cannot be misspelled.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use dtm_protocol::{BranchId, Gid, TransType};
pub use dtm_protocol::{BranchStatus, GlobalStatus, Protocol};
use serde::{Deserialize, Serialize};

/// Largest accepted branch payload: dtm's `bin_data` is a MySQL `BLOB` (64 KiB − 1).
pub const MAX_PAYLOAD_BYTES: usize = 65_535;
/// Width of dtm's `url`, `options`, `custom_data`, `query_prepared` and `rollback_reason` columns.
pub const MAX_TEXT_COLUMN: usize = 1024;

/// Upper bounds of the per-transaction options, in the units dtm's API uses.
///
/// dtm accepts any `int64` and stores it; a `retry_interval` of 10^14 s
/// then overflows the time arithmetic of every retry. Ours are refused at
/// the API (400 / `InvalidArgument` naming the field, nothing stored), and
/// chosen so that no sensible use is refused:
///
/// | option | bound | why |
/// |---|---|---|
/// | `request_timeout` | 1 h | one branch call; longer work belongs in ONGOING + retry |
/// | `retry_interval` | 1 day | a saga retried less than daily is a saga nobody watches |
/// | `timeout_to_fail` | 30 days | an open TCC/msg or saga may wait long, not forever |
/// | msg `custom_data.delay` | 30 days | delayed delivery, same horizon as `timeout_to_fail` |
/// | `retry_limit` | 100 | immediate re-invocations within one pass (see the engine) |
///
/// 0 (or absent) still means "the server default" for each of them.
pub mod bounds {
    use std::time::Duration;

    /// Longest `request_timeout`: one hour.
    pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(3_600);
    /// Longest `retry_interval`: one day.
    pub const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(86_400);
    /// Longest `timeout_to_fail`: thirty days.
    pub const MAX_TIMEOUT_TO_FAIL: Duration = Duration::from_secs(30 * 86_400);
    /// Longest 2-phase message `delay` (`custom_data {"delay":N}`): thirty days.
    pub const MAX_MSG_DELAY: Duration = Duration::from_secs(30 * 86_400);
    /// Largest `retry_limit`.
    pub const MAX_RETRY_LIMIT: u32 = 100;
}

/// Why a request failed validation: the offending field and what is wrong
/// with it. The engine reports it as `EngineError::InvalidArgument`, which
/// the APIs answer with HTTP 400 / gRPC `InvalidArgument`; it lives here so
/// that the model depends on nothing above it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct InvalidInput {
    /// The offending field (`steps[0].action`, `gid`, …).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> InvalidInput {
    InvalidInput { field: field.to_string(), message: message.into() }
}

/// Where a gRPC branch lives: the dial target and the full method path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GrpcTarget {
    /// `host:port`, or a discovery target such as `etcd://h1:2379,h2:2379/trans.rpc`.
    pub server: String,
    /// Full method path, `/pkg.Service/Method`.
    pub method: String,
}

impl GrpcTarget {
    /// Whether the server must be resolved through service discovery (`scheme://…`).
    pub fn needs_discovery(&self) -> bool {
        self.server.contains("://")
    }
}

/// The transport a branch URL selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BranchTarget {
    /// Empty URL: dtm counts the call as an immediate success.
    Empty,
    /// `http://…` or `https://…`.
    Http(url::Url),
    /// `host:port/pkg.Svc/Method` or `etcd://hosts/key/pkg.Svc/Method`.
    Grpc(GrpcTarget),
}

/// A branch URL, parsed once at submit so that a typo is a 400 to the caller
/// instead of a transaction retried forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchUrl {
    raw: String,
    target: BranchTarget,
}

impl BranchUrl {
    /// The empty URL (immediate success).
    pub fn empty() -> BranchUrl {
        BranchUrl { raw: String::new(), target: BranchTarget::Empty }
    }

    /// Parses a branch URL.
    ///
    /// * `""` → [`BranchTarget::Empty`];
    /// * `http(s)://…` → HTTP;
    /// * no `//` → direct gRPC, split at the first `/` (dtm's default driver);
    /// * `etcd://` or `discov://` → gRPC through discovery, server =
    ///   `scheme://hosts/<first path segment>`, method = the rest (go-zero
    ///   driver `ParseServerMethod`, in dtm-driver-gozero).
    pub fn parse(raw: &str) -> Result<BranchUrl, String> {
        let target = if raw.is_empty() {
            BranchTarget::Empty
        } else if raw.starts_with("http://") || raw.starts_with("https://") {
            let url = url::Url::parse(raw).map_err(|e| format!("invalid HTTP URL {raw:?}: {e}"))?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err(format!("HTTP URL {raw:?} has no host"));
            }
            BranchTarget::Http(url)
        } else if let Some((scheme, rest)) = raw.split_once("://") {
            if scheme != "etcd" && scheme != "discov" {
                return Err(format!("unsupported branch URL scheme {scheme:?} in {raw:?}"));
            }
            let rest = rest.split_once('?').map_or(rest, |(path, _query)| path);
            let (hosts, path) =
                rest.split_once('/').ok_or_else(|| format!("{raw:?} has no service key and method"))?;
            let (key, method) =
                path.split_once('/').ok_or_else(|| format!("{raw:?} has no method after the service key"))?;
            if hosts.is_empty() || key.is_empty() {
                return Err(format!("{raw:?} needs hosts and a service key"));
            }
            BranchTarget::Grpc(GrpcTarget {
                server: format!("{scheme}://{hosts}/{key}"),
                method: check_method(raw, method)?,
            })
        } else {
            let (server, method) = raw
                .split_once('/')
                .ok_or_else(|| format!("gRPC URL {raw:?} must be host:port/pkg.Svc/Method"))?;
            let port_ok = server.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
            });
            if !port_ok {
                return Err(format!("gRPC URL {raw:?} must start with host:port"));
            }
            BranchTarget::Grpc(GrpcTarget { server: server.to_string(), method: check_method(raw, method)? })
        };
        if raw.len() > MAX_TEXT_COLUMN {
            return Err(format!("URL longer than {MAX_TEXT_COLUMN} bytes"));
        }
        Ok(BranchUrl { raw: raw.to_string(), target })
    }

    /// The URL exactly as submitted (what the `url` column stores).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The transport and address.
    pub fn target(&self) -> &BranchTarget {
        &self.target
    }
}

/// `pkg.Svc/Method` → `/pkg.Svc/Method`, refusing anything else.
fn check_method(raw: &str, method: &str) -> Result<String, String> {
    let ok = method.split_once('/').is_some_and(|(svc, m)| {
        !svc.is_empty() && !m.is_empty() && !m.contains('/') && !svc.contains(char::is_whitespace)
    });
    if ok { Ok(format!("/{method}")) } else { Err(format!("{raw:?}: method must be pkg.Service/Method")) }
}

impl fmt::Display for BranchUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// One step of a transaction, per type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A saga step: the forward action and its compensation.
    Saga {
        /// Forward operation (op `action`).
        action: BranchUrl,
        /// Undo operation (op `compensate`); empty = nothing to undo.
        compensate: BranchUrl,
    },
    /// A 2-phase message step (op `action`).
    Msg {
        /// The action to deliver.
        action: BranchUrl,
    },
    /// A 2-phase message step whose action is `topic://name`: one `action`
    /// row per subscriber of the topic when the message is created
    /// (`crate::topics`).
    Topic {
        /// The topic to deliver to.
        topic: dtm_protocol::Topic,
    },
}

/// Per-transaction options (dtm's `TransOptions`, `dtmcli/dtmimp/trans_base.go`). `None` = use the server default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransOptions {
    /// Submit returns only after one synchronous processing pass.
    pub wait_result: bool,
    /// Saga: the only source of a timeout; msg/tcc/xa: overrides the server default.
    pub timeout_to_fail: Option<Duration>,
    /// Per-branch-call timeout.
    pub request_timeout: Option<Duration>,
    /// Base retry interval.
    pub retry_interval: Option<Duration>,
    /// Extra HTTP headers / gRPC metadata on every branch call.
    pub branch_headers: BTreeMap<String, String>,
    /// Saga: immediate re-invocations of an undecided action before aborting (dtm's `dtmsvr/trans_type_saga.go`).
    pub retry_limit: Option<u32>,
    /// Msg: run actions concurrently.
    pub concurrent: bool,
    /// The W3C trace context the transaction continues (`crate::trace`):
    /// from the creating request, stored in `ext_data` — not in the
    /// `options` column, which holds dtm's options only.
    pub trace: Option<dtm_protocol::TraceContext>,
}

/// The `options` column: dtm's JSON field names, integers in seconds, 0 = unset.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct StoredOptions {
    wait_result: bool,
    timeout_to_fail: i64,
    request_timeout: i64,
    retry_interval: i64,
    branch_headers: BTreeMap<String, String>,
    concurrent: bool,
    retry_limit: i64,
    retry_count: i64,
}

fn secs(d: Option<Duration>) -> i64 {
    d.map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A duration option in seconds: 0 = unset, otherwise `1..=max`.
fn from_secs(field: &str, s: i64, max: Duration) -> Result<Option<Duration>, InvalidInput> {
    match u64::try_from(s) {
        Ok(0) => Ok(None),
        Ok(s) if s <= max.as_secs() => Ok(Some(Duration::from_secs(s))),
        _ => Err(invalid(
            field,
            format!("must be between 0 (server default) and {} seconds, got {s}", max.as_secs()),
        )),
    }
}

/// A 2-phase message's `custom_data`: empty, or a JSON object whose
/// optional `delay` is a whole number of seconds up to [`bounds::MAX_MSG_DELAY`].
/// The engine reads the same field back (`engine::sequence`).
fn check_msg_custom_data(custom_data: &str) -> Result<(), InvalidInput> {
    if custom_data.trim().is_empty() {
        return Ok(());
    }
    let value: serde_json::Value = serde_json::from_str(custom_data)
        .map_err(|e| invalid("custom_data", format!("not a msg custom_data object: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(invalid("custom_data", "a msg custom_data must be a JSON object"));
    };
    match object.get("delay") {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(delay) => match delay.as_u64() {
            Some(n) if n <= bounds::MAX_MSG_DELAY.as_secs() => Ok(()),
            _ => Err(invalid(
                "custom_data.delay",
                format!(
                    "must be a whole number of seconds between 0 and {}, got {delay}",
                    bounds::MAX_MSG_DELAY.as_secs()
                ),
            )),
        },
    }
}

impl TransOptions {
    /// Serializes to the `options` column format (dtm-compatible JSON).
    pub fn to_stored_json(&self) -> String {
        let stored = StoredOptions {
            wait_result: self.wait_result,
            timeout_to_fail: secs(self.timeout_to_fail),
            request_timeout: secs(self.request_timeout),
            retry_interval: secs(self.retry_interval),
            branch_headers: self.branch_headers.clone(),
            concurrent: self.concurrent,
            retry_limit: self.retry_limit.map_or(0, i64::from),
            retry_count: 0,
        };
        // Serializing a struct of plain fields cannot fail.
        serde_json::to_string(&stored).unwrap_or_default()
    }

    /// Reads the `options` column back; an empty or unreadable column gives
    /// the defaults. Values beyond [`bounds`] — which the API refuses, but
    /// dtm, an older version or a hand edit may have stored — are clamped to
    /// the bound, so that no stored row can push the engine's intervals past
    /// what the `next_cron_interval` column (dtm's `int(11)`) holds.
    pub fn from_stored_json(json: &str) -> TransOptions {
        let stored: StoredOptions = serde_json::from_str(json).unwrap_or_default();
        let pos = |s: i64, max: Duration| (s > 0).then(|| Duration::from_secs(s.unsigned_abs()).min(max));
        TransOptions {
            wait_result: stored.wait_result,
            timeout_to_fail: pos(stored.timeout_to_fail, bounds::MAX_TIMEOUT_TO_FAIL),
            request_timeout: pos(stored.request_timeout, bounds::MAX_REQUEST_TIMEOUT),
            retry_interval: pos(stored.retry_interval, bounds::MAX_RETRY_INTERVAL),
            branch_headers: stored.branch_headers,
            concurrent: stored.concurrent,
            retry_limit: (stored.retry_limit > 0)
                .then(|| u32::try_from(stored.retry_limit).unwrap_or(u32::MAX).min(bounds::MAX_RETRY_LIMIT)),
            trace: None,
        }
    }
}

/// A saga's `custom_data`: `{"concurrent":true,"orders":{"1":[0]}}` — step 1
/// may start only after step 0 succeeded (0-based step indexes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SagaOrders {
    /// Run actions concurrently (subject to `orders`).
    pub concurrent: bool,
    /// step index → indexes of the steps that must succeed first.
    pub orders: BTreeMap<usize, Vec<usize>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SagaCustomData {
    concurrent: bool,
    orders: BTreeMap<String, Vec<usize>>,
}

impl SagaOrders {
    /// Parses and validates `custom_data` for a saga with `steps` steps:
    /// indexes in range, no step depending on itself, no cycles.
    pub fn parse(custom_data: &str, steps: usize) -> Result<SagaOrders, InvalidInput> {
        if custom_data.trim().is_empty() {
            return Ok(SagaOrders::default());
        }
        let raw: SagaCustomData = serde_json::from_str(custom_data)
            .map_err(|e| invalid("custom_data", format!("not a saga custom_data object: {e}")))?;
        let mut orders = BTreeMap::new();
        for (key, before) in raw.orders {
            let step: usize = key
                .parse()
                .map_err(|_| invalid("custom_data", format!("order key {key:?} is not a step index")))?;
            for &b in before.iter().chain(std::iter::once(&step)) {
                if b >= steps {
                    return Err(invalid("custom_data", format!("step index {b} out of range (0..{steps})")));
                }
            }
            orders.insert(step, before);
        }
        let parsed = SagaOrders { concurrent: raw.concurrent, orders };
        parsed.check_acyclic()?;
        Ok(parsed)
    }

    /// Kahn's algorithm: if some step can never become ready, there is a cycle.
    fn check_acyclic(&self) -> Result<(), InvalidInput> {
        let mut done = BTreeSet::new();
        let nodes: BTreeSet<usize> =
            self.orders.iter().flat_map(|(k, v)| v.iter().copied().chain(std::iter::once(*k))).collect();
        loop {
            let ready: Vec<usize> = nodes
                .iter()
                .copied()
                .filter(|n| !done.contains(n))
                .filter(|n| self.prerequisites(*n).iter().all(|p| done.contains(p)))
                .collect();
            if ready.is_empty() {
                break;
            }
            done.extend(ready);
        }
        if done.len() == nodes.len() { Ok(()) } else { Err(invalid("custom_data", "orders contain a cycle")) }
    }

    /// Steps that must succeed before `step` may start.
    pub fn prerequisites(&self, step: usize) -> &[usize] {
        self.orders.get(&step).map_or(&[], Vec::as_slice)
    }
}

/// A request as the APIs receive it, before validation. The HTTP layer can
/// deserialize dtm's JSON body straight into it (payloads are JSON strings
/// there); the gRPC layer fills it from `DtmRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TransRequestInput {
    /// Global id.
    pub gid: String,
    /// `saga`, `msg`, `tcc`, `xa`, `workflow`.
    pub trans_type: String,
    /// Step maps (`action`, `compensate`).
    #[serde(deserialize_with = "null_as_default")]
    pub steps: Vec<BTreeMap<String, String>>,
    /// One payload per step.
    #[serde(deserialize_with = "payloads_from_strings")]
    pub payloads: Vec<Vec<u8>>,
    /// Type-specific JSON (saga orders, msg delay).
    pub custom_data: String,
    /// Msg check-back URL / workflow callback.
    pub query_prepared: String,
    /// `http` (default), `grpc`, `json-rpc`.
    pub protocol: String,
    /// See [`TransOptions::wait_result`].
    pub wait_result: bool,
    /// Seconds; 0 = unset.
    pub timeout_to_fail: i64,
    /// Seconds; 0 = unset.
    pub request_timeout: i64,
    /// Seconds; 0 = unset.
    pub retry_interval: i64,
    /// Extra headers / metadata for branch calls.
    #[serde(deserialize_with = "null_as_default")]
    pub branch_headers: BTreeMap<String, String>,
    /// 0 = unset.
    pub retry_limit: i64,
    /// Msg concurrency.
    pub concurrent: bool,
    /// Abort reason.
    pub rollback_reason: String,
    /// Workflow submit extras.
    #[serde(deserialize_with = "null_as_default")]
    pub req_extra: BTreeMap<String, String>,
}

/// Go encodes a nil map or slice as `null`; read it as empty.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn payloads_from_strings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
    let strings: Option<Vec<String>> = Option::deserialize(d)?;
    Ok(strings.unwrap_or_default().into_iter().map(String::into_bytes).collect())
}

/// A validated transaction request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransRequest {
    /// Global id.
    pub gid: Gid,
    /// Transaction type.
    pub trans_type: TransType,
    /// Parsed steps (saga / msg; empty for the others).
    pub steps: Vec<Step>,
    /// Payload of each step, index-aligned with `steps`.
    pub payloads: Vec<Vec<u8>>,
    /// Raw `custom_data` (validated for sagas).
    pub custom_data: String,
    /// Msg check-back URL (parsed when non-empty).
    pub query_prepared: String,
    /// Transport default for the branches.
    pub protocol: Protocol,
    /// Options.
    pub options: TransOptions,
    /// Abort reason given by the caller.
    pub rollback_reason: String,
    /// Workflow extras.
    pub req_extra: BTreeMap<String, String>,
}

fn step_url(steps: &BTreeMap<String, String>, index: usize, key: &str) -> Result<BranchUrl, InvalidInput> {
    let raw = steps.get(key).map_or("", String::as_str);
    BranchUrl::parse(raw).map_err(|m| invalid(&format!("steps[{index}].{key}"), m))
}

/// The steps of a saga or msg (`action`, and `compensate` for a saga); other
/// types take none.
fn steps_of(trans_type: TransType, steps: &[BTreeMap<String, String>]) -> Result<Vec<Step>, InvalidInput> {
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| match trans_type {
            TransType::Saga => Ok(Step::Saga {
                action: step_url(s, i, "action")?,
                compensate: step_url(s, i, "compensate")?,
            }),
            TransType::Msg => {
                match dtm_protocol::Topic::from_action(s.get("action").map_or("", String::as_str)) {
                    Some(topic) => Ok(Step::Topic {
                        topic: topic.map_err(|e| invalid(&format!("steps[{i}].action"), e.to_string()))?,
                    }),
                    None => Ok(Step::Msg { action: step_url(s, i, "action")? }),
                }
            }
            other => Err(invalid("steps", format!("{other} transactions take no steps"))),
        })
        .collect()
}

/// The per-transaction options of a request, within [`bounds`]; takes the
/// branch headers out of `input`.
fn options_of(input: &mut TransRequestInput) -> Result<TransOptions, InvalidInput> {
    let retry_limit = match u32::try_from(input.retry_limit) {
        Ok(0) => None,
        Ok(n) if n <= bounds::MAX_RETRY_LIMIT => Some(n),
        _ => {
            return Err(invalid(
                "retry_limit",
                format!(
                    "must be between 0 (no limit) and {}, got {}",
                    bounds::MAX_RETRY_LIMIT,
                    input.retry_limit
                ),
            ));
        }
    };
    let options = TransOptions {
        wait_result: input.wait_result,
        timeout_to_fail: from_secs("timeout_to_fail", input.timeout_to_fail, bounds::MAX_TIMEOUT_TO_FAIL)?,
        request_timeout: from_secs("request_timeout", input.request_timeout, bounds::MAX_REQUEST_TIMEOUT)?,
        retry_interval: from_secs("retry_interval", input.retry_interval, bounds::MAX_RETRY_INTERVAL)?,
        branch_headers: std::mem::take(&mut input.branch_headers),
        retry_limit,
        concurrent: input.concurrent,
        // Set by the API from the request's headers, not from its body.
        trace: None,
    };
    for name in options.branch_headers.keys() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(invalid("branch_headers", format!("{name:?} is not a valid header name")));
        }
    }
    if options.to_stored_json().len() > MAX_TEXT_COLUMN {
        return Err(invalid("branch_headers", format!("options longer than {MAX_TEXT_COLUMN} bytes")));
    }
    Ok(options)
}

impl TransRequest {
    /// Validates an API request. The only constructor; both APIs use it.
    ///
    /// Refuses: empty or malformed gid, unknown trans_type or protocol,
    /// steps/payloads count mismatch, unparsable branch URLs, payloads over
    /// [`MAX_PAYLOAD_BYTES`], text fields wider than their columns, durations
    /// and counts outside [`bounds`], (sagas) invalid `custom_data` orders
    /// and (msgs) a `custom_data` that is not `{"delay":N}`-shaped.
    pub fn from_input(mut input: TransRequestInput) -> Result<TransRequest, InvalidInput> {
        let gid = Gid::new(std::mem::take(&mut input.gid)).map_err(|e| invalid("gid", e.to_string()))?;
        let trans_type: TransType = input
            .trans_type
            .parse()
            .map_err(|e: dtm_protocol::ProtocolError| invalid("trans_type", e.to_string()))?;
        let protocol =
            Protocol::parse_or_default(&input.protocol).map_err(|e| invalid("protocol", e.to_string()))?;
        let steps = steps_of(trans_type, &input.steps)?;
        if !input.payloads.is_empty() && input.payloads.len() != steps.len() {
            return Err(invalid(
                "payloads",
                format!("{} payloads for {} steps", input.payloads.len(), steps.len()),
            ));
        }
        let mut payloads = std::mem::take(&mut input.payloads);
        payloads.resize(steps.len(), Vec::new());
        if let Some(i) = payloads.iter().position(|p| p.len() > MAX_PAYLOAD_BYTES) {
            return Err(invalid(&format!("payloads[{i}]"), format!("larger than {MAX_PAYLOAD_BYTES} bytes")));
        }
        for (field, value) in [
            ("custom_data", &input.custom_data),
            ("query_prepared", &input.query_prepared),
            ("rollback_reason", &input.rollback_reason),
        ] {
            if value.len() > MAX_TEXT_COLUMN {
                return Err(invalid(field, format!("longer than {MAX_TEXT_COLUMN} bytes")));
            }
        }
        if !input.query_prepared.is_empty() {
            BranchUrl::parse(&input.query_prepared).map_err(|m| invalid("query_prepared", m))?;
        }
        match trans_type {
            TransType::Saga => {
                SagaOrders::parse(&input.custom_data, steps.len())?;
            }
            TransType::Msg => check_msg_custom_data(&input.custom_data)?,
            _ => {}
        }
        let options = options_of(&mut input)?;
        Ok(TransRequest {
            gid,
            trans_type,
            steps,
            payloads,
            custom_data: input.custom_data,
            query_prepared: input.query_prepared,
            protocol,
            options,
            rollback_reason: input.rollback_reason,
            req_extra: input.req_extra,
        })
    }
}

/// What a `registerBranch` call adds (TCC / XA; dtm's `dtmsvr/api.go`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterBranchRequest {
    /// The prepared global transaction.
    pub gid: Gid,
    /// `tcc` or `xa`.
    pub trans_type: TransType,
    /// The branch's id, chosen by the client.
    pub branch_id: BranchId,
    /// Payload sent later with confirm/cancel (`bin_data`).
    pub data: Vec<u8>,
    /// The phase-2 URLs, per type.
    pub urls: RegisteredUrls,
}

/// Phase-2 URLs of a registered branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisteredUrls {
    /// TCC: rows `cancel` then `confirm`.
    Tcc {
        /// Op `confirm`.
        confirm: BranchUrl,
        /// Op `cancel`.
        cancel: BranchUrl,
    },
    /// XA: rows `rollback` then `commit`, same URL.
    Xa {
        /// Phase-2 URL.
        url: BranchUrl,
    },
    /// Workflow: no URL, one progress row with the op and final status the
    /// SDK recorded (`crate::engine::workflow`).
    Workflow {
        /// `action`, `commit`, `rollback` or `business`.
        op: dtm_protocol::Op,
        /// `succeed` or `failed`.
        status: BranchStatus,
    },
}

impl RegisterBranchRequest {
    /// Validates dtm's flat string map (`gid`, `trans_type`, `branch_id`, `confirm`,
    /// `cancel` / `url`, `data`). `payload` overrides `data` (gRPC's `BusiPayload`).
    pub fn from_map(
        map: &BTreeMap<String, String>,
        payload: Option<Vec<u8>>,
    ) -> Result<RegisterBranchRequest, InvalidInput> {
        let get = |k: &str| map.get(k).map_or("", String::as_str);
        let gid = Gid::new(get("gid")).map_err(|e| invalid("gid", e.to_string()))?;
        let trans_type: TransType = get("trans_type")
            .parse()
            .map_err(|e: dtm_protocol::ProtocolError| invalid("trans_type", e.to_string()))?;
        let branch_id = BranchId::new(get("branch_id")).map_err(|e| invalid("branch_id", e.to_string()))?;
        let url = |k: &str| BranchUrl::parse(get(k)).map_err(|m| invalid(k, m));
        let urls = match trans_type {
            TransType::Tcc => RegisteredUrls::Tcc { confirm: url("confirm")?, cancel: url("cancel")? },
            TransType::Xa => RegisteredUrls::Xa { url: url("url")? },
            TransType::Workflow => workflow_progress(get("op"), get("status"))?,
            other => return Err(invalid("trans_type", format!("cannot register a branch of a {other}"))),
        };
        let data = payload.unwrap_or_else(|| get("data").as_bytes().to_vec());
        if data.len() > MAX_PAYLOAD_BYTES {
            return Err(invalid("data", format!("larger than {MAX_PAYLOAD_BYTES} bytes")));
        }
        Ok(RegisterBranchRequest { gid, trans_type, branch_id, data, urls })
    }
}

/// A workflow progress's `op` and `status` (dtm's workflow SDK records
/// `action`, `commit` and `rollback` steps, and an XA step's `business`,
/// as `succeed` or `failed`).
fn workflow_progress(op: &str, status: &str) -> Result<RegisteredUrls, InvalidInput> {
    let op: dtm_protocol::Op =
        op.parse().map_err(|e: dtm_protocol::ProtocolError| invalid("op", e.to_string()))?;
    use dtm_protocol::Op;
    if !matches!(op, Op::Action | Op::Commit | Op::Rollback | Op::Business) {
        return Err(invalid(
            "op",
            format!("a workflow records action, commit, rollback or business, not {op}"),
        ));
    }
    let status: BranchStatus =
        status.parse().map_err(|e: dtm_protocol::ProtocolError| invalid("status", e.to_string()))?;
    if status == BranchStatus::Prepared {
        return Err(invalid("status", "a workflow progress is succeed or failed"));
    }
    Ok(RegisteredUrls::Workflow { op, status })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saga_input(steps: &[(&str, &str)]) -> TransRequestInput {
        TransRequestInput {
            gid: "g1".into(),
            trans_type: "saga".into(),
            steps: steps
                .iter()
                .map(|(a, c)| {
                    BTreeMap::from([("action".into(), a.to_string()), ("compensate".into(), c.to_string())])
                })
                .collect(),
            payloads: steps.iter().map(|_| b"{}".to_vec()).collect(),
            ..Default::default()
        }
    }

    fn field_of(e: InvalidInput) -> String {
        e.field
    }

    #[test]
    fn parses_the_three_url_shapes() {
        let http = BranchUrl::parse("http://h:1/a?x=1").unwrap();
        assert!(matches!(http.target(), BranchTarget::Http(u) if u.query() == Some("x=1")));
        let grpc = BranchUrl::parse("localhost:9001/pb.order/create").unwrap();
        assert_eq!(
            grpc.target(),
            &BranchTarget::Grpc(GrpcTarget {
                server: "localhost:9001".into(),
                method: "/pb.order/create".into()
            })
        );
        let etcd = BranchUrl::parse("etcd://h1:2379,h2:2379/order.rpc/pb.order/create").unwrap();
        assert_eq!(
            etcd.target(),
            &BranchTarget::Grpc(GrpcTarget {
                server: "etcd://h1:2379,h2:2379/order.rpc".into(),
                method: "/pb.order/create".into()
            })
        );
        assert_eq!(BranchUrl::parse("").unwrap().target(), &BranchTarget::Empty);
        for bad in ["localhost/pb.order/create", "h:1/nomethod", "consul://h/x/a.B/C", "h:1/a/b/c", "http://"]
        {
            assert!(BranchUrl::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn validates_requests() {
        let ok = TransRequest::from_input(saga_input(&[("h:1/a.B/C", "h:1/a.B/D")])).unwrap();
        assert_eq!(ok.steps.len(), 1);
        assert_eq!(ok.protocol, Protocol::Http);

        let mut mismatch = saga_input(&[("h:1/a.B/C", "")]);
        mismatch.payloads.push(vec![]);
        assert_eq!(field_of(TransRequest::from_input(mismatch).unwrap_err()), "payloads");

        assert_eq!(
            field_of(TransRequest::from_input(saga_input(&[("bad", "")])).unwrap_err()),
            "steps[0].action"
        );

        let mut no_gid = saga_input(&[]);
        no_gid.gid.clear();
        assert_eq!(field_of(TransRequest::from_input(no_gid).unwrap_err()), "gid");

        let mut unknown = saga_input(&[]);
        unknown.trans_type = "sagax".into();
        assert_eq!(field_of(TransRequest::from_input(unknown).unwrap_err()), "trans_type");

        let mut big = saga_input(&[("h:1/a.B/C", "")]);
        big.payloads[0] = vec![b'x'; MAX_PAYLOAD_BYTES + 1];
        assert_eq!(field_of(TransRequest::from_input(big).unwrap_err()), "payloads[0]");
    }

    #[test]
    fn every_duration_and_count_option_is_bounded() {
        type Set = fn(&mut TransRequestInput, i64);
        let cases: [(&str, i64, Set); 4] = [
            ("request_timeout", 3_600, |i, v| i.request_timeout = v),
            ("retry_interval", 86_400, |i, v| i.retry_interval = v),
            ("timeout_to_fail", 2_592_000, |i, v| i.timeout_to_fail = v),
            ("retry_limit", 100, |i, v| i.retry_limit = v),
        ];
        for (field, max, set) in cases {
            for ok in [0, 1, max] {
                let mut input = saga_input(&[("h:1/a.B/C", "")]);
                set(&mut input, ok);
                assert!(TransRequest::from_input(input).is_ok(), "{field}={ok}");
            }
            for bad in [max + 1, -1, 100_000_000_000_000, i64::MAX, i64::MIN] {
                let mut input = saga_input(&[("h:1/a.B/C", "")]);
                set(&mut input, bad);
                assert_eq!(field_of(TransRequest::from_input(input).unwrap_err()), field, "{field}={bad}");
            }
        }
        // A stored row beyond the bounds (dtm, an older version, a hand edit) reads back clamped.
        let hostile = format!(
            r#"{{"retry_interval":{m},"timeout_to_fail":{m},"request_timeout":{m},"retry_limit":{m}}}"#,
            m = i64::MAX
        );
        let clamped = TransOptions::from_stored_json(&hostile);
        assert_eq!(clamped.retry_interval, Some(bounds::MAX_RETRY_INTERVAL));
        assert_eq!(clamped.timeout_to_fail, Some(bounds::MAX_TIMEOUT_TO_FAIL));
        assert_eq!(clamped.request_timeout, Some(bounds::MAX_REQUEST_TIMEOUT));
        assert_eq!(clamped.retry_limit, Some(bounds::MAX_RETRY_LIMIT));
        let msg = |custom: &str| TransRequestInput {
            gid: "m1".into(),
            trans_type: "msg".into(),
            steps: vec![BTreeMap::from([("action".into(), "h:1/a.B/C".into())])],
            custom_data: custom.into(),
            ..Default::default()
        };
        for ok in ["", r#"{"delay":0}"#, r#"{"delay":2592000}"#, r#"{"other":1}"#, r#"{"delay":null}"#] {
            assert!(TransRequest::from_input(msg(ok)).is_ok(), "{ok}");
        }
        for (bad, field) in [
            (r#"{"delay":2592001}"#, "custom_data.delay"),
            (r#"{"delay":100000000000000}"#, "custom_data.delay"),
            (r#"{"delay":18446744073709551615}"#, "custom_data.delay"),
            (r#"{"delay":-1}"#, "custom_data.delay"),
            (r#"{"delay":1.5}"#, "custom_data.delay"),
            (r#"{"delay":"10"}"#, "custom_data.delay"),
            ("[1]", "custom_data"),
            ("not json", "custom_data"),
        ] {
            assert_eq!(field_of(TransRequest::from_input(msg(bad)).unwrap_err()), field, "{bad}");
        }
    }

    #[test]
    fn saga_orders_are_checked() {
        let o = SagaOrders::parse(r#"{"concurrent":true,"orders":{"1":[0]}}"#, 2).unwrap();
        assert!(o.concurrent);
        assert_eq!(o.prerequisites(1), &[0]);
        assert_eq!(o.prerequisites(0), &[] as &[usize]);
        assert!(SagaOrders::parse(r#"{"orders":{"2":[0]}}"#, 2).is_err());
        assert!(SagaOrders::parse(r#"{"orders":{"0":[1],"1":[0]}}"#, 2).is_err());
        assert!(SagaOrders::parse(r#"{"orders":{"0":[0]}}"#, 2).is_err());
        assert!(SagaOrders::parse("not json", 2).is_err());
    }

    #[test]
    fn http_json_body_deserializes() {
        let body = r#"{"gid":"g","trans_type":"saga","steps":[{"action":"http://h/a","compensate":"http://h/c"}],
            "payloads":["{\"amount\":30}"],"wait_result":true,"retry_interval":2}"#;
        let input: TransRequestInput = serde_json::from_str(body).unwrap();
        let req = TransRequest::from_input(input).unwrap();
        assert_eq!(req.payloads[0], br#"{"amount":30}"#);
        assert_eq!(req.options.retry_interval, Some(Duration::from_secs(2)));
        assert!(req.options.wait_result);
        let back = TransOptions::from_stored_json(&req.options.to_stored_json());
        assert_eq!(back, req.options);

        // Go sends nil maps and slices as null.
        let go = r#"{"gid":"g","trans_type":"tcc","steps":null,"payloads":null,"branch_headers":null,
            "req_extra":null,"custom_data":"","wait_result":false,"concurrent":false}"#;
        let req = TransRequest::from_input(serde_json::from_str(go).unwrap()).unwrap();
        assert!(req.steps.is_empty() && req.options.branch_headers.is_empty());
    }

    /// Workflow progress ops are dtm's four (`business`: an XA step's
    /// local transaction); anything else names the field.
    #[test]
    fn workflow_progress_accepts_dtms_ops() {
        use dtm_protocol::Op;
        let register = |op: &str, status: &str| {
            let map = BTreeMap::from([
                ("gid".to_string(), "w1".to_string()),
                ("trans_type".to_string(), "workflow".to_string()),
                ("branch_id".to_string(), "02".to_string()),
                ("op".to_string(), op.to_string()),
                ("status".to_string(), status.to_string()),
            ]);
            RegisterBranchRequest::from_map(&map, None)
        };
        for op in [Op::Action, Op::Commit, Op::Rollback, Op::Business] {
            let req = register(op.as_str(), "succeed").unwrap();
            assert!(
                matches!(req.urls, RegisteredUrls::Workflow { op: o, status: BranchStatus::Succeed } if o == op)
            );
        }
        assert!(matches!(
            register("business", "failed").unwrap().urls,
            RegisteredUrls::Workflow { op: Op::Business, status: BranchStatus::Failed }
        ));
        assert_eq!(field_of(register("compensate", "succeed").unwrap_err()), "op");
        assert_eq!(field_of(register("business", "prepared").unwrap_err()), "status");
    }
}
