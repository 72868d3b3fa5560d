//! dtm's `kv` table: small named values, read and written whole, changed
//! under optimistic concurrency (dtm's `dtmsvr/storage/sql/sql.go`:
//! `FindKV`, `ScanKV`, `CreateKV`, `UpdateKV`, `DeleteKV`).
//!
//! dtm keeps one kind of value there today: message topics (`cat` =
//! `topics`, `k` = the topic, `v` = the JSON list of subscribers;
//! `crate::topics`). A row carries a `version`; a change is a
//! read-modify-write that applies only if the version is still the one read
//! ([`KvStore::update_kv`]), and bumps it. Two coordinators changing one row
//! at once cannot both win: the loser sees `false`, reads again and retries
//! (the caller's loop), so no change is lost and no lock is held between
//! the read and the write.
//!
//! Statements per operation (each autocommit, one statement):
//!
//! | operation | statement |
//! |---|---|
//! | `find_kv` | SELECT by `(cat, k)` (the unique key), or by `cat` |
//! | `scan_kv` | SELECT … `id < position` ORDER BY id DESC LIMIT n |
//! | `create_kv` | INSERT-if-absent (`uniq_k`) |
//! | `update_kv` | UPDATE … WHERE id = ? AND version = ? |
//! | `delete_kv` | DELETE by `(cat, k)` |

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::StoreError;
use super::driver::{Driver, Statement};
use super::sql::SqlStore;

/// A `kv` row, serialized with dtm's JSON names (`queryKV`, `scanKV`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KvRow {
    /// Auto-increment id: the pagination key of `scanKV`.
    pub id: i64,
    /// Creation time.
    pub create_time: Option<DateTime<Utc>>,
    /// Last change.
    pub update_time: Option<DateTime<Utc>>,
    /// The category (`topics`).
    pub cat: String,
    /// The key within the category (a topic name).
    pub k: String,
    /// The value (a topic's JSON list of subscribers).
    pub v: String,
    /// Bumped by every change; a change applies only to the version it read.
    pub version: i64,
}

/// One page of `scanKV`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KvPage {
    /// Rows, newest first.
    pub kv: Vec<KvRow>,
    /// Id of the last row, or `""` when this was the last page.
    pub next_position: String,
}

const KV_COLUMNS: &str = "id, cat, k, v, version, create_time, update_time";

/// The `kv` table. Object-safe; [`super::Store::kv`] hands it out.
#[async_trait]
pub trait KvStore: Send + Sync {
    /// The rows of `cat` (all of them when `key` is `None`, else the one
    /// with that key, if any), oldest first; at most `limit`.
    async fn find_kv(&self, cat: &str, key: Option<&str>, limit: u32) -> Result<Vec<KvRow>, StoreError>;

    /// The rows of `cat` with `id < position` (all if `None`), newest
    /// first, `limit` of them, and where the next page starts.
    async fn scan_kv(&self, cat: &str, position: Option<i64>, limit: u32) -> Result<KvPage, StoreError>;

    /// Inserts `(cat, k, v)` at version 1 unless the key exists; `false` if
    /// it did (another writer created it first).
    async fn create_kv(&self, cat: &str, k: &str, v: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Sets `v` and bumps the version of row `id` if its version is still
    /// `version`; `false` if another change came first (or it was deleted).
    async fn update_kv(&self, id: i64, version: i64, v: &str, now: DateTime<Utc>)
    -> Result<bool, StoreError>;

    /// Deletes `(cat, k)`; `false` if there was no such row.
    async fn delete_kv(&self, cat: &str, k: &str) -> Result<bool, StoreError>;
}

impl<D: Driver> SqlStore<D> {
    fn select_kv() -> Statement<D> {
        Statement::new(format!("SELECT {KV_COLUMNS} FROM kv WHERE cat = "))
    }

    async fn kv_rows(&self, q: Statement<D>) -> Result<Vec<KvRow>, StoreError> {
        D::fetch_all(q, self.pool()).await?.iter().map(D::kv_row).collect()
    }
}

#[async_trait]
impl<D: Driver> KvStore for SqlStore<D> {
    async fn find_kv(&self, cat: &str, key: Option<&str>, limit: u32) -> Result<Vec<KvRow>, StoreError> {
        let mut q = Self::select_kv();
        q.push_bind(cat);
        if let Some(key) = key {
            q.push(" AND k = ").push_bind(key);
        }
        q.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit.max(1)));
        self.kv_rows(q).await
    }

    async fn scan_kv(&self, cat: &str, position: Option<i64>, limit: u32) -> Result<KvPage, StoreError> {
        let limit = i64::from(limit.max(1));
        let mut q = Self::select_kv();
        q.push_bind(cat);
        if let Some(position) = position {
            q.push(" AND id < ").push_bind(position);
        }
        q.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
        let kv = self.kv_rows(q).await?;
        // dtm's rule (as for `all`): a full page names its last id, a short one ends the scan.
        let next_position = match kv.last() {
            Some(last) if i64::try_from(kv.len()).unwrap_or(0) == limit => last.id.to_string(),
            _ => String::new(),
        };
        Ok(KvPage { kv, next_position })
    }

    async fn create_kv(&self, cat: &str, k: &str, v: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let (insert, on_conflict) = D::INSERT_IGNORE;
        let mut q =
            Statement::<D>::new(format!("{insert} kv (cat, k, v, version, create_time, update_time) "));
        q.push_values([()], |mut row, ()| {
            row.push_bind(cat).push_bind(k).push_bind(v).push("1").push_bind(now).push_bind(now);
        });
        q.push(on_conflict);
        Ok(D::run(q, self.pool()).await? == 1)
    }

    async fn update_kv(
        &self,
        id: i64,
        version: i64,
        v: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut q = Statement::<D>::new("UPDATE kv SET v = ");
        q.push_bind(v).push(", version = version + 1, update_time = ").push_bind(now);
        q.push(" WHERE id = ").push_bind(id).push(" AND version = ").push_bind(version);
        Ok(D::run(q, self.pool()).await? == 1)
    }

    async fn delete_kv(&self, cat: &str, k: &str) -> Result<bool, StoreError> {
        let mut q = Statement::<D>::new("DELETE FROM kv WHERE cat = ");
        q.push_bind(cat).push(" AND k = ").push_bind(k);
        Ok(D::run(q, self.pool()).await? > 0)
    }
}
