//! End to end, real processes: the article's two walkthroughs (a successful
//! quick order; one with too little stock) — as a saga and, with
//! `TransMode: workflow`, as a dtm workflow — bad inputs, and go-zero's etcd
//! registration format.

#[macro_use]
mod e2e_common;

use e2e_common::System;
use serde_json::json;

fn row(branch: &str, op: &str, reason: &str) -> (String, String, String) {
    (branch.to_string(), op.to_string(), reason.to_string())
}

async fn system() -> System {
    system_in("saga").await
}

async fn system_in(mode: &'static str) -> System {
    tokio::task::spawn_blocking(move || System::start_in(mode)).await.expect("system starts")
}

in_both_modes!(
    a_successful_order_creates_the_order_and_deducts_the_stock,
    insufficient_stock_rolls_the_order_back
);

async fn a_successful_order_creates_the_order_and_deducts_the_stock(mode: &'static str) {
    let system = system_in(mode).await;
    assert_eq!(system.stock(1).await, Some(100));

    let (status, answer) = system.quick_create(&json!({"userId": 1, "goodsId": 1, "num": 1})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "succeed");
    let gid = answer["gid"].as_str().expect("gid").to_string();

    assert_eq!(system.stock(1).await, Some(99));
    assert_eq!(system.orders().await, vec![(gid.clone(), 0, 1, 1, 1)]);
    // The article's two barrier rows, one per service.
    assert_eq!(
        system.barrier_rows(&gid).await,
        vec![row("01", "action", "action"), row("02", "action", "action")]
    );

    // Every process logs the saga under its gid.
    for (name, log) in [
        ("order-srv", system.order_srv.as_ref().unwrap().log_text()),
        ("stock-srv", system.stock_srvs[0].log_text()),
        ("order-api", system.order_api.as_ref().unwrap().log_text()),
    ] {
        assert!(log.contains(&gid), "{name}'s log names the gid {gid}:\n{log}");
    }

    // The status route shows the saga and its branches.
    let view: serde_json::Value =
        reqwest::get(format!("{}/order/status/{gid}", system.api())).await.unwrap().json().await.unwrap();
    assert_eq!(view["status"], "succeed", "{view}");
    let branches = view["branches"].as_array().unwrap();
    if mode == "saga" {
        assert_eq!(branches.len(), 4, "{view}");
        assert!(
            branches.iter().any(|b| b["url"].as_str().unwrap().ends_with("/order.rpc/pb.order/create")),
            "branch URLs are go-zero etcd targets: {view}"
        );
    } else {
        // A workflow's rows are the progress order-api recorded: two actions.
        let steps: Vec<_> = branches.iter().map(|b| (b["branchId"].clone(), b["op"].clone())).collect();
        assert_eq!(steps, [(json!("01"), json!("action")), (json!("02"), json!("action"))], "{view}");
    }
}

async fn insufficient_stock_rolls_the_order_back(mode: &'static str) {
    let system = system_in(mode).await;
    let (status, answer) = system.quick_create(&json!({"userId": 1, "goodsId": 1, "num": 101})).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["status"], "failed");
    assert!(answer["reason"].as_str().is_some_and(|r| !r.is_empty()), "{answer}");
    let gid = answer["gid"].as_str().unwrap().to_string();

    assert_eq!(system.stock(1).await, Some(100), "stock unchanged");
    assert_eq!(system.orders().await, vec![(gid.clone(), -1, 1, 1, 101)], "the order exists, rolled back");
    // The article's four rows: the order's action + compensation; the
    // stock's null compensation (action row written by the compensation) +
    // compensation. The failed deduction left no row. A workflow's undo op
    // is `rollback`.
    let undo = if mode == "saga" { "compensate" } else { "rollback" };
    assert_eq!(
        system.barrier_rows(&gid).await,
        vec![
            row("01", "action", "action"),
            row("01", undo, undo),
            row("02", "action", undo),
            row("02", undo, undo),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_goods_is_409_and_bad_inputs_are_400_with_nothing_written() {
    let system = system().await;
    let (status, answer) = system.quick_create(&json!({"userId": 1, "goodsId": 424242, "num": 1})).await;
    assert_eq!(status, 409, "{answer}");
    let gid = answer["gid"].as_str().unwrap().to_string();
    assert_eq!(system.orders().await, vec![(gid, -1, 1, 424242, 1)]);

    let before = system.orders().await;
    for (body, field) in [
        (json!({"userId": 1, "goodsId": 1}), "num"),
        (json!({"userId": "x", "goodsId": 1, "num": 1}), "userId"),
        (json!({"userId": 1, "goodsId": 0, "num": 1}), "goodsId"),
        (json!({"userId": 1, "goodsId": 1, "num": 1001}), "num"),
        (json!({"userId": 1, "goodsId": 1, "num": -1}), "num"),
    ] {
        let (status, answer) = system.quick_create(&body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["field"], field, "{body}: {answer}");
    }
    assert_eq!(system.orders().await, before, "nothing written");
    assert_eq!(system.stock(1).await, Some(100));
}

#[tokio::test(flavor = "multi_thread")]
async fn registrations_have_go_zeros_format_and_vanish_on_graceful_stop() {
    let mut system = system().await;
    for (prefix, port) in [
        ("order.rpc/", system.order_srv.as_ref().unwrap().port),
        ("stock.rpc/", system.stock_srvs[0].port),
        ("dtmservice/", system.coordinator.as_ref().unwrap().port),
    ] {
        let registered = system.registered(prefix);
        assert_eq!(registered.len(), 1, "{registered:?}");
        let (key, value) = &registered[0];
        let lease = key.strip_prefix(prefix).unwrap();
        assert!(lease.parse::<i64>().is_ok(), "<key>/<lease id in decimal>: {key}");
        assert_eq!(value, &format!("127.0.0.1:{port}"), "plain host:port value");
    }

    let mut order_srv = system.order_srv.take().unwrap();
    let mut stock_srv = system.stock_srvs.pop().unwrap();
    tokio::task::spawn_blocking(move || {
        order_srv.stop_gracefully();
        stock_srv.stop_gracefully();
    })
    .await
    .unwrap();
    // Revoked at once, not after the 10 s lease.
    assert!(system.registered("order.rpc/").is_empty());
    assert!(system.registered("stock.rpc/").is_empty());
}
