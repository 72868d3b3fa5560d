//! One recording branch server for every crate's tests: HTTP and gRPC on
//! port 0, answering any path or method, recording each call with its dtm
//! values, and answering from a per-path script or a hook.
//!
//! * [`BranchServers::start`] starts both listeners, sharing one
//!   [`Recorder`]: `http://127.0.0.1:port/<any path>` (axum) and
//!   `127.0.0.1:port/<pkg.Svc/Method>` (tonic's server with a raw route: the
//!   message bytes are recorded as they came, whatever the method);
//! * every call becomes a [`Call`]: the HTTP query parameters, or the
//!   `dtm-*` metadata without its prefix — the names of
//!   [`dtm_protocol::Field`] in both cases — plus the other headers and the
//!   body. [`Call::received`] reads the dtm values back as dtm-protocol's
//!   types;
//! * how a path answers: [`Recorder::script`] queues [`Reply`]s (then
//!   [`Reply::Ok`] forever); [`Recorder::hook`] gives one path a behaviour of
//!   its own (a barrier on a database, a nested TCC), and
//!   [`Recorder::on_success`] runs for every call that the script lets
//!   succeed (a business effect behind the barrier). Hooks answer as an HTTP
//!   branch would, `(status, body)`; over gRPC that becomes the status dtm
//!   expects (409 → `Aborted("FAILURE")`, 425 → `FailedPrecondition`, any
//!   other error → `Unavailable`);
//! * waits and builders: [`Recorder::wait_calls`], [`Recorder::sequence`]
//!   with [`c`] for readable expectations.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use dtm_protocol::{FAILURE, Field, ONGOING, Received, SUCCESS};
use http_body_util::StreamBody;
use hyper::body::Frame;

/// How a branch answers one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// 200 / OK (then [`Recorder::on_success`], if set).
    Ok,
    /// 409 / `Aborted("FAILURE")`: a business failure.
    Failure,
    /// 425 / `FailedPrecondition("ONGOING")`.
    Ongoing,
    /// 500 / `Unavailable`: transient.
    Error,
    /// Sleep, then answer as [`Reply::Ok`] (a slow branch).
    Slow(Duration),
}

/// The transport a call came by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// dtm's HTTP branch protocol.
    Http,
    /// dtm's gRPC branch protocol.
    Grpc,
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// HTTP or gRPC.
    pub transport: Transport,
    /// `GET`/`POST` (HTTP) or `POST` (gRPC).
    pub method: String,
    /// URL path, or the gRPC method path (`/pb.order/create`).
    pub path: String,
    /// Query parameters (HTTP) or `dtm-` metadata without the prefix (gRPC):
    /// `gid`, `trans_type`, `branch_id`, `op`, `dtm`.
    pub params: BTreeMap<String, String>,
    /// The other request headers / metadata, lower-case names
    /// (`content-type`, a transaction's `branch_headers`, …).
    pub headers: BTreeMap<String, String>,
    /// The body (HTTP) or the message bytes (gRPC).
    pub body: Vec<u8>,
    /// When it arrived.
    pub at: tokio::time::Instant,
    /// When it arrived, by the wall clock (to compare with another
    /// process's timestamps).
    pub wall_clock: std::time::SystemTime,
}

impl Call {
    /// A parameter, empty if absent.
    pub fn param(&self, name: &str) -> String {
        self.params.get(name).cloned().unwrap_or_default()
    }

    /// A dtm value, empty if absent.
    pub fn value(&self, field: Field) -> String {
        self.param(field.query_name())
    }

    /// A header, if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The dtm values as the branch received them, to validate as types.
    pub fn received(&self) -> Received {
        Received::from_query_pairs(self.params.iter())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The last segment of the path (`/busi/action` → `action`).
    pub fn last_segment(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or_default()
    }

    /// `(path, branch_id, op)`, for comparing sequences.
    pub fn short(&self) -> (String, String, String) {
        (self.path.clone(), self.value(Field::BranchId), self.value(Field::Op))
    }
}

/// `(path, branch_id, op)` literal, for expectations.
pub fn c(path: &str, branch_id: &str, op: &str) -> (String, String, String) {
    (path.to_string(), branch_id.to_string(), op.to_string())
}

/// How a hook answers: an HTTP status and body, as an HTTP branch would.
pub type Answer = (u16, String);

/// An async behaviour: gets the call, returns the answer.
pub type Hook = Arc<dyn Fn(Call) -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

/// What both listeners share.
#[derive(Default)]
struct State {
    /// Every call, in arrival order.
    calls: Mutex<Vec<Call>>,
    /// Queued replies per path.
    script: Mutex<HashMap<String, VecDeque<Reply>>>,
    /// Paths with a behaviour of their own.
    hooks: Mutex<HashMap<String, Hook>>,
    /// Runs for every call the script lets succeed.
    on_success: Mutex<Option<Hook>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// Records the call and works out its answer.
    async fn answer(&self, call: Call) -> Answer {
        lock(&self.calls).push(call.clone());
        let hook = lock(&self.hooks).get(&call.path).cloned();
        if let Some(hook) = hook {
            return hook(call).await;
        }
        let reply = lock(&self.script).get_mut(&call.path).and_then(VecDeque::pop_front).unwrap_or(Reply::Ok);
        match reply {
            Reply::Ok | Reply::Slow(_) => {
                if let Reply::Slow(delay) = reply {
                    tokio::time::sleep(delay).await;
                }
                let on_success = lock(&self.on_success).clone();
                match on_success {
                    Some(hook) => hook(call).await,
                    None => (200, format!(r#"{{"dtm_result":"{SUCCESS}"}}"#)),
                }
            }
            Reply::Failure => (409, format!(r#"{{"dtm_result":"{FAILURE}","message":"no"}}"#)),
            Reply::Ongoing => (425, format!(r#"{{"dtm_result":"{ONGOING}"}}"#)),
            Reply::Error => (500, r#"{"message":"boom"}"#.to_string()),
        }
    }
}

/// What the servers received, and how they answer. Cheap to clone.
#[derive(Clone, Default)]
pub struct Recorder {
    state: Arc<State>,
}

impl Recorder {
    /// Queues replies for the next calls of `path` (then OK).
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.state.script).entry(path.to_string()).or_default().extend(replies);
    }

    /// Gives `path` its own behaviour (instead of the script).
    pub fn hook<F, Fut>(&self, path: &str, hook: F)
    where
        F: Fn(Call) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Answer> + Send + 'static,
    {
        let hook: Hook = Arc::new(move |call| Box::pin(hook(call)));
        lock(&self.state.hooks).insert(path.to_string(), hook);
    }

    /// Runs `hook` for every call the script lets succeed, and answers
    /// what it answers.
    pub fn on_success<F, Fut>(&self, hook: F)
    where
        F: Fn(Call) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Answer> + Send + 'static,
    {
        let hook: Hook = Arc::new(move |call| Box::pin(hook(call)));
        *lock(&self.state.on_success) = Some(hook);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state.calls).clone()
    }

    /// The calls of one gid.
    pub fn calls_of(&self, gid: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.value(Field::Gid) == gid).collect()
    }

    /// `(path, branch_id, op)` of the calls of one gid.
    pub fn sequence(&self, gid: &str) -> Vec<(String, String, String)> {
        self.calls_of(gid).iter().map(Call::short).collect()
    }

    /// Waits until `gid` has at least `n` calls; returns them.
    pub async fn wait_calls(&self, gid: &str, n: usize, timeout: Duration) -> Vec<Call> {
        crate::wait_until(&format!("{n} calls of {gid}"), timeout, async || {
            let calls = self.calls_of(gid);
            if calls.len() >= n {
                Ok(calls)
            } else {
                Err(format!("{:?}", calls.iter().map(Call::short).collect::<Vec<_>>()))
            }
        })
        .await
    }
}

/// The two branch listeners and their recorder.
pub struct BranchServers {
    /// `http://127.0.0.1:port`.
    pub http: String,
    /// `127.0.0.1:port` of the gRPC listener.
    pub grpc: String,
    /// What they received, and how they answer.
    pub recorder: Recorder,
    /// The serving tasks, aborted on drop.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl BranchServers {
    /// Starts both on free loopback ports.
    pub async fn start() -> BranchServers {
        let recorder = Recorder::default();
        let http_state = Arc::clone(&recorder.state);
        let app =
            axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = Arc::clone(&http_state);
                async move {
                    let call = http_call(&method, &uri, &headers, &body);
                    let (status, body) = state.answer(call).await;
                    (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), body)
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind HTTP branches");
        let http = format!("http://{}", listener.local_addr().expect("local addr"));
        let http_task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });

        let grpc_state = Arc::clone(&recorder.state);
        let router = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let state = Arc::clone(&grpc_state);
            async move {
                let answer = state.answer(grpc_call(&uri, &headers, &body)).await;
                grpc_response(answer)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC branches");
        let grpc = listener.local_addr().expect("local addr").to_string();
        let grpc_task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_routes(tonic::service::Routes::from(router))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        BranchServers { http, grpc, recorder, tasks: vec![http_task, grpc_task] }
    }

    /// `http://127.0.0.1:port/<path>` (`path` without its leading `/`).
    pub fn http_url(&self, path: &str) -> String {
        format!("{}/{path}", self.http)
    }

    /// `127.0.0.1:port/<pkg.Svc/Method>`, a gRPC branch URL as dtm writes it.
    pub fn grpc_url(&self, method: &str) -> String {
        format!("{}/{}", self.grpc, method.trim_start_matches('/'))
    }
}

impl Drop for BranchServers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The headers of a request, lower-case names; values that are not text are left out.
fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str().to_string(), value.to_str().ok()?.to_string())))
        .collect()
}

fn http_call(method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Call {
    Call {
        transport: Transport::Http,
        method: method.to_string(),
        path: uri.path().to_string(),
        params: url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect(),
        headers: header_map(headers),
        body: body.to_vec(),
        at: tokio::time::Instant::now(),
        wall_clock: std::time::SystemTime::now(),
    }
}

fn grpc_call(uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Call {
    let (dtm, other): (BTreeMap<_, _>, BTreeMap<_, _>) =
        header_map(headers).into_iter().partition(|(name, _)| name.starts_with("dtm-"));
    let params = dtm.into_iter().map(|(name, value)| (name["dtm-".len()..].to_string(), value)).collect();
    Call {
        transport: Transport::Grpc,
        method: "POST".into(),
        path: uri.path().to_string(),
        params,
        headers: other,
        // One length-prefixed message: flag byte, 4 length bytes, the message.
        body: body.get(5..).unwrap_or_default().to_vec(),
        at: tokio::time::Instant::now(),
        wall_clock: std::time::SystemTime::now(),
    }
}

/// An HTTP-style answer as the gRPC status dtm expects for it.
fn grpc_response((status, body): Answer) -> Response<Body> {
    let (code, message) = match status {
        200 => {
            // An empty reply message, then the status in the trailers.
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut response = Response::new(Body::new(StreamBody::new(futures::stream::iter(frames))));
            response.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
            return response;
        }
        409 => ("10", FAILURE.to_string()),
        425 => ("9", ONGOING.to_string()),
        _ => ("14", body.chars().filter(|c| (c.is_ascii_graphic() || *c == ' ') && *c != '%').collect()),
    };
    // A trailers-only answer.
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from_static(code));
    headers
        .insert("grpc-message", HeaderValue::from_str(&message).unwrap_or(HeaderValue::from_static("error")));
    response
}
