//! Group commit: the writes of many sagas in one database transaction.
//!
//! Every saga writes twice on its way through the coordinator: the create
//! (global row + branch rows) before the first branch call, and the final
//! status after the last. Done one by one, each write is a transaction of
//! its own — a `BEGIN`, two statements, a `COMMIT` and a log flush — and
//! under load the database spends more on those than on the branches' own
//! work. [`GroupCommit`] queues the writes of concurrent passes, and one
//! writer task takes whatever is queued (up to [`MAX_BATCH`]) and writes it
//! with [`Store::write_batch`]: one transaction, one multi-row statement per
//! table and status, one commit for the lot.
//!
//! One writer, not a few: while a batch is in flight the next one gathers
//! everything that arrives meanwhile, so batches are as large as the load
//! makes them. Measured with the `peer` bench (BENCHMARKS.md), MariaDB, 64
//! clients: one writer 2 170 sagas/s with 0.06 commits per saga, two
//! writers 2 000/s (0.12), four 1 150/s at 16 clients where one does 1 440/s.
//!
//! Nothing about durability changes: a caller's future resolves only after
//! the transaction holding its write has committed, exactly as before. Nor
//! does latency at low load: an idle writer takes a write the moment it is
//! queued, alone. Batches grow only while the writer is busy — which is
//! when sharing a commit pays.
//!
//! A batch applies as a whole or not at all. When it cannot (a gid already
//! exists, another instance moved a status, the database failed), nothing
//! of it was written, and every write is run again on its own with
//! [`Store::create`] / [`Store::update`] — whose answers ("exists", "lost
//! the race") the callers need anyway. The one ambiguous case, a connection
//! lost during `COMMIT`, is safe too: a create run again finds its gid
//! (`Exists`, the path of an idempotent re-submit), an update finds the
//! status already moved (`false`, the pass stops and the caller reads the
//! outcome from the store).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dtm_protocol::Gid;
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};

use super::{
    AlertKey, AlertRow, AttemptRow, BranchFailure, CreateOutcome, Delivery, FailureCounted, LeaseToken,
    ListFilter, NewAttempt, NewBranch, NewGlobal, NewTrans, Page, ResetCount, StatusUpdate, Store,
    StoreError, StoredTrans, Unfinished,
};
use crate::model::GlobalStatus;

/// Most writes one transaction takes. Large enough that 64 clients' sagas
/// share a handful of commits; small enough that one statement stays far
/// below every engine's placeholder limit (a 2-step saga's create binds 47
/// values; SQLite allows 32 766) and a failed batch costs little to run
/// again one by one.
pub const MAX_BATCH: usize = 64;

/// One queued write and where its answer goes.
enum Job {
    Create(NewTrans, oneshot::Sender<Result<CreateOutcome, StoreError>>),
    Update(StatusUpdate, oneshot::Sender<Result<bool, StoreError>>),
}

/// A [`Store`] whose `create` and `update` share transactions with those
/// of concurrent callers. Everything else goes straight to the inner store.
pub struct GroupCommit {
    /// The store that does the writing.
    inner: Arc<dyn Store>,
    /// Queue to the writer task; it stops once this (the only sender) is dropped.
    queue: mpsc::Sender<Job>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Wraps `inner` and starts the writer task on the current Tokio runtime.
    pub fn new(inner: Arc<dyn Store>) -> GroupCommit {
        // Bounded: a stalled database pushes back on the passes instead of
        // growing a queue without end.
        let (queue, jobs) = mpsc::channel(MAX_BATCH * 64);
        tokio::spawn(writer(Arc::clone(&inner), jobs));
        GroupCommit { inner, queue }
    }

    /// Queues a write and waits for its answer.
    async fn submit<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        // The writer lives as long as the queue's sender, which we hold: the
        // send fails only when the runtime itself is going away, the answer
        // is missing only when the writer's batch panicked.
        self.queue.send(job(reply)).await.map_err(|_| StoreError::WriteLost)?;
        answer.await.map_err(|_| StoreError::WriteLost)?
    }
}

/// Takes what is queued, up to [`MAX_BATCH`], and writes it; until the queue closes.
async fn writer(store: Arc<dyn Store>, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Every write of the coordinator goes through this one task: a panic
        // in one batch (none is known; this is a fence, not a path) must not
        // take the writer down with it. The batch's replies are dropped, so
        // its callers get `WriteLost`; an open transaction rolls back when
        // dropped; the next batch runs as usual.
        let written = AssertUnwindSafe(write(store.as_ref(), std::mem::take(&mut batch)));
        if let Err(panic) = written.catch_unwind().await {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "group-commit batch panicked; its writes are answered WriteLost");
        }
    }
}

async fn write(store: &dyn Store, jobs: Vec<Job>) {
    let batched = jobs.len() > 1;
    let (mut creates, mut created) = (Vec::new(), Vec::new());
    let (mut updates, mut updated) = (Vec::new(), Vec::new());
    for job in jobs {
        match job {
            Job::Create(write, reply) => {
                creates.push(write);
                created.push(reply);
            }
            Job::Update(write, reply) => {
                updates.push(write);
                updated.push(reply);
            }
        }
    }
    if batched {
        match store.write_batch(&creates, &updates).await {
            Ok(true) => {
                // A caller may have gone away (a dropped request); its
                // write stands, and recovery finishes the saga.
                for reply in created {
                    let _ = reply.send(Ok(CreateOutcome::Created));
                }
                for reply in updated {
                    let _ = reply.send(Ok(true));
                }
                return;
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "batch failed; writing one by one"),
        }
    }
    // Alone, or a batch that could not apply as a whole: each write on its
    // own, concurrently, so that one slow write does not hold the others.
    let creates = creates.iter().zip(created).map(|(c, reply)| async move {
        let _ = reply.send(store.create(&c.global, &c.branches).await);
    });
    let updates = updates.into_iter().zip(updated).map(|(u, reply)| async move {
        let _ = reply.send(store.update(u).await);
    });
    futures::future::join(futures::future::join_all(creates), futures::future::join_all(updates)).await;
}

#[async_trait]
impl Store for GroupCommit {
    async fn create(&self, global: &NewGlobal, branches: &[NewBranch]) -> Result<CreateOutcome, StoreError> {
        let write = NewTrans { global: global.clone(), branches: branches.to_vec() };
        self.submit(|reply| Job::Create(write, reply)).await
    }

    async fn update(&self, update: StatusUpdate) -> Result<bool, StoreError> {
        self.submit(|reply| Job::Update(update, reply)).await
    }

    async fn write_batch(&self, creates: &[NewTrans], updates: &[StatusUpdate]) -> Result<bool, StoreError> {
        self.inner.write_batch(creates, updates).await
    }

    async fn find(&self, gid: &Gid) -> Result<Option<StoredTrans>, StoreError> {
        self.inner.find(gid).await
    }

    async fn list(&self, filter: &ListFilter) -> Result<Page, StoreError> {
        self.inner.list(filter).await
    }

    async fn add_branches(
        &self,
        gid: &Gid,
        expected: GlobalStatus,
        branches: &[NewBranch],
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.inner.add_branches(gid, expected, branches, now).await
    }

    async fn lease_due(
        &self,
        owner: &LeaseToken,
        lease_for: Duration,
        limit: u32,
        skip: &[Gid],
        now: DateTime<Utc>,
    ) -> Result<Vec<StoredTrans>, StoreError> {
        self.inner.lease_due(owner, lease_for, limit, skip, now).await
    }

    async fn acquire(
        &self,
        gid: &Gid,
        owner: &LeaseToken,
        lease_for: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<StoredTrans>, StoreError> {
        self.inner.acquire(gid, owner, lease_for, now).await
    }

    async fn release(&self, held: &[(Gid, LeaseToken)], now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner.release(held, now).await
    }

    async fn force_stop(&self, gid: &Gid, now: DateTime<Utc>) -> Result<bool, StoreError> {
        self.inner.force_stop(gid, now).await
    }

    async fn reset_next_cron_time(&self, gid: &Gid, now: DateTime<Utc>) -> Result<bool, StoreError> {
        self.inner.reset_next_cron_time(gid, now).await
    }

    async fn reset_stale_cron_times(
        &self,
        later_than: Duration,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<ResetCount, StoreError> {
        self.inner.reset_stale_cron_times(later_than, limit, now).await
    }

    async fn count_failure(
        &self,
        failure: &BranchFailure,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<FailureCounted, StoreError> {
        self.inner.count_failure(failure, limit, now).await
    }

    async fn lease_alerts(
        &self,
        owner: &LeaseToken,
        lease_for: Duration,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<AlertRow>, StoreError> {
        self.inner.lease_alerts(owner, lease_for, limit, now).await
    }

    async fn settle_alert(
        &self,
        key: &AlertKey,
        owner: &LeaseToken,
        delivery: &Delivery,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.inner.settle_alert(key, owner, delivery, now).await
    }

    async fn alerts_of(&self, gid: &Gid) -> Result<Vec<AlertRow>, StoreError> {
        self.inner.alerts_of(gid).await
    }

    async fn unfinished(&self) -> Result<Unfinished, StoreError> {
        self.inner.unfinished().await
    }

    async fn record_attempts(&self, attempts: &[NewAttempt]) -> Result<(), StoreError> {
        self.inner.record_attempts(attempts).await
    }

    async fn trim_attempts(&self, gid: &Gid, keep: u32) -> Result<(), StoreError> {
        self.inner.trim_attempts(gid, keep).await
    }

    async fn prune_attempts(&self, started_before_ms: i64) -> Result<u64, StoreError> {
        self.inner.prune_attempts(started_before_ms).await
    }

    async fn attempts_of(&self, gid: &Gid, limit: u32) -> Result<Vec<AttemptRow>, StoreError> {
        self.inner.attempts_of(gid, limit).await
    }

    async fn status_counts(&self) -> Result<Vec<(GlobalStatus, u64)>, StoreError> {
        self.inner.status_counts().await
    }

    fn kv(&self) -> &dyn super::KvStore {
        self.inner.kv()
    }
}
