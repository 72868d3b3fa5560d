//! End to end, real processes: 200 concurrent quick orders for 150 units,
//! as sagas and, with `TransMode: workflow`, as dtm workflows run by
//! order-api. Exactly 150 sell, the stock ends at 0 and never goes below,
//! every answer is 200 or 409 (or 202 for an order that outlived
//! `SubmitWait`, counted by how it ended).

#[macro_use]
mod e2e_common;

use e2e_common::System;
use serde_json::json;
use std::time::Duration;

in_both_modes!(two_hundred_concurrent_orders_for_150_units_sell_exactly_150);

async fn two_hundred_concurrent_orders_for_150_units_sell_exactly_150(mode: &'static str) {
    let system = tokio::task::spawn_blocking(move || {
        let mut system = System::infrastructure();
        system.trans_mode = mode;
        system.start_order_srv();
        system.start_stock_srv();
        // Room for the whole burst on two cores: wait up to 8 s for outcomes.
        system.start_order_api_with(&[("SUBMIT_WAIT", "8000")]);
        system
    })
    .await
    .unwrap();
    system.set_stock(1, 150).await;

    let started = std::time::Instant::now();
    let mut requests = Vec::new();
    for user in 1..=200 {
        let api = system.api();
        requests.push(tokio::spawn(async move {
            let response = reqwest::Client::new()
                .post(format!("{api}/order/quickCreate"))
                .json(&json!({"userId": user, "goodsId": 1, "num": 1}))
                .send()
                .await
                .expect("order-api answers");
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            (status, body)
        }));
    }
    let (mut sold, mut refused) = (0, 0);
    for request in requests {
        let (status, body) = request.await.unwrap();
        // 202: the saga outlived order-api's SubmitWait (a loaded machine
        // runs 200 sagas slowly); it is durable and will finish, which is
        // the contract of 202, so its final status is what counts.
        let status = match status {
            202 => {
                let gid = body["gid"].as_str().expect("a 202 names its gid");
                match system.wait_final(gid, Duration::from_secs(120)).await.as_str() {
                    "succeed" => 200,
                    _ => 409,
                }
            }
            other => other,
        };
        match status {
            200 => sold += 1,
            409 => refused += 1,
            other => panic!("unexpected answer {other}: {body}"),
        }
    }
    let elapsed = started.elapsed();
    println!("200 quick orders ({mode}) in {elapsed:?}");

    assert_eq!((sold, refused), (150, 50));
    assert_eq!(system.stock(1).await, Some(0), "sold out, not below");
    let orders = system.orders().await;
    assert_eq!(orders.iter().filter(|o| o.1 == 0).count(), 150, "live orders");
    assert_eq!(orders.iter().filter(|o| o.1 == -1).count(), 50, "rolled-back orders");
}
