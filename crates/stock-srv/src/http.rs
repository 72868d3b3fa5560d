//! The HTTP face of the service, for dtm's HTTP branch protocol: the same
//! two logic functions as the gRPC face, reached by URL. The paths and the
//! body are `proto::stock`'s, next to the gRPC paths, so that order-api and
//! the bench build the same URLs.
//!
//! | route | saga op | body |
//! |---|---|---|
//! | `POST /api/stock/deduct?gid=…&trans_type=…&branch_id=…&op=action` | action | `{"goodsId":1,"num":1}` |
//! | `POST /api/stock/deductRollback?…&op=compensate` | compensate | the same |
//!
//! Answers: 200 success (also when the barrier skipped the call), 409
//! FAILURE when the stock is short (the saga rolls back), 400 bad query or
//! body, 503 retry (database down, deadline). Served on `HttpListenOn`
//! when configured (see [`crate::build`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use proto::stock::{DEDUCT_HTTP_PATH, DEDUCT_ROLLBACK_HTTP_PATH, DeductBody, DeductReq};
use service_kit::Metrics;
use service_kit::http_branch::{json_body, run_http_branch};
use sqlx::Pool;

use crate::logic;
use crate::model::StockModel;

/// What the handlers share.
struct HttpState<DB: StockModel> {
    /// The business pool (the same one the gRPC face uses).
    pool: Pool<DB>,
    /// Server-side deadline of a call (`Timeout`).
    timeout: Duration,
}

/// The two routes on `pool`.
pub fn router<DB: StockModel>(pool: Pool<DB>, timeout: Duration) -> Router {
    Router::new()
        .route(DEDUCT_HTTP_PATH, post(deduct::<DB>))
        .route(DEDUCT_ROLLBACK_HTTP_PATH, post(deduct_rollback::<DB>))
        .with_state(Arc::new(HttpState { pool, timeout }))
}

async fn deduct<DB: StockModel>(
    State(state): State<Arc<HttpState<DB>>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    metrics: Option<Extension<Metrics>>,
    body: Bytes,
) -> Response {
    run_http_branch(
        DEDUCT_HTTP_PATH,
        query.as_deref(),
        &headers,
        state.timeout,
        metrics.as_deref(),
        |barrier| async move {
            let req = DeductReq::from(json_body::<DeductBody>(&body)?);
            logic::deduct(&state.pool, barrier, &req).await
        },
    )
    .await
}

async fn deduct_rollback<DB: StockModel>(
    State(state): State<Arc<HttpState<DB>>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    metrics: Option<Extension<Metrics>>,
    body: Bytes,
) -> Response {
    run_http_branch(
        DEDUCT_ROLLBACK_HTTP_PATH,
        query.as_deref(),
        &headers,
        state.timeout,
        metrics.as_deref(),
        |barrier| async move {
            let req = DeductReq::from(json_body::<DeductBody>(&body)?);
            logic::deduct_rollback(&state.pool, barrier, &req).await
        },
    )
    .await
}
