//! A store wrapper for tests that need a fault on demand.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use coordinator::model::GlobalStatus;
use coordinator::store::{
    AlertKey, AlertRow, BranchFailure, CreateOutcome, Delivery, FailureCounted, LeaseToken, ListFilter,
    NewBranch, NewGlobal, NewTrans, Page, ResetCount, StatusUpdate, Store, StoreError, StoredTrans,
    Unfinished,
};
use dtm_protocol::Gid;

/// Maps the real outcome of an `update`.
pub type UpdateHook =
    Box<dyn Fn(&StatusUpdate, Result<bool, StoreError>) -> Result<bool, StoreError> + Send + Sync>;

/// A real store with hooks around `create` and `update`, to play on demand
/// what a real database shows only rarely: a bug that panics, a commit whose
/// reply is lost.
pub struct Intercepted {
    /// The store that does the work.
    pub inner: Arc<dyn Store>,
    /// Runs before each `create` (may panic, to play a bug).
    pub before_create: Box<dyn Fn(&NewGlobal) + Send + Sync>,
    /// Maps the real outcome of each `update` (e.g. to an error after it committed).
    pub after_update: UpdateHook,
}

impl Intercepted {
    /// A wrapper that changes nothing (set the hooks to change something).
    pub fn new(inner: Arc<dyn Store>) -> Intercepted {
        Intercepted { inner, before_create: Box::new(|_| {}), after_update: Box::new(|_, outcome| outcome) }
    }
}

impl std::fmt::Debug for Intercepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intercepted").field("inner", &self.inner).finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Store for Intercepted {
    async fn create(&self, global: &NewGlobal, branches: &[NewBranch]) -> Result<CreateOutcome, StoreError> {
        (self.before_create)(global);
        self.inner.create(global, branches).await
    }
    async fn update(&self, update: StatusUpdate) -> Result<bool, StoreError> {
        let outcome = self.inner.update(update.clone()).await;
        (self.after_update)(&update, outcome)
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
    async fn record_attempts(&self, attempts: &[coordinator::store::NewAttempt]) -> Result<(), StoreError> {
        self.inner.record_attempts(attempts).await
    }
    async fn trim_attempts(&self, gid: &Gid, keep: u32) -> Result<(), StoreError> {
        self.inner.trim_attempts(gid, keep).await
    }
    async fn prune_attempts(&self, started_before_ms: i64) -> Result<u64, StoreError> {
        self.inner.prune_attempts(started_before_ms).await
    }
    async fn attempts_of(
        &self,
        gid: &Gid,
        limit: u32,
    ) -> Result<Vec<coordinator::store::AttemptRow>, StoreError> {
        self.inner.attempts_of(gid, limit).await
    }
    async fn status_counts(&self) -> Result<Vec<(GlobalStatus, u64)>, StoreError> {
        self.inner.status_counts().await
    }
    fn kv(&self) -> &dyn coordinator::store::KvStore {
        self.inner.kv()
    }
}
