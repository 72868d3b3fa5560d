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
//! Dashboards written for dtm keep working. Label cardinality is bounded on
//! purpose: `api` is one of a fixed set of route names (an unknown path is
//! reported as `other`, so a scanner cannot mint series), and `branchid` is
//! the step number (`01`, `02`, …), never the gid.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use dtm_protocol::{BranchId, BranchResult, Op, TransType};

use crate::engine::EngineObserver;
use crate::model::GlobalStatus;

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
        Metrics {
            registry: Mutex::new(registry),
            server_process,
            server_duration,
            transaction_process,
            transaction_duration,
            branch_process,
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
}
