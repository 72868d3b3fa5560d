//! Shared harness of the engine tests: in-process branch servers (HTTP on
//! axum, gRPC on tonic, both on port 0) that record every call with its dtm
//! parameters and answer from a per-path script of faults, plus helpers to
//! build engines and sagas.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use barrier::{BarrierTable, BranchBarrier, BranchError};
use coordinator::model::TransRequestInput;
use coordinator::{Engine, EngineHooks, EngineSettings, GlobalStatus, TransRequest};
use proto::order::{CreateReq, CreateResp, Order, OrderServer};
use proto::stock::{DeductReq, DeductResp, Stock, StockServer};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// How a branch answers one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// 200 / OK.
    Ok,
    /// 409 / Aborted: business failure.
    Failure,
    /// 425 / FailedPrecondition.
    Ongoing,
    /// 500 / Unavailable: transient.
    Error,
    /// Sleep, then answer OK (a slow branch).
    Slow(Duration),
}

/// One recorded branch call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `http` or `grpc`.
    pub transport: &'static str,
    /// HTTP method (`GET`/`POST`) or `POST` for gRPC.
    pub method: String,
    /// URL path or gRPC method path.
    pub path: String,
    /// dtm parameters received.
    pub gid: String,
    pub trans_type: String,
    pub branch_id: String,
    pub op: String,
    /// Request body / gRPC message bytes.
    pub body: Vec<u8>,
    /// Value of the `x-test` header / metadata (branch_headers check).
    pub x_test: Option<String>,
    /// HTTP Content-Type header.
    pub content_type: Option<String>,
}

#[derive(Default)]
struct State {
    calls: Mutex<Vec<Call>>,
    script: Mutex<HashMap<String, VecDeque<Reply>>>,
    /// When set, successful calls run their effect through dtm's barrier
    /// and insert a row into `effect` — the test counts those rows.
    barrier_db: Mutex<Option<sqlx::MySqlPool>>,
}

/// The branch servers.
#[derive(Clone)]
pub struct Branches {
    /// `http://127.0.0.1:port`.
    pub http: String,
    /// `127.0.0.1:port` of the gRPC server.
    pub grpc: String,
    state: Arc<State>,
}

impl Branches {
    /// Starts both servers.
    pub async fn start() -> Branches {
        let state = Arc::new(State::default());
        let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = format!("http://{}", http_listener.local_addr().unwrap());
        let app = axum::Router::new().fallback({
            let state = state.clone();
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { http_branch(state, method, uri, headers, body).await }
            }
        });
        tokio::spawn(async move { axum::serve(http_listener, app).await.unwrap() });

        let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = grpc_listener.local_addr().unwrap().to_string();
        let svc = GrpcBranches(state.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(OrderServer::new(svc.clone()))
                .add_service(StockServer::new(svc))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc_listener))
                .await
                .unwrap()
        });
        Branches { http, grpc, state }
    }

    /// Queues replies for the next calls to `path` (then OK forever).
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().entry(path.to_string()).or_default().extend(replies);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().unwrap().clone()
    }

    /// Calls of one gid, as `(path, branch_id, op)`.
    pub fn calls_of(&self, gid: &str) -> Vec<(String, String, String)> {
        self.calls().into_iter().filter(|c| c.gid == gid).map(|c| (c.path, c.branch_id, c.op)).collect()
    }

    /// Enables barrier-guarded effects in `pool` (tables created here).
    pub async fn use_barrier_db(&self, pool: sqlx::MySqlPool) {
        let table = BarrierTable::new("barrier").unwrap();
        barrier::schema::ensure_barrier_table(&pool, &table).await.unwrap();
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS effect (id bigint AUTO_INCREMENT PRIMARY KEY, gid varchar(128), \
             branch_id varchar(128), op varchar(45))",
        )
        .execute(&pool)
        .await
        .unwrap();
        *self.state.barrier_db.lock().unwrap() = Some(pool);
    }

    /// The `http://…/<name>` URL of an HTTP branch.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.http)
    }
}

impl State {
    fn record(&self, call: Call) -> Reply {
        let reply = self
            .script
            .lock()
            .unwrap()
            .get_mut(&call.path)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Reply::Ok);
        self.calls.lock().unwrap().push(call);
        reply
    }

    /// Runs the business effect behind dtm's barrier, if a database is set.
    async fn effect(&self, call: &Call) -> Result<(), BranchError> {
        let Some(pool) = self.barrier_db.lock().unwrap().clone() else { return Ok(()) };
        let mut barrier = BranchBarrier::new(
            call.trans_type.parse().map_err(BranchError::from)?,
            call.gid.parse().map_err(BranchError::from)?,
            call.branch_id.parse().map_err(BranchError::from)?,
            call.op.parse().map_err(BranchError::from)?,
        )
        .with_table(BarrierTable::new("barrier").unwrap());
        let (gid, branch_id, op) = (call.gid.clone(), call.branch_id.clone(), call.op.clone());
        // Skipped (duplicate or null compensation) is a success too.
        let _outcome = barrier
            .call_with_pool(&pool, async move |conn: &mut sqlx::MySqlConnection| {
                sqlx::query("INSERT INTO effect (gid, branch_id, op) VALUES (?, ?, ?)")
                    .bind(gid)
                    .bind(branch_id)
                    .bind(op)
                    .execute(conn)
                    .await?;
                Ok(())
            })
            .await?;
        Ok(())
    }
}

async fn http_branch(
    state: Arc<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let query: BTreeMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect();
    let get = |k: &str| query.get(k).cloned().unwrap_or_default();
    let call = Call {
        transport: "http",
        method: method.to_string(),
        path: uri.path().to_string(),
        gid: get("gid"),
        trans_type: get("trans_type"),
        branch_id: get("branch_id"),
        op: get("op"),
        body: body.to_vec(),
        x_test: headers.get("x-test").and_then(|v| v.to_str().ok()).map(str::to_string),
        content_type: headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string),
    };
    let reply = state.record(call.clone());
    match reply {
        Reply::Ok | Reply::Slow(_) => {
            if let Reply::Slow(d) = reply {
                tokio::time::sleep(d).await;
            }
            match state.effect(&call).await {
                Ok(()) => (StatusCode::OK, r#"{"dtm_result":"SUCCESS"}"#.into()),
                Err(e) => {
                    let (status, body) = e.into_http();
                    (StatusCode::from_u16(status.as_u16()).unwrap(), body)
                }
            }
        }
        Reply::Failure => (StatusCode::CONFLICT, r#"{"dtm_result":"FAILURE","message":"no stock"}"#.into()),
        Reply::Ongoing => (StatusCode::TOO_EARLY, r#"{"dtm_result":"ONGOING"}"#.into()),
        Reply::Error => (StatusCode::INTERNAL_SERVER_ERROR, "boom".into()),
    }
}

#[derive(Clone)]
struct GrpcBranches(Arc<State>);

impl GrpcBranches {
    async fn handle<T: prost::Message>(&self, path: &str, request: Request<T>) -> Result<(), Status> {
        let md = request.metadata();
        let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let call = Call {
            transport: "grpc",
            method: "POST".into(),
            path: path.to_string(),
            gid: get("dtm-gid"),
            trans_type: get("dtm-trans_type"),
            branch_id: get("dtm-branch_id"),
            op: get("dtm-op"),
            body: request.get_ref().encode_to_vec(),
            x_test: md.get("x-test").and_then(|v| v.to_str().ok()).map(str::to_string),
            content_type: None,
        };
        match self.0.record(call.clone()) {
            Reply::Ok | Reply::Slow(_) => self.0.effect(&call).await.map_err(BranchError::into_status),
            Reply::Failure => Err(Status::aborted("FAILURE")),
            Reply::Ongoing => Err(Status::failed_precondition("ONGOING")),
            Reply::Error => Err(Status::unavailable("boom")),
        }
    }
}

#[tonic::async_trait]
impl Order for GrpcBranches {
    async fn create(&self, request: Request<CreateReq>) -> Result<Response<CreateResp>, Status> {
        self.handle(proto::order::CREATE_PATH, request).await.map(|()| Response::new(CreateResp {}))
    }
    async fn create_rollback(&self, request: Request<CreateReq>) -> Result<Response<CreateResp>, Status> {
        self.handle(proto::order::CREATE_ROLLBACK_PATH, request).await.map(|()| Response::new(CreateResp {}))
    }
}

#[tonic::async_trait]
impl Stock for GrpcBranches {
    async fn deduct(&self, request: Request<DeductReq>) -> Result<Response<DeductResp>, Status> {
        self.handle(proto::stock::DEDUCT_PATH, request).await.map(|()| Response::new(DeductResp {}))
    }
    async fn deduct_rollback(&self, request: Request<DeductReq>) -> Result<Response<DeductResp>, Status> {
        self.handle(proto::stock::DEDUCT_ROLLBACK_PATH, request).await.map(|()| Response::new(DeductResp {}))
    }
}

/// Settings with short intervals so that retries happen within a second or two.
pub fn fast_settings() -> EngineSettings {
    EngineSettings {
        retry_interval: Duration::from_secs(1),
        timeout_to_fail: Duration::from_secs(5),
        request_timeout: Duration::from_secs(3),
        max_retry_interval: Duration::from_secs(2),
        trans_cron_interval: Duration::from_millis(200),
        lease_duration: Duration::from_secs(2),
        max_in_flight: 64,
        lease_batch: 16,
        shutdown_timeout: Duration::from_secs(5),
    }
}

/// An engine on `url` with [`fast_settings`].
pub async fn engine(url: &str) -> Engine {
    engine_with(url, fast_settings()).await
}

/// An engine on `url` with `settings`.
pub async fn engine_with(url: &str, settings: EngineSettings) -> Engine {
    let store = coordinator::store::open(url, 16).await.expect("open store");
    Engine::new(store, settings, EngineHooks::default()).expect("engine")
}

/// A saga request: `steps` are (action, compensate) URLs, payload `{"step":k}`.
pub fn saga(gid: &str, steps: &[(String, String)]) -> TransRequestInput {
    TransRequestInput {
        gid: gid.to_string(),
        trans_type: "saga".into(),
        steps: steps
            .iter()
            .map(|(a, c)| BTreeMap::from([("action".into(), a.clone()), ("compensate".into(), c.clone())]))
            .collect(),
        payloads: (0..steps.len()).map(|k| format!(r#"{{"step":{k}}}"#).into_bytes()).collect(),
        ..Default::default()
    }
}

/// Validates an input.
pub fn req(input: TransRequestInput) -> TransRequest {
    TransRequest::from_input(input).expect("valid request")
}

/// The stored status of `gid`.
pub async fn status(engine: &Engine, gid: &str) -> GlobalStatus {
    let detail = engine.query(&gid.parse().unwrap()).await.unwrap().expect("transaction exists");
    detail.transaction.unwrap().status
}

/// Polls until `gid` is final (or panics after `limit`).
pub async fn wait_final(engine: &Engine, gid: &str, limit: Duration) -> GlobalStatus {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let s = status(engine, gid).await;
        if s.is_final() {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{gid} still {s} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(path, branch_id, op)` triple, for readable expectations.
pub fn c(path: &str, branch_id: &str, op: &str) -> (String, String, String) {
    (path.to_string(), branch_id.to_string(), op.to_string())
}

/// An engine on a fresh MariaDB database, warmed up (connections, statement
/// caches), with a connection that reads the server's `Com_*` counters —
/// for the tests that count our SQL. Such a test must be alone in its test
/// binary: test-support starts one server per test process, so the
/// server-wide counters then count exactly its statements.
pub struct CountedEngine {
    /// The engine under test.
    pub engine: Engine,
    /// Reads the counters.
    pub monitor: sqlx::MySqlPool,
    /// A 2-step saga's (action, compensate) URLs on the branch servers.
    pub steps: [(String, String); 2],
    /// Kept alive for the test: the database and the branch servers.
    _db: test_support::TestDatabase,
    _branches: Branches,
}

impl CountedEngine {
    /// Everything started, one saga run to warm up.
    pub async fn start() -> CountedEngine {
        let db = test_support::mysql_database().await;
        let monitor = sqlx::MySqlPool::connect(&db.url).await.unwrap();
        let branches = Branches::start().await;
        let engine = engine(&db.url).await;
        let steps = [
            (branches.url("TransOut"), branches.url("TransOutRevert")),
            (branches.url("TransIn"), branches.url("TransInRevert")),
        ];
        let mut warm = saga("warm", &steps);
        warm.wait_result = true;
        engine.submit(req(warm)).await.unwrap();
        CountedEngine { engine, monitor, steps, _db: db, _branches: branches }
    }

    /// A `wait_result` saga over the two steps.
    pub fn saga(&self, gid: &str) -> TransRequest {
        let mut input = saga(gid, &self.steps);
        input.wait_result = true;
        req(input)
    }

    /// `SHOW GLOBAL STATUS LIKE 'Com_%'`, names lower-cased.
    pub async fn counters(&self) -> HashMap<String, i64> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Com\\_%'").fetch_all(&self.monitor).await.unwrap();
        rows.into_iter().map(|(k, v)| (k.to_lowercase(), v.parse().unwrap_or(0))).collect()
    }
}

/// How much counter `key` grew between two readings, per saga of `n`.
pub fn per_saga(before: &HashMap<String, i64>, after: &HashMap<String, i64>, key: &str, n: usize) -> f64 {
    (after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)) as f64 / n as f64
}
