//! The XA branch service of `tests/xa.rs`: one handler for dtm's three XA
//! ops ([`dtm_client::XaDb::handle`]) on MariaDB or PostgreSQL, served over
//! HTTP (`POST /xa/{account}`, dtm's values in the query) and over gRPC
//! (`/xa.Busi/{account}`, dtm's values as `dtm-` metadata, the same JSON
//! body carried verbatim as the message). `action` inserts `(gid,
//! branch_id, account, amount)` into `xa_effect` inside the local XA
//! transaction (body `{"amount":N}`; `{"fail":true}` answers FAILURE
//! instead); `commit`/`rollback` finish it.
//!
//! The tests run it as a process of its own, to SIGKILL it between `XA
//! PREPARE` and the coordinator's commit: the test binary itself, started
//! again with [`SERVE`] set, runs only the test `branch_service_process`,
//! which then serves until killed ([`serve`]) and prints `ready xa-branch
//! pid=… http=127.0.0.1:port grpc=127.0.0.1:port` once it does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::post;
use barrier::{BarrierTable, BranchError};
use dtm_client::{DtmClient, XaBranch, XaDb};
use dtm_protocol::RawCodec;
use tonic::codegen::BoxFuture;
use tonic::server::{Grpc, NamedService, UnaryService};

/// The request body of an action.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Body {
    amount: i64,
    fail: bool,
}

/// The engine this process runs on.
#[derive(Clone)]
enum Db {
    MySql(XaDb<sqlx::MySql>),
    Postgres(XaDb<sqlx::Postgres>),
}

#[derive(Clone)]
struct App {
    db: Db,
    /// Where branches register (the coordinator the application uses).
    dtm: DtmClient,
}

const EFFECT_MYSQL: &str = "CREATE TABLE IF NOT EXISTS xa_effect (id bigint AUTO_INCREMENT PRIMARY KEY, \
     gid varchar(128) NOT NULL, branch_id varchar(32) NOT NULL, account varchar(64) NOT NULL, amount bigint NOT NULL)";
const EFFECT_PG: &str = "CREATE TABLE IF NOT EXISTS xa_effect (id bigserial PRIMARY KEY, \
     gid varchar(128) NOT NULL, branch_id varchar(32) NOT NULL, account varchar(64) NOT NULL, amount bigint NOT NULL)";

fn barrier_table() -> BarrierTable {
    BarrierTable::new("barrier").expect("a valid table name")
}

async fn open(url: &str) -> Result<Db, Box<dyn std::error::Error>> {
    let table = barrier_table();
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await?;
        barrier::schema::ensure_barrier_table(&pool, &table).await?;
        sqlx::query(EFFECT_PG).execute(&pool).await?;
        Ok(Db::Postgres(XaDb::new(pool).with_table(table)))
    } else {
        let pool = sqlx::MySqlPool::connect(url).await?;
        barrier::schema::ensure_barrier_table(&pool, &table).await?;
        sqlx::query(EFFECT_MYSQL).execute(&pool).await?;
        Ok(Db::MySql(XaDb::new(pool).with_table(table)))
    }
}

/// `action`, `commit` or `rollback` of `branch` on `account`'s row, with
/// the request `body` (JSON, empty for phase 2): the one handler both
/// transports call.
async fn run(app: &App, branch: &XaBranch, account: &str, body: &[u8]) -> Result<(), BranchError> {
    let body: Body = if body.is_empty() {
        Body::default()
    } else {
        serde_json::from_slice(body).map_err(|e| BranchError::InvalidArgument(e.to_string()))?
    };
    let (gid, branch_id) = (branch.gid.to_string(), branch.branch_id.to_string());
    // The same handler on either engine; only the connection type and
    // the placeholders differ.
    macro_rules! handle {
        ($xa:expr, $conn:ty, $insert:literal) => {
            $xa.handle(branch, &app.dtm, async |conn: &mut $conn| {
                if body.fail {
                    return Err(BranchError::failure(format!("account {account} refuses")));
                }
                sqlx::query($insert)
                    .bind(&gid)
                    .bind(&branch_id)
                    .bind(account)
                    .bind(body.amount)
                    .execute(conn)
                    .await?;
                Ok(())
            })
            .await
            .map(drop)
        };
    }
    match &app.db {
        Db::MySql(xa) => handle!(
            xa,
            sqlx::MySqlConnection,
            "INSERT INTO xa_effect (gid, branch_id, account, amount) VALUES (?, ?, ?, ?)"
        ),
        Db::Postgres(xa) => handle!(
            xa,
            sqlx::PgConnection,
            "INSERT INTO xa_effect (gid, branch_id, account, amount) VALUES ($1, $2, $3, $4)"
        ),
    }
}

/// `POST /xa/{account}?gid=…&branch_id=…&op=…[&phase2_url=…]`.
async fn branch(
    State(app): State<App>,
    Path(account): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> (StatusCode, String) {
    let answer = match XaBranch::from_query(query.as_deref().unwrap_or_default()) {
        Ok(branch) => run(&app, &branch, &account, &body).await,
        Err(err) => Err(err.into()),
    };
    match answer {
        Ok(()) => (StatusCode::OK, r#"{"dtm_result":"SUCCESS"}"#.to_string()),
        Err(err) => err.into_http(),
    }
}

/// The gRPC service `xa.Busi`: every method is an account
/// (`/xa.Busi/out`), answered by [`run`]; FAILURE is `Aborted`, as dtm's
/// gRPC branches answer it.
#[derive(Clone)]
struct GrpcBranches(App);

impl NamedService for GrpcBranches {
    const NAME: &'static str = "xa.Busi";
}

/// One call to one account.
struct GrpcCall {
    app: App,
    account: String,
}

impl UnaryService<Bytes> for GrpcCall {
    type Response = Bytes;
    type Future = BoxFuture<tonic::Response<Bytes>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let (app, account) = (self.app.clone(), self.account.clone());
        Box::pin(async move {
            let branch = XaBranch::from_grpc(request.metadata())
                .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
            run(&app, &branch, &account, request.get_ref()).await.map_err(BranchError::into_status)?;
            Ok(tonic::Response::new(Bytes::new()))
        })
    }
}

impl<B> tonic::codegen::Service<axum::http::Request<B>> for GrpcBranches
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let app = self.0.clone();
        let account = request.uri().path().trim_start_matches("/xa.Busi/").to_string();
        Box::pin(async move { Ok(Grpc::new(RawCodec).unary(GrpcCall { app, account }, request).await) })
    }
}

/// `<database url> <dtm HTTP url> <http port> <grpc port>`: when set, this test binary is
/// the branch service.
pub const SERVE: &str = "XA_BRANCH_SERVICE";

/// The service's routes on `db_url`, registering branches at `dtm_url`:
/// the HTTP router and the gRPC service.
pub async fn router(db_url: &str, dtm_url: &str) -> Result<Router, Box<dyn std::error::Error>> {
    Ok(services(db_url, dtm_url).await?.0)
}

async fn services(db_url: &str, dtm_url: &str) -> Result<(Router, GrpcBranches), Box<dyn std::error::Error>> {
    let db = open(db_url).await?;
    let dtm = DtmClient::new(dtm_url, discovery::ChannelCache::new())?;
    let app = App { db, dtm };
    Ok((Router::new().route("/xa/{account}", post(branch)).with_state(app.clone()), GrpcBranches(app)))
}

/// Serves as [`SERVE`] says, until the process is killed, on the given
/// HTTP and gRPC ports (0: any free one; a restart passes the first
/// start's ports, which phase-2 URLs name).
pub async fn serve(config: &str) -> Result<(), Box<dyn std::error::Error>> {
    let [db_url, dtm_url, http_port, grpc_port] = config.split(' ').collect::<Vec<_>>()[..] else {
        return Err(format!(
            "{SERVE} must be '<database url> <dtm url> <http port> <grpc port>', not {config:?}"
        )
        .into());
    };
    let (router, grpc) = services(db_url, dtm_url).await?;
    let bind = async |port: &str| {
        let port = port.parse::<u16>()?;
        Ok::<_, Box<dyn std::error::Error>>(
            tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?,
        )
    };
    let (listener, grpc_listener) = (bind(http_port).await?, bind(grpc_port).await?);
    let (addr, grpc_addr) = (listener.local_addr()?, grpc_listener.local_addr()?);
    let grpc_server = tonic::transport::Server::builder()
        .add_service(grpc)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc_listener));
    println!("ready xa-branch pid={} http={addr} grpc={grpc_addr}", std::process::id());
    tokio::select! {
        served = axum::serve(listener, router) => served?,
        served = grpc_server => served?,
    }
    Ok(())
}
