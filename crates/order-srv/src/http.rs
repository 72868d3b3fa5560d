//! The HTTP face of the service, for dtm's HTTP branch protocol: the same
//! two logic functions as the gRPC face, reached by URL. The paths and the
//! body are `proto::order`'s, next to the gRPC paths, so that order-api and
//! the bench build the same URLs.
//!
//! | route | saga op | body |
//! |---|---|---|
//! | `POST /api/order/create?gid=…&trans_type=…&branch_id=…&op=action` | action | `{"userId":1,"goodsId":1,"num":1}` |
//! | `POST /api/order/createRollback?…&op=compensate` | compensate | the same |
//!
//! Answers: 200 success (also when the barrier skipped the call), 400 bad
//! query or body, 503 retry (database down, deadline). Creating an order
//! has no business failure, so this service never answers 409.
//! Served on `HttpListenOn` when configured (see [`crate::build`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use proto::order::{CREATE_HTTP_PATH, CREATE_ROLLBACK_HTTP_PATH, CreateBody, CreateReq};
use service_kit::Metrics;
use service_kit::http_branch::{json_body, run_http_branch};
use sqlx::Pool;

use crate::logic;
use crate::model::OrderModel;

/// What the handlers share.
struct HttpState<DB: OrderModel> {
    /// The business pool (the same one the gRPC face uses).
    pool: Pool<DB>,
    /// Server-side deadline of a call (`Timeout`).
    timeout: Duration,
}

/// The two routes on `pool`.
pub fn router<DB: OrderModel>(pool: Pool<DB>, timeout: Duration) -> Router {
    Router::new()
        .route(CREATE_HTTP_PATH, post(create::<DB>))
        .route(CREATE_ROLLBACK_HTTP_PATH, post(create_rollback::<DB>))
        .with_state(Arc::new(HttpState { pool, timeout }))
}

async fn create<DB: OrderModel>(
    State(state): State<Arc<HttpState<DB>>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    metrics: Option<Extension<Metrics>>,
    body: Bytes,
) -> Response {
    run_http_branch(
        CREATE_HTTP_PATH,
        query.as_deref(),
        &headers,
        state.timeout,
        metrics.as_deref(),
        |barrier| async move {
            let req = CreateReq::from(json_body::<CreateBody>(&body)?);
            logic::create(&state.pool, barrier, &req).await
        },
    )
    .await
}

async fn create_rollback<DB: OrderModel>(
    State(state): State<Arc<HttpState<DB>>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    metrics: Option<Extension<Metrics>>,
    body: Bytes,
) -> Response {
    run_http_branch(
        CREATE_ROLLBACK_HTTP_PATH,
        query.as_deref(),
        &headers,
        state.timeout,
        metrics.as_deref(),
        |barrier| async move {
            let req = CreateReq::from(json_body::<CreateBody>(&body)?);
            logic::create_rollback(&state.pool, barrier, &req).await
        },
    )
    .await
}
