//! stock-srv's HTTP flavour (`HttpListenOn`): dtm's HTTP branch protocol
//! in front of the same logic as the gRPC methods, on SQLite.

use std::path::Path;

use serde_json::{Value, json};
use test_support::RunningServer;

struct Running {
    http: String,
    pool: sqlx::SqlitePool,
    server: RunningServer<service_kit::ServeError>,
    _db: test_support::TestDatabase,
}

async fn start() -> Running {
    test_support::init_tracing();
    let db = test_support::sqlite_database();
    let yaml = format!(
        "Name: stock.rpc\nListenOn: 127.0.0.1:0\nHttpListenOn: 127.0.0.1:0\nDB:\n  DataSource: \"{}\"\n",
        db.url
    );
    let config: stock_srv::Config =
        service_kit::config::parse_yaml(Path::new("t.yaml"), &yaml, |_| None).unwrap();
    let server = stock_srv::build(&config).await.expect("stock-srv starts");
    let http = format!("http://{}", server.http_addr().expect("HTTP branches are served"));
    let server = RunningServer::spawn(|stop| server.run_until_stopped(stop));
    let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
    Running { http, pool, server, _db: db }
}

async fn call(r: &Running, path: &str, gid: &str, op: &str, num: i64) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}?gid={gid}&trans_type=saga&branch_id=02&op={op}", r.http))
        .json(&json!({"goodsId": 1, "num": num}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn stock(pool: &sqlx::SqlitePool) -> i64 {
    sqlx::query_scalar("select num from stock where goods_id = 1").fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deduct_answers_409_when_short_and_rollbacks_are_exact() {
    let r = start().await;
    assert_eq!(
        call(&r, "/api/stock/deduct", "g1", "action", 3).await,
        (200, json!({"dtm_result": "SUCCESS"}))
    );
    assert_eq!(call(&r, "/api/stock/deduct", "g1", "action", 3).await.0, 200, "redelivery");
    assert_eq!(stock(&r.pool).await, 97);

    let (status, answer) = call(&r, "/api/stock/deduct", "g2", "action", 1000).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["dtm_result"], "FAILURE");
    // dtm compensates the failed action too: a null compensation here.
    assert_eq!(call(&r, "/api/stock/deductRollback", "g2", "compensate", 1000).await.0, 200);
    assert_eq!(stock(&r.pool).await, 97, "nothing was deducted for g2, nothing given back");

    assert_eq!(call(&r, "/api/stock/deductRollback", "g1", "compensate", 3).await.0, 200);
    assert_eq!(call(&r, "/api/stock/deductRollback", "g1", "compensate", 3).await.0, 200, "redelivery");
    assert_eq!(stock(&r.pool).await, 100);

    let (status, _) = call(&r, "/api/stock/deduct", "g3", "action", -1).await;
    assert_eq!(status, 400);
    r.server.stop().await;
}
