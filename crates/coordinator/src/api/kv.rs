//! dtm's HTTP routes for message topics, the `kv` table and `resetCronTime`
//! (`dtmsvr/api_http.go`), under `/api/dtmsvr`:
//!
//! | route | answer |
//! |---|---|
//! | `GET /subscribe?topic&url&remark` | `{"dtm_result":"SUCCESS"}` |
//! | `GET /unsubscribe?topic&url` | `{"dtm_result":"SUCCESS"}` |
//! | `DELETE /topic/{topicName}` | `{"dtm_result":"SUCCESS"}` |
//! | `GET /scanKV?cat&position&limit` | `{"kv":[…],"next_position":"…"}` |
//! | `GET /queryKV?cat&key` | `{"kv":[…]}` |
//! | `GET /resetCronTime?timeout&limit` | `{"has_remaining":bool,"succeed_count":n}` |
//!
//! A malformed parameter is a 400 naming it; dtm's topic errors ("this url
//! exists", "no such a topic", …) are 409 FAILURE with dtm's text. The
//! logic is in [`crate::topics`] and the engine.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::Deserialize;
use serde_json::json;

use super::http::{ApiError, HttpState, success};
use crate::topics::{Subscription, topic_of};

/// The routes, merged into `/api/dtmsvr` by [`super::http::router`].
pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/subscribe", get(subscribe))
        .route("/unsubscribe", get(unsubscribe))
        .route("/topic/{topicName}", delete(delete_topic))
        .route("/scanKV", get(scan_kv))
        .route("/queryKV", get(query_kv))
        .route("/resetCronTime", get(reset_cron_time))
}

/// Largest `limit` of `scanKV` and `resetCronTime` (dtm takes any).
const MAX_LIMIT: u32 = 1000;

type ApiResult = Result<Response, ApiError>;

/// The query string, or a 400 that says what is wrong with it.
fn params<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|e| ApiError::invalid("query", e.body_text()))
}

/// `limit`: empty → dtm's default 100, else `1..=MAX_LIMIT`.
fn limit_of(raw: &str) -> Result<u32, ApiError> {
    if raw.is_empty() {
        return Ok(100);
    }
    match raw.parse::<u32>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid("limit", format!("must be between 1 and {MAX_LIMIT}, got {raw:?}"))),
    }
}

/// Query string of `subscribe` and `unsubscribe`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TopicQuery {
    topic: String,
    url: String,
    remark: String,
}

/// `GET /api/dtmsvr/subscribe?topic=…&url=…&remark=…`.
async fn subscribe(
    State(state): State<HttpState>,
    query: Result<Query<TopicQuery>, QueryRejection>,
) -> ApiResult {
    let q = params(query)?;
    let subscription =
        Subscription::from_input(&q.topic, &q.url, &q.remark).map_err(ApiError::engine("subscribe"))?;
    state.engine.subscribe(subscription).await.map_err(ApiError::engine("subscribe"))?;
    Ok(success())
}

/// `GET /api/dtmsvr/unsubscribe?topic=…&url=…`.
async fn unsubscribe(
    State(state): State<HttpState>,
    query: Result<Query<TopicQuery>, QueryRejection>,
) -> ApiResult {
    let q = params(query)?;
    let topic = topic_of("topic", &q.topic).map_err(ApiError::engine("unsubscribe"))?;
    state.engine.unsubscribe(&topic, &q.url).await.map_err(ApiError::engine("unsubscribe"))?;
    Ok(success())
}

/// `DELETE /api/dtmsvr/topic/{topicName}`.
async fn delete_topic(State(state): State<HttpState>, Path(name): Path<String>) -> ApiResult {
    let topic = topic_of("topicName", &name).map_err(ApiError::engine("deletetopic"))?;
    state.engine.delete_topic(&topic).await.map_err(ApiError::engine("deletetopic"))?;
    Ok(success())
}

/// Query string of `scanKV` and `queryKV`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct KvQuery {
    cat: String,
    key: String,
    position: String,
    limit: String,
}

impl KvQuery {
    /// The category: required (dtm reads an empty one as "no category").
    fn cat(&self) -> Result<&str, ApiError> {
        if self.cat.is_empty() {
            return Err(ApiError::invalid("cat", "missing (topics are in cat=topics)"));
        }
        Ok(&self.cat)
    }
}

/// `GET /api/dtmsvr/scanKV?cat=…&position=…&limit=…`: newest first.
async fn scan_kv(State(state): State<HttpState>, query: Result<Query<KvQuery>, QueryRejection>) -> ApiResult {
    let q = params(query)?;
    let position = match q.position.as_str() {
        "" => None,
        raw => Some(
            raw.parse::<i64>()
                .map_err(|_| ApiError::invalid("position", "must be a next_position returned earlier"))?,
        ),
    };
    let page = state
        .engine
        .scan_kv(q.cat()?, position, limit_of(&q.limit)?)
        .await
        .map_err(ApiError::engine("scankv"))?;
    Ok(Json(page).into_response())
}

/// `GET /api/dtmsvr/queryKV?cat=…&key=…`: the row of `key`, or every row
/// of `cat` when `key` is empty.
async fn query_kv(
    State(state): State<HttpState>,
    query: Result<Query<KvQuery>, QueryRejection>,
) -> ApiResult {
    let q = params(query)?;
    let key = (!q.key.is_empty()).then_some(q.key.as_str());
    let kv = state.engine.query_kv(q.cat()?, key).await.map_err(ApiError::engine("querykv"))?;
    Ok(Json(json!({ "kv": kv })).into_response())
}

/// Query string of `resetCronTime`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ResetQuery {
    timeout: String,
    limit: String,
}

/// `GET /api/dtmsvr/resetCronTime?timeout=…&limit=…`: unfinished
/// transactions waiting more than `timeout` seconds (default 3 ×
/// `TimeoutToFail`) for their next retry become due now, up to `limit`.
/// A live lease is never moved (`Store::reset_stale_cron_times`).
async fn reset_cron_time(
    State(state): State<HttpState>,
    query: Result<Query<ResetQuery>, QueryRejection>,
) -> ApiResult {
    let q = params(query)?;
    let timeout = match q.timeout.as_str() {
        "" => None,
        raw => match raw.parse::<u64>() {
            Ok(secs) if secs <= crate::store::MAX_SCHEDULE.as_secs() => Some(Duration::from_secs(secs)),
            _ => {
                return Err(ApiError::invalid(
                    "timeout",
                    format!(
                        "must be a whole number of seconds up to {}",
                        crate::store::MAX_SCHEDULE.as_secs()
                    ),
                ));
            }
        },
    };
    let count = state
        .engine
        .reset_cron_time(timeout, limit_of(&q.limit)?)
        .await
        .map_err(ApiError::engine("resetcrontime"))?;
    Ok(Json(count).into_response())
}
