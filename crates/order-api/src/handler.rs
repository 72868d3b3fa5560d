//! Routes and handlers (go-zero's `internal/handler/routes.go` and
//! `createHandler.go`): parse the request, call the logic, write JSON.
//!
//! | route | answer |
//! |---|---|
//! | `POST /order/quickCreate` | 200 `{"gid","status":"succeed"}`, 409 `failed` + `reason`, 202 `submitted`, 400/413/503 errors |
//! | `GET /order/status/{gid}` | 200 `{"gid","status","branches":[…]}`, 404 unknown gid, 503 |
//! | `GET /healthz` | 200 `OK` (go-zero's DevServer health route) |

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dtm_protocol::Gid;
use serde_json::{Map, Value};
use tower_http::trace::TraceLayer;
use tracing::Instrument;

use crate::error::ApiError;
use crate::logic;
use crate::svc::ServiceContext;
use crate::types::{QuickCreateReq, QuickCreateResp, SagaView};

/// The application: routes, body limit, request deadline, request logs.
pub fn routes(svc: ServiceContext) -> Router {
    let limit = svc.config.max_bytes;
    let deadline = svc.config.request_timeout();
    Router::new()
        .route("/order/quickCreate", post(quick_create))
        .route("/order/status/{gid}", get(status))
        .route("/healthz", get(|| async { "OK" }))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(move |req, next| with_deadline(deadline, req, next)))
        .layer(TraceLayer::new_for_http())
        .with_state(svc)
}

/// A JSON object body, with every rejection turned into our JSON errors:
/// too large → 413, not JSON or not an object → 400.
///
/// The `Content-Type` is not checked: the demo's README posts with
/// `curl -d '{…}'`, which says `application/x-www-form-urlencoded`.
#[derive(Debug)]
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<JsonObject, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                // The handler fills in the configured limit.
                ApiError::PayloadTooLarge { limit: 0 }
            } else {
                ApiError::bad_body(format!("cannot read the body: {rejection}"))
            }
        })?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(object)) => Ok(JsonObject(object)),
            Ok(other) => Err(ApiError::bad_body(format!("the body must be a JSON object, got {other}"))),
            Err(err) => Err(ApiError::bad_body(format!("malformed JSON: {err}"))),
        }
    }
}

async fn quick_create(
    State(svc): State<ServiceContext>,
    headers: axum::http::HeaderMap,
    body: Result<JsonObject, ApiError>,
) -> Response {
    // The server span of the request: a child of the caller's
    // `traceparent`, or the root of a new trace.
    let span = tracing::info_span!(
        "quick_create",
        otel.name = "POST /order/quickCreate",
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.route = "/order/quickCreate",
        http.response.status_code = tracing::field::Empty,
        gid = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let incoming = dtm_protocol::TraceContext::from_headers(&headers);
    service_kit::trace::continue_from(&span, incoming.as_ref());
    let answer_span = span.clone();
    let response = async move {
        let JsonObject(object) = match body {
            Ok(body) => body,
            Err(ApiError::PayloadTooLarge { .. }) => {
                return ApiError::PayloadTooLarge { limit: svc.config.max_bytes }.into_response();
            }
            Err(err) => return err.into_response(),
        };
        let result = match QuickCreateReq::from_json(&object) {
            Ok(req) => logic::quick_create(&svc, req, incoming.as_ref()).await,
            Err(err) => Err(err),
        };
        match result {
            Ok((status, resp)) => (status, Json::<QuickCreateResp>(resp)).into_response(),
            Err(err) => {
                tracing::info!(status = %err.status(), %err, "quickCreate refused");
                err.into_response()
            }
        }
    }
    .instrument(span)
    .await;
    let status = response.status().as_u16();
    answer_span.record("http.response.status_code", status);
    if status >= 500 {
        answer_span.record("otel.status_code", "ERROR");
    }
    response
}

async fn status(
    State(svc): State<ServiceContext>,
    Path(gid): Path<String>,
) -> Result<Json<SagaView>, ApiError> {
    let gid = Gid::new(&gid).map_err(|err| ApiError::bad_field("gid", err.to_string()))?;
    let span = tracing::info_span!("status", gid = %gid);
    logic::query(&svc, &gid).instrument(span).await.map(Json)
}

/// go-zero's timeout middleware: past the deadline the client gets 503
/// (the work in progress is dropped; a submitted saga still completes in
/// the coordinator).
async fn with_deadline(deadline: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(deadline, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(?deadline, "request timed out");
            ApiError::Unavailable { gid: None, message: "request timed out".into() }.into_response()
        }
    }
}
