//! dtm's HTTP API (axum): `/api/dtmsvr/…`, `/api/ping`, `/api/metrics`.
//!
//! Status codes and bodies follow dtm's `WrapHandler2` (`dtmutil/utils.go`):
//!
//! | outcome | status | body |
//! |---|---|---|
//! | success | 200 | `{"dtm_result":"SUCCESS"}` or the result object |
//! | FAILURE (incl. status conflicts) | 409 | `{"dtm_result":"FAILURE","message":…}` |
//! | ONGOING | 425 | `{"dtm_result":"ONGOING","message":…}` |
//! | malformed input (stricter than dtm's 500) | 400 / 413 | `{"message":…,"field":…}` |
//! | missing/wrong bearer token (when configured) | 401 | `{"message":…}` |
//! | overloaded / API timeout | 503 | `{"message":…}` |
//! | anything else | 500 | `{"message":…}` |
//!
//! Request bodies are accepted the way dtm's Go, Java and Python SDKs send
//! them: unknown fields are ignored, `null` means "not given", payloads are
//! JSON strings, `registerBranch` takes a flat map of strings.
//!
//! The layers around the routes, outermost first: overload/timeout error
//! mapping → load shedding → concurrency limit → timeout → (per route)
//! metrics → bearer auth → body size limit → handler.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{BoxError, Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tracing::Instrument;

use dtm_protocol::Gid;

use super::{Outcome, bearer_matches};
use crate::config::Secret;
use crate::engine::{Engine, EngineError};
use crate::metrics::{ApiKind, Metrics};
use crate::model::{RegisterBranchRequest, TransRequest, TransRequestInput};
use crate::store::ListFilter;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The transaction engine every dtm route delegates to.
    pub engine: Engine,
    /// Where request counts and latencies go; also rendered by `/api/metrics`.
    pub metrics: Arc<Metrics>,
    /// Required bearer token, if authentication is configured.
    pub auth_token: Option<Secret>,
    /// The branch services' admin endpoints the console shows rows from
    /// (`ServiceAdminUrls`), and the client that asks them.
    pub service_admins: super::admin::ServiceAdmins,
    /// The console's counts per status, reused for a few seconds.
    pub counts: super::admin::CountsCache,
}

/// Limits applied to the HTTP API.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest accepted request body in bytes (413 above).
    pub max_body_bytes: usize,
    /// Requests handled at once; further requests get 503 at once.
    pub max_concurrent_requests: usize,
    /// Longest a request may take (503 after).
    pub timeout: Duration,
}

/// Builds the complete HTTP application.
pub fn router(state: HttpState, limits: HttpLimits) -> Router {
    let dtmsvr = Router::new()
        .route("/newGid", get(new_gid))
        .route("/prepare", post(prepare))
        .route("/submit", post(submit))
        .route("/abort", post(abort))
        .route("/registerBranch", post(register_branch))
        // Old SDKs used one route per type; same handler.
        .route("/registerTccBranch", post(register_branch))
        .route("/registerXaBranch", post(register_branch))
        .route("/query", get(query))
        .route("/all", get(all))
        .route("/forceStop", post(force_stop))
        .route("/resetNextCronTime", post(reset_next_cron_time))
        .route("/version", get(version))
        .merge(super::kv::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_bearer));
    let admin =
        super::admin::routes().route_layer(middleware::from_fn_with_state(state.clone(), require_bearer));
    Router::new()
        .nest("/api/dtmsvr", dtmsvr)
        .nest("/api/admin", admin)
        .merge(crate::console::routes())
        .route("/api/ping", any(ping))
        .route("/api/metrics", get(metrics))
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(state.clone(), record_metrics))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overload_or_timeout))
                .load_shed()
                // Global: `Router::layer` clones the stack per route, and a
                // plain `ConcurrencyLimitLayer` would give each route its own limit.
                .layer(GlobalConcurrencyLimitLayer::new(limits.max_concurrent_requests))
                .timeout(limits.timeout),
        )
        .with_state(state)
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

/// `{"dtm_result":"SUCCESS"}` with 200.
pub(super) fn success() -> Response {
    Json(json!({"dtm_result": "SUCCESS"})).into_response()
}

/// An API-level error, rendered in dtm's shapes.
#[derive(Debug)]
pub(super) struct ApiError {
    /// HTTP status to answer with.
    pub(super) status: StatusCode,
    /// JSON body.
    pub(super) body: Value,
}

impl ApiError {
    /// 400 naming the offending field.
    pub(super) fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::from(Outcome::Invalid { field: field.into(), message: message.into() })
    }

    /// An engine error, classified by [`Outcome::from_engine`].
    pub(super) fn engine<E: Into<EngineError>>(api: &'static str) -> impl FnOnce(E) -> ApiError {
        move |error| ApiError::from(Outcome::from_engine(error.into(), api))
    }
}

impl From<Outcome> for ApiError {
    fn from(outcome: Outcome) -> ApiError {
        let (status, body) = match outcome {
            Outcome::Invalid { field, message } => (
                StatusCode::BAD_REQUEST,
                json!({"message": format!("invalid {field}: {message}"), "field": field}),
            ),
            Outcome::Failure(message) => {
                (StatusCode::CONFLICT, json!({"dtm_result": "FAILURE", "message": message}))
            }
            Outcome::Ongoing(message) => {
                (StatusCode::TOO_EARLY, json!({"dtm_result": "ONGOING", "message": message}))
            }
            Outcome::Error(message) => (StatusCode::INTERNAL_SERVER_ERROR, json!({"message": message})),
        };
        ApiError { status, body }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

// ---------------------------------------------------------------------------
// Request bodies
// ---------------------------------------------------------------------------

/// A JSON object body, with dtm's leniency: `null` members count as absent.
///
/// Our own extractor (not `axum::Json`) so that every rejection — wrong
/// content, malformed JSON, body too large — is answered in our JSON shape
/// with a message that names the field.
pub(super) struct JsonObject(serde_json::Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            ApiError {
                status,
                body: json!({"message": format!("cannot read the request body: {}", rejection.body_text())}),
            }
        })?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(mut map)) => {
                map.retain(|_, v| !v.is_null());
                Ok(JsonObject(map))
            }
            Ok(_) => Err(ApiError::invalid("body", "must be a JSON object")),
            Err(e) => Err(ApiError::invalid("body", format!("malformed JSON: {e}"))),
        }
    }
}

impl JsonObject {
    /// Deserializes into `T`; on a type error, finds and names the member
    /// that caused it (serde_json's message alone says only "invalid type").
    fn parse<T: DeserializeOwned>(self) -> Result<T, ApiError> {
        let JsonObject(map) = self;
        match serde_json::from_value::<T>(Value::Object(map.clone())) {
            Ok(value) => Ok(value),
            Err(whole) => {
                for (key, value) in map {
                    let single = Value::Object(serde_json::Map::from_iter([(key.clone(), value)]));
                    if let Err(e) = serde_json::from_value::<T>(single) {
                        return Err(ApiError::invalid(key, e.to_string()));
                    }
                }
                Err(ApiError::invalid("body", whole.to_string()))
            }
        }
    }

    /// dtm's registerBranch body: a flat map whose values are all strings.
    fn string_map(self) -> Result<BTreeMap<String, String>, ApiError> {
        self.0
            .into_iter()
            .map(|(key, value)| match value {
                Value::String(s) => Ok((key, s)),
                other => Err(ApiError::invalid(key, format!("must be a string, got {other}"))),
            })
            .collect()
    }

    /// The `gid` member, validated.
    pub(super) fn gid(&self) -> Result<Gid, ApiError> {
        let raw = match self.0.get("gid") {
            None => "",
            Some(Value::String(s)) => s,
            Some(_) => return Err(ApiError::invalid("gid", "must be a string")),
        };
        Gid::new(raw).map_err(|e| ApiError::invalid("gid", e.to_string()))
    }
}

/// Parses and validates a prepare/submit/abort body.
fn trans_request(body: JsonObject) -> Result<TransRequest, ApiError> {
    let input: TransRequestInput = body.parse()?;
    TransRequest::from_input(input).map_err(ApiError::engine("validate"))
}

/// The server span of `api` under the request's `traceparent` header, and
/// the validated request carrying the context to store (`crate::trace`).
fn traced(
    api: &'static str,
    headers: &HeaderMap,
    body: JsonObject,
) -> (tracing::Span, Result<TransRequest, ApiError>) {
    let incoming = dtm_protocol::TraceContext::from_headers(headers);
    let gid = match body.0.get("gid") {
        Some(Value::String(gid)) => gid.clone(),
        _ => String::new(),
    };
    let (span, stored) = crate::trace::api_span(api, &gid, incoming.as_ref());
    let request = trans_request(body).map(|mut request| {
        request.options.trace = stored;
        request
    });
    (span, request)
}

// ---------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------

/// `GET /api/dtmsvr/newGid` → `{"gid":…,"dtm_result":"SUCCESS"}`.
async fn new_gid(State(state): State<HttpState>) -> Response {
    Json(json!({"gid": state.engine.new_gid().as_str(), "dtm_result": "SUCCESS"})).into_response()
}

/// `POST /api/dtmsvr/prepare`.
async fn prepare(State(state): State<HttpState>, headers: HeaderMap, body: JsonObject) -> ApiResult {
    let (span, request) = traced("prepare", &headers, body);
    state.engine.prepare(request?).instrument(span).await.map_err(ApiError::engine("prepare"))?;
    Ok(success())
}

/// `POST /api/dtmsvr/submit`. With `wait_result` the engine runs one pass
/// first and reports FAILURE (409) or ONGOING (425) if it did not succeed.
async fn submit(State(state): State<HttpState>, headers: HeaderMap, body: JsonObject) -> ApiResult {
    let (span, request) = traced("submit", &headers, body);
    state.engine.submit(request?).instrument(span).await.map_err(ApiError::engine("submit"))?;
    Ok(success())
}

/// `POST /api/dtmsvr/abort`.
async fn abort(State(state): State<HttpState>, headers: HeaderMap, body: JsonObject) -> ApiResult {
    let (span, request) = traced("abort", &headers, body);
    state.engine.abort(request?).instrument(span).await.map_err(ApiError::engine("abort"))?;
    Ok(success())
}

/// `POST /api/dtmsvr/registerBranch` (and the old per-type aliases).
async fn register_branch(State(state): State<HttpState>, body: JsonObject) -> ApiResult {
    let map = body.string_map()?;
    let request = RegisterBranchRequest::from_map(&map, None).map_err(ApiError::engine("registerbranch"))?;
    state.engine.register_branch(request).await.map_err(ApiError::engine("registerbranch"))?;
    Ok(success())
}

/// Query string of `query`.
#[derive(Debug, Deserialize)]
struct GidQuery {
    #[serde(default)]
    gid: String,
}

/// `GET /api/dtmsvr/query?gid=…` → `{"transaction":…|null,"branches":[…]}`.
async fn query(
    State(state): State<HttpState>,
    params: Result<Query<GidQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(params) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let gid = Gid::new(params.gid).map_err(|e| ApiError::invalid("gid", e.to_string()))?;
    match state.engine.query(&gid).await.map_err(ApiError::engine("query"))? {
        Some(detail) => Ok(Json(detail).into_response()),
        None => Ok(Json(json!({"transaction": null, "branches": []})).into_response()),
    }
}

/// Query string of `all` (dtm's names, times in ms since the epoch), and
/// of the console's list, which adds `gidPrefix`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct AllQuery {
    gid: String,
    #[serde(rename = "gidPrefix")]
    gid_prefix: String,
    position: String,
    limit: Option<u32>,
    status: String,
    #[serde(rename = "transType")]
    trans_type: String,
    #[serde(rename = "createTimeStart")]
    create_time_start: Option<i64>,
    #[serde(rename = "createTimeEnd")]
    create_time_end: Option<i64>,
}

impl AllQuery {
    /// Validates the query string into the store's filter. Empty strings
    /// mean "no filter", as in dtm.
    pub(super) fn into_filter(self) -> Result<ListFilter, ApiError> {
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        let time = |field: &str, ms: Option<i64>| match ms {
            None => Ok(None),
            Some(ms) => chrono::DateTime::from_timestamp_millis(ms)
                .map(Some)
                .ok_or_else(|| ApiError::invalid(field, "out of range (milliseconds since the epoch)")),
        };
        let limit = self.limit.unwrap_or(100);
        if limit == 0 || limit > 1000 {
            return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
        }
        Ok(ListFilter {
            gid: non_empty(self.gid)
                .map(Gid::new)
                .transpose()
                .map_err(|e| ApiError::invalid("gid", e.to_string()))?,
            gid_prefix: match non_empty(self.gid_prefix) {
                // A prefix of a valid gid is a valid gid.
                Some(p) => {
                    Some(Gid::new(p).map_err(|e| ApiError::invalid("gidPrefix", e.to_string()))?.to_string())
                }
                None => None,
            },
            position: non_empty(self.position)
                .map(|p| p.parse::<i64>())
                .transpose()
                .map_err(|_| ApiError::invalid("position", "must be a next_position returned earlier"))?,
            limit,
            status: non_empty(self.status)
                .map(|s| s.parse())
                .transpose()
                .map_err(|e: dtm_protocol::ProtocolError| ApiError::invalid("status", e.to_string()))?,
            trans_type: non_empty(self.trans_type)
                .map(|t| t.parse())
                .transpose()
                .map_err(|e: dtm_protocol::ProtocolError| ApiError::invalid("transType", e.to_string()))?,
            create_time_start: time("createTimeStart", self.create_time_start)?,
            create_time_end: time("createTimeEnd", self.create_time_end)?,
        })
    }
}

/// `GET /api/dtmsvr/all` → `{"transactions":[…],"next_position":"…"}`.
async fn all(
    State(state): State<HttpState>,
    params: Result<Query<AllQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(params) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let filter = params.into_filter()?;
    let page = state.engine.list(filter).await.map_err(ApiError::engine("all"))?;
    Ok(Json(page).into_response())
}

/// `POST /api/dtmsvr/forceStop {gid}`: any unfinished transaction → `failed`.
async fn force_stop(State(state): State<HttpState>, body: JsonObject) -> ApiResult {
    let gid = body.gid()?;
    state.engine.force_stop(&gid).await.map_err(ApiError::engine("forcestop"))?;
    Ok(success())
}

/// `POST /api/dtmsvr/resetNextCronTime {gid}`: retry this transaction now.
async fn reset_next_cron_time(State(state): State<HttpState>, body: JsonObject) -> ApiResult {
    let gid = body.gid()?;
    state.engine.reset_next_cron_time(&gid).await.map_err(ApiError::engine("resetnextcrontime"))?;
    Ok(success())
}

/// `GET /api/dtmsvr/version`.
async fn version() -> Response {
    Json(json!({"version": concat!("v", env!("CARGO_PKG_VERSION"))})).into_response()
}

/// `ANY /api/ping` → `{"msg":"pong"}` (load balancer health checks).
async fn ping() -> Response {
    Json(json!({"msg": "pong"})).into_response()
}

/// `GET /api/metrics`: Prometheus text exposition.
/// The store's gauges are read first (throttled and bounded, see `crate::metrics`).
async fn metrics(State(state): State<HttpState>) -> Response {
    state.metrics.refresh_store_gauges(|| state.engine.unfinished()).await;
    let mut response = state.metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// Anything else: 404 in our JSON shape.
async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"message": "no such route"}))).into_response()
}

// ---------------------------------------------------------------------------
// Middleware
// ---------------------------------------------------------------------------

/// Refuses dtm API calls without the configured bearer token (401).
async fn require_bearer(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    if let Some(expected) = &state.auth_token {
        let header = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if !bearer_matches(expected.expose(), header) {
            let mut response = (
                StatusCode::UNAUTHORIZED,
                Json(json!({"message": "missing or invalid bearer token (Authorization: Bearer <token>)"})),
            )
                .into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

/// Feeds `dtm_server_process_total` / `dtm_server_response_duration`. The
/// `api` label is the last path segment of the *matched route*, lower-cased
/// (dtm's convention), so unknown paths cannot create new series.
async fn record_metrics(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let api = request.extensions().get::<MatchedPath>().map_or("other", |path| api_name(path.as_str()));
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.api_call(ApiKind::Http, api, response.status().as_u16() < 400, started.elapsed());
    response
}

/// Route → metric label, from a fixed list (the label must be `'static`).
fn api_name(path: &str) -> &'static str {
    const NAMES: &[&str] = &[
        "newgid",
        "prepare",
        "submit",
        "abort",
        "registerbranch",
        "registertccbranch",
        "registerxabranch",
        "query",
        "all",
        "forcestop",
        "resetnextcrontime",
        "version",
        "subscribe",
        "unsubscribe",
        "scankv",
        "querykv",
        "resetcrontime",
        "ping",
        "metrics",
    ];
    if path.ends_with("/topic/{topicName}") {
        return "deletetopic";
    }
    let last = path.rsplit('/').next().unwrap_or("").to_ascii_lowercase();
    NAMES.iter().find(|name| **name == last).copied().unwrap_or("other")
}

/// Maps the errors of the load-shed / timeout layers to JSON 503s.
async fn overload_or_timeout(error: BoxError) -> Response {
    let message = if error.is::<tower::load_shed::error::Overloaded>() {
        "server overloaded, retry later"
    } else if error.is::<tower::timeout::error::Elapsed>() {
        "request timed out"
    } else {
        tracing::error!(%error, "unexpected middleware error");
        "internal error"
    };
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"message": message}))).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_labels_come_from_a_fixed_set() {
        assert_eq!(api_name("/api/dtmsvr/registerBranch"), "registerbranch");
        assert_eq!(api_name("/api/dtmsvr/newGid"), "newgid");
        assert_eq!(api_name("/api/ping"), "ping");
        assert_eq!(api_name("/wp-admin/x"), "other");
        assert_eq!(api_name("/api/dtmsvr/topic/{topicName}"), "deletetopic");
        assert_eq!(api_name("/api/dtmsvr/scanKV"), "scankv");
    }

    #[test]
    fn outcomes_render_in_dtms_shapes() {
        let failure = ApiError::from(Outcome::Failure("boom".into()));
        assert_eq!(failure.status, StatusCode::CONFLICT);
        assert_eq!(failure.body, json!({"dtm_result":"FAILURE","message":"boom"}));
        let ongoing = ApiError::from(Outcome::Ongoing("wait".into()));
        assert_eq!(ongoing.status.as_u16(), 425);
        assert_eq!(ongoing.body["dtm_result"], "ONGOING");
        let invalid = ApiError::invalid("steps[0].action", "bad url");
        assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
        assert_eq!(invalid.body["field"], "steps[0].action");
    }

    #[test]
    fn type_errors_name_the_member() {
        let mut map = serde_json::Map::new();
        map.insert("gid".into(), json!("g"));
        map.insert("wait_result".into(), json!("yes"));
        let err = JsonObject(map).parse::<TransRequestInput>().unwrap_err();
        assert_eq!(err.body["field"], "wait_result");
    }
}
