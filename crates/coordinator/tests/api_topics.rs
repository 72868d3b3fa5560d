//! dtm's topic, KV and `resetCronTime` routes over HTTP and gRPC, a
//! subscribe race between two coordinators on one MariaDB, and a
//! coordinator killed after acknowledging a message to a topic.

mod edges_support;

use std::time::Duration;

use edges_support::{
    BranchServer, CoordinatorProcess, InProcess, fast_config, get, mysql_store, port_of, post,
};
use proto::dtmgimp::DtmTopicRequest;
use proto::dtmgimp::dtm_client::DtmClient;
use serde_json::{Value, json};

const FINAL_WITHIN: Duration = Duration::from_secs(20);

async fn delete(c: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = c.delete(url).send().await.expect("DELETE");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `GET /api/dtmsvr/<route>` with `query`.
async fn call(c: &reqwest::Client, base: &str, route: &str, query: &[(&str, &str)]) -> (u16, Value) {
    let url = reqwest::Url::parse_with_params(&format!("{base}/api/dtmsvr/{route}"), query).unwrap();
    get(c, url.as_str()).await
}

/// A message to `topic://<topic>` as dtm's HTTP SDKs send it.
fn topic_msg(gid: &str, topic: &str, payload: &Value, custom_data: &str) -> Value {
    json!({
        "gid": gid,
        "trans_type": "msg",
        "steps": [{"action": format!("topic://{topic}")}],
        "payloads": [payload.to_string()],
        "custom_data": custom_data,
        "wait_result": false,
    })
}

fn success() -> Value {
    json!({"dtm_result": "SUCCESS"})
}

#[tokio::test]
async fn topic_and_kv_routes_answer_in_dtms_shapes() {
    let coordinator = InProcess::sqlite(|_| {}).await;
    let branches = BranchServer::start().await;
    let (c, base) = (reqwest::Client::new(), coordinator.http.as_str());
    let (a, b) = (branches.url("a"), branches.url("b"));

    let sub = async |url: &str, remark: &str| {
        call(&c, base, "subscribe", &[("topic", "paid"), ("url", url), ("remark", remark)]).await
    };
    assert_eq!(sub(&a, "first").await, (200, success()));
    assert_eq!(sub(&b, "").await, (200, success()));
    assert_eq!(sub(&a, "").await, (409, json!({"dtm_result": "FAILURE", "message": "this url exists"})));

    // Malformed input: 400 naming the field, nothing stored.
    for (query, field) in [
        (vec![("url", a.as_str())], "topic"),
        (vec![("topic", "a/b"), ("url", a.as_str())], "topic"),
        (vec![("topic", "paid")], "url"),
        (vec![("topic", "paid"), ("url", "not a url")], "url"),
        (vec![("topic", "paid"), ("url", "topic://paid")], "url"),
    ] {
        let (status, body) = call(&c, base, "subscribe", &query).await;
        assert_eq!((status, body["field"].as_str()), (400, Some(field)), "{query:?}: {body}");
    }
    assert_eq!(call(&c, base, "unsubscribe", &[("topic", "paid")]).await.1["field"], "url");

    // queryKV: dtm's KVStore JSON.
    let (status, body) = call(&c, base, "queryKV", &[("cat", "topics"), ("key", "paid")]).await;
    assert_eq!(status, 200, "{body}");
    let row = &body["kv"][0];
    assert_eq!(
        (row["cat"].as_str(), row["k"].as_str(), row["version"].as_i64()),
        (Some("topics"), Some("paid"), Some(2))
    );
    let stored: Value = serde_json::from_str(row["v"].as_str().unwrap()).unwrap();
    assert_eq!(stored, json!([{"url": a, "remark": "first"}, {"url": b, "remark": ""}]));
    for key in ["id", "create_time", "update_time"] {
        assert!(!row[key].is_null(), "{key} in {row}");
    }
    assert_eq!(call(&c, base, "queryKV", &[("key", "paid")]).await.1["field"], "cat");
    assert_eq!(
        call(&c, base, "queryKV", &[("cat", "topics"), ("key", "none")]).await,
        (200, json!({"kv": []}))
    );

    // A message to the topic, over HTTP.
    let payload = json!({"order": 7});
    let (status, body) =
        post(&c, &format!("{base}/api/dtmsvr/submit"), &topic_msg("http-topic", "paid", &payload, "")).await;
    assert_eq!((status, body), (200, success()));
    edges_support::wait_final(&c, base, "http-topic", FINAL_WITHIN).await;
    let calls = branches.calls_for("http-topic");
    let got: Vec<(String, String, String)> = calls
        .iter()
        .map(|call| (call.last_segment().to_string(), call.param("branch_id"), call.text()))
        .collect();
    assert_eq!(
        got,
        [
            ("a".into(), "01-01".into(), payload.to_string()),
            ("b".into(), "01-02".into(), payload.to_string())
        ]
    );
    let (status, body) =
        post(&c, &format!("{base}/api/dtmsvr/submit"), &topic_msg("http-none", "nobody", &payload, "")).await;
    assert_eq!((status, body), (409, json!({"dtm_result": "FAILURE", "message": "topic not found"})));

    // Unsubscribe, scanKV pages, delete.
    assert_eq!(call(&c, base, "unsubscribe", &[("topic", "paid"), ("url", &a)]).await, (200, success()));
    assert_eq!(
        call(&c, base, "unsubscribe", &[("topic", "nope"), ("url", &a)]).await.1["message"],
        "no such a topic"
    );
    for name in ["x1", "x2", "x3"] {
        assert_eq!(call(&c, base, "subscribe", &[("topic", name), ("url", &a)]).await.0, 200);
    }
    let (status, page) = call(&c, base, "scanKV", &[("cat", "topics"), ("limit", "3")]).await;
    assert_eq!(status, 200, "{page}");
    let keys = |page: &Value| {
        page["kv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["k"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&page), ["x3", "x2", "x1"]);
    let next = page["next_position"].as_str().unwrap().to_string();
    let (_, last) = call(&c, base, "scanKV", &[("cat", "topics"), ("limit", "3"), ("position", &next)]).await;
    assert_eq!((keys(&last), last["next_position"].as_str()), (vec!["paid".to_string()], Some("")));
    assert_eq!(call(&c, base, "scanKV", &[("cat", "topics"), ("limit", "0")]).await.1["field"], "limit");
    assert_eq!(
        call(&c, base, "scanKV", &[("cat", "topics"), ("position", "x")]).await.1["field"],
        "position"
    );
    assert_eq!(delete(&c, &format!("{base}/api/dtmsvr/topic/x1")).await, (200, success()));
    assert_eq!(
        delete(&c, &format!("{base}/api/dtmsvr/topic/x1")).await,
        (409, json!({"dtm_result": "FAILURE", "message": "storage: NotFound"}))
    );

    // The metrics name the new routes.
    let metrics = reqwest::get(format!("{base}/api/metrics")).await.unwrap().text().await.unwrap();
    for api in ["subscribe", "unsubscribe", "querykv", "scankv", "deletetopic"] {
        assert!(metrics.contains(&format!("api=\"{api}\"")), "{api} missing from the metrics");
    }
    coordinator.stop().await.unwrap();
}

#[tokio::test]
async fn topic_rpcs_subscribe_unsubscribe_and_delete() {
    let coordinator = InProcess::sqlite(|_| {}).await;
    let mut dtm = DtmClient::connect(coordinator.grpc.clone()).await.unwrap();
    let request =
        |topic: &str, url: &str| DtmTopicRequest { topic: topic.into(), url: url.into(), remark: "r".into() };
    dtm.subscribe(request("g", "127.0.0.1:1/pkg.Svc/Notify")).await.unwrap();
    let again = dtm.subscribe(request("g", "127.0.0.1:1/pkg.Svc/Notify")).await.unwrap_err();
    assert_eq!((again.code(), again.message()), (tonic::Code::Aborted, "this url exists"));
    let bad = dtm.subscribe(request("", "127.0.0.1:1/pkg.Svc/Notify")).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("topic"), "{}", bad.message());
    dtm.unsubscribe(request("g", "127.0.0.1:1/pkg.Svc/Notify")).await.unwrap();
    let gone = dtm.unsubscribe(request("g", "127.0.0.1:1/pkg.Svc/Notify")).await.unwrap_err();
    assert_eq!(gone.message(), "this topic is empty");
    dtm.delete_topic(request("g", "")).await.unwrap();
    assert_eq!(dtm.delete_topic(request("g", "")).await.unwrap_err().message(), "storage: NotFound");
    coordinator.stop().await.unwrap();
}

/// The new routes sit behind `AuthToken` like the others.
#[tokio::test]
async fn topic_routes_require_the_token_when_one_is_configured() {
    let coordinator =
        InProcess::sqlite(|config| config.auth_token = coordinator::config::Secret::new("t0ken")).await;
    let c = reqwest::Client::new();
    let query = [("topic", "t"), ("url", "http://127.0.0.1:9/a")];
    assert_eq!(call(&c, &coordinator.http, "subscribe", &query).await.0, 401);
    assert_eq!(call(&c, &coordinator.http, "resetCronTime", &[]).await.0, 401);
    assert_eq!(delete(&c, &format!("{}/api/dtmsvr/topic/t", coordinator.http)).await.0, 401);
    let url = reqwest::Url::parse_with_params(&format!("{}/api/dtmsvr/subscribe", coordinator.http), query)
        .unwrap();
    let answer = c.get(url).bearer_auth("t0ken").send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    coordinator.stop().await.unwrap();
}

/// Two coordinators on one MariaDB, 40 subscribers of one topic at once,
/// half through each: every subscribe is acknowledged and every subscriber
/// is in the list (the losers of each version race read again and retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_subscribes_through_two_coordinators_lose_nobody() {
    let db = harness::mysql_database().await;
    let store = mysql_store(port_of(&db.server_url), &db.name);
    let (one, other) =
        tokio::join!(InProcess::start(fast_config(store.clone())), InProcess::start(fast_config(store)));
    let c = reqwest::Client::new();
    let n = 40;
    let started = std::time::Instant::now();
    let answers = futures::future::join_all((0..n).map(|i| {
        let (c, base) = (c.clone(), if i % 2 == 0 { one.http.clone() } else { other.http.clone() });
        async move {
            let url = format!("http://127.0.0.1:9/sub{i}");
            call(&c, &base, "subscribe", &[("topic", "race"), ("url", &url)]).await
        }
    }))
    .await;
    let took = started.elapsed();
    for answer in &answers {
        assert_eq!(answer, &(200, success()));
    }
    let (_, body) = call(&c, &other.http, "queryKV", &[("cat", "topics"), ("key", "race")]).await;
    let list: Vec<Value> = serde_json::from_str(body["kv"][0]["v"].as_str().unwrap()).unwrap();
    let mut urls: Vec<String> = list.iter().map(|s| s["url"].as_str().unwrap().to_string()).collect();
    urls.sort();
    let mut expected: Vec<String> = (0..n).map(|i| format!("http://127.0.0.1:9/sub{i}")).collect();
    expected.sort();
    assert_eq!(urls, expected);
    assert_eq!(body["kv"][0]["version"], n, "one version per subscriber");
    eprintln!("{n} concurrent subscribes through two coordinators: {took:?}");
    one.stop().await.unwrap();
    other.stop().await.unwrap();
}

/// resetCronTime moves retry times that lie further ahead than `timeout`,
/// and never a live lease: a saga whose branch call is in flight keeps its
/// pass's lease.
#[tokio::test]
async fn reset_cron_time_moves_waiting_transactions_not_live_leases() {
    let coordinator = InProcess::sqlite(|_| {}).await;
    let branches = BranchServer::start().await;
    let (c, base) = (reqwest::Client::new(), coordinator.http.as_str());
    // Waiting, unowned: a prepared TCC (due when its lease-length wait is over).
    let tcc = json!({"gid": "waiting-tcc", "trans_type": "tcc"});
    assert_eq!(post(&c, &format!("{base}/api/dtmsvr/prepare"), &tcc).await, (200, success()));
    // Leased: a saga whose first action takes 2 s.
    let slow = edges_support::saga(
        "leased-saga",
        &[(branches.url("action"), branches.url("compensate"))],
        &[json!({"delay_ms": 2000})],
        false,
    );
    assert_eq!(post(&c, &format!("{base}/api/dtmsvr/submit"), &slow).await, (200, success()));
    let owner_before = query(&c, base, "leased-saga").await["owner"].clone();
    assert_ne!(owner_before, "", "the pass holds the lease");

    let (status, body) = call(&c, base, "resetCronTime", &[("timeout", "0")]).await;
    assert_eq!((status, body), (200, json!({"has_remaining": false, "succeed_count": 1})));
    let leased = query(&c, base, "leased-saga").await;
    assert_eq!(leased["owner"], owner_before, "the live lease is untouched");
    // Nothing left further ahead than the default (3 × TimeoutToFail).
    assert_eq!(
        call(&c, base, "resetCronTime", &[]).await,
        (200, json!({"has_remaining": false, "succeed_count": 0}))
    );
    for (query, field) in [(vec![("timeout", "-1")], "timeout"), (vec![("limit", "x")], "limit")] {
        let (status, body) = call(&c, base, "resetCronTime", &query).await;
        assert_eq!((status, body["field"].as_str()), (400, Some(field)), "{body}");
    }
    edges_support::wait_final(&c, base, "leased-saga", FINAL_WITHIN).await;
    coordinator.stop().await.unwrap();
}

async fn query(c: &reqwest::Client, base: &str, gid: &str) -> Value {
    let (status, body) = get(c, &format!("{base}/api/dtmsvr/query?gid={gid}")).await;
    assert_eq!(status, 200, "{body}");
    body["transaction"].clone()
}

/// The real binary acknowledges a message to a topic and is killed before
/// delivering it (the message is delayed 3 s); restarted on the same
/// database it delivers to both subscribers, exactly the payload, once
/// each — to the subscribers the message was created with, although one of
/// them unsubscribes meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_after_acknowledging_a_topic_message_still_delivers_it() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "Store:\n  Db: {}\nRetryInterval: 1\nMaxRetryInterval: 2\nTimeoutToFail: 3\nTransCronInterval: 1\n",
        dir.path().join("coordinator.db").display()
    );
    let mut first = CoordinatorProcess::start(dir.path(), "first", &yaml);
    let branches = BranchServer::start().await;
    let (c, base) = (reqwest::Client::new(), first.http());
    for op in ["a", "b"] {
        let (status, body) =
            call(&c, &base, "subscribe", &[("topic", "shipped"), ("url", &branches.url(op))]).await;
        assert_eq!((status, body), (200, success()));
    }
    let payload = json!({"parcel": "p-1"});
    let (status, body) = post(
        &c,
        &format!("{base}/api/dtmsvr/submit"),
        &topic_msg("crash-topic", "shipped", &payload, r#"{"delay":3}"#),
    )
    .await;
    assert_eq!((status, body), (200, success()));
    first.kill();
    assert!(branches.calls_for("crash-topic").is_empty(), "killed before the delay was over");

    let second = CoordinatorProcess::start(dir.path(), "second", &yaml);
    let base = second.http();
    let (status, _) =
        call(&c, &base, "unsubscribe", &[("topic", "shipped"), ("url", &branches.url("a"))]).await;
    assert_eq!(status, 200);
    assert_eq!(edges_support::wait_final(&c, &base, "crash-topic", FINAL_WITHIN).await, "succeed");
    let mut got: Vec<(String, String, String)> = branches
        .calls_for("crash-topic")
        .iter()
        .map(|call| (call.last_segment().to_string(), call.param("branch_id"), call.text()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("a".into(), "01-01".into(), payload.to_string()),
            ("b".into(), "01-02".into(), payload.to_string())
        ],
        "{}",
        second.log_tail()
    );
}
