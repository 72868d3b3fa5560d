//! stock-srv's HTTP flavour (`HttpListenOn`): dtm's HTTP branch protocol
//! in front of the same logic as the gRPC methods, on SQLite.

use serde_json::{Value, json};
use service_kit::testing::RunningService;

/// A running stock-srv with HTTP branches on SQLite, and a pool on its database.
async fn start() -> (RunningService, sqlx::SqlitePool) {
    let service = RunningService::on_sqlite::<stock_srv::StockParts>("stock.rpc", true).await;
    let pool = sqlx::SqlitePool::connect(service.data_source()).await.unwrap();
    (service, pool)
}

async fn call(r: &RunningService, path: &str, gid: &str, op: &str, num: i64) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!(
            "{}{path}?gid={gid}&trans_type=saga&branch_id=02&op={op}",
            r.http.as_deref().unwrap_or_default()
        ))
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
    let (r, pool) = start().await;
    assert_eq!(
        call(&r, "/api/stock/deduct", "g1", "action", 3).await,
        (200, json!({"dtm_result": "SUCCESS"}))
    );
    assert_eq!(call(&r, "/api/stock/deduct", "g1", "action", 3).await.0, 200, "redelivery");
    assert_eq!(stock(&pool).await, 97);

    let (status, answer) = call(&r, "/api/stock/deduct", "g2", "action", 1000).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["dtm_result"], "FAILURE");
    // dtm compensates the failed action too: a null compensation here.
    assert_eq!(call(&r, "/api/stock/deductRollback", "g2", "compensate", 1000).await.0, 200);
    assert_eq!(stock(&pool).await, 97, "nothing was deducted for g2, nothing given back");

    assert_eq!(call(&r, "/api/stock/deductRollback", "g1", "compensate", 3).await.0, 200);
    assert_eq!(call(&r, "/api/stock/deductRollback", "g1", "compensate", 3).await.0, 200, "redelivery");
    assert_eq!(stock(&pool).await, 100);

    let (status, _) = call(&r, "/api/stock/deduct", "g3", "action", -1).await;
    assert_eq!(status, 400);
    r.stop().await;
}
