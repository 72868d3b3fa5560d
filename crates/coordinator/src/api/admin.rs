//! The console's JSON API under `/api/admin` — documented, and the same
//! for scripts as for the console's pages (`crate::console`), which use
//! nothing else.
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/admin/whoami` | `{"auth": true\|false}`: whether a token is required (a 401 means a wrong one) |
//! | `GET /api/admin/transactions?status=&transType=&gidPrefix=&createTimeStart=&createTimeEnd=&position=&limit=` | dtm's `all` page plus the gid prefix filter: `{"transactions":[…],"next_position":"…"}` |
//! | `GET /api/admin/counts` | `{"counts":{"submitted":3,"succeed":1000000,…}}` |
//! | `GET /api/admin/transaction?gid=` | the transaction, its options, its branches with decoded payloads, the recorded attempts |
//! | `POST /api/admin/retry {"gid":…}` | dtm's `resetNextCronTime`, refused (409) for a final transaction |
//! | `POST /api/admin/forceStop {"gid":…}` | dtm's `forceStop`, refused (409) for a final transaction |
//!
//! Every route sits behind the coordinator's bearer token when one is set,
//! like dtm's routes. Actions are POSTs with a JSON body and bearer auth —
//! no cookie ever authenticates anything, so another site cannot make a
//! browser perform them (no CSRF). Each action is logged with who asked:
//! the caller's address, and whether it presented the token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use dtm_protocol::Gid;

use super::http::{AllQuery, ApiError, HttpState, JsonObject, success};
use crate::model::GlobalStatus;
use crate::store::{AttemptRow, BranchRow, GlobalRow};

/// The most attempts one transaction page shows (the store keeps at most
/// `AttemptsPerTransaction`, 100 by default).
const MAX_ATTEMPTS_SHOWN: u32 = 1000;

/// The branch services' read-only admin endpoints (`service_kit::admin`),
/// asked by the coordinator — the console's pages may fetch from their own
/// origin only (CSP) — when a transaction page is shown.
#[derive(Clone, Default)]
pub struct ServiceAdmins {
    /// `(name, base URL)`, from `ServiceAdminUrls`.
    services: Arc<Vec<(String, url::Url)>>,
    /// A client with a short timeout: a service that is down must not hold the page.
    client: reqwest::Client,
}

impl ServiceAdmins {
    /// The endpoints to ask.
    pub fn new(services: Vec<(String, url::Url)>) -> ServiceAdmins {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        ServiceAdmins { services: Arc::new(services), client }
    }

    /// Every service's rows for `gid`, asked concurrently; a service that
    /// fails shows its error instead.
    async fn rows_of(&self, gid: &Gid) -> Vec<Value> {
        let asks = self.services.iter().map(|(name, base)| async move {
            let mut url = base.clone();
            url.set_path("/admin/gid");
            url.query_pairs_mut().clear().append_pair("gid", gid.as_str());
            let answer = async {
                let response = self.client.get(url).send().await.map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!("answered {}", response.status()));
                }
                response.json::<Value>().await.map_err(|e| e.to_string())
            };
            match answer.await {
                Ok(body) => json!({"name": name, "url": base.as_str(), "tables": body["tables"]}),
                Err(error) => {
                    json!({"name": name, "url": base.as_str(), "error": format!("cannot read it: {error}")})
                }
            }
        });
        futures::future::join_all(asks).await
    }
}

/// The `/api/admin` routes (the caller adds bearer auth).
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/whoami", get(whoami))
        .route("/transactions", get(transactions))
        .route("/counts", get(counts))
        .route("/transaction", get(transaction))
        .route("/retry", post(retry))
        .route("/forceStop", post(force_stop))
}

/// `GET /api/admin/whoami`.
async fn whoami(State(state): State<HttpState>) -> Response {
    Json(json!({"auth": state.auth_token.is_some()})).into_response()
}

/// `GET /api/admin/transactions`: dtm's `all`, with `gidPrefix`.
async fn transactions(
    State(state): State<HttpState>,
    params: Result<Query<AllQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let filter = params.into_filter()?;
    let page = state.engine.list(filter).await.map_err(admin_error)?;
    Ok(Json(page).into_response())
}

/// How long the count of every row per status is reused: it reads the
/// whole `status_id` index (0.2–0.7 s on a million rows, see
/// `tests/console_store.rs`), and every open console asks every few seconds.
const FULL_COUNT_TTL: Duration = Duration::from_secs(15);

/// A full count per status, and when it was read.
type FullCount = (Instant, Vec<(GlobalStatus, u64)>);

/// The last full count per status, shared by every console.
#[derive(Clone, Default)]
pub struct CountsCache {
    /// When it was read, and what it said.
    last: Arc<tokio::sync::Mutex<Option<FullCount>>>,
}

/// `GET /api/admin/counts`: the unfinished statuses counted live (the
/// backlog, read over its own rows only, as the metrics gauges do), the
/// final ones from a full count at most [`FULL_COUNT_TTL`] old.
async fn counts(State(state): State<HttpState>) -> Result<Response, ApiError> {
    let full = {
        // Held while counting: concurrent consoles share one count.
        let mut last = state.counts.last.lock().await;
        match &*last {
            Some((at, counts)) if at.elapsed() < FULL_COUNT_TTL => counts.clone(),
            _ => {
                let counts = state.engine.status_counts().await.map_err(admin_error)?;
                *last = Some((Instant::now(), counts.clone()));
                counts
            }
        }
    };
    let live = state.engine.unfinished().await.map_err(admin_error)?;
    let mut map = serde_json::Map::new();
    for (status, n) in full.into_iter().filter(|(status, _)| status.is_final()).chain(live.counts) {
        map.insert(status.as_str().to_string(), json!(n));
    }
    Ok(Json(json!({"counts": map})).into_response())
}

/// Query string of `transaction`.
#[derive(Debug, Deserialize)]
struct GidQuery {
    #[serde(default)]
    gid: String,
}

/// A payload as the console shows it: JSON pretty-printed, other UTF-8 as
/// text, anything else (protobuf) as hex; always with its size.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct Payload {
    /// `json`, `text`, `binary` or `empty`.
    kind: &'static str,
    /// Bytes.
    size: usize,
    /// The pretty-printed JSON, the text, or the hex digits.
    shown: String,
}

impl Payload {
    fn of(bytes: &[u8]) -> Payload {
        let size = bytes.len();
        if bytes.is_empty() {
            return Payload { kind: "empty", size, shown: String::new() };
        }
        if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
            let shown = serde_json::to_string_pretty(&value).unwrap_or_default();
            return Payload { kind: "json", size, shown };
        }
        match std::str::from_utf8(bytes) {
            Ok(text) if !text.chars().any(|c| c.is_control() && !c.is_whitespace()) => {
                Payload { kind: "text", size, shown: text.to_string() }
            }
            _ => Payload { kind: "binary", size, shown: hex(bytes) },
        }
    }
}

/// Lower-case hex, a space every 4 bytes for reading.
fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 9 / 4 + 1);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push(' ');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A branch operation with its payload decoded.
#[derive(Debug, Serialize)]
struct BranchView<'a> {
    branch_id: &'a str,
    op: &'a str,
    status: &'a str,
    url: &'a str,
    payload: Payload,
    create_time: Option<chrono::DateTime<chrono::Utc>>,
    finish_time: Option<chrono::DateTime<chrono::Utc>>,
}

impl<'a> BranchView<'a> {
    fn of(row: &'a BranchRow) -> BranchView<'a> {
        BranchView {
            branch_id: row.branch_id.as_str(),
            op: row.op.as_str(),
            status: row.status.as_str(),
            url: &row.url,
            payload: Payload::of(&row.bin_data),
            create_time: row.create_time,
            finish_time: row.finish_time,
        }
    }
}

/// An attempt with its place among the calls of its branch operation.
#[derive(Debug, Serialize)]
struct AttemptView<'a> {
    #[serde(flatten)]
    row: &'a AttemptRow,
    /// 0 for the first recorded call of this branch operation, then 1, 2…
    retry: u32,
}

/// What the console's transaction page shows.
#[derive(Debug, Serialize)]
struct TransactionView<'a> {
    transaction: &'a GlobalRow,
    /// The options, parsed (`{}` when unreadable).
    options: Value,
    /// The custom data (saga `orders`, msg `delay`), pretty-printed.
    custom_data: Payload,
    /// When the next pass may run: the retry time when no pass holds it,
    /// `null` for a final transaction.
    next_retry_time: Option<chrono::DateTime<chrono::Utc>>,
    /// A pass holds the transaction right now.
    running: bool,
    branches: Vec<BranchView<'a>>,
    attempts: Vec<AttemptView<'a>>,
    /// Which calls the coordinator records (`AttemptsRecord`): under
    /// `troubled` a transaction that succeeded at once has none.
    recording: crate::attempts::AttemptsRecord,
    /// The rows of this gid in the branch services' databases (barrier and
    /// business), from their admin endpoints; empty when none is configured.
    services: Vec<Value>,
}

/// `GET /api/admin/transaction?gid=`.
async fn transaction(
    State(state): State<HttpState>,
    params: Result<Query<GidQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let gid = Gid::new(params.gid).map_err(|e| ApiError::invalid("gid", e.to_string()))?;
    let Some(detail) = state.engine.query(&gid).await.map_err(admin_error)? else {
        return Err(ApiError::not_found("no transaction with this gid"));
    };
    let Some(global) = &detail.transaction else {
        return Err(ApiError::not_found("no transaction with this gid"));
    };
    let attempts = state.engine.attempts_of(&gid, MAX_ATTEMPTS_SHOWN).await.map_err(admin_error)?;
    let mut seen = std::collections::HashMap::<(&str, &str), u32>::new();
    let attempts = attempts
        .iter()
        .map(|row| {
            let n = seen.entry((row.branch_id.as_str(), row.op.as_str())).or_default();
            let view = AttemptView { row, retry: *n };
            *n += 1;
            view
        })
        .collect();
    let final_ = global.status.is_final();
    let view = TransactionView {
        transaction: global,
        options: serde_json::from_str(&global.options).unwrap_or_else(|_| json!({})),
        custom_data: Payload::of(global.custom_data.as_bytes()),
        next_retry_time: if final_ { None } else { global.next_cron_time },
        running: !final_ && !global.owner.is_empty(),
        branches: detail.branches.iter().map(BranchView::of).collect(),
        attempts,
        recording: state.engine.attempts_recorded(),
        services: state.service_admins.rows_of(&gid).await,
    };
    Ok(Json(view).into_response())
}

/// Who asked for an action, for the log: the peer address and whether a
/// token was presented (the token is the only identity the coordinator has).
fn who(peer: Option<&ConnectInfo<SocketAddr>>, headers: &HeaderMap, state: &HttpState) -> String {
    let address = peer.map_or_else(|| "unknown address".to_string(), |ConnectInfo(a)| a.to_string());
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let credential = if state.auth_token.is_some() && headers.contains_key(header::AUTHORIZATION) {
        "the bearer token"
    } else {
        "no token (AuthToken unset)"
    };
    match forwarded {
        Some(f) => format!("{address} (forwarded for {f:.64}) with {credential}"),
        None => format!("{address} with {credential}"),
    }
}

/// `POST /api/admin/retry {"gid"}`.
async fn retry(
    State(state): State<HttpState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let (gid, by) = action_request(&state, peer.as_ref(), &headers, &body)?;
    let outcome = state.engine.retry_now(&gid).await;
    tracing::info!(%gid, by, ok = outcome.is_ok(), "console: retry now");
    outcome.map_err(admin_error)?;
    Ok(success())
}

/// `POST /api/admin/forceStop {"gid"}`.
async fn force_stop(
    State(state): State<HttpState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let (gid, by) = action_request(&state, peer.as_ref(), &headers, &body)?;
    let outcome = state.engine.force_stop(&gid).await;
    // A warning, not info: the branches that succeeded stay in force.
    tracing::warn!(%gid, by, ok = outcome.is_ok(), "console: force stop (failed without compensation)");
    outcome.map_err(admin_error)?;
    Ok(success())
}

/// What every console action starts with: the gid it names and who asked
/// (for the log line each action writes).
fn action_request(
    state: &HttpState,
    peer: Option<&Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
    body: &JsonObject,
) -> Result<(Gid, String), ApiError> {
    let gid = body.gid()?;
    Ok((gid, who(peer.map(|Extension(p)| p), headers, state)))
}

/// An engine error on an admin route: like dtm's routes, except that an
/// unknown gid is a 404 (dtm answers 500).
fn admin_error(error: crate::engine::EngineError) -> ApiError {
    match error {
        crate::engine::EngineError::NotFound => ApiError::not_found("no transaction with this gid"),
        other => ApiError::engine("admin")(other),
    }
}

impl ApiError {
    /// 404 in our JSON shape.
    pub(super) fn not_found(message: &str) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, body: json!({"message": message}) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_shown_by_kind() {
        let json = Payload::of(br#"{"userId":1,"goodsId":1}"#);
        assert_eq!(json.kind, "json");
        assert!(json.shown.contains("\n  \"goodsId\": 1"), "{}", json.shown);
        assert_eq!(Payload::of(b"plain words").kind, "text");
        // protobuf: field 1 varint 1, field 2 varint 150
        let binary = Payload::of(&[0x08, 0x01, 0x10, 0x96, 0x01]);
        assert_eq!((binary.kind, binary.size, binary.shown.as_str()), ("binary", 5, "08011096 01"));
        assert_eq!(Payload::of(b"").kind, "empty");
    }
}
