//! Recording every branch call for the console's timeline, off the saga's
//! path.
//!
//! A pass hands each call's outcome to [`Attempts::record`], which only
//! `try_send`s it into a bounded queue: when the queue is full (a database
//! that stalls, a storm of failing sagas) the attempt is dropped and
//! counted (`dtm_branch_attempts_dropped_total`), and the saga goes on. It
//! never waits for the store, exactly like the retry alerts' counting
//! (`crate::alert`). A task drains the queue in batches — one multi-row
//! INSERT per batch, whatever the load — and keeps the table bounded: the
//! newest `max_per_transaction` attempts of each transaction (up to twice
//! that between two trims), none older than `max_age`.
//!
//! The timeline is therefore best effort by design: what it shows happened,
//! but under overload or at a crash a few calls may be missing. The
//! transaction's state itself (`trans_global`, `trans_branch_op`) never
//! depends on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dtm_protocol::{BranchId, BranchResult, Gid, Op};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::EngineObserver;
use crate::model::MAX_TEXT_COLUMN;
use crate::store::{AttemptResult, NewAttempt, Store};

/// Whether and how much to record (`AttemptsRecord`,
/// `AttemptsPerTransaction`, `AttemptsMaxAge` in the coordinator's YAML).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptSettings {
    /// Record at all. Off: nothing is queued, the timeline stays empty.
    pub enabled: bool,
    /// About the newest this many attempts of one transaction are kept (at
    /// most twice as many between two trims): a branch retried for a week
    /// does not fill the table.
    pub max_per_transaction: u32,
    /// Attempts older than this are deleted.
    pub max_age: Duration,
}

impl Default for AttemptSettings {
    fn default() -> Self {
        AttemptSettings {
            enabled: true,
            max_per_transaction: 100,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Attempts waiting for the writer. Beyond it they are dropped, not waited for.
const QUEUE: usize = 8192;

/// The most attempts one batch writes.
const BATCH: usize = 512;

/// How long the writer lets attempts gather after the first of a batch:
/// one INSERT — one commit, one fsync — per this much time under load,
/// instead of one per few attempts. Nobody waits for it.
const LINGER: Duration = Duration::from_millis(100);

/// How often attempts past `max_age` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The pass's side: a non-blocking handle on the writer's queue. Cheap to
/// clone; [`Attempts::off`] records nothing.
#[derive(Clone, Default)]
pub struct Attempts {
    /// The writer's queue; `None` when recording is off.
    queue: Option<mpsc::Sender<NewAttempt>>,
    /// Where a dropped attempt is counted (the metric).
    observer: Option<Arc<dyn EngineObserver>>,
    /// Dropped attempts, for tests and logs (the metric has the same count).
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Attempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempts").field("on", &self.queue.is_some()).finish_non_exhaustive()
    }
}

impl Attempts {
    /// Recording switched off.
    pub fn off() -> Attempts {
        Attempts::default()
    }

    /// Starts the writer on the current runtime, if recording is enabled.
    /// It stops when `kill` is cancelled, or once every handle is dropped
    /// and the queue is drained.
    pub fn start(
        store: Arc<dyn Store>,
        settings: &AttemptSettings,
        observer: Arc<dyn EngineObserver>,
        kill: CancellationToken,
    ) -> Attempts {
        if !settings.enabled {
            return Attempts::off();
        }
        let (queue, attempts) = mpsc::channel(QUEUE);
        tokio::spawn(write(store, settings.clone(), attempts, kill));
        Attempts { queue: Some(queue), observer: Some(observer), dropped: Arc::default() }
    }

    /// Queues one branch call's outcome; never waits.
    pub fn record(
        &self,
        gid: &Gid,
        branch_id: &BranchId,
        op: Op,
        result: &BranchResult,
        started: SystemTime,
        latency: Duration,
    ) {
        let Some(queue) = &self.queue else { return };
        let (result, error) = match result {
            BranchResult::Success => (AttemptResult::Success, ""),
            BranchResult::Failure(m) => (AttemptResult::Failure, m.as_str()),
            BranchResult::Ongoing => (AttemptResult::Ongoing, ""),
            BranchResult::Retry(m) => (AttemptResult::Error, m.as_str()),
        };
        let attempt = NewAttempt {
            gid: gid.clone(),
            branch_id: branch_id.clone(),
            op,
            result,
            error: clip(error),
            latency_ms: i64::try_from(latency.as_millis()).unwrap_or(i64::MAX),
            start_ms: millis(started),
        };
        if queue.try_send(attempt).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(observer) = &self.observer {
                observer.attempt_dropped();
            }
        }
    }

    /// Attempts dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Milliseconds since the epoch (0 for a clock before 1970).
fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Gids whose written attempts the writer counts; past this many it
/// forgets them all and starts counting afresh (memory stays bounded; a
/// transaction then keeps at most twice its bound until the age prune).
const COUNTED_GIDS: usize = 100_000;

/// The writer: a batch per wake-up, pruning by age once a minute.
///
/// Trimming a transaction to its newest `max_per_transaction` rows costs a
/// SELECT; the writer does it only for a gid it has written more than that
/// many attempts of since it last trimmed it — once per
/// `max_per_transaction` calls of a transaction that keeps being retried,
/// never for a saga that succeeds on its first tries.
async fn write(
    store: Arc<dyn Store>,
    settings: AttemptSettings,
    mut queue: mpsc::Receiver<NewAttempt>,
    kill: CancellationToken,
) {
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    let mut batch = Vec::with_capacity(BATCH);
    let mut written: HashMap<Gid, u32> = HashMap::new();
    loop {
        tokio::select! {
            () = kill.cancelled() => return,
            _ = prune.tick() => {
                let cut = millis(SystemTime::now()) - i64::try_from(settings.max_age.as_millis()).unwrap_or(i64::MAX);
                if let Err(e) = store.prune_attempts(cut).await {
                    tracing::warn!(error = %e, "could not prune old branch attempts");
                }
            }
            received = queue.recv_many(&mut batch, BATCH) => {
                if received == 0 {
                    return; // every sender is gone
                }
                tokio::time::sleep(LINGER).await;
                while batch.len() < BATCH {
                    match queue.try_recv() {
                        Ok(attempt) => batch.push(attempt),
                        Err(_) => break,
                    }
                }
                if let Err(e) = store.record_attempts(&batch).await {
                    tracing::warn!(error = %e, attempts = batch.len(), "could not record branch attempts; dropped");
                    batch.clear();
                    continue;
                }
                if written.len() > COUNTED_GIDS {
                    written.clear();
                }
                let keep = settings.max_per_transaction.max(1);
                let mut over = Vec::new();
                for attempt in batch.drain(..) {
                    let n = written.entry(attempt.gid.clone()).or_default();
                    *n += 1;
                    if *n > keep {
                        *n = 0;
                        over.push(attempt.gid);
                    }
                }
                for gid in over {
                    if let Err(e) = store.trim_attempts(&gid, keep).await {
                        tracing::warn!(%gid, error = %e, "could not trim branch attempts");
                    }
                }
            }
        }
    }
}

/// Cuts an answer to the column's 1024 bytes, at a character boundary.
fn clip(text: &str) -> String {
    let mut end = text.len().min(MAX_TEXT_COLUMN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An observer that counts drops, like the metric does.
    #[derive(Default)]
    struct Drops(AtomicU64);

    impl EngineObserver for Drops {
        fn attempt_dropped(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        // A queue of two that nobody drains: a stalled writer.
        let (queue, _stalled) = mpsc::channel(2);
        let observer = Arc::new(Drops::default());
        let observer_dyn: Arc<dyn EngineObserver> = observer.clone();
        let attempts = Attempts { queue: Some(queue), observer: Some(observer_dyn), dropped: Arc::default() };
        let gid = Gid::new("g").unwrap();
        let started = std::time::Instant::now();
        for _ in 0..10 {
            let result = BranchResult::Retry("HTTP 500".into());
            attempts.record(&gid, &BranchId::nth(0), Op::Action, &result, SystemTime::now(), Duration::ZERO);
        }
        assert!(started.elapsed() < Duration::from_secs(1), "record never waits");
        assert_eq!(attempts.dropped(), 8);
        assert_eq!(observer.0.load(Ordering::Relaxed), 8, "each drop reaches the metric");
        Attempts::off().record(
            &gid,
            &BranchId::nth(0),
            Op::Action,
            &BranchResult::Success,
            SystemTime::now(),
            Duration::ZERO,
        );
    }

    #[test]
    fn answers_are_clipped_at_a_character_boundary() {
        let long = "é".repeat(MAX_TEXT_COLUMN);
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_TEXT_COLUMN && clipped.chars().all(|c| c == 'é'));
    }
}
