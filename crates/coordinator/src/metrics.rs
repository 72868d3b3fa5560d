//! Prometheus metrics under dtm's names, served at `GET /api/metrics`.
//!
//! | metric | labels | fed by |
//! |---|---|---|
//! | `dtm_server_process_total` | `type` (http\|grpc), `api`, `status` (ok\|fail) | API layers |
//! | `dtm_server_response_duration` | `type`, `api` | API layers |
//! | `dtm_transaction_process_total` | `model`, `status` | engine observer |
//! | `dtm_transaction_handled_duration` | `model` | engine observer |
//! | `dtm_branch_process_total` | `model`, `branchid`, `branchtype`, `status` | engine observer |
//!
//! Ours (dtm has no equivalent), for the alert rules in
//! `deploy/prometheus/alerts.yml`:
//!
//! | metric | labels | fed by |
//! |---|---|---|
//! | `dtm_branch_retries_total` | `model`, `op`, `outcome` (error\|failure\|ongoing) | engine observer: answers that make the coordinator call again |
//! | `dtm_transactions_unfinished` | `status` (prepared\|submitted\|aborting) | the store, read at scrape time |
//! | `dtm_transaction_oldest_unfinished_age_seconds` | — | the store, read at scrape time |
//! | `dtm_alerts_raised_total` | — | retry alerts raised by this process (`AlertRetryLimit` reached) |
//! | `dtm_alert_deliveries_total` | `outcome` (sent\|failed) | webhook deliveries by this process |
//! | `dtm_branch_attempts_dropped_total` | — | branch calls left out of the console's timeline (queue full) |
//!
//! The two gauges describe the shared database, not this process: every
//! coordinator on it reports the same values (aggregate them with `max`,
//! not `sum`). They are read with one `GROUP BY` over the unfinished rows
//! only, at most once per [`STORE_REFRESH`] however often Prometheus
//! scrapes, and within [`STORE_TIMEOUT`]; a read that fails or times out
//! leaves the previous values (logged).
//!
//! Dashboards written for dtm keep working. Label cardinality is bounded on
//! purpose: `api` is one of a fixed set of route names (an unknown path is
//! reported as `other`, so a scanner cannot mint series), and `branchid` is
//! the step number (`01`, `02`, …), never the gid.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use dtm_protocol::{BranchId, BranchResult, Op, TransType};

use crate::engine::EngineObserver;
use crate::engine::retry::retry_cause;
use crate::model::GlobalStatus;
use crate::store::Unfinished;

/// The store's gauges are read at most this often, however often Prometheus scrapes.
pub const STORE_REFRESH: Duration = Duration::from_secs(1);

/// A scrape waits at most this long for the store's gauges.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// The unfinished statuses, each always exported (0 when none).
const UNFINISHED: [GlobalStatus; 3] =
    [GlobalStatus::Prepared, GlobalStatus::Submitted, GlobalStatus::Aborting];

/// A label set: `(name, value)` pairs in a fixed order.
type Labels = Vec<(&'static str, String)>;

/// Which API surface served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    /// The HTTP (JSON) API.
    Http,
    /// The gRPC API.
    Grpc,
}

impl ApiKind {
    fn as_str(self) -> &'static str {
        match self {
            ApiKind::Http => "http",
            ApiKind::Grpc => "grpc",
        }
    }
}

fn ok_or_fail(ok: bool) -> String {
    if ok { "ok" } else { "fail" }.to_string()
}

/// Every metric the coordinator exports, plus the registry that encodes them.
///
/// Shared as `Arc<Metrics>` between the HTTP layer, the gRPC layer and the
/// engine (as its observer).
pub struct Metrics {
    /// Owns the metric descriptions; locked only while encoding a scrape.
    registry: Mutex<Registry>,
    /// `dtm_server_process_total`: API calls by surface, route and outcome.
    server_process: Family<Labels, Counter>,
    /// `dtm_server_response_duration`: API latency by surface and route.
    server_duration: Family<Labels, Histogram>,
    /// `dtm_transaction_process_total`: global transactions that reached a
    /// final state, by model and outcome.
    transaction_process: Family<Labels, Counter>,
    /// `dtm_transaction_handled_duration`: seconds from creation to the end.
    transaction_duration: Family<Labels, Histogram>,
    /// `dtm_branch_process_total`: branch calls by model, step, op and outcome.
    branch_process: Family<Labels, Counter>,
    /// `dtm_branch_retries_total`: branch answers that make the coordinator
    /// call the op again, by model, op and why (the rate of trouble per op).
    branch_retries: Family<Labels, Counter>,
    /// `dtm_transactions_unfinished`: transactions in the store per
    /// unfinished status (a backlog that grows is the first sign of trouble).
    transactions_unfinished: Family<Labels, Gauge>,
    /// `dtm_transaction_oldest_unfinished_age_seconds`: how long the oldest
    /// unfinished transaction has existed (the "not final after N minutes" alert).
    oldest_unfinished: Gauge,
    /// `dtm_alerts_raised_total`: retry alerts raised here.
    alerts_raised: Counter,
    /// `dtm_alert_deliveries_total`: webhook deliveries by outcome (a
    /// webhook that is down shows as `failed` only here).
    alert_deliveries: Family<Labels, Counter>,
    /// `dtm_branch_attempts_dropped_total`: attempts the timeline's writer
    /// had no room for (the saga never waits for it; this shows what it lost).
    attempts_dropped: Counter,
    /// When the store's gauges were last read; held while reading, so
    /// concurrent scrapes share one read.
    store_read: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn lifetime_histogram() -> Histogram {
    // 10 ms … ~3 h: a saga may spend hours in retries.
    Histogram::new(exponential_buckets(0.01, 3.0, 14))
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let server_process = Family::<Labels, Counter>::default();
        let server_duration =
            Family::<Labels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let transaction_process = Family::<Labels, Counter>::default();
        let transaction_duration =
            Family::<Labels, Histogram>::new_with_constructor(lifetime_histogram as fn() -> _);
        let branch_process = Family::<Labels, Counter>::default();
        // Counters get their `_total` suffix from the encoder.
        registry.register("dtm_server_process", "API calls handled", server_process.clone());
        registry.register(
            "dtm_server_response_duration",
            "API response time in seconds",
            server_duration.clone(),
        );
        registry.register(
            "dtm_transaction_process",
            "Global transactions that reached a final state",
            transaction_process.clone(),
        );
        registry.register(
            "dtm_transaction_handled_duration",
            "Seconds from creation to the final state of a global transaction",
            transaction_duration.clone(),
        );
        registry.register("dtm_branch_process", "Branch calls made", branch_process.clone());
        let branch_retries = Family::<Labels, Counter>::default();
        // Every series exists from the start at 0, so that `increase()` in
        // an alert rule sees the first retry too (a series born at 1 has
        // no increase). The set is small and fixed: the ops the engine
        // calls per model, and the causes that apply to each.
        for (model, op) in [
            (TransType::Saga, Op::Action),
            (TransType::Saga, Op::Compensate),
            (TransType::Tcc, Op::Confirm),
            (TransType::Tcc, Op::Cancel),
            (TransType::Xa, Op::Commit),
            (TransType::Xa, Op::Rollback),
            (TransType::Msg, Op::Action),
            (TransType::Msg, Op::Msg),
        ] {
            for answer in [
                BranchResult::Retry(String::new()),
                BranchResult::Failure(String::new()),
                BranchResult::Ongoing,
            ] {
                if let Some(cause) = retry_cause(model, op, &answer) {
                    let labels: Labels = vec![
                        ("model", model.as_str().to_string()),
                        ("op", op.as_str().to_string()),
                        ("outcome", cause.as_str().to_string()),
                    ];
                    branch_retries.get_or_create(&labels).inc_by(0);
                }
            }
        }
        registry.register(
            "dtm_branch_retries",
            "Branch answers that make the coordinator call the operation again",
            branch_retries.clone(),
        );
        let transactions_unfinished = Family::<Labels, Gauge>::default();
        for status in UNFINISHED {
            transactions_unfinished.get_or_create(&vec![("status", status.as_str().to_string())]).set(0);
        }
        registry.register(
            "dtm_transactions_unfinished",
            "Unfinished transactions in the store, by status",
            transactions_unfinished.clone(),
        );
        let oldest_unfinished = Gauge::default();
        registry.register(
            "dtm_transaction_oldest_unfinished_age_seconds",
            "Seconds since the oldest unfinished transaction in the store was created (0: none)",
            oldest_unfinished.clone(),
        );
        let alerts_raised = Counter::default();
        registry.register(
            "dtm_alerts_raised",
            "Retry alerts raised (a branch operation retried up to AlertRetryLimit)",
            alerts_raised.clone(),
        );
        let attempts_dropped = Counter::default();
        registry.register(
            "dtm_branch_attempts_dropped",
            "Branch calls not recorded for the console's timeline (its queue was full)",
            attempts_dropped.clone(),
        );
        let alert_deliveries = Family::<Labels, Counter>::default();
        for outcome in ["sent", "failed"] {
            alert_deliveries.get_or_create(&vec![("outcome", outcome.to_string())]).inc_by(0);
        }
        registry.register(
            "dtm_alert_deliveries",
            "Deliveries of retry alerts to AlertWebHook, by outcome",
            alert_deliveries.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            server_process,
            server_duration,
            transaction_process,
            transaction_duration,
            branch_process,
            branch_retries,
            transactions_unfinished,
            oldest_unfinished,
            alerts_raised,
            alert_deliveries,
            attempts_dropped,
            store_read: tokio::sync::Mutex::new(None),
        }
    }

    /// Records a branch answer that makes the coordinator call `op` again;
    /// `outcome` is a [`crate::engine::retry::RetryCause`] label.
    pub fn record_retry(&self, model: &str, op: &str, outcome: &str) {
        let labels: Labels =
            vec![("model", model.to_string()), ("op", op.to_string()), ("outcome", outcome.to_string())];
        self.branch_retries.get_or_create(&labels).inc();
    }

    /// Sets the store's gauges from `unfinished`, as of `now`.
    pub fn set_unfinished(&self, unfinished: &Unfinished, now: DateTime<Utc>) {
        for status in UNFINISHED {
            let n = unfinished.counts.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n);
            self.transactions_unfinished
                .get_or_create(&vec![("status", status.as_str().to_string())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let age = unfinished.oldest.map_or(0, |oldest| (now - oldest).num_seconds().max(0));
        self.oldest_unfinished.set(age);
    }

    /// Reads the store's gauges with `read`, unless they were read less
    /// than [`STORE_REFRESH`] ago; waits at most [`STORE_TIMEOUT`]. A failed
    /// or slow read keeps the previous values: a scrape never fails or hangs
    /// because of the store.
    pub async fn refresh_store_gauges<F, Fut, E>(&self, read: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Unfinished, E>>,
        E: std::fmt::Display,
    {
        let mut last = self.store_read.lock().await;
        if last.is_some_and(|at| at.elapsed() < STORE_REFRESH) {
            return;
        }
        match tokio::time::timeout(STORE_TIMEOUT, read()).await {
            Ok(Ok(unfinished)) => {
                self.set_unfinished(&unfinished, Utc::now());
                *last = Some(tokio::time::Instant::now());
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read unfinished transactions for the metrics"),
            Err(_) => tracing::warn!("reading unfinished transactions for the metrics timed out"),
        }
    }

    /// Records one API call. `api` must come from a fixed set (route names).
    pub fn api_call(&self, kind: ApiKind, api: &'static str, ok: bool, elapsed: Duration) {
        let base: Labels = vec![("type", kind.as_str().to_string()), ("api", api.to_string())];
        self.server_duration.get_or_create(&base).observe(elapsed.as_secs_f64());
        let mut labels = base;
        labels.push(("status", ok_or_fail(ok)));
        self.server_process.get_or_create(&labels).inc();
    }

    /// Records a global transaction reaching a final state.
    pub fn record_transaction(&self, model: &str, succeeded: bool, lifetime: Duration) {
        let model_only: Labels = vec![("model", model.to_string())];
        self.transaction_duration.get_or_create(&model_only).observe(lifetime.as_secs_f64());
        let mut labels = model_only;
        labels.push(("status", ok_or_fail(succeeded)));
        self.transaction_process.get_or_create(&labels).inc();
    }

    /// Records one branch call. `ok` means the branch answered SUCCESS (as
    /// in dtm, a FAILURE counts as `fail` even though it is a final answer).
    pub fn record_branch(&self, model: &str, branch_id: &str, op: &str, ok: bool) {
        let labels: Labels = vec![
            ("model", model.to_string()),
            ("branchid", branch_id.to_string()),
            ("branchtype", op.to_string()),
            ("status", ok_or_fail(ok)),
        ];
        self.branch_process.get_or_create(&labels).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // A poisoned lock only means a scrape panicked; the registry itself is intact.
        let registry = self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(e) = encode(&mut out, &registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// The engine reports finished transactions and branch calls here.
impl EngineObserver for Metrics {
    fn transaction_finished(&self, trans_type: TransType, outcome: GlobalStatus, duration: Duration) {
        self.record_transaction(trans_type.as_str(), outcome == GlobalStatus::Succeed, duration);
    }

    fn branch_called(
        &self,
        trans_type: TransType,
        branch_id: &BranchId,
        op: Op,
        outcome: &BranchResult,
        _latency: Duration,
    ) {
        let ok = matches!(outcome, BranchResult::Success);
        self.record_branch(trans_type.as_str(), branch_id.as_str(), op.as_str(), ok);
        if let Some(cause) = retry_cause(trans_type, op, outcome) {
            self.record_retry(trans_type.as_str(), op.as_str(), cause.as_str());
        }
    }

    fn alert_raised(&self) {
        self.alerts_raised.inc();
    }

    fn alert_delivered(&self, sent: bool) {
        let outcome = if sent { "sent" } else { "failed" };
        self.alert_deliveries.get_or_create(&vec![("outcome", outcome.to_string())]).inc();
    }

    fn attempt_dropped(&self) {
        self.attempts_dropped.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_uses_dtms_metric_names_and_labels() {
        let metrics = Metrics::new();
        metrics.api_call(ApiKind::Http, "submit", true, Duration::from_millis(3));
        metrics.api_call(ApiKind::Grpc, "submit", false, Duration::from_millis(3));
        metrics.record_transaction("saga", true, Duration::from_secs(2));
        metrics.record_branch("saga", "01", "action", true);
        let text = metrics.encode();
        for expected in [
            r#"dtm_server_process_total{type="http",api="submit",status="ok"} 1"#,
            r#"dtm_server_process_total{type="grpc",api="submit",status="fail"} 1"#,
            r#"dtm_server_response_duration_count{type="http",api="submit"} 1"#,
            r#"dtm_transaction_process_total{model="saga",status="ok"} 1"#,
            r#"dtm_transaction_handled_duration_count{model="saga"} 1"#,
            r#"dtm_branch_process_total{model="saga",branchid="01",branchtype="action",status="ok"} 1"#,
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn retries_alerts_and_the_stores_gauges_are_exported() {
        let metrics = Metrics::new();
        let branch = BranchId::nth(1);
        metrics.branch_called(
            TransType::Saga,
            &branch,
            Op::Action,
            &BranchResult::Retry("x".into()),
            Duration::ZERO,
        );
        metrics.branch_called(
            TransType::Saga,
            &branch,
            Op::Action,
            &BranchResult::Failure("no".into()),
            Duration::ZERO,
        );
        metrics.branch_called(
            TransType::Tcc,
            &branch,
            Op::Confirm,
            &BranchResult::Failure("no".into()),
            Duration::ZERO,
        );
        metrics.alert_raised();
        metrics.alert_delivered(false);
        metrics.alert_delivered(true);
        let now = Utc::now();
        let unfinished = Unfinished {
            counts: vec![(GlobalStatus::Submitted, 4)],
            oldest: Some(now - chrono::TimeDelta::seconds(90)),
        };
        metrics.set_unfinished(&unfinished, now);
        let text = metrics.encode();
        for expected in [
            r#"dtm_branch_retries_total{model="saga",op="action",outcome="error"} 1"#,
            r#"dtm_branch_retries_total{model="tcc",op="confirm",outcome="failure"} 1"#,
            "dtm_alerts_raised_total 1",
            r#"dtm_alert_deliveries_total{outcome="failed"} 1"#,
            r#"dtm_alert_deliveries_total{outcome="sent"} 1"#,
            r#"dtm_transactions_unfinished{status="submitted"} 4"#,
            r#"dtm_transactions_unfinished{status="aborting"} 0"#,
            "dtm_transaction_oldest_unfinished_age_seconds 90",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(
            !text.contains(r#"model="saga",op="action",outcome="failure""#),
            "a saga action's FAILURE is final:\n{text}"
        );
    }
}
