//! The closed-loop load generator.
//!
//! `clients` tasks each run one operation at a time, back to back, until
//! the duration has passed or the request budget is spent: the offered load
//! adapts to the system's speed, so the throughput measured is what the
//! system sustains at that concurrency (a closed loop, like dtm's and
//! dtmrs's own benchmarks), not what a fixed arrival rate would make it do.
//!
//! Every successful operation's latency goes into a per-client HDR
//! histogram (microseconds, 3 significant digits), merged at the end, so
//! recording costs no lock on the hot path. Failures are counted by kind,
//! with the first message of each kind kept as a sample.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

/// Longest one operation may take before it counts as a `timeout` error.
/// Above every deadline of the system (order-api answers within 10 s), so
/// it only fires when something hangs.
pub const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest latency the histograms can hold (60 s, in µs).
const MAX_LATENCY_US: u64 = 60_000_000;

/// A failed operation: a short kind (`http_503`, `grpc_unavailable`, …)
/// that the report counts, and the message behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// What the report groups by.
    pub kind: String,
    /// The first one of each kind is shown as a sample.
    pub detail: String,
}

impl OpError {
    /// An error of `kind`.
    pub fn new(kind: impl Into<String>, detail: impl std::fmt::Display) -> OpError {
        OpError { kind: kind.into(), detail: detail.to_string() }
    }
}

/// One operation of a mode: a saga, a pair of branch calls, an insert.
/// Called concurrently by every client; each call makes its own ids.
pub type Op = Arc<dyn Fn() -> BoxFuture<'static, Result<(), OpError>> + Send + Sync>;

/// When a load run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Start no operation after this much time.
    Duration(Duration),
    /// Start exactly this many operations in total.
    Requests(u64),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Concurrent clients (closed loop: one operation in flight each).
    pub clients: usize,
    /// When to stop.
    pub limit: Limit,
    /// Shown at the start of the progress line.
    pub label: String,
    /// Print the live progress line on stderr.
    pub progress: bool,
}

/// Errors of one kind.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorCount {
    /// How many.
    pub count: u64,
    /// The first message seen.
    pub sample: String,
}

/// What a load run measured.
#[derive(Debug)]
pub struct Outcome {
    /// Operations that succeeded.
    pub ok: u64,
    /// Failures by kind.
    pub errors: BTreeMap<String, ErrorCount>,
    /// From the first start to the last completion.
    pub elapsed: Duration,
    /// Latencies of the successful operations, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Cancelled (Ctrl-C) before the limit was reached.
    pub interrupted: bool,
}

impl Outcome {
    /// Total failures.
    pub fn error_count(&self) -> u64 {
        self.errors.values().map(|e| e.count).sum()
    }
}

/// Counters the clients bump and the progress line reads.
#[derive(Default)]
struct Live {
    /// Successful operations so far.
    ok: AtomicU64,
    /// Failed operations so far.
    failed: AtomicU64,
    /// Operations started (the request budget).
    started: AtomicU64,
}

/// What one client hands back.
struct ClientResult {
    histogram: Histogram<u64>,
    errors: BTreeMap<String, ErrorCount>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"))
}

/// Runs `op` under `plan` until the limit or `cancel`.
pub async fn run(plan: &Plan, op: &Op, cancel: &CancellationToken) -> Outcome {
    let live = Arc::new(Live::default());
    let started_at = Instant::now();
    let deadline = match plan.limit {
        Limit::Duration(duration) => Some(started_at + duration),
        Limit::Requests(_) => None,
    };
    let budget = match plan.limit {
        Limit::Requests(n) => Some(n),
        Limit::Duration(_) => None,
    };

    let mut clients = Vec::with_capacity(plan.clients);
    for _ in 0..plan.clients.max(1) {
        let op = Arc::clone(op);
        let live = Arc::clone(&live);
        let cancel = cancel.clone();
        clients.push(tokio::spawn(async move {
            let mut histogram = new_histogram();
            let mut errors: BTreeMap<String, ErrorCount> = BTreeMap::new();
            loop {
                if cancel.is_cancelled() || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if budget.is_some_and(|n| live.started.fetch_add(1, Ordering::Relaxed) >= n) {
                    break;
                }
                let begun = Instant::now();
                let result = match tokio::time::timeout(OP_TIMEOUT, op()).await {
                    Ok(result) => result,
                    Err(_) => Err(OpError::new("timeout", format!("no answer within {OP_TIMEOUT:?}"))),
                };
                match result {
                    Ok(()) => {
                        let micros = u64::try_from(begun.elapsed().as_micros()).unwrap_or(u64::MAX);
                        histogram.saturating_record(micros.clamp(1, MAX_LATENCY_US));
                        live.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        live.failed.fetch_add(1, Ordering::Relaxed);
                        let entry = errors
                            .entry(error.kind)
                            .or_insert_with(|| ErrorCount { count: 0, sample: error.detail });
                        entry.count += 1;
                    }
                }
            }
            ClientResult { histogram, errors }
        }));
    }

    let progress = plan.progress.then(|| {
        let live = Arc::clone(&live);
        let label = plan.label.clone();
        let limit = plan.limit;
        tokio::spawn(async move { show_progress(&label, limit, &live, started_at).await })
    });

    let mut latency_us = new_histogram();
    let mut errors: BTreeMap<String, ErrorCount> = BTreeMap::new();
    for client in clients {
        match client.await {
            Ok(result) => {
                // Same bounds on both sides: adding cannot fail.
                let _ = latency_us.add(&result.histogram);
                for (kind, count) in result.errors {
                    let entry = errors
                        .entry(kind)
                        .or_insert_with(|| ErrorCount { count: 0, sample: count.sample.clone() });
                    entry.count += count.count;
                }
            }
            Err(join) => {
                let entry = errors
                    .entry("client_panicked".to_string())
                    .or_insert_with(|| ErrorCount { count: 0, sample: join.to_string() });
                entry.count += 1;
            }
        }
    }
    let elapsed = started_at.elapsed();
    if let Some(progress) = progress {
        progress.abort();
        let _ = progress.await;
        // Finish the progress line so the report starts on its own line.
        eprintln!();
    }
    Outcome { ok: latency_us.len(), errors, elapsed, latency_us, interrupted: cancel.is_cancelled() }
}

/// Once a second: `[label] 12s/20s  9612 ok  0 failed  812/s now`. On a
/// terminal the line redraws itself; elsewhere (CI logs, `| tee`) a full
/// line is printed every 5 s instead of 1 line per second of `\r`s.
async fn show_progress(label: &str, limit: Limit, live: &Live, started_at: Instant) {
    let terminal = std::io::stderr().is_terminal();
    let every = if terminal { Duration::from_secs(1) } else { Duration::from_secs(5) };
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut last_ok = 0;
    loop {
        ticker.tick().await;
        let ok = live.ok.load(Ordering::Relaxed);
        let failed = live.failed.load(Ordering::Relaxed);
        let rate = (ok - last_ok) as f64 / every.as_secs_f64();
        last_ok = ok;
        let secs = started_at.elapsed().as_secs();
        let of = match limit {
            Limit::Duration(d) => format!("{secs}s/{}s", d.as_secs()),
            Limit::Requests(n) => format!("{secs}s, {}/{n}", ok + failed),
        };
        let line = format!("[{label}] {of}  {ok} ok  {failed} failed  {rate:.0}/s now");
        let mut stderr = std::io::stderr().lock();
        let _ = if terminal { write!(stderr, "\r{line}\x1b[K") } else { writeln!(stderr, "{line}") };
        let _ = stderr.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn op(fail_every: u64) -> Op {
        let n = Arc::new(AtomicU64::new(0));
        Arc::new(move || {
            let i = n.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                if fail_every > 0 && i.is_multiple_of(fail_every) {
                    Err(OpError::new("odd", format!("op {i}")))
                } else {
                    Ok(())
                }
            }
            .boxed()
        })
    }

    #[tokio::test]
    async fn a_request_budget_runs_exactly_that_many_operations() {
        let plan = Plan { clients: 4, limit: Limit::Requests(40), label: "t".into(), progress: false };
        let outcome = run(&plan, &op(10), &CancellationToken::new()).await;
        assert_eq!(outcome.ok + outcome.error_count(), 40);
        assert_eq!(outcome.error_count(), 4);
        assert_eq!(outcome.errors["odd"].count, 4);
        assert!(outcome.latency_us.value_at_quantile(0.5) >= 1000);
        assert!(!outcome.interrupted);
    }

    #[tokio::test]
    async fn a_duration_stops_the_clients_and_cancel_interrupts() {
        let plan = Plan {
            clients: 2,
            limit: Limit::Duration(Duration::from_millis(50)),
            label: "t".into(),
            progress: false,
        };
        let outcome = run(&plan, &op(0), &CancellationToken::new()).await;
        assert!(outcome.ok > 0 && outcome.errors.is_empty());

        let cancel = CancellationToken::new();
        cancel.cancel();
        let plan = Plan { limit: Limit::Duration(Duration::from_secs(60)), ..plan };
        let outcome = run(&plan, &op(0), &cancel).await;
        assert!(outcome.interrupted);
        assert_eq!(outcome.ok, 0);
    }
}
