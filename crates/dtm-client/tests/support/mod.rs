//! Harness of the client's end-to-end tests: our coordinator in process
//! (SQLite store, fast retries), and branch servers that record every call
//! with its dtm values.
//!
//! * [`HttpBranches`] — an axum server answering any path; per-path
//!   scripts of replies, and per-path *hooks* (async functions) for
//!   branches with real behaviour (a barrier on SQLite, a nested TCC);
//! * [`GrpcBranches`] — a gRPC server answering any method with the raw
//!   request bytes recorded (tonic's server, with an axum fallback as its
//!   only route), per-method scripts of status codes.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use coordinator::config::{Config, StoreConfig, StoreDriver};
use coordinator::server::Coordinator;
use discovery::ChannelCache;
use dtm_client::{DtmClient, QueryResult, TransStatus};
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio::sync::oneshot;

/// A coordinator on a task of the test's runtime.
pub struct InProcess {
    /// `http://127.0.0.1:port/api/dtmsvr`.
    pub http: String,
    /// `127.0.0.1:port` (gRPC).
    pub grpc: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), coordinator::server::ServerError>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    /// Fast timing: retries after 1-2 s, the recovery poller every second,
    /// prepared transactions time out after `timeout_to_fail` s.
    pub async fn start() -> InProcess {
        test_support::init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config {
            listen_host: "127.0.0.1".into(),
            http_port: 0,
            grpc_port: 0,
            store: StoreConfig {
                driver: StoreDriver::Sqlite,
                db: dir.path().join("coordinator.db").display().to_string(),
                ..StoreConfig::default()
            },
            retry_interval: 1,
            max_retry_interval: 2,
            timeout_to_fail: 30,
            request_timeout: 3,
            trans_cron_interval: 1,
            ..Config::default()
        };
        let coordinator = Coordinator::build(config).await.expect("build coordinator");
        let http = format!("http://{}/api/dtmsvr", coordinator.http_addr());
        let grpc = coordinator.grpc_addr().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(coordinator.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        InProcess { http, grpc, stop: Some(stop), task, _dir: dir }
    }

    /// A client of the HTTP API.
    pub fn http_client(&self) -> DtmClient {
        DtmClient::new(&self.http, ChannelCache::new()).expect("http client")
    }

    /// A client of the gRPC API.
    pub fn grpc_client(&self) -> DtmClient {
        DtmClient::new(&self.grpc, ChannelCache::new()).expect("grpc client")
    }

    /// The transaction and its branches.
    pub async fn query(&self, gid: &str) -> QueryResult {
        self.http_client().query(&gid.parse().unwrap()).await.expect("query")
    }

    /// The status of `gid`.
    pub async fn status(&self, gid: &str) -> Option<TransStatus> {
        self.query(gid).await.transaction.map(|t| t.status)
    }

    /// Polls until `gid` is succeed or failed.
    pub async fn wait_final(&self, gid: &str, timeout: Duration) -> TransStatus {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.status(gid).await
                && status.is_final()
            {
                return status;
            }
            assert!(tokio::time::Instant::now() < deadline, "{gid} not final after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `(branch_id, op, status)` of every branch row, in row order.
    pub async fn branches(&self, gid: &str) -> Vec<(String, String, String)> {
        self.query(gid)
            .await
            .branches
            .into_iter()
            .map(|b| (b.branch_id, b.op, format!("{:?}", b.status).to_lowercase()))
            .collect()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

/// How a branch answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// 200 / OK.
    Ok,
    /// 409 / Aborted("FAILURE").
    Failure,
    /// 425 / FailedPrecondition.
    Ongoing,
    /// 500 / Unavailable.
    Error,
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `GET`/`POST` (HTTP) or `POST` (gRPC).
    pub method: String,
    /// URL path, or the gRPC method path.
    pub path: String,
    /// Query parameters (HTTP) or `dtm-` metadata without the prefix (gRPC).
    pub params: BTreeMap<String, String>,
    /// The body (HTTP) or the message bytes (gRPC).
    pub body: Vec<u8>,
    /// When it arrived.
    pub at: tokio::time::Instant,
}

impl Call {
    /// `(path, branch_id, op)`, for comparing sequences.
    pub fn short(&self) -> (String, String, String) {
        (self.path.clone(), self.param("branch_id"), self.param("op"))
    }

    /// A parameter, empty if absent.
    pub fn param(&self, name: &str) -> String {
        self.params.get(name).cloned().unwrap_or_default()
    }
}

/// An async behaviour for one path: gets the call, returns (status, body).
pub type Hook = Arc<dyn Fn(Call) -> Pin<Box<dyn Future<Output = (u16, String)> + Send>> + Send + Sync>;

#[derive(Default)]
struct State {
    calls: Mutex<Vec<Call>>,
    script: Mutex<HashMap<String, VecDeque<Reply>>>,
    hooks: Mutex<HashMap<String, Hook>>,
}

impl State {
    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }

    fn next_reply(&self, path: &str) -> Reply {
        self.script.lock().unwrap().get_mut(path).and_then(VecDeque::pop_front).unwrap_or(Reply::Ok)
    }
}

/// Shared by both branch servers.
#[derive(Clone)]
pub struct Recorder {
    state: Arc<State>,
}

impl Recorder {
    /// Queues replies for the next calls of `path` (then OK).
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().entry(path.to_string()).or_default().extend(replies);
    }

    /// Gives `path` its own behaviour (HTTP only).
    pub fn hook<F, Fut>(&self, path: &str, hook: F)
    where
        F: Fn(Call) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = (u16, String)> + Send + 'static,
    {
        let hook: Hook = Arc::new(move |call| Box::pin(hook(call)));
        self.state.hooks.lock().unwrap().insert(path.to_string(), hook);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().unwrap().clone()
    }

    /// The calls of one gid.
    pub fn calls_of(&self, gid: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.param("gid") == gid).collect()
    }

    /// `(path, branch_id, op)` of the calls of one gid.
    pub fn sequence(&self, gid: &str) -> Vec<(String, String, String)> {
        self.calls_of(gid).iter().map(Call::short).collect()
    }

    /// Waits until `gid` has at least `n` calls.
    pub async fn wait_calls(&self, gid: &str, n: usize, timeout: Duration) -> Vec<Call> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let calls = self.calls_of(gid);
            if calls.len() >= n {
                return calls;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{gid}: {} calls after {timeout:?}, expected {n}: {:?}",
                calls.len(),
                calls.iter().map(Call::short).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `(path, branch_id, op)` literal.
pub fn c(path: &str, branch_id: &str, op: &str) -> (String, String, String) {
    (path.to_string(), branch_id.to_string(), op.to_string())
}

/// The HTTP branch server.
pub struct HttpBranches {
    /// `http://127.0.0.1:port`.
    pub base: String,
    /// What it received.
    pub recorder: Recorder,
}

impl HttpBranches {
    /// Starts on a free port.
    pub async fn start() -> HttpBranches {
        let state = Arc::new(State::default());
        let handler_state = state.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
            let state = handler_state.clone();
            async move { http_branch(state, method, uri, body).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        HttpBranches { base, recorder: Recorder { state } }
    }

    /// `http://127.0.0.1:port/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }
}

async fn http_branch(state: Arc<State>, method: Method, uri: Uri, body: Bytes) -> (StatusCode, String) {
    let params = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect();
    let call = Call {
        method: method.to_string(),
        path: uri.path().to_string(),
        params,
        body: body.to_vec(),
        at: tokio::time::Instant::now(),
    };
    state.record(call.clone());
    let hook = state.hooks.lock().unwrap().get(uri.path()).cloned();
    if let Some(hook) = hook {
        let (status, body) = hook(call).await;
        return (StatusCode::from_u16(status).unwrap(), body);
    }
    match state.next_reply(uri.path()) {
        Reply::Ok => (StatusCode::OK, r#"{"dtm_result":"SUCCESS"}"#.into()),
        Reply::Failure => (StatusCode::CONFLICT, r#"{"dtm_result":"FAILURE","message":"no"}"#.into()),
        Reply::Ongoing => (StatusCode::from_u16(425).unwrap(), r#"{"dtm_result":"ONGOING"}"#.into()),
        Reply::Error => (StatusCode::INTERNAL_SERVER_ERROR, r#"{"message":"boom"}"#.into()),
    }
}

/// The gRPC branch server: any method, raw bytes.
pub struct GrpcBranches {
    /// `127.0.0.1:port`.
    pub addr: String,
    /// What it received.
    pub recorder: Recorder,
}

impl GrpcBranches {
    /// Starts on a free port.
    pub async fn start() -> GrpcBranches {
        let state = Arc::new(State::default());
        let handler_state = state.clone();
        let router = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let state = handler_state.clone();
            async move { grpc_branch(&state, &uri, &headers, &body) }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(tonic::service::Routes::from(router))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        GrpcBranches { addr, recorder: Recorder { state } }
    }

    /// `127.0.0.1:port/<pkg.Svc/Method>`.
    pub fn url(&self, method: &str) -> String {
        format!("{}/{method}", self.addr)
    }
}

fn grpc_branch(state: &State, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Response<Body> {
    let params = headers
        .iter()
        .filter_map(|(k, v)| {
            let key = k.as_str().strip_prefix("dtm-")?;
            Some((key.to_string(), v.to_str().ok()?.to_string()))
        })
        .collect();
    // One length-prefixed message: flag byte, 4 length bytes, the message.
    let message = body.get(5..).unwrap_or_default().to_vec();
    state.record(Call {
        method: "POST".into(),
        path: uri.path().to_string(),
        params,
        body: message,
        at: tokio::time::Instant::now(),
    });
    let (code, text) = match state.next_reply(uri.path()) {
        Reply::Ok => {
            // An empty reply message, then the status in the trailers.
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
                Ok(Frame::trailers(trailers)),
            ];
            return Response::builder()
                .header("content-type", "application/grpc")
                .body(Body::new(StreamBody::new(futures::stream::iter(frames))))
                .unwrap();
        }
        Reply::Failure => ("10", "FAILURE"),
        Reply::Ongoing => ("9", "ONGOING"),
        Reply::Error => ("14", "unavailable"),
    };
    // Trailers-only answer.
    Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", code)
        .header("grpc-message", text)
        .body(Body::empty())
        .unwrap()
}
