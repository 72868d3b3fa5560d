//! A small XA branch service over HTTP, as a process of its own: what
//! `tests/xa.rs` SIGKILLs between `XA PREPARE` and the coordinator's commit.
//!
//! ```text
//! xa_branch <database url> <dtm HTTP url> <port, 0 = any>
//! ```
//!
//! `mysql://…` or `postgres://…`. Serves `POST /xa/{account}` for all three
//! ops of dtm's XA protocol ([`dtm_client::XaDb::handle`]): `action`
//! inserts `(gid, branch_id, account, amount)` into `xa_effect` inside the
//! local XA transaction (body `{"amount":N}`; `{"fail":true}` answers
//! FAILURE instead), `commit`/`rollback` finish it. Prints `ready xa-branch
//! pid=… http=127.0.0.1:port` once it serves.

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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, db_url, dtm_url, port] = args.as_slice() else {
        return Err("usage: xa_branch <database url> <dtm HTTP url> <port>".into());
    };
    let db = open(db_url).await?;
    let dtm = DtmClient::new(dtm_url, discovery::ChannelCache::new())?;
    let app = App { db, dtm };
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port.parse::<u16>()?))).await?;
    let addr = listener.local_addr()?;
    println!("ready xa-branch pid={} http={addr}", std::process::id());
    let router = Router::new().route("/xa/{account}", post(branch)).with_state(app);
    axum::serve(listener, router).await?;
    Ok(())
}
