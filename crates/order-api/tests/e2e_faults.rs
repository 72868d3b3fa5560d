//! End to end, real processes, with failures: a stock-srv instance killed
//! in the middle of a run, and order-srv down when a saga starts. Every saga
//! still completes: the coordinator retries until the branch answers. The
//! same in workflow mode (`mod workflow`): an order interrupted by the
//! fault is resumed through order-api's callback, its recorded steps
//! replayed.

#[macro_use]
mod e2e_common;

use std::time::Duration;

use e2e_common::System;
use serde_json::json;

in_both_modes!(
    every_saga_completes_when_one_of_two_stock_instances_is_killed,
    a_saga_started_while_order_srv_is_down_completes_once_it_is_up
);

async fn every_saga_completes_when_one_of_two_stock_instances_is_killed(mode: &'static str) {
    let mut system = tokio::task::spawn_blocking(move || {
        let mut system = System::infrastructure();
        system.trans_mode = mode;
        system.start_order_srv();
        system.start_stock_srv();
        system.start_stock_srv();
        system.start_order_api();
        system
    })
    .await
    .unwrap();

    let mut gids = Vec::new();
    for round in 0..6 {
        let mut batch = Vec::new();
        for i in 0..5 {
            let api = system.api();
            batch.push(tokio::spawn(async move {
                let response = reqwest::Client::new()
                    .post(format!("{api}/order/quickCreate"))
                    .json(&json!({"userId": round * 10 + i + 1, "goodsId": 1, "num": 1}))
                    .send()
                    .await
                    .expect("order-api answers");
                (response.status().as_u16(), response.json::<serde_json::Value>().await.unwrap_or_default())
            }));
        }
        if round == 2 {
            // Mid-run, with this batch in flight. SIGKILL: no deregistration,
            // the key lingers until its lease expires (≤ 10 s), and calls
            // routed to it fail until then; the coordinator retries them.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut victim = system.stock_srvs.remove(0);
            tokio::task::spawn_blocking(move || victim.kill()).await.unwrap();
        }
        for call in batch {
            let (status, body) = call.await.unwrap();
            assert!(status == 200 || status == 202, "{status}: {body}");
            gids.push(body["gid"].as_str().unwrap().to_string());
        }
    }
    for gid in &gids {
        assert_eq!(system.wait_final(gid, Duration::from_secs(60)).await, "succeed", "saga {gid}");
    }
    assert_eq!(system.stock(1).await, Some(100 - 30));
    let orders = system.orders().await;
    assert_eq!(orders.len(), 30);
    assert!(orders.iter().all(|o| o.1 == 0), "{orders:?}");
}

async fn a_saga_started_while_order_srv_is_down_completes_once_it_is_up(mode: &'static str) {
    let mut system = tokio::task::spawn_blocking(move || {
        let mut system = System::infrastructure();
        system.trans_mode = mode;
        system.start_stock_srv();
        system.start_order_api();
        system
    })
    .await
    .unwrap();

    let (status, answer) = system.quick_create(&json!({"userId": 9, "goodsId": 1, "num": 2})).await;
    assert_eq!(status, 202, "still running: order-srv is not there yet: {answer}");
    assert_eq!(answer["status"], "submitted");
    let gid = answer["gid"].as_str().unwrap().to_string();

    tokio::time::sleep(Duration::from_secs(5)).await;
    let system = tokio::task::spawn_blocking(move || {
        system.start_order_srv();
        system
    })
    .await
    .unwrap();

    assert_eq!(system.wait_final(&gid, Duration::from_secs(60)).await, "succeed");
    assert_eq!(system.stock(1).await, Some(98));
    assert_eq!(system.orders().await, vec![(gid, 0, 9, 1, 2)]);
}
