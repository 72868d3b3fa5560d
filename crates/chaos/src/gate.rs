//! The *gate*: a slow saga branch hosted by the chaos process itself, the
//! middle step of the fencing workload ([`super::fencing`]).
//!
//! The race the fencing workload hunts needs a step that stays in flight
//! long enough for a second pass of the same saga to start: a client
//! resubmits while the first pass waits on this step. order-srv and
//! stock-srv answer in milliseconds, so the gate waits first — 150 to
//! 450 ms, as the saga's payload says — and only then opens its barrier
//! transaction, like a branch that calls a slow external system before
//! writing. The payload also says whether it answers FAILURE, so a seed
//! decides which sagas must roll back.
//!
//! Its effect is checkable like the services' ones: inside dtm's barrier
//! (the shared `dtm_barrier.barrier` table on MariaDB) the action inserts
//! `chaos_gate.gate (gid, state 0)` and the compensation sets `state = -1`.
//! dtm's HTTP branch protocol: `POST /gate/action?gid=…&trans_type=saga&branch_id=02&op=action`
//! with the JSON payload as the body; `{"dtm_result":"SUCCESS"}`, 409
//! FAILURE, or a 5xx that the coordinator retries.
//!
//! The same server is the TCC branch of the fencing workload's TCC
//! clients: `/tcc/try` (waits, then reserves: `chaos_gate.hold (gid,
//! branch_id, state 0)`, or answers FAILURE), `/tcc/confirm` (state 1) and
//! `/tcc/cancel` (state −1), each inside the barrier with ops
//! `try`/`confirm`/`cancel`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use barrier::{BranchBarrier, BranchError};
use serde::{Deserialize, Serialize};
use sqlx::{Connection, MySqlPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ChaosError;

/// The gate's database (its business table; the barrier rows go to the
/// shared `dtm_barrier.barrier`).
pub const GATE_DB: &str = "chaos_gate";
/// Its action path.
pub const ACTION_PATH: &str = "/gate/action";
/// Its compensation path.
pub const COMPENSATE_PATH: &str = "/gate/compensate";
/// The TCC branch's try path.
pub const TRY_PATH: &str = "/tcc/try";
/// Its confirm path.
pub const CONFIRM_PATH: &str = "/tcc/confirm";
/// Its cancel path.
pub const CANCEL_PATH: &str = "/tcc/cancel";

/// What a saga asks of its gate step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateReq {
    /// Answer FAILURE (the saga must roll back).
    pub fail: bool,
    /// How long the action waits before its barrier transaction.
    pub delay_ms: u64,
}

/// The running gate server.
pub struct Gate {
    /// Where it listens (loopback).
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Gate {
    /// Creates the database and table, then serves on a free loopback port.
    /// `server_url` is MariaDB itself (`mysql://root@127.0.0.1:P`).
    pub async fn start(server_url: &str) -> Result<Gate, ChaosError> {
        let mut conn = sqlx::MySqlConnection::connect(server_url).await?;
        sqlx::query(&format!("CREATE DATABASE IF NOT EXISTS `{GATE_DB}`")).execute(&mut conn).await?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS `{GATE_DB}`.gate (gid VARCHAR(128) PRIMARY KEY, state TINYINT NOT NULL)"
        ))
        .execute(&mut conn)
        .await?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS `{GATE_DB}`.hold (gid VARCHAR(128) NOT NULL, branch_id VARCHAR(32) NOT NULL, \
             state TINYINT NOT NULL, PRIMARY KEY (gid, branch_id))"
        ))
        .execute(&mut conn)
        .await?;
        conn.close().await?;
        // MariaDB is killed during the run: a lazy pool reconnects, and a
        // call that finds it down answers a retryable error.
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(32)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(&format!("{server_url}/{GATE_DB}"))?;
        let router = Router::new()
            .route(ACTION_PATH, post(action))
            .route(COMPENSATE_PATH, post(compensate))
            .route(TRY_PATH, post(tcc_try))
            .route(CONFIRM_PATH, post(tcc_confirm))
            .route(CANCEL_PATH, post(tcc_cancel))
            .with_state(Arc::new(pool));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| ChaosError::io("binding the gate branch server", e))?;
        let addr = listener.local_addr().map_err(|e| ChaosError::io("the gate's address", e))?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(stopped.cancelled_owned());
            if let Err(err) = serve.await {
                tracing::warn!(%err, "the gate branch server stopped");
            }
        });
        Ok(Gate { addr, stop, task })
    }

    /// Stops serving.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

const SUCCESS_BODY: &str = r#"{"dtm_result":"SUCCESS"}"#;

fn parse(query: Option<&str>, body: &[u8]) -> Result<(BranchBarrier, GateReq), (StatusCode, String)> {
    let barrier = BranchBarrier::from_query(query.unwrap_or_default())
        .map_err(|err| (StatusCode::BAD_REQUEST, err.to_string()))?;
    let req = serde_json::from_slice(body).map_err(|err| (StatusCode::BAD_REQUEST, err.to_string()))?;
    Ok((barrier, req))
}

fn reply<T>(result: Result<T, BranchError>) -> Response {
    match result {
        Ok(_) => (StatusCode::OK, SUCCESS_BODY).into_response(),
        Err(err) => err.into_http().into_response(),
    }
}

async fn action(State(pool): State<Arc<MySqlPool>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let (mut barrier, req) = match parse(query.as_deref(), &body) {
        Ok(parsed) => parsed,
        Err(bad) => return bad.into_response(),
    };
    // Slow before the barrier, so a concurrent pass of the same saga can
    // reach this step while the first one is still waiting here.
    tokio::time::sleep(Duration::from_millis(req.delay_ms)).await;
    let gid = barrier.gid().as_str().to_string();
    let result = barrier
        .call_with_pool(&*pool, async |conn| {
            if req.fail {
                return Err(BranchError::failure("the gate refuses this saga"));
            }
            sqlx::query(&format!("INSERT INTO `{GATE_DB}`.gate (gid, state) VALUES (?, 0)"))
                .bind(&gid)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
        .await;
    reply(result)
}

async fn compensate(State(pool): State<Arc<MySqlPool>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let (mut barrier, _req) = match parse(query.as_deref(), &body) {
        Ok(parsed) => parsed,
        Err(bad) => return bad.into_response(),
    };
    let gid = barrier.gid().as_str().to_string();
    let result = barrier
        .call_with_pool(&*pool, async |conn| {
            sqlx::query(&format!("UPDATE `{GATE_DB}`.gate SET state = -1 WHERE gid = ?"))
                .bind(&gid)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
        .await;
    reply(result)
}

async fn tcc_try(State(pool): State<Arc<MySqlPool>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let (mut barrier, req) = match parse(query.as_deref(), &body) {
        Ok(parsed) => parsed,
        Err(bad) => return bad.into_response(),
    };
    // As the gate's action: slow before the barrier, so an abort or the
    // coordinator's timeout can overtake it.
    tokio::time::sleep(Duration::from_millis(req.delay_ms)).await;
    let (gid, branch) = (barrier.gid().as_str().to_string(), barrier.branch_id().as_str().to_string());
    let result = barrier
        .call_with_pool(&*pool, async |conn| {
            if req.fail {
                return Err(BranchError::failure("the branch refuses to reserve"));
            }
            sqlx::query(&format!("INSERT INTO `{GATE_DB}`.hold (gid, branch_id, state) VALUES (?, ?, 0)"))
                .bind(&gid)
                .bind(&branch)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
        .await;
    reply(result)
}

async fn tcc_confirm(State(pool): State<Arc<MySqlPool>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    tcc_settle(&pool, query.as_deref(), &body, 1).await
}

async fn tcc_cancel(State(pool): State<Arc<MySqlPool>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    tcc_settle(&pool, query.as_deref(), &body, -1).await
}

/// Confirm (1) or cancel (−1) the reservation, inside the barrier.
async fn tcc_settle(pool: &MySqlPool, query: Option<&str>, body: &[u8], state: i8) -> Response {
    let (mut barrier, _req) = match parse(query, body) {
        Ok(parsed) => parsed,
        Err(bad) => return bad.into_response(),
    };
    let (gid, branch) = (barrier.gid().as_str().to_string(), barrier.branch_id().as_str().to_string());
    let result = barrier
        .call_with_pool(pool, async |conn| {
            sqlx::query(&format!("UPDATE `{GATE_DB}`.hold SET state = ? WHERE gid = ? AND branch_id = ?"))
                .bind(state)
                .bind(&gid)
                .bind(&branch)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
        .await;
    reply(result)
}
