//! Retry alerts (dtm's `AlertRetryLimit` / `AlertWebHook`) end to end: a
//! saga whose branch keeps failing, real branch servers, a real webhook
//! receiver (axum on port 0, in this file), and the store on real
//! databases (SQLite, MariaDB, PostgreSQL).
//!
//! * exactly one alert per crossing, with dtm's JSON, however long the
//!   branch keeps failing;
//! * an alert raised while the webhook is down survives a restart of the
//!   coordinator and arrives once the webhook is back;
//! * a webhook that takes 10 s to answer does not delay the saga's retries.

mod engine_support;

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use coordinator::alert::AlertSettings;
use coordinator::store::AlertStatus;
use coordinator::{Engine, EngineSettings, GlobalStatus};
use engine_support::{Branches, Reply, engine_with, fast_settings, req, saga};
use tokio::time::Instant;

/// Long enough for every test here: the branch fails for good.
const FOREVER: usize = 10_000;

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Got {
    /// The JSON body.
    body: serde_json::Value,
    /// The `Idempotency-Key` header.
    key: Option<String>,
    /// What the receiver answered.
    answered: u16,
}

/// A webhook receiver: records every POST and answers with `status`
/// (changeable while it runs) after a delay.
struct Receiver {
    /// `http://127.0.0.1:port/alerts`.
    url: String,
    /// Every POST, in arrival order (recorded when answered).
    got: Arc<Mutex<Vec<Got>>>,
    /// POSTs that arrived, answered or not yet.
    arrived: Arc<Mutex<Vec<Instant>>>,
    /// The HTTP status it answers.
    status: Arc<AtomicU16>,
    /// The server, aborted on drop.
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(status: u16, delay: Duration) -> Receiver {
        let got = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(status));
        let delay_ms = Arc::new(AtomicU64::new(u64::try_from(delay.as_millis()).unwrap()));
        let app = axum::Router::new().route(
            "/alerts",
            axum::routing::post({
                let (got, arrived, status, delay_ms) =
                    (got.clone(), arrived.clone(), status.clone(), delay_ms.clone());
                move |headers: HeaderMap, body: axum::body::Bytes| {
                    let (got, arrived, status, delay_ms) =
                        (got.clone(), arrived.clone(), status.clone(), delay_ms.clone());
                    async move {
                        arrived.lock().unwrap().push(Instant::now());
                        tokio::time::sleep(Duration::from_millis(delay_ms.load(Ordering::SeqCst))).await;
                        let answered = status.load(Ordering::SeqCst);
                        got.lock().unwrap().push(Got {
                            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                            key: headers
                                .get("idempotency-key")
                                .and_then(|v| v.to_str().ok())
                                .map(String::from),
                            answered,
                        });
                        StatusCode::from_u16(answered).unwrap()
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/alerts", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, got, arrived, status, task }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// The alerts it accepted (answered 2xx).
    fn accepted(&self) -> Vec<Got> {
        self.got().into_iter().filter(|g| g.answered < 300).collect()
    }

    /// Waits until `check` holds for what it got.
    async fn wait(&self, what: &str, check: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        harness::wait_until(what, Duration::from_secs(20), async || {
            let got = self.got();
            if check(&got) { Ok(got) } else { Err(format!("{got:?}")) }
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Fast retries (1 s, capped at 2 s), alerts at the third failure to `webhook`.
fn alerting(webhook: &str) -> EngineSettings {
    EngineSettings {
        alert: AlertSettings {
            retry_limit: 3,
            webhook: Some(webhook.parse().unwrap()),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(2),
            request_timeout: Duration::from_secs(3),
            poll_interval: Duration::from_millis(200),
        },
        ..fast_settings()
    }
}

/// A two-step saga whose second action fails (HTTP 500) for good.
async fn failing_saga(engine: &Engine, b: &Branches, gid: &str) {
    b.script("/TransIn", std::iter::repeat_n(Reply::Error, FOREVER));
    let steps = [(b.url("TransOut"), b.url("TransOutRevert")), (b.url("TransIn"), b.url("TransInRevert"))];
    engine.submit(req(saga(gid, &steps))).await.unwrap();
}

/// Calls of `/TransIn` so far.
fn trans_in_calls(b: &Branches, gid: &str) -> usize {
    b.calls_of(gid).iter().filter(|(path, ..)| path == "/TransIn").count()
}

async fn exactly_one_alert_per_crossing(url: &str) {
    let receiver = Receiver::start(200, Duration::ZERO).await;
    let b = Branches::start().await;
    let engine = engine_with(url, alerting(&receiver.url)).await;
    let poller = engine.spawn_poller();
    let gid = "alert-once";
    failing_saga(&engine, &b, gid).await;

    let got = receiver.wait("one alert", |got| !got.is_empty()).await;
    assert!(trans_in_calls(&b, gid) >= 3, "the alert comes at the third failure: {:?}", b.calls_of(gid));
    let alert = &got[0];
    assert_eq!(alert.body["gid"], gid);
    assert_eq!(alert.body["status"], "submitted");
    assert_eq!(alert.body["branch"], "02");
    assert_eq!(alert.body["op"], "action");
    assert_eq!(alert.body["retry_count"], 3);
    assert!(alert.body["error"].as_str().is_some_and(|e| !e.is_empty()), "{:?}", alert.body);
    assert_eq!(alert.key.as_deref(), Some("alert-once/02/action/3"));

    // The branch keeps failing: three more retries, and still one alert.
    let seen = b.calls_of(gid).len();
    b.wait_calls(gid, seen + 3, Duration::from_secs(15)).await;
    assert_eq!(receiver.got().len(), 1, "{:?}", receiver.got());
    let rows = engine.store().alerts_of(&gid.parse().unwrap()).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0].status, rows[0].attempts, rows[0].retry_count), (AlertStatus::Sent, 1, 3));

    // The store's gauges see the stuck saga.
    let unfinished = engine.unfinished().await.unwrap();
    assert_eq!(unfinished.counts, [(GlobalStatus::Submitted, 1)]);
    assert!(unfinished.oldest.is_some());
    engine.shutdown().await;
    poller.await.unwrap();
}

#[tokio::test]
async fn a_branch_that_keeps_failing_raises_exactly_one_alert_sqlite() {
    let db = harness::sqlite_database();
    exactly_one_alert_per_crossing(&db.url).await;
}

#[tokio::test]
async fn a_branch_that_keeps_failing_raises_exactly_one_alert_mariadb() {
    let db = harness::mysql_database().await;
    exactly_one_alert_per_crossing(&db.url).await;
}

#[tokio::test]
async fn a_branch_that_keeps_failing_raises_exactly_one_alert_postgres() {
    let db = harness::postgres_database().await;
    exactly_one_alert_per_crossing(&db.url).await;
}

async fn alert_survives_a_restart_while_the_webhook_is_down(url: &str) {
    let receiver = Receiver::start(500, Duration::ZERO).await;
    let b = Branches::start().await;
    let first = engine_with(url, alerting(&receiver.url)).await;
    let poller = first.spawn_poller();
    let gid = "alert-restart";
    failing_saga(&first, &b, gid).await;

    // The alert is raised and its delivery fails: the webhook is down.
    receiver.wait("a failed delivery", |got| got.iter().any(|g| g.answered == 500)).await;
    first.shutdown().await;
    poller.await.unwrap();
    let rows = first.store().alerts_of(&gid.parse().unwrap()).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].status, AlertStatus::Pending, "{rows:?}");
    assert!(rows[0].attempts >= 1 && rows[0].last_error.contains("500"), "{rows:?}");

    // The webhook comes back; a new coordinator on the same store delivers it.
    receiver.status.store(200, Ordering::SeqCst);
    let second = engine_with(url, alerting(&receiver.url)).await;
    let poller = second.spawn_poller();
    let accepted =
        receiver.wait("the alert after the restart", |got| got.iter().any(|g| g.answered == 200)).await;
    let alert = accepted.iter().find(|g| g.answered == 200).unwrap();
    assert_eq!((alert.body["gid"].as_str(), alert.body["retry_count"].as_u64()), (Some(gid), Some(3)));
    assert_eq!(alert.key.as_deref(), Some("alert-restart/02/action/3"));
    // The saga still fails on the second coordinator: no second alert.
    let seen = b.calls_of(gid).len();
    b.wait_calls(gid, seen + 2, Duration::from_secs(15)).await;
    assert_eq!(receiver.accepted().len(), 1, "{:?}", receiver.got());
    let rows = second.store().alerts_of(&gid.parse().unwrap()).await.unwrap();
    assert_eq!(rows[0].status, AlertStatus::Sent, "{rows:?}");
    second.shutdown().await;
    poller.await.unwrap();
}

#[tokio::test]
async fn an_alert_raised_while_the_webhook_is_down_arrives_after_a_restart_mariadb() {
    let db = harness::mysql_database().await;
    alert_survives_a_restart_while_the_webhook_is_down(&db.url).await;
}

#[tokio::test]
async fn an_alert_raised_while_the_webhook_is_down_arrives_after_a_restart_sqlite() {
    let db = harness::sqlite_database();
    alert_survives_a_restart_while_the_webhook_is_down(&db.url).await;
}

#[tokio::test]
async fn a_slow_webhook_does_not_delay_the_sagas_retries() {
    let db = harness::sqlite_database();
    // The receiver takes 10 s to answer (within the delivery's timeout).
    let receiver = Receiver::start(200, Duration::from_secs(10)).await;
    let b = Branches::start().await;
    let mut settings = alerting(&receiver.url);
    settings.alert.request_timeout = Duration::from_secs(15);
    let engine = engine_with(&db.url, settings).await;
    let poller = engine.spawn_poller();
    let gid = "alert-slow";
    failing_saga(&engine, &b, gid).await;

    let arrived = harness::wait_until("the alert's POST", Duration::from_secs(20), async || {
        receiver.arrived.lock().unwrap().first().copied().ok_or_else(|| "none yet".to_string())
    })
    .await;
    // While the receiver sits on the alert, the saga goes on retrying at
    // its usual pace (every 1–2 s, at most 2 s by the cap): three more calls
    // of the failing branch long before the receiver answers.
    let before = trans_in_calls(&b, gid);
    b.wait_calls(gid, b.calls_of(gid).len() + 3, Duration::from_secs(9)).await;
    assert!(receiver.got().is_empty(), "the receiver has not answered yet");
    let retries: Vec<Instant> = b
        .calls()
        .iter()
        .filter(|c| c.path == "/TransIn" && c.param("gid") == gid)
        .map(|c| c.at)
        .skip(before - 1)
        .collect();
    for pair in retries.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap < Duration::from_millis(3_500), "a retry waited {gap:?}: {retries:?}");
    }
    assert!(retries.last().is_some_and(|last| *last > arrived), "retried after the alert was sent");
    // Not a graceful shutdown: that would wait for the receiver's answer.
    engine.abandon();
    poller.await.unwrap();
}
