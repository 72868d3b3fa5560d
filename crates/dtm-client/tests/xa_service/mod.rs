//! The XA branch service of `tests/xa.rs`: one HTTP handler for dtm's
//! three XA ops ([`dtm_client::XaDb::handle`]) on MariaDB or PostgreSQL.
//! `action` inserts `(gid, branch_id, account, amount)` into `xa_effect`
//! inside the local XA transaction (body `{"amount":N}`; `{"fail":true}`
//! answers FAILURE instead); `commit`/`rollback` finish it.
//!
//! The tests run it as a process of its own, to SIGKILL it between `XA
//! PREPARE` and the coordinator's commit: the test binary itself, started
//! again with [`SERVE`] set, runs only the test `branch_service_process`,
//! which then serves until killed ([`serve`]) and prints `ready xa-branch
//! pid=… http=127.0.0.1:port` once it does.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::post;
use barrier::{BarrierTable, BranchError};
use dtm_client::{DtmClient, XaBranch, XaDb};

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

/// One handler for `action`, `commit` and `rollback`.
async fn branch(
    State(app): State<App>,
    Path(account): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> (StatusCode, String) {
    let answer = async {
        let branch = XaBranch::from_query(query.as_deref().unwrap_or_default())?;
        let body: Body = if body.is_empty() {
            Body::default()
        } else {
            serde_json::from_slice(&body).map_err(|e| BranchError::InvalidArgument(e.to_string()))?
        };
        let (gid, branch_id) = (branch.gid.to_string(), branch.branch_id.to_string());
        // The same handler on either engine; only the connection type and
        // the placeholders differ.
        macro_rules! handle {
            ($xa:expr, $conn:ty, $insert:literal) => {
                $xa.handle(&branch, &app.dtm, async |conn: &mut $conn| {
                    if body.fail {
                        return Err(BranchError::failure(format!("account {account} refuses")));
                    }
                    sqlx::query($insert)
                        .bind(&gid)
                        .bind(&branch_id)
                        .bind(&account)
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
    .await;
    match answer {
        Ok(()) => (StatusCode::OK, r#"{"dtm_result":"SUCCESS"}"#.to_string()),
        Err(err) => err.into_http(),
    }
}

/// `<database url> <dtm HTTP url> <port>`: when set, this test binary is
/// the branch service.
pub const SERVE: &str = "XA_BRANCH_SERVICE";

/// The service's routes on `db_url`, registering branches at `dtm_url`.
pub async fn router(db_url: &str, dtm_url: &str) -> Result<Router, Box<dyn std::error::Error>> {
    let db = open(db_url).await?;
    let dtm = DtmClient::new(dtm_url, discovery::ChannelCache::new())?;
    Ok(Router::new().route("/xa/{account}", post(branch)).with_state(App { db, dtm }))
}

/// Serves as [`SERVE`] says, until the process is killed.
pub async fn serve(config: &str) -> Result<(), Box<dyn std::error::Error>> {
    let [db_url, dtm_url, port] = config.split(' ').collect::<Vec<_>>()[..] else {
        return Err(format!("{SERVE} must be '<database url> <dtm url> <port>', not {config:?}").into());
    };
    let router = router(db_url, dtm_url).await?;
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port.parse::<u16>()?))).await?;
    let addr = listener.local_addr()?;
    println!("ready xa-branch pid={} http={addr}", std::process::id());
    axum::serve(listener, router).await?;
    Ok(())
}
