//! Delivering pending alerts: lease them in the store, POST them, record
//! the outcome; a failed delivery is due again after a capped, jittered
//! exponential backoff.
//!
//! The loop ([`run`]) is separated from the store and the HTTP client, as
//! the recovery poller is, so that its timing can be tested with tokio's
//! paused clock: after a round it sleeps until the earliest retry it
//! scheduled, the poll interval, or a wake-up (an alert raised here),
//! whichever comes first.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{AlertBody, AlertSettings};
use crate::engine::EngineObserver;
use crate::engine::retry::jittered;
use crate::store::{self, AlertRow, Delivery, LeaseToken, Store};

/// Alerts leased by one round; they are sent concurrently, so the lease
/// only has to outlast one request.
const BATCH: u32 = 16;

/// Extra lease time beyond the request timeout: the settle write after
/// the answer must land before anyone else may take the alert.
const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// The backoff before delivery attempt `attempt + 1`, after `attempt` (≥ 1)
/// failed ones: `min`, doubling per failure, capped at `max`, shortened by up
/// to a quarter (`unit` in `[0, 1)`), so that the alerts of many sagas that
/// failed together do not hit a recovering webhook in the same second.
pub fn backoff(attempt: u32, min: Duration, max: Duration, unit: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    let interval = min.saturating_mul(1 << doublings).min(max.max(min));
    jittered(interval, unit)
}

/// How a round went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Round {
    /// The batch was full: more alerts are probably due; go again at once.
    pub full: bool,
    /// The earliest retry this round scheduled, if a delivery failed.
    pub next_retry: Option<Duration>,
}

/// Runs `round` until `shutdown`; between rounds sleeps until the earliest
/// retry the round scheduled or `poll`, or until `wake` is notified.
/// `kill` drops a round in the middle (its leases expire on their own).
pub async fn run<F, Fut>(
    poll: Duration,
    wake: &Notify,
    shutdown: &CancellationToken,
    kill: &CancellationToken,
    mut round: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Round>,
{
    while !shutdown.is_cancelled() {
        let done = tokio::select! {
            biased;
            _ = kill.cancelled() => return,
            done = round() => done,
        };
        if done.full {
            tokio::task::yield_now().await;
            continue;
        }
        let pause = done.next_retry.map_or(poll, |retry| retry.min(poll));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = kill.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// POSTs alerts to the webhook.
#[derive(Debug, Clone)]
pub struct Sender {
    /// dtm's `AlertWebHook`.
    webhook: url::Url,
    /// Pooled, with the request timeout, never following redirects (a 3xx
    /// is a failed delivery: the URL is wrong, as for branches).
    client: reqwest::Client,
}

impl Sender {
    /// A sender to `webhook`; fails only if the HTTP client cannot be built (TLS setup).
    pub fn new(webhook: url::Url, timeout: Duration) -> Result<Sender, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Sender { webhook, client })
    }

    /// One delivery: `Ok` on a 2xx answer, else what went wrong.
    pub async fn send(&self, body: &AlertBody<'_>) -> Result<(), String> {
        let json = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let mut request = self
            .client
            .post(self.webhook.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(json);
        // gids are visible ASCII, so the key always is a valid header value.
        if let Ok(key) = HeaderValue::from_str(&body.idempotency_key()) {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let mut end = text.len().min(200);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Err(format!("webhook answered {status}: {}", &text[..end]))
    }
}

/// Everything a delivery round needs.
pub(super) struct Deliveries {
    /// Where pending alerts are leased and settled.
    pub store: Arc<dyn Store>,
    /// The webhook's client.
    pub sender: Sender,
    /// Backoff, timeouts, poll interval.
    pub settings: AlertSettings,
    /// Counts deliveries (`dtm_alert_deliveries_total`).
    pub observer: Arc<dyn EngineObserver>,
}

impl Deliveries {
    /// The delivery task: rounds until shutdown.
    pub(super) async fn run(self, wake: Arc<Notify>, shutdown: CancellationToken, kill: CancellationToken) {
        run(self.settings.poll_interval, &wake, &shutdown, &kill, || self.round()).await;
    }

    /// Leases due alerts, sends them concurrently, settles each.
    async fn round(&self) -> Round {
        let token = LeaseToken::random();
        let lease = self.settings.request_timeout + LEASE_MARGIN;
        let leased = match self.store.lease_alerts(&token, lease, BATCH, store::now()).await {
            Ok(leased) => leased,
            Err(e) => {
                tracing::warn!(error = %e, "leasing due alerts failed");
                return Round::default();
            }
        };
        let full = leased.len() >= BATCH as usize;
        let mut sends: FuturesUnordered<_> = leased.iter().map(|row| self.deliver(row, &token)).collect();
        let mut next_retry: Option<Duration> = None;
        while let Some(retry) = sends.next().await {
            if let Some(retry) = retry {
                next_retry = Some(next_retry.map_or(retry, |earliest| earliest.min(retry)));
            }
        }
        Round { full, next_retry }
    }

    /// Sends one alert and records the outcome; the backoff if it failed.
    async fn deliver(&self, row: &AlertRow, token: &LeaseToken) -> Option<Duration> {
        let body = AlertBody::of(row);
        let (delivery, retry) = match self.sender.send(&body).await {
            Ok(()) => {
                tracing::info!(key = %body.idempotency_key(), "retry alert delivered");
                (Delivery::Sent, None)
            }
            Err(error) => {
                let s = &self.settings;
                let retry_in = backoff(row.attempts + 1, s.min_backoff, s.max_backoff, rand::random::<f64>());
                tracing::warn!(key = %body.idempotency_key(), %error, ?retry_in, "retry alert not delivered");
                (Delivery::Failed { error: super::clip(&error), retry_in }, Some(retry_in))
            }
        };
        self.observer.alert_delivered(delivery == Delivery::Sent);
        match self.store.settle_alert(&row.key, token, &delivery, store::now()).await {
            Ok(true) => {}
            Ok(false) => tracing::info!(key = %body.idempotency_key(), "alert lease lost before settling"),
            // The lease expires and the alert is sent again: at-least-once.
            Err(e) => {
                tracing::warn!(key = %body.idempotency_key(), error = %e, "could not record a delivery")
            }
        }
        retry
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::time::Instant;

    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitters_down() {
        let plain: Vec<u64> = (1..=8).map(|n| backoff(n, S(1), S(30), 0.0).as_secs()).collect();
        assert_eq!(plain, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(10, S(1), S(30), 0.999_999).as_secs_f64().round(), 23.0);
        assert_eq!(backoff(u32::MAX, S(1), S(30), 0.0), S(30), "no overflow");
        assert_eq!(backoff(3, S(5), S(1), 0.0), S(5), "a cap below the minimum never shrinks it");
    }

    /// A round that fails every delivery, scheduling retries by [`backoff`]
    /// (without jitter), and records when it ran.
    fn failing_rounds(times: Arc<Mutex<Vec<Duration>>>) -> impl FnMut() -> std::future::Ready<Round> {
        let start = Instant::now();
        let mut attempt = 0;
        move || {
            attempt += 1;
            times.lock().unwrap().push(start.elapsed());
            std::future::ready(Round { full: false, next_retry: Some(backoff(attempt, S(1), S(8), 0.0)) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_deliveries_are_retried_with_capped_exponential_backoff() {
        let times = Arc::new(Mutex::new(Vec::new()));
        let (wake, shutdown, kill) =
            (Arc::new(Notify::new()), CancellationToken::new(), CancellationToken::new());
        let task = tokio::spawn({
            let (times, wake, shutdown, kill) = (times.clone(), wake.clone(), shutdown.clone(), kill.clone());
            async move { run(S(60), &wake, &shutdown, &kill, failing_rounds(times)).await }
        });
        tokio::time::sleep(Duration::from_millis(40_500)).await;
        let seen: Vec<u64> = times.lock().unwrap().iter().map(Duration::as_secs).collect();
        // Waits of 1, 2, 4, 8, 8, 8, … s: never the 60 s poll interval, never faster.
        assert_eq!(seen, [0, 1, 3, 7, 15, 23, 31, 39]);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_loop_polls_and_a_raised_alert_wakes_it_at_once() {
        let times = Arc::new(Mutex::new(Vec::new()));
        let (wake, shutdown, kill) =
            (Arc::new(Notify::new()), CancellationToken::new(), CancellationToken::new());
        let task = tokio::spawn({
            let (times, wake, shutdown, kill) = (times.clone(), wake.clone(), shutdown.clone(), kill.clone());
            async move {
                let start = Instant::now();
                run(S(3), &wake, &shutdown, &kill, || {
                    times.lock().unwrap().push(start.elapsed());
                    std::future::ready(Round::default())
                })
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(7_500)).await;
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen: Vec<u128> = times.lock().unwrap().iter().map(Duration::as_millis).collect();
        assert_eq!(seen, [0, 3_000, 6_000, 7_500]);
        shutdown.cancel();
        task.await.unwrap();
        tokio::time::sleep(S(30)).await;
        assert_eq!(times.lock().unwrap().len(), 4, "stopped at shutdown");
    }
}
