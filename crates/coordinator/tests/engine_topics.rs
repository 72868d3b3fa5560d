//! Message topics (dtm's `dtmsvr/topics.go`, the `topic://` steps of
//! `trans_type_msg.go`) and the `kv` table behind them, one body run on
//! SQLite, MariaDB and PostgreSQL, against the recording branch server.

mod engine_support;

use std::collections::BTreeMap;
use std::time::Duration;

use coordinator::model::TransRequestInput;
use coordinator::topics::Subscription;
use coordinator::{Engine, EngineError, GlobalStatus};
use dtm_protocol::{Subscriber, Topic};
use engine_support::{Branches, c, engine, req, status, wait_final};

const FINAL_WITHIN: Duration = Duration::from_secs(20);

fn topic(name: &str) -> Topic {
    name.parse().unwrap()
}

async fn subscribe(engine: &Engine, name: &str, url: &str, remark: &str) -> Result<(), EngineError> {
    engine.subscribe(Subscription::from_input(name, url, remark).unwrap()).await
}

/// A message whose steps are `actions` (URLs or `topic://…`), payload `{"step":k}`.
fn msg(gid: &str, actions: &[&str]) -> TransRequestInput {
    TransRequestInput {
        gid: gid.into(),
        trans_type: "msg".into(),
        steps: actions.iter().map(|a| BTreeMap::from([("action".to_string(), a.to_string())])).collect(),
        payloads: (0..actions.len()).map(|k| format!(r#"{{"step":{k}}}"#).into_bytes()).collect(),
        wait_result: true,
        ..Default::default()
    }
}

/// The subscribers of `name` as stored (`queryKV`).
async fn subscribers(engine: &Engine, name: &str) -> (Vec<Subscriber>, i64) {
    let rows = engine.query_kv("topics", Some(name)).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0].cat.as_str(), rows[0].k.as_str()), ("topics", name));
    (serde_json::from_str(&rows[0].v).unwrap(), rows[0].version)
}

fn conflict(result: Result<(), EngineError>) -> String {
    match result {
        Err(EngineError::Conflict(message)) => message,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

async fn topics_contract(url: &str) {
    let (engine, b) = (engine(url).await, Branches::start().await);
    let (ship, bill) = (b.url("Ship"), b.url("Bill"));

    // Subscribe: the first creates the topic, a repeat is dtm's "this url exists".
    subscribe(&engine, "orders", &ship, "warehouse").await.unwrap();
    subscribe(&engine, "orders", &bill, "").await.unwrap();
    assert_eq!(conflict(subscribe(&engine, "orders", &ship, "again").await), "this url exists");
    let (list, version) = subscribers(&engine, "orders").await;
    assert_eq!(
        list,
        [
            Subscriber { url: ship.clone(), remark: "warehouse".into() },
            Subscriber { url: bill.clone(), remark: String::new() }
        ]
    );
    assert_eq!(version, 2, "created at 1, one change since");

    // A message to the topic: one branch per subscriber, each with the step's payload;
    // a plain step beside it keeps its own id.
    engine.submit(req(msg("topic-1", &["topic://orders", &b.url("Audit")]))).await.unwrap();
    assert_eq!(status(&engine, "topic-1").await, GlobalStatus::Succeed);
    assert_eq!(
        b.calls_of("topic-1"),
        [c("/Ship", "01-01", "action"), c("/Bill", "01-02", "action"), c("/Audit", "02", "action")]
    );
    let bodies: Vec<String> =
        b.calls().iter().filter(|call| call.param("gid") == "topic-1").map(|c| c.text()).collect();
    assert_eq!(bodies, [r#"{"step":0}"#, r#"{"step":0}"#, r#"{"step":1}"#]);
    let stored = engine.query(&"topic-1".parse().unwrap()).await.unwrap().unwrap();
    let rows: Vec<(&str, &str)> =
        stored.branches.iter().map(|r| (r.branch_id.as_str(), r.url.as_str())).collect();
    assert_eq!(rows, [("01-01", ship.as_str()), ("01-02", bill.as_str()), ("02", b.url("Audit").as_str())]);

    // Unsubscribe: the next message goes to the one left (branch "01", dtm's single-URL id).
    engine.unsubscribe(&topic("orders"), &ship).await.unwrap();
    assert_eq!(conflict(engine.unsubscribe(&topic("orders"), &ship).await), "no such an url ");
    engine.submit(req(msg("topic-2", &["topic://orders"]))).await.unwrap();
    assert_eq!(b.calls_of("topic-2"), [c("/Bill", "01", "action")]);

    // Resubmitting an unfinished message is a retry, although its topic changed since.
    let mut later = msg("topic-later", &["topic://orders"]);
    (later.custom_data, later.wait_result) = (r#"{"delay":600}"#.into(), false);
    engine.submit(req(later.clone())).await.unwrap();
    subscribe(&engine, "orders", &ship, "").await.unwrap();
    engine.submit(req(later)).await.unwrap();
    let other = conflict(engine.submit(req(msg("topic-later", &["topic://orders", &ship]))).await);
    assert_eq!(other, "gid topic-later was already submitted with other steps");
    let stored = engine.query(&"topic-later".parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(stored.branches.len(), 1, "the subscribers when it was created");
    engine.unsubscribe(&topic("orders"), &ship).await.unwrap();

    // Unknown or empty topics refuse the message (dtm: "topic not found"); nothing is stored.
    assert_eq!(conflict(engine.submit(req(msg("topic-3", &["topic://nobody"]))).await), "topic not found");
    assert!(engine.query(&"topic-3".parse().unwrap()).await.unwrap().is_none());
    engine.unsubscribe(&topic("orders"), &bill).await.unwrap();
    assert_eq!(subscribers(&engine, "orders").await.0, []);
    assert_eq!(conflict(engine.unsubscribe(&topic("orders"), &bill).await), "this topic is empty");
    let mut prepare = msg("topic-4", &["topic://orders"]);
    prepare.query_prepared = b.url("QueryPrepared");
    assert_eq!(conflict(engine.prepare(req(prepare)).await), "topic not found");

    // Delete: gone for good; dtm's error for an unknown one.
    engine.delete_topic(&topic("orders")).await.unwrap();
    assert_eq!(conflict(engine.delete_topic(&topic("orders")).await), "storage: NotFound");
    assert_eq!(conflict(engine.unsubscribe(&topic("orders"), &bill).await), "no such a topic");
    assert!(engine.query_kv("topics", Some("orders")).await.unwrap().is_empty());

    // scanKV: newest first, keyset pages; queryKV without a key: the whole category.
    for n in 1..=5 {
        subscribe(&engine, &format!("t{n}"), &b.url(&format!("T{n}")), "").await.unwrap();
    }
    let mut seen = Vec::new();
    let mut position = None;
    loop {
        let page = engine.scan_kv("topics", position, 2).await.unwrap();
        seen.extend(page.kv.iter().map(|row| row.k.clone()));
        if page.next_position.is_empty() {
            assert!(page.kv.len() < 2, "a full page names where the next one starts");
            break;
        }
        assert_eq!(page.kv.len(), 2);
        position = Some(page.next_position.parse().unwrap());
    }
    assert_eq!(seen, ["t5", "t4", "t3", "t2", "t1"]);
    assert!(engine.scan_kv("other", None, 10).await.unwrap().kv.is_empty());
    let all: Vec<String> = engine.query_kv("topics", None).await.unwrap().into_iter().map(|r| r.k).collect();
    assert_eq!(all, ["t1", "t2", "t3", "t4", "t5"]);

    // Names are exact on every store (MySQL's `kv.k` is utf8mb4_bin): two topics.
    subscribe(&engine, "Case", &b.url("Upper"), "").await.unwrap();
    subscribe(&engine, "case", &b.url("Lower"), "").await.unwrap();
    engine.submit(req(msg("topic-case", &["topic://case"]))).await.unwrap();
    assert_eq!(b.calls_of("topic-case"), [c("/Lower", "01", "action")]);
    assert_eq!(subscribers(&engine, "Case").await.0[0].url, b.url("Upper"));
}

#[tokio::test]
async fn topics_on_sqlite() {
    let db = harness::sqlite_database();
    topics_contract(&db.url).await;
}

#[tokio::test]
async fn topics_on_mariadb() {
    let db = harness::mysql_database().await;
    topics_contract(&db.url).await;
}

#[tokio::test]
async fn topics_on_postgres() {
    let db = harness::postgres_database().await;
    topics_contract(&db.url).await;
}

/// A prepared message to a topic took its subscribers when it was
/// prepared: its check-back submits it later, to those, whatever the topic
/// became meanwhile.
#[tokio::test]
async fn a_prepared_topic_message_keeps_the_subscribers_it_was_prepared_with() {
    let db = harness::sqlite_database();
    let (engine, b) = (engine(&db.url).await, Branches::start().await);
    let poller = engine.spawn_poller();
    subscribe(&engine, "paid", &b.url("Ship"), "").await.unwrap();
    subscribe(&engine, "paid", &b.url("Mail"), "").await.unwrap();
    let mut prepare = msg("prepared-topic", &["topic://paid"]);
    prepare.query_prepared = b.url("QueryPrepared");
    prepare.timeout_to_fail = 1;
    prepare.wait_result = false;
    engine.prepare(req(prepare)).await.unwrap();
    engine.delete_topic(&topic("paid")).await.unwrap();
    assert_eq!(wait_final(&engine, "prepared-topic", FINAL_WITHIN).await, GlobalStatus::Succeed);
    assert_eq!(
        b.calls_of("prepared-topic"),
        [c("/QueryPrepared", "00", "msg"), c("/Ship", "01-01", "action"), c("/Mail", "01-02", "action")]
    );
    engine.shutdown().await;
    poller.await.unwrap();
}
