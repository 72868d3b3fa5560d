//! Prometheus metrics of order-api, order-srv and stock-srv, under
//! go-zero's names, and the listener that serves them (go-zero's
//! `Prometheus` block and `core/prometheus/agent.go`'s `StartAgent`).
//!
//! | metric | labels | go-zero's source | fed by |
//! |---|---|---|---|
//! | `http_server_requests_duration_ms` (histogram, 5 … 1000 ms) | `path`, `method` | `rest/handler/prometheushandler.go` | [`Metrics::instrument_http`]: order-api, the HTTP branches |
//! | `http_server_requests_code_total` | `path`, `code`, `method` | the same | the same |
//! | `rpc_server_requests_duration_ms` (histogram, 1 … 5000 ms) | `method` | `zrpc/internal/serverinterceptors/prometheusinterceptor.go` | [`Metrics::instrument_grpc`]: order-srv, stock-srv |
//! | `rpc_server_requests_code_total` | `method`, `code` (gRPC's number: `0` OK, `10` Aborted, …) | the same | the same |
//! | `sql_client_max_open_connections`, `sql_client_open_connections`, `sql_client_in_use_connections`, `sql_client_idle_connections` (gauges) | `db_name` | `core/stores/sqlx/metrics.go` | [`Metrics::register_pool`]: the pool, read at scrape time |
//!
//! Ours (go-zero has no equivalent):
//!
//! | metric | labels | fed by |
//! |---|---|---|
//! | `barrier_outcomes_total` | `op` (`action`, `compensate`, …), `outcome` (see [`BarrierOutcome`]) | every branch call that reached the barrier ([`crate::branch`], [`crate::http_branch`]) |
//! | `dtm_client_requests_duration_ms` (histogram, 1 … 10000 ms) | `call` (`submit`, `query`) | order-api's calls to the coordinator |
//! | `dtm_client_requests_total` | `call`, `outcome` (`succeed`, `failed`, `ongoing`, `timeout`, `unavailable`, …) | the same |
//!
//! Dashboards written for go-zero services keep working: same names, same
//! labels, same buckets. Two differences: durations are observed with
//! their fraction (go-zero truncates to whole milliseconds, so a 0.4 ms
//! call lands in the same bucket either way), and the `sql_client_*`
//! gauges leave out go-zero's `hash` label, a SHA-256 of the whole DSN —
//! password included — which no scrape should publish.
//!
//! **Bounded labels.** A label value never comes from the raw request:
//! `path` is the route template (`/order/status/{gid}`, never a gid), a
//! request no route matches is `path="other"`; `method` is one of HTTP's
//! nine methods or `other`; a gRPC `method` is the full path only for a
//! registered service whose answer is not `Unimplemented`, else `other`;
//! `op` and `outcome` come from closed sets. A scanner cannot mint series.
//!
//! **Cost.** The counters are always kept: a few atomic additions per
//! call. Only the listener is optional ([`MetricsServer`], started when
//! the `Prometheus` block has a `Host`); it is a separate port, so scraping
//! never competes with the service's own connection cap.
//!
//! Each service has its own [`Metrics`] (one registry per service, not a
//! global one as in go-zero): `quickorder up` and the tests run several
//! services in one process, and each must count only its own calls.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use barrier::{BranchError, Outcome, Skipped};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::ServeError;
use crate::config::PrometheusConf;
use crate::db::BusinessDb;
use crate::http::HttpServeLimits;

/// go-zero's buckets for `http_server_requests_duration_ms`.
pub const HTTP_BUCKETS_MS: [f64; 8] = [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// go-zero's buckets for `rpc_server_requests_duration_ms`.
pub const RPC_BUCKETS_MS: [f64; 12] =
    [1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0];

/// Buckets of `dtm_client_requests_duration_ms`: a submit waits for the
/// saga (`SubmitWait`, 3 s by default), so they reach further.
pub const DTM_CLIENT_BUCKETS_MS: [f64; 13] =
    [1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];

/// The label value of everything outside a bounded set: an unmatched
/// route, an unknown HTTP method, an unregistered gRPC path.
pub const OTHER: &str = "other";

/// A label value: static for the fixed sets, owned for route templates.
type Label = Cow<'static, str>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathMethod {
    path: Label,
    method: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathCodeMethod {
    path: Label,
    code: Label,
    method: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodOnly {
    method: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodCode {
    method: Label,
    code: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpOutcome {
    op: Label,
    outcome: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallOnly {
    call: Label,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallOutcome {
    call: Label,
    outcome: Label,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn http_histogram() -> Histogram {
    Histogram::new(HTTP_BUCKETS_MS)
}

fn rpc_histogram() -> Histogram {
    Histogram::new(RPC_BUCKETS_MS)
}

fn dtm_client_histogram() -> Histogram {
    Histogram::new(DTM_CLIENT_BUCKETS_MS)
}

fn millis(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1000.0
}

/// The `http_server_*` families (go-zero's `rest` server).
#[derive(Debug, Clone)]
struct HttpFamilies {
    duration: Histograms<PathMethod>,
    codes: Family<PathCodeMethod, Counter>,
}

impl HttpFamilies {
    fn record(&self, path: Label, method: Label, code: StatusCode, elapsed: Duration) {
        let labels = PathMethod { path, method };
        self.duration.get_or_create(&labels).observe(millis(elapsed));
        let PathMethod { path, method } = labels;
        let code = Cow::Owned(code.as_u16().to_string());
        self.codes.get_or_create(&PathCodeMethod { path, code, method }).inc();
    }
}

/// The `rpc_server_*` families (go-zero's `zrpc` server).
#[derive(Debug, Clone)]
struct RpcFamilies {
    duration: Histograms<MethodOnly>,
    codes: Family<MethodCode, Counter>,
}

/// The `dtm_client_*` families (order-api's calls to the coordinator).
#[derive(Debug, Clone)]
struct DtmClientFamilies {
    duration: Histograms<CallOnly>,
    calls: Family<CallOutcome, Counter>,
}

/// What the barrier did with one branch call: the `outcome` label of
/// `barrier_outcomes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarrierOutcome {
    /// The business code ran and committed with its barrier row.
    Applied,
    /// The barrier skipped the business code (a duplicate, a null
    /// compensation, a hanging action); its rows committed alone.
    Skipped(Skipped),
    /// The business code refused (`BranchError::Failure`): everything
    /// rolled back, the saga compensates.
    Failure,
    /// Not finished (`BranchError::Ongoing`): called again later.
    Ongoing,
    /// The payload was refused (`BranchError::InvalidArgument`).
    Invalid,
    /// The local transaction failed or timed out (`BranchError::Retry`):
    /// rolled back, the coordinator calls again.
    Error,
}

impl BarrierOutcome {
    /// The outcome of a branch handler's result.
    pub fn of<T>(result: &Result<Outcome<T>, BranchError>) -> BarrierOutcome {
        match result {
            Ok(Outcome::Ran(_)) => BarrierOutcome::Applied,
            Ok(Outcome::Skipped(why)) => BarrierOutcome::Skipped(*why),
            Err(BranchError::Failure(_)) => BarrierOutcome::Failure,
            Err(BranchError::Ongoing) => BarrierOutcome::Ongoing,
            Err(BranchError::InvalidArgument(_)) => BarrierOutcome::Invalid,
            Err(BranchError::Retry(_)) => BarrierOutcome::Error,
        }
    }

    /// The label value: `applied`, `duplicate`, `null_compensation`,
    /// `hanging`, `failure`, `ongoing`, `invalid`, `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            BarrierOutcome::Applied => "applied",
            BarrierOutcome::Skipped(why) => why.as_str(),
            BarrierOutcome::Failure => "failure",
            BarrierOutcome::Ongoing => "ongoing",
            BarrierOutcome::Invalid => "invalid",
            BarrierOutcome::Error => "error",
        }
    }
}

/// The metrics of one service: cheap to clone (one shared registry).
///
/// Families are registered when first needed — the HTTP ones by
/// [`Metrics::instrument_http`], the gRPC ones by [`Metrics::instrument_grpc`],
/// the barrier's by [`Metrics::track_barrier`] — so a service exports only
/// what it serves.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Shared by every clone: the layers, the handlers, the listener.
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Owns the descriptions; locked to register a family and to encode a scrape.
    registry: Mutex<Registry>,
    /// `http_server_*`, once an HTTP layer exists.
    http: OnceLock<HttpFamilies>,
    /// `rpc_server_*`, once a gRPC server is instrumented.
    rpc: OnceLock<RpcFamilies>,
    /// `barrier_outcomes_total`, once the service has branches.
    barrier: OnceLock<Family<OpOutcome, Counter>>,
    /// `dtm_client_*`, from order-api's first call to the coordinator.
    dtm_client: OnceLock<DtmClientFamilies>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// The registry, for registering or encoding. A poisoned lock only
    /// means a scrape panicked; the registry itself is intact.
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn http(&self) -> &HttpFamilies {
        self.inner.http.get_or_init(|| {
            let families = HttpFamilies {
                duration: Family::new_with_constructor(http_histogram as fn() -> Histogram),
                codes: Family::default(),
            };
            let mut registry = self.registry();
            // go-zero's help texts (the encoder adds the final period); counters
            // get their `_total` from the encoder.
            registry.register(
                "http_server_requests_duration_ms",
                "http server requests duration(ms)",
                families.duration.clone(),
            );
            registry.register(
                "http_server_requests_code",
                "http server requests error count",
                families.codes.clone(),
            );
            families
        })
    }

    fn rpc(&self) -> &RpcFamilies {
        self.inner.rpc.get_or_init(|| {
            let families = RpcFamilies {
                duration: Family::new_with_constructor(rpc_histogram as fn() -> Histogram),
                codes: Family::default(),
            };
            let mut registry = self.registry();
            registry.register(
                "rpc_server_requests_duration_ms",
                "rpc server requests duration(ms)",
                families.duration.clone(),
            );
            registry.register(
                "rpc_server_requests_code",
                "rpc server requests code count",
                families.codes.clone(),
            );
            families
        })
    }

    fn barrier(&self) -> &Family<OpOutcome, Counter> {
        self.inner.barrier.get_or_init(|| {
            let family = Family::<OpOutcome, Counter>::default();
            // The saga's outcomes exist from the start at 0, so that
            // `increase()` sees the first duplicate too.
            let saga = [
                ("action", ["applied", "duplicate", "hanging", "failure", "error"].as_slice()),
                ("compensate", ["applied", "duplicate", "null_compensation", "error"].as_slice()),
            ];
            for (op, outcomes) in saga {
                for outcome in outcomes {
                    family.get_or_create(&OpOutcome { op: op.into(), outcome: (*outcome).into() }).inc_by(0);
                }
            }
            self.registry().register(
                "barrier_outcomes",
                "Branch calls by what dtm's barrier did with them (applied, duplicate, null_compensation, hanging, failure, error)",
                family.clone(),
            );
            family
        })
    }

    fn dtm_client(&self) -> &DtmClientFamilies {
        self.inner.dtm_client.get_or_init(|| {
            let families = DtmClientFamilies {
                duration: Family::new_with_constructor(dtm_client_histogram as fn() -> Histogram),
                calls: Family::default(),
            };
            let mut registry = self.registry();
            registry.register(
                "dtm_client_requests_duration_ms",
                "Calls to the coordinator, duration(ms)",
                families.duration.clone(),
            );
            registry.register(
                "dtm_client_requests",
                "Calls to the coordinator by outcome",
                families.calls.clone(),
            );
            families
        })
    }

    /// Declares `barrier_outcomes_total` (a branch service calls this at
    /// start, so the family and its zero series exist before any call).
    pub fn track_barrier(&self) {
        self.barrier();
    }

    /// Counts one branch call of `op` (`Op::as_str`) by its barrier outcome.
    pub fn record_barrier(&self, op: &'static str, outcome: BarrierOutcome) {
        let labels = OpOutcome { op: op.into(), outcome: outcome.as_str().into() };
        self.barrier().get_or_create(&labels).inc();
    }

    /// Records one call to the coordinator: `call` and `outcome` from fixed sets.
    pub fn record_dtm_call(&self, call: &'static str, outcome: &'static str, elapsed: Duration) {
        let families = self.dtm_client();
        families.duration.get_or_create(&CallOnly { call: call.into() }).observe(millis(elapsed));
        families.calls.get_or_create(&CallOutcome { call: call.into(), outcome: outcome.into() }).inc();
    }

    /// Exports the pool of `db` as go-zero's `sql_client_*` gauges with
    /// `db_name`, read at every scrape (a custom collector: nothing is
    /// sampled between scrapes).
    pub fn register_pool(&self, db_name: impl Into<String>, db: BusinessDb) {
        let collector = PoolCollector { db_name: db_name.into(), db };
        self.registry().register_collector(Box::new(collector));
    }

    /// `router` with the `http_server_*` families fed by every request
    /// (go-zero's `PrometheusHandler`). Call it on a router that has its
    /// routes: the middleware is then applied per route and sees the
    /// matched route template (axum's `MatchedPath`); an unmatched request
    /// reaches it through the fallback, without one. It also puts this
    /// [`Metrics`] in the request's extensions, where branch handlers find it.
    pub fn instrument_http(&self, router: Router) -> Router {
        self.http();
        router.layer(middleware::from_fn_with_state(self.clone(), record_http))
    }

    /// `routes` with the `rpc_server_*` families fed by every call (go-zero's
    /// `UnaryPrometheusInterceptor`, as tower middleware around tonic's
    /// router); like [`Metrics::instrument_http`], it puts this [`Metrics`] in the
    /// request's extensions.
    pub fn instrument_grpc(&self, routes: tonic::service::Routes) -> tonic::service::Routes {
        self.rpc();
        let layer = middleware::from_fn_with_state(self.clone(), record_grpc);
        tonic::service::Routes::from(routes.into_axum_router().layer(layer))
    }

    /// The Prometheus text exposition (OpenMetrics) of every family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.registry()) {
            tracing::error!(%err, "cannot encode metrics");
        }
        out
    }
}

/// The `method` label of an HTTP request: one of the nine methods of
/// RFC 9110, or [`OTHER`] (a client may send any token as a method).
fn method_label(method: &Method) -> Label {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::PATCH,
        Method::CONNECT,
        Method::TRACE,
    ];
    match KNOWN.iter().find(|known| *known == method) {
        Some(known) => Cow::Owned(known.as_str().to_string()),
        None => Cow::Borrowed(OTHER),
    }
}

async fn record_http(State(metrics): State<Metrics>, mut request: Request, next: Next) -> Response {
    let path = match request.extensions().get::<MatchedPath>() {
        Some(matched) => Cow::Owned(matched.as_str().to_string()),
        None => Cow::Borrowed(OTHER),
    };
    let method = method_label(request.method());
    request.extensions_mut().insert(metrics.clone());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.http().record(path, method, response.status(), started.elapsed());
    response
}

/// gRPC's `Unimplemented`: what tonic answers for a method nobody serves.
const UNIMPLEMENTED: &str = "12";

async fn record_grpc(State(metrics): State<Metrics>, mut request: Request, next: Next) -> Response {
    // tonic routes `/<service>/{*rest}` per registered service: a match
    // means the service exists (the method may still not).
    let path = request.extensions().get::<MatchedPath>().map(|_| request.uri().path().to_string());
    request.extensions_mut().insert(metrics.clone());
    let started = Instant::now();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    // An error is answered "trailers-only": grpc-status in the headers. A
    // response without it carries the handler's success (go-zero's
    // interceptor likewise sees only the handler's error).
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .filter(|code| code.len() <= 2 && code.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or("0")
        .to_string();
    let method = match path {
        Some(path) if code != UNIMPLEMENTED => Cow::Owned(path),
        _ => Cow::Borrowed(OTHER),
    };
    let families = metrics.rpc();
    families.duration.get_or_create(&MethodOnly { method: method.clone() }).observe(millis(elapsed));
    families.codes.get_or_create(&MethodCode { method, code: Cow::Owned(code) }).inc();
    response
}

/// go-zero's `sql_client_*` gauges for one pool, read at scrape time.
#[derive(Debug)]
struct PoolCollector {
    /// The `db_name` label: the database of the DSN (`sqlite` for a file).
    db_name: String,
    /// The pool (a clone shares the pool).
    db: BusinessDb,
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let stats = self.db.pool_stats();
        let labels = [("db_name", self.db_name.as_str())];
        for (name, help, value) in [
            (
                "sql_client_max_open_connections",
                "Maximum number of open connections to the database",
                stats.max,
            ),
            (
                "sql_client_open_connections",
                "The number of established connections both in use and idle",
                stats.open,
            ),
            ("sql_client_in_use_connections", "The number of connections currently in use", stats.in_use()),
            ("sql_client_idle_connections", "The number of idle connections", stats.idle),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(i64::from(value)).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The metrics listener (go-zero's `prometheus.StartAgent`): `GET <Path>`
/// answers the exposition, anything else 404. Bound at build time, so
/// port 0 works and the address goes into the readiness line.
pub struct MetricsServer {
    /// Bound before serving, so port 0 can be resolved and reported.
    listener: TcpListener,
    /// The real address.
    local_addr: SocketAddr,
    /// The one route.
    router: Router,
}

/// How long a scrape in progress may finish after shutdown.
const METRICS_DRAIN: Duration = Duration::from_secs(1);

impl MetricsServer {
    /// Binds the listener the `Prometheus` block asks for; `None` when it
    /// asks for none (no `Host`).
    pub async fn bind(conf: &PrometheusConf, metrics: &Metrics) -> Result<Option<MetricsServer>, ServeError> {
        let Some(listen_on) = conf.listen_on() else { return Ok(None) };
        let bind_error = |source| ServeError::Bind { addr: listen_on.clone(), source };
        let path = conf.path.trim();
        // axum reads `{` and `*` as captures; a scrape path has none.
        if !path.starts_with('/') || path.contains(['{', '}', '*']) {
            return Err(bind_error(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("Prometheus.Path must be a plain path starting with '/', got {path:?}"),
            )));
        }
        let listener = TcpListener::bind(&listen_on).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let router = Router::new()
            .route(path, get(scrape))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .with_state(metrics.clone());
        Ok(Some(MetricsServer { listener, local_addr, router }))
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves on a task of its own until [`RunningMetrics::stop`].
    pub fn spawn(self) -> RunningMetrics {
        let (stop, stopped) = oneshot::channel::<()>();
        tracing::info!(local_addr = %self.local_addr, "metrics listening");
        // Few connections (Prometheus keeps one per target), the usual
        // header timeout, a short drain: a scrape takes milliseconds.
        let limits = HttpServeLimits {
            max_connections: 64,
            drain_timeout: METRICS_DRAIN,
            ..HttpServeLimits::default()
        };
        let task = tokio::spawn(crate::http::serve(
            self.listener,
            self.router,
            async move {
                let _ = stopped.await;
            },
            limits,
        ));
        RunningMetrics { stop, task }
    }
}

/// A [`MetricsServer`] serving on its task.
pub struct RunningMetrics {
    /// Resolves the server's shutdown future.
    stop: oneshot::Sender<()>,
    /// The serving task.
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningMetrics {
    /// Stops accepting, lets a scrape in progress finish, and returns how
    /// serving ended. Services call it after their own drain, so a last
    /// scrape still sees the final counts.
    pub async fn stop(self) -> Result<(), ServeError> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(result) => result.map_err(ServeError::Http),
            Err(err) => Err(ServeError::Task(err.to_string())),
        }
    }
}

/// Runs `serve` with the metrics listener (if any) beside it, and stops
/// the listener once `serve` has returned (drained).
pub async fn serve_with_metrics<E>(
    metrics: Option<MetricsServer>,
    serve: impl Future<Output = Result<(), E>>,
) -> Result<(), E>
where
    E: From<ServeError>,
{
    let running = metrics.map(MetricsServer::spawn);
    let served = serve.await;
    let stopped = match running {
        Some(running) => running.stop().await.map_err(E::from),
        None => Ok(()),
    };
    served.and(stopped)
}

async fn scrape(State(metrics): State<Metrics>) -> Response {
    let mut response = metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn call(app: &Router, method: &str, uri: &str) -> StatusCode {
        let request = axum::http::Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
        app.clone().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn http_labels_are_route_templates_and_known_methods() {
        let metrics = Metrics::new();
        let app = metrics.instrument_http(Router::new().route("/order/status/{gid}", get(|| async { "ok" })));
        for gid in ["a", "b", "c"] {
            assert_eq!(call(&app, "GET", &format!("/order/status/{gid}")).await, StatusCode::OK);
        }
        assert_eq!(call(&app, "GET", "/scanner/1").await, StatusCode::NOT_FOUND);
        assert_eq!(call(&app, "GET", "/scanner/2").await, StatusCode::NOT_FOUND);
        assert_eq!(call(&app, "BREW", "/order/status/x").await, StatusCode::METHOD_NOT_ALLOWED);
        let text = metrics.encode();
        for expected in [
            r#"http_server_requests_duration_ms_count{path="/order/status/{gid}",method="GET"} 3"#,
            r#"http_server_requests_code_total{path="/order/status/{gid}",code="200",method="GET"} 3"#,
            r#"http_server_requests_code_total{path="other",code="404",method="GET"} 2"#,
            r#"http_server_requests_code_total{path="/order/status/{gid}",code="405",method="other"} 1"#,
            r#"http_server_requests_duration_ms_bucket{le="5.0",path="/order/status/{gid}",method="GET"}"#,
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("scanner") && !text.contains("BREW"), "raw input in labels:\n{text}");
    }

    #[test]
    fn barrier_outcomes_start_at_zero_and_count() {
        let metrics = Metrics::new();
        metrics.track_barrier();
        metrics.record_barrier("action", BarrierOutcome::of::<()>(&Ok(Outcome::Ran(()))));
        metrics.record_barrier("action", BarrierOutcome::Skipped(Skipped::Duplicate));
        metrics.record_barrier("action", BarrierOutcome::Skipped(Skipped::Duplicate));
        let text = metrics.encode();
        for expected in [
            r#"barrier_outcomes_total{op="action",outcome="applied"} 1"#,
            r#"barrier_outcomes_total{op="action",outcome="duplicate"} 2"#,
            r#"barrier_outcomes_total{op="compensate",outcome="null_compensation"} 0"#,
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("rpc_server"), "families appear only when used:\n{text}");
    }

    #[test]
    fn outcomes_of_branch_results() {
        let failure: Result<Outcome<()>, BranchError> = Err(BranchError::failure("no stock"));
        assert_eq!(BarrierOutcome::of(&failure).as_str(), "failure");
        let retry: Result<Outcome<()>, BranchError> = Err(BranchError::retry("db down"));
        assert_eq!(BarrierOutcome::of(&retry).as_str(), "error");
        let skipped: Result<Outcome<()>, BranchError> = Ok(Outcome::Skipped(Skipped::NullCompensation));
        assert_eq!(BarrierOutcome::of(&skipped).as_str(), "null_compensation");
    }
}
