//! Recording branch calls for the console's timeline, off the saga's
//! path.
//!
//! A pass records through its [`PassAttempts`], which hands each call's
//! outcome to a bounded queue with `try_send`: when the queue is full (a
//! database that stalls, a storm of failing sagas) the attempt is dropped
//! and counted (`dtm_branch_attempts_dropped_total`), and the saga goes
//! on. It never waits for the store, exactly like the retry alerts'
//! counting (`crate::alert`). A task drains the queue in batches — one
//! multi-row INSERT per batch, whatever the load — and keeps the table
//! bounded: the newest `max_per_transaction` attempts of each transaction
//! (up to twice that between two trims), none older than `max_age`.
//!
//! Which calls are worth a row is [`AttemptsRecord`]'s choice. By default
//! (`troubled`) a transaction that succeeds in the pass its client's
//! request started, every call succeeding at once, writes none: its
//! `trans_branch_op` rows already say each op succeeded and when, and
//! recording them would cost every quick order two rows more in the
//! coordinator's database (measured: about 7 % of a quick order's CPU, in
//! BENCHMARKS.md). Everything else — a call that did not succeed, the
//! successes before it in the same pass, every call of a later pass
//! (retries, recovery after a crash, a retry-now from the console) — is
//! recorded, so the timeline of a transaction that had any trouble is
//! complete. `all` records every call; `off` none.
//!
//! The timeline is best effort by design: what it shows happened, but
//! under overload or at a crash a few calls may be missing (the successes
//! a pass was holding back die with it). The transaction's state itself
//! (`trans_global`, `trans_branch_op`) never depends on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dtm_protocol::{BranchId, BranchResult, Gid, Op};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::EngineObserver;
use crate::model::MAX_TEXT_COLUMN;
use crate::store::{AttemptResult, NewAttempt, Store};

/// Which branch calls are recorded (`AttemptsRecord` in the coordinator's
/// YAML; `true` and `false` are read as `all` and `off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttemptsRecord {
    /// Every call.
    All,
    /// Every call of a transaction that had any trouble; nothing of one
    /// that succeeded in its first pass with every call succeeding at once.
    #[default]
    Troubled,
    /// None: the timeline stays empty.
    Off,
}

impl AttemptsRecord {
    /// The YAML value.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptsRecord::All => "all",
            AttemptsRecord::Troubled => "troubled",
            AttemptsRecord::Off => "off",
        }
    }
}

impl Serialize for AttemptsRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AttemptsRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// A YAML boolean (the setting was one before `troubled` existed)
        /// or a word; an environment variable always arrives as a word.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Flag(bool),
            Word(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Flag(true) => Ok(AttemptsRecord::All),
            Raw::Flag(false) => Ok(AttemptsRecord::Off),
            Raw::Word(word) => match word.as_str() {
                "all" | "true" => Ok(AttemptsRecord::All),
                "troubled" => Ok(AttemptsRecord::Troubled),
                "off" | "false" => Ok(AttemptsRecord::Off),
                other => Err(serde::de::Error::custom(format!(
                    "{other:?} is not one of all, troubled, off (or true, false)"
                ))),
            },
        }
    }
}

/// Whether and how much to record (`AttemptsRecord`,
/// `AttemptsPerTransaction`, `AttemptsMaxAge` in the coordinator's YAML).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptSettings {
    /// Which calls: all, those of troubled transactions, or none.
    pub record: AttemptsRecord,
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
            record: AttemptsRecord::default(),
            max_per_transaction: 100,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Why a pass runs, which decides whether its clean calls are worth a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassOrigin {
    /// Right after a client's decision (submit, abort): the pass a
    /// transaction without trouble is finished by.
    Decision,
    /// Over a transaction found in the store (due for a retry, left by a
    /// crashed coordinator, a resubmit taking over, retry-now): it had
    /// trouble, or it would not be here.
    Resumed,
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
    /// Which calls are recorded.
    record: AttemptsRecord,
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
        if settings.record == AttemptsRecord::Off {
            return Attempts::off();
        }
        let (queue, attempts) = mpsc::channel(QUEUE);
        tokio::spawn(write(store, settings.clone(), attempts, kill));
        Attempts {
            queue: Some(queue),
            record: settings.record,
            observer: Some(observer),
            dropped: Arc::default(),
        }
    }

    /// The recorder of one pass over `gid`.
    pub(crate) fn for_pass(&self, gid: &Gid, origin: PassOrigin) -> PassAttempts<'_> {
        let hold =
            self.queue.is_some() && self.record == AttemptsRecord::Troubled && origin == PassOrigin::Decision;
        PassAttempts { attempts: self, gid: gid.clone(), held: Mutex::new(hold.then(Vec::new)) }
    }

    /// Queues one branch call's outcome; never waits.
    fn send(
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

/// A success a pass holds back until it knows whether the transaction had
/// trouble.
#[derive(Debug)]
struct HeldSuccess {
    branch_id: BranchId,
    op: Op,
    started: SystemTime,
    latency: Duration,
}

/// One pass's recorder: sends each call to the writer, or — in a
/// [`PassOrigin::Decision`] pass under [`AttemptsRecord::Troubled`] —
/// holds successes back until the first call that does not succeed (then
/// they and everything after it are sent) or the pass's end (then they
/// are sent unless the pass made the transaction `succeed`).
pub(crate) struct PassAttempts<'a> {
    /// The engine's recording handle.
    attempts: &'a Attempts,
    /// The transaction the pass is over.
    gid: Gid,
    /// Successes held back; `None` once (or if) every call is sent as it ends.
    held: Mutex<Option<Vec<HeldSuccess>>>,
}

impl PassAttempts<'_> {
    /// Records one branch call's outcome; never waits.
    pub(crate) fn record(
        &self,
        branch_id: &BranchId,
        op: Op,
        result: &BranchResult,
        started: SystemTime,
        latency: Duration,
    ) {
        let earlier = {
            // Calls of one pass end one at a time on its task; the lock is
            // never contended and never held across an await.
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            match held.as_mut() {
                Some(list) if *result == BranchResult::Success => {
                    list.push(HeldSuccess { branch_id: branch_id.clone(), op, started, latency });
                    return;
                }
                _ => held.take(),
            }
        };
        self.send_held(earlier);
        self.attempts.send(&self.gid, branch_id, op, result, started, latency);
    }

    /// The pass is over: the held successes are sent unless it made the
    /// transaction `succeed` (a killed pass sends nothing more).
    pub(crate) fn pass_ended(self, succeeded: bool) {
        if !succeeded {
            let held = self.held.lock().unwrap_or_else(PoisonError::into_inner).take();
            self.send_held(held);
        }
    }

    fn send_held(&self, held: Option<Vec<HeldSuccess>>) {
        for h in held.into_iter().flatten() {
            self.attempts.send(&self.gid, &h.branch_id, h.op, &BranchResult::Success, h.started, h.latency);
        }
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
        let attempts = Attempts {
            queue: Some(queue),
            record: AttemptsRecord::All,
            observer: Some(observer_dyn),
            dropped: Arc::default(),
        };
        let gid = Gid::new("g").unwrap();
        let started = std::time::Instant::now();
        for _ in 0..10 {
            let result = BranchResult::Retry("HTTP 500".into());
            attempts.send(&gid, &BranchId::nth(0), Op::Action, &result, SystemTime::now(), Duration::ZERO);
        }
        assert!(started.elapsed() < Duration::from_secs(1), "record never waits");
        assert_eq!(attempts.dropped(), 8);
        assert_eq!(observer.0.load(Ordering::Relaxed), 8, "each drop reaches the metric");
        Attempts::off().for_pass(&gid, PassOrigin::Resumed).record(
            &BranchId::nth(0),
            Op::Action,
            &BranchResult::Retry("HTTP 500".into()),
            SystemTime::now(),
            Duration::ZERO,
        );
    }

    /// A recording handle whose queue the test reads.
    fn recording(record: AttemptsRecord) -> (Attempts, mpsc::Receiver<NewAttempt>) {
        let (queue, sent) = mpsc::channel(64);
        (Attempts { queue: Some(queue), record, observer: None, dropped: Arc::default() }, sent)
    }

    /// What reached the writer, as (branch, op, result).
    fn sent(queue: &mut mpsc::Receiver<NewAttempt>) -> Vec<(String, Op, AttemptResult)> {
        std::iter::from_fn(|| queue.try_recv().ok())
            .map(|a| (a.branch_id.as_str().to_string(), a.op, a.result))
            .collect()
    }

    fn call(pass: &PassAttempts<'_>, branch: usize, op: Op, result: &BranchResult) {
        pass.record(&BranchId::nth(branch), op, result, SystemTime::now(), Duration::from_millis(3));
    }

    #[test]
    fn a_decision_pass_that_succeeds_cleanly_writes_nothing_under_troubled() {
        let (attempts, mut queue) = recording(AttemptsRecord::Troubled);
        let gid = Gid::new("clean").unwrap();
        let pass = attempts.for_pass(&gid, PassOrigin::Decision);
        call(&pass, 0, Op::Action, &BranchResult::Success);
        call(&pass, 1, Op::Action, &BranchResult::Success);
        pass.pass_ended(true);
        assert!(sent(&mut queue).is_empty(), "a quick order without trouble costs no row");
    }

    #[test]
    fn the_first_call_in_trouble_sends_the_successes_held_before_it() {
        let (attempts, mut queue) = recording(AttemptsRecord::Troubled);
        let gid = Gid::new("troubled").unwrap();
        let pass = attempts.for_pass(&gid, PassOrigin::Decision);
        call(&pass, 0, Op::Action, &BranchResult::Success);
        assert!(sent(&mut queue).is_empty(), "held while the pass is clean");
        call(&pass, 1, Op::Action, &BranchResult::Failure("out of stock".into()));
        call(&pass, 0, Op::Compensate, &BranchResult::Success);
        pass.pass_ended(false);
        assert_eq!(
            sent(&mut queue),
            [
                ("01".into(), Op::Action, AttemptResult::Success),
                ("02".into(), Op::Action, AttemptResult::Failure),
                ("01".into(), Op::Compensate, AttemptResult::Success),
            ],
            "the timeline of a troubled transaction is complete, in call order"
        );
    }

    #[test]
    fn held_successes_are_sent_when_the_pass_ends_without_success() {
        // A pass that lost its lease, or a rollback every call of which
        // succeeded (a TCC abort): still worth the timeline.
        let (attempts, mut queue) = recording(AttemptsRecord::Troubled);
        let gid = Gid::new("rolled-back").unwrap();
        let pass = attempts.for_pass(&gid, PassOrigin::Decision);
        call(&pass, 0, Op::Cancel, &BranchResult::Success);
        pass.pass_ended(false);
        assert_eq!(sent(&mut queue), [("01".into(), Op::Cancel, AttemptResult::Success)]);
    }

    #[test]
    fn a_resumed_pass_or_all_sends_every_call_at_once() {
        for (record, origin) in
            [(AttemptsRecord::Troubled, PassOrigin::Resumed), (AttemptsRecord::All, PassOrigin::Decision)]
        {
            let (attempts, mut queue) = recording(record);
            let gid = Gid::new("retried").unwrap();
            let pass = attempts.for_pass(&gid, origin);
            call(&pass, 0, Op::Action, &BranchResult::Success);
            assert_eq!(sent(&mut queue).len(), 1, "{record:?} {origin:?}: sent as it ends");
            pass.pass_ended(true);
            assert!(sent(&mut queue).is_empty());
        }
    }

    #[test]
    fn the_setting_reads_words_and_the_old_booleans() {
        let read = |yaml: &str| serde_yaml_ng::from_str::<AttemptsRecord>(yaml).map_err(|e| e.to_string());
        assert_eq!(read("all"), Ok(AttemptsRecord::All));
        assert_eq!(read("troubled"), Ok(AttemptsRecord::Troubled));
        assert_eq!(read("off"), Ok(AttemptsRecord::Off));
        assert_eq!(read("true"), Ok(AttemptsRecord::All));
        assert_eq!(read("false"), Ok(AttemptsRecord::Off));
        assert_eq!(read("'false'"), Ok(AttemptsRecord::Off), "an environment variable is a string");
        let refused = read("sometimes").unwrap_err();
        assert!(refused.contains("all, troubled, off"), "{refused}");
        assert_eq!(serde_yaml_ng::to_string(&AttemptsRecord::Troubled).unwrap().trim(), "troubled");
    }

    #[test]
    fn answers_are_clipped_at_a_character_boundary() {
        let long = "é".repeat(MAX_TEXT_COLUMN);
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_TEXT_COLUMN && clipped.chars().all(|c| c == 'é'));
    }
}
