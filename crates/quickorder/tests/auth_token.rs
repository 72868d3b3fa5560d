//! The coordinator's optional bearer token, across the system: with
//! `AuthToken` set, order-api (given the same `DtmToken`) still places
//! orders, while a caller without the token is refused on both APIs.

use proto::dtmgimp::dtm_client::DtmClient;
use quickorder::embedded::{Options, Ports, System};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_token_protected_coordinator_serves_order_api_and_refuses_strangers() {
    let _slot = harness::system_slot();
    let dir = tempfile::tempdir().unwrap();
    let options =
        Options { ports: Ports::ANY, auth_token: Some("s3cret-token".into()), ..Options::sqlite(dir.path()) };
    let system = System::start(&options).await.expect("system starts");
    let http = reqwest::Client::new();

    // order-api sends the token: the saga runs.
    let response = http
        .post(format!("http://{}/order/quickCreate", system.addrs.api))
        .json(&json!({"userId": 1, "goodsId": 1, "num": 1}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{answer}");
    let gid = answer["gid"].as_str().unwrap();
    // …and the status route queries the coordinator with it too.
    let view = http.get(format!("http://{}/order/status/{gid}", system.addrs.api)).send().await.unwrap();
    assert_eq!(view.status().as_u16(), 200);

    // A stranger without the token: 401 over HTTP, Unauthenticated over gRPC.
    let base = format!("http://{}/api/dtmsvr", system.addrs.coordinator_http);
    let refused = http.get(format!("{base}/newGid")).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let wrong = http.get(format!("{base}/newGid")).bearer_auth("guess").send().await.unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let mut grpc = DtmClient::connect(format!("http://{}", system.addrs.coordinator_grpc)).await.unwrap();
    let status = grpc.new_gid(()).await.expect_err("no token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    system.stop().await.expect("clean stop");
}
