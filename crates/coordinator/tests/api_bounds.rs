//! Hostile numbers and gids on the real HTTP and gRPC APIs (SQLite store,
//! in-process coordinator): every duration and count option of a
//! transaction is accepted up to its documented bound
//! (`coordinator::model::bounds`) and works there, is refused one past it
//! with 400 / `InvalidArgument` naming the field, with nothing stored; a gid
//! that cannot travel as gRPC metadata is refused the same way; and a stored
//! row holding absurd intervals (written by hand or an older version) is
//! processed by the poller without a panic.

mod edges_support;

use std::time::Duration;

use coordinator::model::bounds;
use edges_support::{BranchServer, InProcess, fast_config, get, post, saga, sqlite_store, status_of, steps};
use proto::dtmgimp::dtm_client::DtmClient;
use proto::dtmgimp::{DtmRequest, DtmTransOptions};
use serde_json::{Value, json};
use tonic::{Code, Request};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// `(JSON field, its maximum)` of every bounded option of a saga.
fn saga_bounds() -> [(&'static str, i64); 4] {
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap();
    [
        ("request_timeout", secs(bounds::MAX_REQUEST_TIMEOUT)),
        ("retry_interval", secs(bounds::MAX_RETRY_INTERVAL)),
        ("timeout_to_fail", secs(bounds::MAX_TIMEOUT_TO_FAIL)),
        ("retry_limit", i64::from(bounds::MAX_RETRY_LIMIT)),
    ]
}

async fn query(c: &reqwest::Client, base: &str, gid: &str) -> Value {
    let (status, body) = get(c, &format!("{base}/api/dtmsvr/query?gid={gid}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn msg_body(gid: &str, action: &str, custom_data: &str) -> Value {
    json!({
        "gid": gid,
        "trans_type": "msg",
        "steps": [{"action": action}],
        "payloads": ["{}"],
        "custom_data": custom_data,
    })
}

#[tokio::test]
async fn http_options_work_at_their_bound_and_are_refused_beyond_it() {
    let branches = BranchServer::start().await;
    let coordinator = InProcess::sqlite(|_| {}).await;
    let (c, base) = (client(), coordinator.http.clone());
    let submit = format!("{base}/api/dtmsvr/submit");

    // Every option at its maximum at once: accepted, and the saga runs.
    let mut at_max = saga("bounds-max", &steps(&branches, 2), &[json!({}), json!({})], true);
    for (field, max) in saga_bounds() {
        at_max[field] = json!(max);
    }
    let (status, reply) = post(&c, &submit, &at_max).await;
    assert_eq!((status, reply), (200, json!({"dtm_result": "SUCCESS"})));
    let stored = query(&c, &base, "bounds-max").await;
    assert_eq!(stored["transaction"]["status"], "succeed", "{stored}");
    let options: Value = serde_json::from_str(stored["transaction"]["options"].as_str().unwrap()).unwrap();
    for (field, max) in saga_bounds() {
        assert_eq!(options[field], json!(max), "{field} stored as sent: {options}");
    }
    assert_eq!(branches.calls_for("bounds-max").len(), 2);

    // One past the bound, the issue's 10^14 s, and negatives: 400 naming the field, nothing stored.
    for (field, max) in saga_bounds() {
        for (i, bad) in [max + 1, 100_000_000_000_000, i64::MAX, -1].into_iter().enumerate() {
            let gid = format!("bounds-{}-{i}", field.replace('_', "-"));
            let mut body = saga(&gid, &steps(&branches, 1), &[json!({})], true);
            body[field] = json!(bad);
            let (status, reply) = post(&c, &submit, &body).await;
            assert_eq!(status, 400, "{field}={bad}: {reply}");
            assert_eq!(reply["field"], field, "{reply}");
            assert!(
                reply["message"].as_str().unwrap().contains(&max.to_string()),
                "names the bound: {reply}"
            );
            assert_eq!(status_of(&c, &base, &gid).await, None, "{gid} must not be stored");
        }
    }

    // 2-phase message delay: at the bound it is stored and scheduled that far ahead.
    let max_delay = bounds::MAX_MSG_DELAY.as_secs();
    let custom = format!(r#"{{"delay":{max_delay}}}"#);
    let (status, reply) =
        post(&c, &submit, &msg_body("msg-delay-max", &branches.url("action"), &custom)).await;
    assert_eq!((status, reply), (200, json!({"dtm_result": "SUCCESS"})));
    // The first pass (right after the submit) sees the delay and reschedules
    // the message that far ahead.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stored = query(&c, &base, "msg-delay-max").await;
        let next: chrono::DateTime<chrono::Utc> =
            stored["transaction"]["next_cron_time"].as_str().unwrap().parse().expect("next_cron_time");
        if next - chrono::Utc::now() > chrono::TimeDelta::days(29) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "delivery not postponed by the delay: {stored}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(branches.calls_for("msg-delay-max").is_empty(), "not delivered before its delay");
    for (i, bad) in [format!(r#"{{"delay":{}}}"#, max_delay + 1), r#"{"delay":100000000000000}"#.into()]
        .iter()
        .enumerate()
    {
        let gid = format!("msg-delay-bad-{i}");
        let (status, reply) = post(&c, &submit, &msg_body(&gid, &branches.url("action"), bad)).await;
        assert_eq!(status, 400, "{bad}: {reply}");
        assert_eq!(reply["field"], "custom_data.delay", "{reply}");
        assert_eq!(status_of(&c, &base, &gid).await, None);
    }
    // Prepare takes the same checks.
    let (status, reply) = post(
        &c,
        &format!("{base}/api/dtmsvr/prepare"),
        &json!({"gid": "prepare-bad", "trans_type": "tcc", "retry_interval": 100_000_000_000_000_i64}),
    )
    .await;
    assert_eq!((status, reply["field"].clone()), (400, json!("retry_interval")), "{reply}");
    assert_eq!(status_of(&c, &base, "prepare-bad").await, None);

    // The coordinator still serves.
    let (status, _) = post(&c, &submit, &saga("after", &steps(&branches, 1), &[json!({})], true)).await;
    assert_eq!(status, 200);
    coordinator.stop().await.expect("clean shutdown");
}

fn grpc_saga(gid: &str, branches: &BranchServer, options: DtmTransOptions) -> DtmRequest {
    DtmRequest {
        gid: gid.into(),
        trans_type: "saga".into(),
        steps: json!([{"action": branches.url("action"), "compensate": branches.url("compensate")}])
            .to_string(),
        bin_payloads: vec![b"{}".to_vec()],
        trans_options: Some(options),
        ..Default::default()
    }
}

#[tokio::test]
async fn grpc_options_work_at_their_bound_and_are_refused_beyond_it() {
    // HTTP branches through the gRPC API: the protocol column says grpc, the
    // branch URLs say http, and each call follows its URL.
    let branches = BranchServer::start().await;
    let coordinator = InProcess::sqlite(|_| {}).await;
    let c = client();
    let mut dtm = DtmClient::connect(coordinator.grpc.clone()).await.unwrap();

    let [(_, request_timeout), (_, retry_interval), (_, timeout_to_fail), (_, retry_limit)] = saga_bounds();
    let at_max = DtmTransOptions {
        wait_result: true,
        request_timeout,
        retry_interval,
        timeout_to_fail,
        retry_limit,
        ..Default::default()
    };
    dtm.submit(grpc_saga("grpc-bounds-max", &branches, at_max.clone()))
        .await
        .expect("every option at its bound");
    assert_eq!(status_of(&c, &coordinator.http, "grpc-bounds-max").await.as_deref(), Some("succeed"));

    type Set = fn(&mut DtmTransOptions, i64);
    let cases: [(&str, i64, Set); 4] = [
        ("request_timeout", request_timeout, |o, v| o.request_timeout = v),
        ("retry_interval", retry_interval, |o, v| o.retry_interval = v),
        ("timeout_to_fail", timeout_to_fail, |o, v| o.timeout_to_fail = v),
        ("retry_limit", retry_limit, |o, v| o.retry_limit = v),
    ];
    for (field, max, set) in cases {
        for (i, bad) in [max + 1, 100_000_000_000_000, -1].into_iter().enumerate() {
            let gid = format!("grpc-bounds-{}-{i}", field.replace('_', "-"));
            let mut options = at_max.clone();
            set(&mut options, bad);
            let status = dtm.submit(grpc_saga(&gid, &branches, options)).await.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{field}={bad}: {status:?}");
            assert!(status.message().contains(field), "names the field: {status:?}");
            assert_eq!(status_of(&c, &coordinator.http, &gid).await, None, "{gid} must not be stored");
        }
    }

    let msg = |gid: &str, delay: u64| DtmRequest {
        gid: gid.into(),
        trans_type: "msg".into(),
        steps: json!([{"action": branches.url("action")}]).to_string(),
        bin_payloads: vec![b"{}".to_vec()],
        customed_data: format!(r#"{{"delay":{delay}}}"#),
        ..Default::default()
    };
    let max_delay = bounds::MAX_MSG_DELAY.as_secs();
    dtm.submit(msg("grpc-msg-delay-max", max_delay)).await.expect("delay at its bound");
    assert_eq!(status_of(&c, &coordinator.http, "grpc-msg-delay-max").await.as_deref(), Some("submitted"));
    let status = dtm.prepare(msg("grpc-msg-delay-bad", max_delay + 1)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("custom_data.delay"), "{status:?}");
    assert_eq!(status_of(&c, &coordinator.http, "grpc-msg-delay-bad").await, None);
    coordinator.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn gids_that_cannot_travel_as_grpc_metadata_are_refused_at_submit_and_prepare() {
    let branches = BranchServer::start().await;
    let coordinator = InProcess::sqlite(|_| {}).await;
    let (c, base) = (client(), coordinator.http.clone());
    let mut dtm = DtmClient::connect(coordinator.grpc.clone()).await.unwrap();

    // dtm's own shapes still pass, including punctuation.
    for gid in ["Yo6hjXnuPHdEdpy7cytNBK", "order-1_a.b:c@d"] {
        let (status, reply) = post(
            &c,
            &format!("{base}/api/dtmsvr/submit"),
            &saga(gid, &steps(&branches, 1), &[json!({})], true),
        )
        .await;
        assert_eq!(status, 200, "{gid}: {reply}");
    }

    for gid in ["café", "订单-1", "two words", "tab\there", "bell\u{7}"] {
        for route in ["submit", "prepare"] {
            let mut body = saga(gid, &steps(&branches, 1), &[json!({})], false);
            if route == "prepare" {
                body["trans_type"] = json!("msg");
                body["steps"] = json!([{"action": branches.url("action")}]);
                body["query_prepared"] = json!(branches.url("query"));
            }
            let (status, reply) = post(&c, &format!("{base}/api/dtmsvr/{route}"), &body).await;
            assert_eq!(status, 400, "{route} {gid:?}: {reply}");
            assert_eq!(reply["field"], "gid", "{reply}");
        }
        let request = DtmRequest {
            gid: gid.into(),
            trans_type: "saga".into(),
            steps: json!([{"action": branches.url("action"), "compensate": ""}]).to_string(),
            bin_payloads: vec![b"{}".to_vec()],
            ..Default::default()
        };
        let status = dtm.submit(Request::new(request.clone())).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{gid:?}: {status:?}");
        assert!(status.message().contains("gid"), "{status:?}");
        let status = dtm
            .prepare(Request::new(DtmRequest {
                trans_type: "tcc".into(),
                steps: String::new(),
                bin_payloads: vec![],
                ..request
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{gid:?}: {status:?}");
    }
    let (_, page) = get(&c, &format!("{base}/api/dtmsvr/all")).await;
    let stored: Vec<&str> =
        page["transactions"].as_array().unwrap().iter().map(|t| t["gid"].as_str().unwrap()).collect();
    assert_eq!(stored.len(), 2, "only the two valid gids are stored: {stored:?}");
    assert!(branches.calls().iter().all(|call| call.params["gid"].is_ascii()), "no branch saw a bad gid");
    coordinator.stop().await.expect("clean shutdown");
}

// One story of ~110 lines: rows are stored, corrupted by hand, then picked up
// by the poller; each step needs the state the previous one left.
#[tokio::test]
async fn stored_rows_with_absurd_intervals_are_rescheduled_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = InProcess::start(fast_config(sqlite_store(dir.path()))).await;
    let (c, base) = (client(), coordinator.http.clone());
    let branches = BranchServer::start().await;

    // A saga whose branch is unreachable (retried forever) and a delayed msg.
    // A day between retries (the bound), so that after its first pass no
    // other pass can race the hand edit below.
    let down = ("http://127.0.0.1:1/busi/action".to_string(), String::new());
    let mut body = saga("hostile-saga", &[down], &[json!({})], false);
    body["retry_interval"] = json!(86_400);
    let (status, _) = post(&c, &format!("{base}/api/dtmsvr/submit"), &body).await;
    assert_eq!(status, 200);
    let (status, _) = post(
        &c,
        &format!("{base}/api/dtmsvr/submit"),
        &msg_body("hostile-msg", &branches.url("action"), r#"{"delay":60}"#),
    )
    .await;
    assert_eq!(status, 200);

    // Wait for both first passes: each leaves its row scheduled well ahead.
    for (gid, ahead) in
        [("hostile-saga", chrono::TimeDelta::hours(1)), ("hostile-msg", chrono::TimeDelta::seconds(30))]
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let stored = query(&c, &base, gid).await;
            let next: chrono::DateTime<chrono::Utc> =
                stored["transaction"]["next_cron_time"].as_str().unwrap().parse().unwrap();
            if next - chrono::Utc::now() > ahead {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{gid}: first pass not done: {stored}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // What an older version, dtm itself or a hand edit could have stored:
    // intervals no request may carry any more, due now.
    let db = sqlx::SqlitePool::connect(&format!("sqlite:{}", dir.path().join("coordinator.db").display()))
        .await
        .unwrap();
    // next_cron_interval is dtm's int(11): i32::MAX is the most any engine's column holds.
    let huge_interval = i64::from(i32::MAX);
    let huge = i64::MAX;
    let past = chrono::Utc::now() - chrono::TimeDelta::seconds(5);
    sqlx::query(
        "UPDATE trans_global SET next_cron_interval = ?, next_cron_time = ?, \
         options = ? WHERE gid = 'hostile-saga'",
    )
    .bind(huge_interval)
    .bind(past)
    .bind(format!(r#"{{"retry_interval":{huge},"timeout_to_fail":{huge},"request_timeout":1}}"#))
    .execute(&db)
    .await
    .unwrap();
    sqlx::query("UPDATE trans_global SET next_cron_time = ?, custom_data = ? WHERE gid = 'hostile-msg'")
        .bind(past)
        .bind(format!(r#"{{"delay":{}}}"#, u64::MAX))
        .execute(&db)
        .await
        .unwrap();

    // The poller takes both up and reschedules them: the saga at most a day
    // ahead (its options read back clamped to the bounds), the msg a century
    // ahead (`store::MAX_SCHEDULE`, far inside MySQL's DATETIME range). Before the fix
    // both panicked in the time arithmetic, leaving each at its lease, to
    // panic again at every lease.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stored = query(&c, &base, "hostile-saga").await;
        let interval = stored["transaction"]["next_cron_interval"].as_i64().unwrap();
        let next: chrono::DateTime<chrono::Utc> =
            stored["transaction"]["next_cron_time"].as_str().unwrap().parse().unwrap();
        if interval <= 86_400 {
            assert_eq!(interval, 86_400, "the clamped retry_interval: {stored}");
            let ahead = next - chrono::Utc::now();
            assert!(
                ahead > chrono::TimeDelta::hours(17) && ahead <= chrono::TimeDelta::days(1),
                "rescheduled a (jittered) day ahead: {stored}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "hostile-saga not rescheduled: {stored}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        let stored = query(&c, &base, "hostile-msg").await;
        let next = stored["transaction"]["next_cron_time"].as_str().unwrap_or_default();
        if let Ok(next) = next.parse::<chrono::DateTime<chrono::Utc>>()
            && next - chrono::Utc::now() >= chrono::TimeDelta::days(36_000)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "hostile-msg not rescheduled: {stored}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(branches.calls_for("hostile-msg").is_empty(), "a delay of u64::MAX s never delivers");
    // And the coordinator goes on serving.
    let (status, _) = post(
        &c,
        &format!("{base}/api/dtmsvr/submit"),
        &saga("after-hostile", &steps(&branches, 1), &[json!({})], true),
    )
    .await;
    assert_eq!(status, 200);
    coordinator.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_stored_gid_from_before_the_ascii_rule_is_still_processed() {
    // An older version accepted any gid without control characters; such a
    // row must not make the poller's reads fail (and block every other saga).
    let dir = tempfile::tempdir().unwrap();
    let coordinator = InProcess::start(fast_config(sqlite_store(dir.path()))).await;
    let (c, base) = (client(), coordinator.http.clone());
    let branches = BranchServer::start().await;

    let down = ("http://127.0.0.1:1/busi/action".to_string(), String::new());
    let mut body = saga("legacy-placeholder", &[down], &[json!({})], false);
    body["retry_interval"] = json!(86_400);
    assert_eq!(post(&c, &format!("{base}/api/dtmsvr/submit"), &body).await.0, 200);
    // After its first pass it waits a day: rename it as an old version could
    // have stored it, make its branch an empty URL (immediate success), due now.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stored = query(&c, &base, "legacy-placeholder").await;
        let next: chrono::DateTime<chrono::Utc> =
            stored["transaction"]["next_cron_time"].as_str().unwrap().parse().unwrap();
        if next - chrono::Utc::now() > chrono::TimeDelta::hours(1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "first pass not done: {stored}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let db = sqlx::SqlitePool::connect(&format!("sqlite:{}", dir.path().join("coordinator.db").display()))
        .await
        .unwrap();
    let legacy = "café au lait";
    sqlx::query("UPDATE trans_branch_op SET gid = ?, url = '' WHERE gid = 'legacy-placeholder'")
        .bind(legacy)
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("UPDATE trans_global SET gid = ?, next_cron_time = ? WHERE gid = 'legacy-placeholder'")
        .bind(legacy)
        .bind(chrono::Utc::now() - chrono::TimeDelta::seconds(5))
        .execute(&db)
        .await
        .unwrap();

    // The poller reads it back and finishes it; other sagas are unaffected.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, page) = get(&c, &format!("{base}/api/dtmsvr/all")).await;
        assert_eq!(status, 200, "the listing reads the legacy row: {page}");
        let row = page["transactions"].as_array().unwrap().iter().find(|t| t["gid"] == legacy).cloned();
        if row.as_ref().is_some_and(|t| t["status"] == "succeed") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "legacy saga not finished: {page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = post(
        &c,
        &format!("{base}/api/dtmsvr/submit"),
        &saga("after-legacy", &steps(&branches, 1), &[json!({})], true),
    )
    .await;
    assert_eq!(status, 200);
    coordinator.stop().await.expect("clean shutdown");
}
