//! The XA branch servers of the `xa` mode, inside the bench process: the
//! quick order's two steps as XA branches on MariaDB, over dtm's HTTP
//! branch protocol.
//!
//! Each branch does the work of `saga --work sql` — the barrier row plus
//! order-srv's `INSERT` or stock-srv's `UPDATE` ([`OrderModel::insert`],
//! [`StockModel::deduct`]) — but inside `XA START … XA PREPARE`
//! ([`XaDb::local_transaction`]), registering itself at the coordinator before it
//! prepares; the coordinator then sends `commit` (or `rollback`) to the same
//! URL (`phase2_url`). So the `xa / saga` ratio compares the same SQL made
//! atomic by two-phase commit against making it atomic by compensation.
//!
//! What the comparison then shows is the price of 2PC: one more round trip
//! per branch (registerBranch, then phase 2), a fresh connection per local
//! transaction (the prepared transaction must outlive its session), and the
//! stock row's lock held from the deduction until the coordinator's commit
//! (every quick order deducts the same goods, so the orders queue on it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use barrier::BranchError;
use dtm_client::{DtmClient, XaBranch, XaDb};
use dtm_protocol::Op;
use order_srv::model::{NewOrder, OrderModel};
use proto::order::{CreateBody, CreateReq};
use proto::stock::{DeductBody, DeductReq};
use service_kit::branch::quantity;
use stock_srv::model::StockModel;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::branches::{BranchDbs, mysql_pool, success_body};

/// The order branch's path on the bench's XA server.
pub const ORDER_PATH: &str = "/api/xa/order";
/// The stock branch's path.
pub const STOCK_PATH: &str = "/api/xa/stock";

/// What the handlers share.
struct XaState {
    /// The order database: its XA transactions and barrier table.
    order: XaDb<sqlx::MySql>,
    /// The stock database.
    stock: XaDb<sqlx::MySql>,
    /// Where the branches register (the coordinator of the run).
    dtm: DtmClient,
}

/// A running XA branch server.
pub struct XaBranchServer {
    /// `http://127.0.0.1:port`: the branch URLs are this plus
    /// [`ORDER_PATH`] / [`STOCK_PATH`].
    pub base: String,
    /// Stops it.
    stop: CancellationToken,
    /// The serving task.
    task: JoinHandle<anyhow::Result<()>>,
}

impl XaBranchServer {
    /// Opens the two databases (tables created as the services create
    /// them) and serves on a free loopback port; branches register at `dtm`.
    pub async fn start(dbs: &BranchDbs, dtm: DtmClient) -> anyhow::Result<XaBranchServer> {
        let order = mysql_pool(&dbs.order).await?;
        order_srv::schema::ensure_order_table(&order).await?;
        let stock = mysql_pool(&dbs.stock).await?;
        stock_srv::schema::ensure_stock_table(&stock).await?;
        let state = Arc::new(XaState { order: XaDb::new(order), stock: XaDb::new(stock), dtm });
        let router = Router::new()
            .route(ORDER_PATH, post(order_branch))
            .route(STOCK_PATH, post(stock_branch))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let until = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).with_graceful_shutdown(until).await.map_err(anyhow::Error::from)
        });
        Ok(XaBranchServer { base: format!("http://{addr}"), stop, task })
    }

    /// Stops the server; a server that had failed is reported.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        match tokio::time::timeout(Duration::from_secs(10), self.task).await {
            Ok(Ok(Ok(()))) | Err(_) => Ok(()),
            Ok(Ok(Err(err))) => Err(err.context("the built-in XA branch server failed")),
            Ok(Err(join)) => bail!("the built-in XA branch server panicked: {join}"),
        }
    }
}

/// One call to a branch, read.
enum Call<B> {
    /// `action`, with its JSON body.
    Action(XaBranch, B),
    /// `commit` or `rollback` from the coordinator (which sends no body to read).
    PhaseTwo(XaBranch),
}

/// The dtm values of one call and, for an action, its body; a bad one is a 400.
fn call_of<B: serde::de::DeserializeOwned>(
    query: Option<&str>,
    body: &[u8],
) -> Result<Call<B>, (StatusCode, String)> {
    let bad = |text: String| (StatusCode::BAD_REQUEST, text);
    let branch = XaBranch::from_query(query.unwrap_or_default()).map_err(|err| bad(err.to_string()))?;
    if branch.op != Op::Action {
        return Ok(Call::PhaseTwo(branch));
    }
    let body = serde_json::from_slice(body).map_err(|err| bad(err.to_string()))?;
    Ok(Call::Action(branch, body))
}

fn reply(result: Result<(), BranchError>) -> Response {
    match result {
        Ok(()) => (StatusCode::OK, success_body()).into_response(),
        Err(err) => err.into_http().into_response(),
    }
}

/// `action`: the order row in the local XA transaction; `commit` /
/// `rollback`: phase 2.
async fn order_branch(State(s): State<Arc<XaState>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let (branch, req) = match call_of::<CreateBody>(query.as_deref(), &body) {
        Ok(Call::Action(branch, body)) => (branch, CreateReq::from(body)),
        Ok(Call::PhaseTwo(branch)) => return reply(s.order.phase_two(&branch).await),
        Err(bad) => return bad.into_response(),
    };
    let gid = branch.gid.to_string();
    let result = s
        .order
        .local_transaction(&branch, &s.dtm, async |conn: &mut sqlx::MySqlConnection| {
            let num = quantity("num", req.num)?;
            let order = NewOrder { user_id: req.user_id, goods_id: req.goods_id, num, gid: &gid };
            sqlx::MySql::insert(conn, &order).await?;
            Ok(())
        })
        .await;
    reply(result.map(drop))
}

/// `action`: the deduction in the local XA transaction (not enough stock
/// is the branch's FAILURE, as in stock-srv); `commit` / `rollback`: phase 2.
async fn stock_branch(State(s): State<Arc<XaState>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let (branch, req) = match call_of::<DeductBody>(query.as_deref(), &body) {
        Ok(Call::Action(branch, body)) => (branch, DeductReq::from(body)),
        Ok(Call::PhaseTwo(branch)) => return reply(s.stock.phase_two(&branch).await),
        Err(bad) => return bad.into_response(),
    };
    let result = s
        .stock
        .local_transaction(&branch, &s.dtm, async |conn: &mut sqlx::MySqlConnection| {
            let num = quantity("num", req.num)?;
            if sqlx::MySql::deduct(conn, req.goods_id, num).await? == 1 {
                return Ok(());
            }
            Err(BranchError::failure(format!("not enough stock for goods {}", req.goods_id)))
        })
        .await;
    reply(result.map(drop))
}
