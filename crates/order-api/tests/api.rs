//! order-api's HTTP boundary on a real socket: validation answers 400 naming
//! the field before anything is sent to the coordinator, a huge body 413, an
//! unreachable coordinator 503 — and the process keeps serving.

use std::net::SocketAddr;
use std::path::Path;

use reqwest::StatusCode;
use serde_json::{Value, json};

/// order-api on port 0 with a coordinator address where nothing listens.
async fn start_without_coordinator() -> SocketAddr {
    harness::init_tracing();
    let dead = harness::closed_port();
    let yaml = format!(
        "Name: order-api\nHost: 127.0.0.1\nPort: 0\nDtmServer: 127.0.0.1:{dead}\n\
         DtmHttpServer: http://127.0.0.1:{dead}/api/dtmsvr\nDtmTimeout: 1000\nSubmitWait: 1000\nMaxBytes: 4096\nMaxNum: 50\n\
         OrderRpcConf:\n  Endpoints: [127.0.0.1:9001]\nStockRpcConf:\n  Endpoints: [127.0.0.1:9002]\n"
    );
    let config: order_api::Config =
        service_kit::config::parse_yaml(Path::new("test.yaml"), &yaml, |_| None).unwrap();
    let server = order_api::build(config).await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.run_until_stopped(std::future::pending()));
    addr
}

async fn post(addr: SocketAddr, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/order/quickCreate"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn bad_inputs_are_400_naming_the_field() {
    let addr = start_without_coordinator().await;
    let cases: Vec<(String, Option<&str>)> = vec![
        (json!({"goodsId": 1, "num": 1}).to_string(), Some("userId")),
        (json!({"userId": 1, "num": 1}).to_string(), Some("goodsId")),
        (json!({"userId": 1, "goodsId": 1}).to_string(), Some("num")),
        (json!({"userId": "1", "goodsId": 1, "num": 1}).to_string(), Some("userId")),
        (json!({"userId": 1, "goodsId": 1.5, "num": 1}).to_string(), Some("goodsId")),
        (json!({"userId": 1, "goodsId": 1, "num": true}).to_string(), Some("num")),
        (json!({"userId": 0, "goodsId": 1, "num": 1}).to_string(), Some("userId")),
        (json!({"userId": 1, "goodsId": -4, "num": 1}).to_string(), Some("goodsId")),
        (json!({"userId": 1, "goodsId": 1, "num": 0}).to_string(), Some("num")),
        (json!({"userId": 1, "goodsId": 1, "num": 51}).to_string(), Some("num")),
        (r#"{"userId": 1, "goodsId": 1, "num": 99999999999999999999}"#.to_string(), Some("num")),
        ("{\"userId\": 1,".to_string(), None),
        ("[1, 2, 3]".to_string(), None),
        (String::new(), None),
    ];
    for (body, field) in cases {
        let (status, answer) = post(addr, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}: {answer}");
        match field {
            Some(field) => {
                assert_eq!(answer["field"], field, "{body}: {answer}");
                assert!(answer["error"].as_str().unwrap().contains(field), "{body}: {answer}");
            }
            None => assert!(answer.get("field").is_none(), "{body}: {answer}"),
        }
    }
}

#[tokio::test]
async fn a_huge_body_is_413_json() {
    let addr = start_without_coordinator().await;
    let huge = format!("{{\"userId\":1,\"goodsId\":1,\"num\":1,\"pad\":\"{}\"}}", "x".repeat(64 * 1024));
    let (status, answer) = post(addr, huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("4096"), "{answer}");
}

#[tokio::test]
async fn no_coordinator_is_503_and_the_process_keeps_serving() {
    let addr = start_without_coordinator().await;
    for _ in 0..3 {
        let (status, answer) = post(addr, json!({"userId": 1, "goodsId": 1, "num": 1}).to_string()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains("coordinator"), "{answer}");
    }
    // The demo's `curl -d` sends a form content type; the body is still JSON to us.
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/order/quickCreate"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"userId":1,"goodsId":1,"num":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

    let health = reqwest::get(format!("http://{addr}/healthz")).await.unwrap();
    assert_eq!((health.status(), health.text().await.unwrap()), (StatusCode::OK, "OK".to_string()));
}

#[tokio::test]
async fn status_route_validates_the_gid_and_reports_an_unreachable_coordinator() {
    let addr = start_without_coordinator().await;
    let bad = reqwest::get(format!("http://{addr}/order/status/{}", "g".repeat(129))).await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let answer: Value = bad.json().await.unwrap();
    assert_eq!(answer["field"], "gid");

    let down = reqwest::get(format!("http://{addr}/order/status/abc123")).await.unwrap();
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    let answer: Value = down.json().await.unwrap();
    assert_eq!(answer["gid"], "abc123");
}
