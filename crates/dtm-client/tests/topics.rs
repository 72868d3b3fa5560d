//! Message topics through the client against our coordinator (in process):
//! subscribing over both APIs, a message to the topic reaching every
//! subscriber, the KV routes, and dtm's errors as [`ClientError`]s.

mod support;

use std::time::Duration;

use dtm_client::{ClientError, Msg, TransStatus};
use dtm_protocol::{Gid, Subscriber, Topic};
use harness::branches::{BranchServers, Call, c};
use serde_json::json;
use support::InProcess;

const FINAL_WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_a_topic_reaches_every_subscriber_over_both_apis() {
    let dtm = InProcess::start().await;
    let b = BranchServers::start().await;
    let (http, grpc) = (dtm.http_client(), dtm.grpc_client());
    let topic: Topic = "paid".parse().unwrap();
    http.subscribe(&topic, &b.http_url("Ship"), "warehouse").await.unwrap();
    grpc.subscribe(&topic, &b.http_url("Mail"), "").await.unwrap();
    let again = grpc.subscribe(&topic, &b.http_url("Ship"), "").await.unwrap_err();
    assert!(matches!(&again, ClientError::Failure(m) if m == "this url exists"), "{again:?}");
    let again = http.subscribe(&topic, &b.http_url("Ship"), "").await.unwrap_err();
    assert!(matches!(&again, ClientError::Failure(m) if m == "this url exists"), "{again:?}");

    let rows = http.query_kv("topics", Some("paid")).await.unwrap().kv;
    assert_eq!(
        rows[0].subscribers().unwrap(),
        [
            Subscriber { url: b.http_url("Ship"), remark: "warehouse".into() },
            Subscriber { url: b.http_url("Mail"), remark: String::new() }
        ]
    );
    let refused = grpc.query_kv("topics", None).await.unwrap_err();
    assert!(matches!(refused, ClientError::InvalidArgument(_)), "{refused:?}");

    let g = Gid::new(format!("topic-{}", uuid::Uuid::new_v4().simple())).unwrap();
    Msg::new(g.clone()).add_topic_json(&topic, &json!({"order": 1})).unwrap().submit(&grpc).await.unwrap();
    assert_eq!(dtm.wait_final(g.as_str(), FINAL_WITHIN).await, TransStatus::Succeed);
    let calls = b.recorder.calls_of(g.as_str());
    assert_eq!(
        calls.iter().map(Call::short).collect::<Vec<_>>(),
        [c("/Ship", "01-01", "action"), c("/Mail", "01-02", "action")]
    );
    assert!(calls.iter().all(|call| call.body == br#"{"order":1}"#));

    grpc.unsubscribe(&topic, &b.http_url("Ship")).await.unwrap();
    let missing = http.unsubscribe(&topic, &b.http_url("Ship")).await.unwrap_err();
    assert!(matches!(&missing, ClientError::Failure(m) if m == "no such an url "), "{missing:?}");
    for name in ["a", "b", "c"] {
        http.subscribe(&name.parse().unwrap(), &b.http_url("X"), "").await.unwrap();
    }
    let first = http.scan_kv("topics", "", 2).await.unwrap();
    let second = http.scan_kv("topics", &first.next_position, 2).await.unwrap();
    let keys: Vec<&str> = first.kv.iter().chain(&second.kv).map(|row| row.k.as_str()).collect();
    assert_eq!(keys, ["c", "b", "a", "paid"]);
    // dtm's rule: a full page names a position, the short (here empty) one after it ends the scan.
    let third = http.scan_kv("topics", &second.next_position, 2).await.unwrap();
    assert_eq!((third.kv.len(), third.next_position.as_str()), (0, ""));

    http.delete_topic(&topic).await.unwrap();
    let gone = grpc.delete_topic(&topic).await.unwrap_err();
    assert!(matches!(&gone, ClientError::Failure(m) if m == "storage: NotFound"), "{gone:?}");
    let g = Gid::new(format!("topic-{}", uuid::Uuid::new_v4().simple())).unwrap();
    let refused = Msg::new(g).add_topic_json(&topic, &json!({})).unwrap().submit(&http).await.unwrap_err();
    assert!(matches!(&refused, ClientError::Failure(m) if m == "topic not found"), "{refused:?}");
}
