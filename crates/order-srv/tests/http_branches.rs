//! order-srv's HTTP flavour (`HttpListenOn`): dtm's HTTP branch protocol
//! in front of the same logic as the gRPC methods, on SQLite.

use serde_json::{Value, json};
use service_kit::testing::RunningService;

/// A running order-srv with HTTP branches on SQLite, and a pool on its database.
async fn start() -> (RunningService, sqlx::SqlitePool) {
    let service = RunningService::on_sqlite::<order_srv::OrderParts>("order.rpc", true).await;
    let pool = sqlx::SqlitePool::connect(service.data_source()).await.unwrap();
    (service, pool)
}

/// POSTs as dtm does; returns status and JSON body.
async fn call(r: &RunningService, path: &str, query: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}?{query}", r.http.as_deref().unwrap_or_default()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn dtm_query(gid: &str, op: &str) -> String {
    format!("gid={gid}&trans_type=saga&branch_id=01&op={op}")
}

async fn orders(pool: &sqlx::SqlitePool) -> Vec<(String, i64, i64)> {
    sqlx::query_as(r#"select gid, row_state, num from "order" order by id"#).fetch_all(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_rollback_answer_like_dtm_branches() {
    let (r, pool) = start().await;
    let body = json!({"userId": 1, "goodsId": 2, "num": 3}).to_string();

    let (status, answer) = call(&r, "/api/order/create", &dtm_query("g1", "action"), &body).await;
    assert_eq!((status, answer), (200, json!({"dtm_result": "SUCCESS"})));
    // A redelivery is answered SUCCESS and skipped by the barrier.
    assert_eq!(call(&r, "/api/order/create", &dtm_query("g1", "action"), &body).await.0, 200);
    assert_eq!(orders(&pool).await, [("g1".to_string(), 0, 3)]);

    assert_eq!(call(&r, "/api/order/createRollback", &dtm_query("g1", "compensate"), &body).await.0, 200);
    assert_eq!(orders(&pool).await, [("g1".to_string(), -1, 3)]);
    // A compensation whose action never ran: null compensation, success.
    assert_eq!(call(&r, "/api/order/createRollback", &dtm_query("g2", "compensate"), &body).await.0, 200);
    assert_eq!(orders(&pool).await.len(), 1);

    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400_and_change_nothing() {
    let (r, pool) = start().await;
    let body = json!({"userId": 1, "goodsId": 2, "num": 3}).to_string();
    let (status, answer) = call(&r, "/api/order/create", "gid=g1&trans_type=saga&branch_id=01", &body).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("op"), "{answer}");
    for bad in [
        "{",
        r#"{"userId":1,"goodsId":2}"#,
        r#"{"userId":1,"goodsId":2,"num":0}"#,
        r#"{"userId":1,"goodsId":2,"num":1,"x":1}"#,
    ] {
        let (status, answer) = call(&r, "/api/order/create", &dtm_query("g1", "action"), bad).await;
        assert_eq!(status, 400, "{bad}: {answer}");
    }
    assert!(orders(&pool).await.is_empty());
}

#[tokio::test]
async fn without_http_listen_on_only_grpc_is_served() {
    let db = harness::sqlite_database();
    let server =
        service_kit::build_loopback_branch_server::<order_srv::OrderParts>("order.rpc", &db.url, false)
            .await
            .unwrap();
    assert_eq!(server.http_addr(), None);
}
