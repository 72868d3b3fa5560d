//! End to end, real processes, with the saga's branches over HTTP: order-srv
//! and stock-srv also serve dtm's HTTP branch protocol (`HttpListenOn`),
//! order-api builds `http://` branch URLs (`OrderHttpUrl`, `StockHttpUrl`),
//! and the coordinator calls them with JSON bodies and dtm's query
//! parameters — or, with `TransMode: workflow`, order-api calls them itself.
//! The article's two walkthroughs must end exactly as over gRPC.

#[macro_use]
mod e2e_common;

use e2e_common::System;
use serde_json::json;

fn row(branch: &str, op: &str, reason: &str) -> (String, String, String) {
    (branch.to_string(), op.to_string(), reason.to_string())
}

/// The system with both services' HTTP branches switched on and used.
async fn http_system(mode: &'static str) -> System {
    tokio::task::spawn_blocking(move || {
        let mut system = System::infrastructure();
        system.trans_mode = mode;
        // Port 0: each service's readiness line says which port it got,
        // and it is printed only once the HTTP branches serve too.
        system.start_order_srv_with("HttpListenOn: 127.0.0.1:0\n");
        system.start_stock_srv_with("HttpListenOn: 127.0.0.1:0\n");
        let order_http = system.order_srv.as_ref().unwrap().ready.port("http");
        let stock_http = system.stock_srvs[0].ready.port("http");
        system.start_order_api_configured(
            &format!(
                "OrderHttpUrl: http://127.0.0.1:{order_http}/api/order\nStockHttpUrl: http://127.0.0.1:{stock_http}/api/stock\n"
            ),
            &[],
        );
        system
    })
    .await
    .expect("system starts")
}

in_both_modes!(the_quick_order_saga_runs_over_http_branches);

async fn the_quick_order_saga_runs_over_http_branches(mode: &'static str) {
    let system = http_system(mode).await;

    let (status, answer) = system.quick_create(&json!({"userId": 1, "goodsId": 1, "num": 2})).await;
    assert_eq!(status, 200, "{answer}");
    let gid = answer["gid"].as_str().expect("gid").to_string();
    assert_eq!(system.stock(1).await, Some(98));
    assert_eq!(system.orders().await, vec![(gid.clone(), 0, 1, 1, 2)]);
    assert_eq!(
        system.barrier_rows(&gid).await,
        vec![row("01", "action", "action"), row("02", "action", "action")]
    );
    let view: serde_json::Value =
        reqwest::get(format!("{}/order/status/{gid}", system.api())).await.unwrap().json().await.unwrap();
    let branches = view["branches"].as_array().unwrap();
    if mode == "saga" {
        let urls: Vec<&str> = branches.iter().map(|b| b["url"].as_str().unwrap()).collect();
        assert_eq!(urls.len(), 4, "{view}");
        assert!(
            urls.iter().all(|u| u.starts_with("http://127.0.0.1:")),
            "every branch is an HTTP URL: {urls:?}"
        );
        assert!(urls.iter().any(|u| u.ends_with("/api/stock/deductRollback")), "{urls:?}");
    } else {
        // A workflow's rows are the progress order-api recorded.
        let steps: Vec<_> = branches.iter().map(|b| (b["branchId"].clone(), b["op"].clone())).collect();
        assert_eq!(steps, [(json!("01"), json!("action")), (json!("02"), json!("action"))], "{view}");
    }
    // The services log the calls under the saga's gid, as over gRPC.
    assert!(system.order_srv.as_ref().unwrap().log_text().contains(&gid));
    assert!(system.stock_srvs[0].log_text().contains(&gid));

    // Not enough stock: stock-srv answers 409, the coordinator (or, in a
    // workflow, order-api) compensates both branches over HTTP — the
    // stock's as a null compensation. A workflow's undo op is `rollback`.
    let (status, answer) = system.quick_create(&json!({"userId": 2, "goodsId": 1, "num": 99})).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["status"], "failed");
    let failed = answer["gid"].as_str().unwrap().to_string();
    assert_eq!(system.stock(1).await, Some(98), "stock untouched");
    assert_eq!(system.orders().await[1], (failed.clone(), -1, 2, 1, 99), "the order is rolled back");
    let undo = if mode == "saga" { "compensate" } else { "rollback" };
    let mut rows = system.barrier_rows(&failed).await;
    rows.sort();
    let mut expected = vec![
        row("01", "action", "action"),
        row("01", undo, undo),
        row("02", "action", undo),
        row("02", undo, undo),
    ];
    expected.sort();
    assert_eq!(rows, expected);
}
