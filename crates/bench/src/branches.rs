//! Branch servers inside the bench process, for the `saga` and `peer` modes.
//!
//! Four kinds, by transport and work:
//!
//! | | `--work sql` | `--work none` |
//! |---|---|---|
//! | gRPC | order-srv's and stock-srv's own code ([`order_srv::build`], [`stock_srv::build`]) on the bench's databases: barrier + the same SQL | `pb.order` / `pb.stock` answering OK at once |
//! | HTTP | the same logic functions behind dtm's HTTP branch protocol, on the services' own paths and bodies (`proto::order::CREATE_HTTP_PATH`, …; query `gid`, `trans_type`, `branch_id`, `op`) | any path answers `{"dtm_result":"SUCCESS"}` |
//!
//! Every HTTP branch server also tells a [`FinalWatch`] when the last action
//! of a saga (`/api/stock/deduct`, op `action`) has arrived: the `peer` mode
//! times each saga until that moment, because a coordinator that ignores
//! `wait_result` (dtmrs) answers the submit before any branch ran.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use barrier::{BranchBarrier, BranchError, Outcome};
use dtm_client::Saga;
use dtm_protocol::{Field, Gid, Op as BranchOp, Received, SUCCESS};
use proto::order::{
    CREATE_HTTP_PATH, CREATE_PATH, CREATE_ROLLBACK_HTTP_PATH, CREATE_ROLLBACK_PATH, CreateBody, CreateReq,
    CreateResp, Order, OrderServer,
};
use proto::stock::{
    DEDUCT_HTTP_PATH, DEDUCT_PATH, DEDUCT_ROLLBACK_HTTP_PATH, DEDUCT_ROLLBACK_PATH, DeductBody, DeductReq,
    DeductResp, Stock, StockServer,
};
use service_kit::{BusinessDb, DbConf, GrpcServer, GrpcSettings};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use service_kit::shipped::{self, ShippedConfig, replace_block};

/// How the coordinator calls the branches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// gRPC (`host:port/pb.order/create`), as the article's services.
    Grpc,
    /// HTTP (`http://host:port/api/order/create`), dtm's other branch protocol.
    Http,
}

/// What a branch does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Work {
    /// The barrier plus order-srv's / stock-srv's SQL, in one local transaction.
    Sql,
    /// Nothing: answer success at once (measures the coordinator alone).
    None,
}

/// The database URLs of the `sql` branches.
#[derive(Debug, Clone)]
pub struct BranchDbs {
    /// The order service's database (`order` table).
    pub order: String,
    /// The stock service's database (`stock` table, raised by the caller).
    pub stock: String,
}

/// Sagas waiting for their last action to reach a branch server.
#[derive(Debug, Default)]
pub struct FinalWatch {
    /// gid → who to tell.
    waiting: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

impl FinalWatch {
    /// Registers `gid` (before submitting it); the receiver resolves when
    /// its last action arrives.
    pub fn expect(&self, gid: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(gid.to_string(), tx);
        rx
    }

    /// Drops a registration that will not be waited for (the submit failed).
    pub fn forget(&self, gid: &str) {
        self.lock().remove(gid);
    }

    fn arrived(&self, gid: &str) {
        if let Some(tx) = self.lock().remove(gid) {
            let _ = tx.send(());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<()>>> {
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How to address the branch servers in a saga. Cheap to clone: every
/// client of the load holds one.
#[derive(Debug, Clone)]
pub struct SagaShape {
    /// gRPC or HTTP.
    transport: Transport,
    /// The order branch's server: `host:port` (gRPC) or `http://host:port` (HTTP).
    order_base: String,
    /// The stock branch's server.
    stock_base: String,
}

/// Running branch servers.
pub struct BranchServers {
    /// Where they listen.
    pub shape: SagaShape,
    /// Told about last actions (HTTP servers only).
    pub finals: Arc<FinalWatch>,
    /// Stops the servers.
    stop: CancellationToken,
    /// The serving tasks.
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl BranchServers {
    /// Starts the servers on loopback, free ports. `dbs` is required for
    /// [`Work::Sql`].
    pub async fn start(
        transport: Transport,
        work: Work,
        dbs: Option<&BranchDbs>,
    ) -> anyhow::Result<BranchServers> {
        let stop = CancellationToken::new();
        let finals = Arc::new(FinalWatch::default());
        let mut tasks = Vec::new();
        let (order_base, stock_base) = match (transport, work) {
            (Transport::Grpc, Work::Sql) => {
                let dbs = dbs.context("sql branches need databases")?;
                let order = order_srv::build(&server_config(shipped::ORDER_SRV, &dbs.order)?)
                    .await
                    .context("starting the built-in order branches")?;
                let stock = stock_srv::build(&server_config(shipped::STOCK_SRV, &dbs.stock)?)
                    .await
                    .context("starting the built-in stock branches")?;
                let (order_addr, stock_addr) = (order.local_addr(), stock.local_addr());
                for server in [order, stock] {
                    let stop = stop.clone();
                    tasks.push(tokio::spawn(async move {
                        server.run_until_stopped(stop.cancelled_owned()).await.map_err(anyhow::Error::from)
                    }));
                }
                (order_addr.to_string(), stock_addr.to_string())
            }
            (Transport::Grpc, Work::None) => {
                let server = GrpcServer::bind("127.0.0.1:0", GrpcSettings::default())
                    .await?
                    .add_service(OrderServer::new(NoWork))
                    .add_service(StockServer::new(NoWork));
                let addr = server.local_addr();
                let stop = stop.clone();
                tasks.push(tokio::spawn(async move {
                    server.run_until_stopped(stop.cancelled_owned()).await.map_err(anyhow::Error::from)
                }));
                (addr.to_string(), addr.to_string())
            }
            (Transport::Http, work) => {
                let router = match work {
                    Work::Sql => {
                        sql_router(dbs.context("sql branches need databases")?, Arc::clone(&finals)).await?
                    }
                    Work::None => Router::new().fallback(no_work).with_state(Arc::clone(&finals)),
                };
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let addr: SocketAddr = listener.local_addr()?;
                let stop = stop.clone();
                tasks.push(tokio::spawn(async move {
                    axum::serve(listener, router)
                        .with_graceful_shutdown(stop.cancelled_owned())
                        .await
                        .map_err(anyhow::Error::from)
                }));
                (format!("http://{addr}"), format!("http://{addr}"))
            }
        };
        let shape = SagaShape { transport, order_base, stock_base };
        Ok(BranchServers { shape, finals, stop, tasks })
    }

    /// Stops the servers; a server that had failed is reported.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        for task in self.tasks {
            match tokio::time::timeout(Duration::from_secs(10), task).await {
                Ok(Ok(Ok(()))) | Err(_) => {}
                Ok(Ok(Err(err))) => return Err(err.context("a built-in branch server failed")),
                Ok(Err(join)) => bail!("a built-in branch server panicked: {join}"),
            }
        }
        Ok(())
    }
}

impl SagaShape {
    /// The quick order as a saga on these servers: create the order, then
    /// deduct the stock, with `wait_result`.
    pub fn saga(&self, gid: Gid) -> Saga {
        let create = CreateReq { user_id: 1, goods_id: 1, num: 1 };
        let deduct = DeductReq { goods_id: 1, num: 1 };
        let (order, stock) = (&self.order_base, &self.stock_base);
        let saga = Saga::new(gid);
        let saga = match self.transport {
            Transport::Grpc => saga
                .add(format!("{order}{CREATE_PATH}"), format!("{order}{CREATE_ROLLBACK_PATH}"), &create)
                .add(format!("{stock}{DEDUCT_PATH}"), format!("{stock}{DEDUCT_ROLLBACK_PATH}"), &deduct),
            Transport::Http => {
                // The JSON the services' HTTP branches read, as order-api sends it
                // (a body of integers always serializes).
                let create = serde_json::to_vec(&CreateBody::from(&create)).unwrap_or_default();
                let deduct = serde_json::to_vec(&DeductBody::from(&deduct)).unwrap_or_default();
                saga.add_raw(
                    format!("{order}{CREATE_HTTP_PATH}"),
                    format!("{order}{CREATE_ROLLBACK_HTTP_PATH}"),
                    create,
                )
                .add_raw(
                    format!("{stock}{DEDUCT_HTTP_PATH}"),
                    format!("{stock}{DEDUCT_ROLLBACK_HTTP_PATH}"),
                    deduct,
                )
            }
        };
        saga.wait_result(true)
    }
}

/// order-srv's / stock-srv's shipped config, without etcd, on `dsn`, on a
/// free loopback port.
fn server_config(config: ShippedConfig, dsn: &str) -> anyhow::Result<service_kit::RpcServerConf> {
    let file = config.file;
    let yaml = replace_block(config.text, "Etcd", "").with_context(|| format!("etc/{file}"))?;
    let lookup = |name: &str| match name {
        "ORDER_SRV_LISTEN_ON" | "STOCK_SRV_LISTEN_ON" => Some("127.0.0.1:0".to_string()),
        "ORDER_DSN" | "STOCK_DSN" => Some(dsn.to_string()),
        "MODE" => Some("pro".to_string()),
        _ => None,
    };
    Ok(service_kit::config::parse_yaml(Path::new(file), &yaml, lookup)?)
}

/// The `none` gRPC branches.
#[derive(Debug, Clone, Copy)]
struct NoWork;

#[tonic::async_trait]
impl Order for NoWork {
    async fn create(
        &self,
        _: tonic::Request<CreateReq>,
    ) -> Result<tonic::Response<CreateResp>, tonic::Status> {
        Ok(tonic::Response::new(CreateResp {}))
    }
    async fn create_rollback(
        &self,
        _: tonic::Request<CreateReq>,
    ) -> Result<tonic::Response<CreateResp>, tonic::Status> {
        Ok(tonic::Response::new(CreateResp {}))
    }
}

#[tonic::async_trait]
impl Stock for NoWork {
    async fn deduct(
        &self,
        _: tonic::Request<DeductReq>,
    ) -> Result<tonic::Response<DeductResp>, tonic::Status> {
        Ok(tonic::Response::new(DeductResp {}))
    }
    async fn deduct_rollback(
        &self,
        _: tonic::Request<DeductReq>,
    ) -> Result<tonic::Response<DeductResp>, tonic::Status> {
        Ok(tonic::Response::new(DeductResp {}))
    }
}

/// What every successful HTTP branch answers (`{"dtm_result":"SUCCESS"}`).
pub(crate) fn success_body() -> String {
    format!(r#"{{"dtm_result":"{SUCCESS}"}}"#)
}

/// Whether this call is a saga's last action; tells `finals` if so.
fn note_final(finals: &FinalWatch, path: &str, query: Option<&str>) {
    if !path.ends_with(DEDUCT_HTTP_PATH) {
        return;
    }
    let received = Received::from_query(query.unwrap_or_default());
    if received.op() == Ok(BranchOp::Action)
        && let Ok(gid) = received.raw(Field::Gid)
        && !gid.is_empty()
    {
        finals.arrived(gid);
    }
}

/// Any path, any method: success.
async fn no_work(State(finals): State<Arc<FinalWatch>>, uri: Uri) -> Response {
    note_final(&finals, uri.path(), uri.query());
    (StatusCode::OK, success_body()).into_response()
}

/// What the `sql` HTTP handlers share.
struct SqlState {
    /// The order database (barrier table in `dtm_barrier`).
    order: sqlx::MySqlPool,
    /// The stock database.
    stock: sqlx::MySqlPool,
    /// Last-action notifications.
    finals: Arc<FinalWatch>,
}

/// A pool on a branch database, opened the way the services open theirs.
pub(crate) async fn mysql_pool(url: &str) -> anyhow::Result<sqlx::MySqlPool> {
    // go-zero's pool size (64), the services' own connect path: database
    // and `dtm_barrier.barrier` created when missing.
    let conf = DbConf { data_source: url.parse()?, max_open_conns: 64 };
    match BusinessDb::connect(&conf, Duration::from_millis(1500)).await? {
        BusinessDb::MySql(pool) => Ok(pool),
        _ => bail!("the bench's branch databases are MySQL/MariaDB"),
    }
}

async fn sql_router(dbs: &BranchDbs, finals: Arc<FinalWatch>) -> anyhow::Result<Router> {
    let order = mysql_pool(&dbs.order).await?;
    order_srv::schema::ensure_order_table(&order).await?;
    let stock = mysql_pool(&dbs.stock).await?;
    stock_srv::schema::ensure_stock_table(&stock).await?;
    let state = Arc::new(SqlState { order, stock, finals });
    Ok(Router::new()
        .route(CREATE_HTTP_PATH, post(order_create))
        .route(CREATE_ROLLBACK_HTTP_PATH, post(order_rollback))
        .route(DEDUCT_HTTP_PATH, post(stock_deduct))
        .route(DEDUCT_ROLLBACK_HTTP_PATH, post(stock_rollback))
        .with_state(state))
}

/// The barrier and the body of one HTTP branch call.
fn parse<B: serde::de::DeserializeOwned>(
    query: Option<&str>,
    body: &[u8],
) -> Result<(BranchBarrier, B), (StatusCode, String)> {
    let barrier = BranchBarrier::from_query(query.unwrap_or_default())
        .map_err(|err| (StatusCode::BAD_REQUEST, err.to_string()))?;
    let body = serde_json::from_slice(body).map_err(|err| (StatusCode::BAD_REQUEST, err.to_string()))?;
    Ok((barrier, body))
}

fn reply<T>(result: Result<Outcome<T>, BranchError>) -> Response {
    match result {
        Ok(_) => (StatusCode::OK, success_body()).into_response(),
        Err(err) => err.into_http().into_response(),
    }
}

async fn order_create(State(s): State<Arc<SqlState>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let (barrier, body) = match parse::<CreateBody>(query.as_deref(), &body) {
        Ok(parsed) => parsed,
        Err(bad) => return bad.into_response(),
    };
    reply(order_srv::logic::create(&s.order, barrier, &CreateReq::from(body)).await)
}

async fn order_rollback(State(s): State<Arc<SqlState>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let (barrier, body) = match parse::<CreateBody>(query.as_deref(), &body) {
        Ok(parsed) => parsed,
        Err(bad) => return bad.into_response(),
    };
    reply(order_srv::logic::create_rollback(&s.order, barrier, &CreateReq::from(body)).await)
}

async fn stock_deduct(State(s): State<Arc<SqlState>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let (barrier, body) = match parse::<DeductBody>(query.as_deref(), &body) {
        Ok(parsed) => parsed,
        Err(bad) => return bad.into_response(),
    };
    let result = stock_srv::logic::deduct(&s.stock, barrier, &DeductReq::from(body)).await;
    note_final(&s.finals, DEDUCT_HTTP_PATH, query.as_deref());
    reply(result)
}

async fn stock_rollback(State(s): State<Arc<SqlState>>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let (barrier, body) = match parse::<DeductBody>(query.as_deref(), &body) {
        Ok(parsed) => parsed,
        Err(bad) => return bad.into_response(),
    };
    reply(stock_srv::logic::deduct_rollback(&s.stock, barrier, &DeductReq::from(body)).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_last_action_of_a_gid_is_reported_once() {
        let finals = FinalWatch::default();
        let mut first = finals.expect("g1");
        note_final(&finals, CREATE_HTTP_PATH, Some("gid=g1&op=action"));
        assert!(first.try_recv().is_err(), "not the last step");
        note_final(&finals, DEDUCT_HTTP_PATH, Some("gid=g1&op=compensate"));
        assert!(first.try_recv().is_err(), "not an action");
        note_final(&finals, "/x/api/stock/deduct", Some("trans_type=saga&gid=g1&branch_id=02&op=action"));
        assert!(first.await.is_ok());
        let second = finals.expect("g2");
        finals.forget("g2");
        assert!(second.await.is_err(), "forgotten: the sender is gone");
    }
}
