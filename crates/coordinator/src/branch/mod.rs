//! The branch caller: delivers one operation to one branch and classifies the answer.
//!
//! Every call carries dtm's four protocol values — `gid`, `trans_type`,
//! `branch_id`, `op` — as HTTP query parameters or as `dtm-` gRPC metadata
//! (written by `dtm_protocol`'s [`BranchCall`], the one writer the SDK and
//! the tools share), plus the transaction's `branch_headers` and a W3C
//! `traceparent` of the call's own span (`crate::trace`); a gRPC payload
//! travels verbatim through [`RawCodec`]. The answer becomes a
//! [`BranchResult`] through `dtm_protocol`'s `from_http` / `from_grpc`, so
//! the coordinator and the branches agree on what FAILURE and ONGOING look
//! like. Connections are pooled: one shared `reqwest::Client`, and one
//! lazily connected tonic `Channel` per gRPC server string, in a map bounded
//! by [`MAX_CHANNELS`] (least recently used evicted).
//!
//! Whoever can submit a transaction chooses the URLs the coordinator calls,
//! so the caller defends itself against what comes back: an HTTP reply body
//! is read up to [`MAX_REPLY_BYTES`] and no further, and redirects are not
//! followed (a 3xx is a retryable error, logged) — dtm follows them, but a
//! branch that redirects is misconfigured, and following lets a submitted
//! URL reach hosts nobody named.

mod channels;
mod workflow;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dtm_protocol::{BranchCall, BranchResult, RawCodec, TraceContext, TransType};
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

use crate::model::{BranchTarget, BranchUrl, GrpcTarget};

use channels::ChannelMap;

/// Largest HTTP branch reply read, in bytes: dtm's answers are a few dozen
/// bytes of JSON (`{"dtm_result":"SUCCESS"}`); a branch sending more than
/// this is broken or hostile, and its reply is a retryable error rather
/// than unbounded memory in the coordinator.
pub const MAX_REPLY_BYTES: usize = 1024 * 1024;

/// Most gRPC channels kept at once (one per distinct `host:port` ever named
/// in a branch URL). Beyond it the least recently used is dropped; a later
/// call to that server simply connects again.
pub const MAX_CHANNELS: usize = 256;

/// Why a channel to a discovery target could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResolveError(pub String);

/// Turns a discovery server string (`etcd://h1:2379,h2:2379/order.rpc`) into
/// a balanced channel. The coordinator itself dials only `host:port`
/// servers; [`discovery::ChannelCache`] (etcd, go-zero's key layout) is the
/// implementation used by default.
#[async_trait::async_trait]
pub trait BranchResolver: Send + Sync + 'static {
    /// A channel to `server`, called on every call to such a server: the
    /// resolver caches channels itself and may refuse a target whose
    /// instances have all gone.
    async fn channel(&self, server: &str) -> Result<Channel, ResolveError>;
}

#[async_trait::async_trait]
impl BranchResolver for discovery::ChannelCache {
    async fn channel(&self, server: &str) -> Result<Channel, ResolveError> {
        self.get(server).await.map_err(|e| ResolveError(e.to_string()))
    }
}

/// One branch operation to deliver.
#[derive(Debug, Clone)]
pub struct BranchRequest<'a> {
    /// Where to send it.
    pub url: &'a BranchUrl,
    /// Request body / gRPC message, verbatim.
    pub payload: &'a [u8],
    /// The dtm values of the call (gid, trans_type, branch_id, op; no `dtm`).
    pub call: BranchCall,
    /// Extra headers / metadata.
    pub headers: &'a BTreeMap<String, String>,
    /// The transaction's stored trace context: the call's span is its
    /// child, and the call carries the span's `traceparent`.
    pub trace: Option<&'a TraceContext>,
    /// Call deadline.
    pub timeout: Duration,
}

/// Calls branches over HTTP and gRPC, reusing connections. Cheap to clone.
#[derive(Clone)]
pub struct BranchCaller {
    /// One client for all HTTP branches: its pool keeps connections alive.
    http: reqwest::Client,
    /// gRPC channels by server string; a `Channel` multiplexes calls over one HTTP/2 connection.
    channels: Arc<Mutex<ChannelMap>>,
    /// Resolver for `etcd://` servers, if discovery is configured.
    resolver: Option<Arc<dyn BranchResolver>>,
}

impl std::fmt::Debug for BranchCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BranchCaller").field("has_resolver", &self.resolver.is_some()).finish_non_exhaustive()
    }
}

impl BranchCaller {
    /// A caller; `resolver` handles discovery URLs (`etcd://…`).
    pub fn new(resolver: Option<Arc<dyn BranchResolver>>) -> Result<BranchCaller, reqwest::Error> {
        BranchCaller::with_channel_capacity(resolver, MAX_CHANNELS)
    }

    /// Like [`BranchCaller::new`], keeping at most `capacity` gRPC channels.
    pub fn with_channel_capacity(
        resolver: Option<Arc<dyn BranchResolver>>,
        capacity: usize,
    ) -> Result<BranchCaller, reqwest::Error> {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(BranchCaller { http, channels: Arc::new(Mutex::new(ChannelMap::new(capacity))), resolver })
    }

    /// How many gRPC channels are kept now (at most the capacity).
    pub fn cached_channels(&self) -> usize {
        self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// Whether URLs of this shape can be called at all (checked at submit).
    pub fn supports(&self, url: &BranchUrl) -> Result<(), String> {
        match url.target() {
            BranchTarget::Grpc(t) if t.needs_discovery() && self.resolver.is_none() => {
                Err("etcd:// branch URLs need the etcd resolver".to_string())
            }
            _ => Ok(()),
        }
    }

    /// Delivers one operation. Never fails: transport problems are `Retry`.
    ///
    /// Each call is a client span (`crate::trace::branch_span`): gid,
    /// branch, op, URL, protocol and the outcome, a child of the pass that
    /// makes the call.
    pub async fn call(&self, call: &BranchRequest<'_>) -> BranchResult {
        let protocol = match call.url.target() {
            BranchTarget::Empty => return BranchResult::Success,
            BranchTarget::Http(_) => "http",
            BranchTarget::Grpc(_) => "grpc",
        };
        let (span, traceparent) =
            crate::trace::branch_span(&call.call, call.url.as_str(), protocol, call.trace);
        let result = match call.url.target() {
            BranchTarget::Grpc(target) => {
                self.call_grpc(target, call, traceparent.as_ref()).instrument(span.clone()).await
            }
            BranchTarget::Http(url) => {
                self.call_http(url, call, traceparent.as_ref()).instrument(span.clone()).await
            }
            BranchTarget::Empty => BranchResult::Success,
        };
        record_outcome(&span, &result);
        result
    }

    async fn call_http(
        &self,
        url: &url::Url,
        call: &BranchRequest<'_>,
        traceparent: Option<&TraceContext>,
    ) -> BranchResult {
        let mut url = url.clone();
        call.call.append_query(&mut url);
        self.send_http(url, call, traceparent).await
    }

    /// Sends an HTTP branch call to `url`, whose query already carries the
    /// dtm values (the workflow callback writes its own, `workflow.rs`).
    async fn send_http(
        &self,
        url: url::Url,
        call: &BranchRequest<'_>,
        traceparent: Option<&TraceContext>,
    ) -> BranchResult {
        // dtm's rule: POST when there is a body or the transaction is an
        // XA (its phase-2 calls have none), GET otherwise.
        let mut request = if call.payload.is_empty() && call.call.trans_type != TransType::Xa {
            self.http.get(url)
        } else {
            self.http
                .post(url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(call.payload.to_vec())
        };
        for (name, value) in call.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        // After the branch headers: the call's own span is the parent the
        // branch must see, whatever a client put in `branch_headers`.
        if let Some(trace) = traceparent {
            request = request.header(dtm_protocol::trace::TRACEPARENT, trace.traceparent());
            if let Some(state) = trace.tracestate() {
                request = request.header(dtm_protocol::trace::TRACESTATE, state);
            }
        }
        match request.timeout(call.timeout).send().await {
            Ok(response) => {
                let status = response.status();
                if status.is_redirection() {
                    let location = response
                        .headers()
                        .get(http::header::LOCATION)
                        .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
                        .unwrap_or_default();
                    let BranchCall { gid, branch_id, op, .. } = &call.call;
                    tracing::warn!(
                        %gid, %branch_id, %op, url = %call.url,
                        status = status.as_u16(), %location,
                        "branch answered with a redirect, which is not followed: fix the branch URL"
                    );
                    return BranchResult::Retry(format!(
                        "HTTP {} redirect to {location:?} not followed: branch URLs must name the branch itself",
                        status.as_u16()
                    ));
                }
                match read_capped(response, MAX_REPLY_BYTES).await {
                    Ok(body) => BranchResult::from_http(status.as_u16(), &String::from_utf8_lossy(&body)),
                    Err(e) => BranchResult::Retry(format!("reading HTTP {} reply: {e}", status.as_u16())),
                }
            }
            Err(e) => BranchResult::Retry(format!("HTTP request failed: {e}")),
        }
    }

    /// The channel for a `host:port` server: created once (lazily
    /// connected), then cloned — clones share the HTTP/2 connection.
    fn direct_channel(&self, server: &str) -> Result<Channel, ResolveError> {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(channel) = channels.get(server) {
            return Ok(channel);
        }
        let channel = Endpoint::from_shared(format!("http://{server}"))
            .map_err(|e| ResolveError(format!("bad gRPC server {server:?}: {e}")))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(server, channel.clone());
        Ok(channel)
    }

    async fn channel(&self, target: &GrpcTarget) -> Result<Channel, ResolveError> {
        if !target.needs_discovery() {
            return self.direct_channel(&target.server);
        }
        match &self.resolver {
            Some(resolver) => resolver.channel(&target.server).await,
            None => Err(ResolveError("etcd:// branch URLs need the etcd resolver".into())),
        }
    }

    async fn call_grpc(
        &self,
        target: &GrpcTarget,
        call: &BranchRequest<'_>,
        traceparent: Option<&TraceContext>,
    ) -> BranchResult {
        let channel = match self.channel(target).await {
            Ok(channel) => channel,
            Err(e) => return BranchResult::Retry(e.0),
        };
        let path = match http::uri::PathAndQuery::try_from(target.method.as_str()) {
            Ok(path) => path,
            Err(e) => return BranchResult::Retry(format!("bad method path {:?}: {e}", target.method)),
        };
        let mut request = tonic::Request::new(Bytes::copy_from_slice(call.payload));
        request.set_timeout(call.timeout);
        let headers = call.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        if let Err(bad) = call.call.insert_metadata(request.metadata_mut(), headers) {
            return BranchResult::Retry(format!("metadata {:?} is not valid ASCII metadata", bad.key()));
        }
        if let Some(trace) = traceparent {
            trace.insert_metadata(request.metadata_mut());
        }
        let mut grpc = tonic::client::Grpc::new(channel);
        // The reply message is not looked at: only the status matters.
        let outcome = tokio::time::timeout(call.timeout, async {
            grpc.ready().await.map_err(|e| tonic::Status::unavailable(format!("connecting: {e}")))?;
            grpc.unary::<Bytes, Bytes, _>(request, path, RawCodec).await
        })
        .await;
        match outcome {
            Ok(result) => BranchResult::from_grpc(result.as_ref().map(|_| ())),
            Err(_) => BranchResult::Retry(format!("no reply within {:?}", call.timeout)),
        }
    }
}

/// Writes a call's outcome on its span: an answer (even FAILURE) is a
/// call that worked; only a transport problem is an error.
fn record_outcome(span: &tracing::Span, result: &BranchResult) {
    let (outcome, ok) = match result {
        BranchResult::Success => ("success", true),
        BranchResult::Failure(_) => ("failure", true),
        BranchResult::Ongoing => ("ongoing", true),
        BranchResult::Retry(_) => ("error", false),
    };
    service_kit::trace::record_outcome(span, outcome, ok);
}

/// Why a reply body could not be read whole.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    /// More than the cap: announced by `Content-Length` or found while reading.
    #[error("reply larger than {0} bytes: not read (a dtm branch answers with a few bytes of JSON)")]
    TooLarge(usize),
    /// The connection failed or timed out mid-body.
    #[error(transparent)]
    Transport(#[from] reqwest::Error),
}

/// Reads `response`'s body, refusing it as soon as it exceeds `cap` bytes:
/// memory per call is bounded whatever the branch sends.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, ReadError> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(ReadError::TooLarge(cap));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > cap {
            return Err(ReadError::TooLarge(cap));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
