//! The store contract, one body run on MariaDB, PostgreSQL and SQLite.

use std::sync::Arc;
use std::time::Duration;

use barrier::{BranchId, Gid, Op, TransType};
use chrono::{DateTime, TimeDelta, Utc};
use coordinator::model::{BranchStatus, GlobalStatus, Protocol};
use coordinator::store::{
    self, BranchChange, CreateOutcome, GlobalChange, GroupCommit, ListFilter, NewBranch, NewGlobal, NewTrans,
    Page, ResetCount, StatusUpdate, Store, StoreError, StoredTrans,
};

fn gid(s: &str) -> Gid {
    s.parse().unwrap()
}

fn new_global(
    g: &str,
    status: GlobalStatus,
    next: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> NewGlobal {
    NewGlobal {
        gid: gid(g),
        trans_type: TransType::Saga,
        status,
        protocol: Protocol::Grpc,
        query_prepared: String::new(),
        options: r#"{"retry_interval":1}"#.into(),
        custom_data: String::new(),
        next_cron_interval: 10,
        next_cron_time: next,
        owner: String::new(),
        rollback_reason: String::new(),
        now,
    }
}

fn saga_rows() -> Vec<NewBranch> {
    let mut rows = Vec::new();
    for k in 0..2 {
        for op in [Op::Compensate, Op::Action] {
            rows.push(NewBranch {
                url: format!("localhost:9001/pb.order/{op}{k}"),
                bin_data: vec![0, 1, 2, 255],
                branch_id: BranchId::nth(k),
                op,
            });
        }
    }
    rows
}

fn with_results(
    g: &str,
    expected: GlobalStatus,
    change: &GlobalChange,
    results: &[BranchChange],
    now: chrono::DateTime<chrono::Utc>,
) -> StatusUpdate {
    StatusUpdate { gid: gid(g), expected, change: change.clone(), branches: results.to_vec(), now }
}

async fn contract(store: Arc<dyn Store>) {
    let now = store::now();
    let past = now - TimeDelta::seconds(5);

    // create: all rows in one go, insert-if-absent.
    assert_eq!(
        store.create(&new_global("g1", GlobalStatus::Submitted, past, now), &saga_rows()).await.unwrap(),
        CreateOutcome::Created
    );
    match store.create(&new_global("g1", GlobalStatus::Prepared, now, now), &[]).await.unwrap() {
        CreateOutcome::Exists(row) => assert_eq!(row.status, GlobalStatus::Submitted),
        CreateOutcome::Created => panic!("a second create must not insert"),
    }
    let t = store.find(&gid("g1")).await.unwrap().unwrap();
    assert_eq!(t.global.protocol, Protocol::Grpc);
    assert_eq!(t.global.create_time, Some(now), "UTC, whole seconds, read back unchanged");
    assert_eq!(t.global.next_cron_time, Some(past));
    let order: Vec<(String, Op)> = t.branches.iter().map(|b| (b.branch_id.to_string(), b.op)).collect();
    assert_eq!(
        order,
        [
            ("01".into(), Op::Compensate),
            ("01".into(), Op::Action),
            ("02".into(), Op::Compensate),
            ("02".into(), Op::Action)
        ]
    );
    assert_eq!(t.branches[0].bin_data, [0, 1, 2, 255], "payload bytes verbatim");
    assert!(store.find(&gid("nope")).await.unwrap().is_none());

    // lease: due rows only, each once, until the lease expires.
    store
        .create(&new_global("g2", GlobalStatus::Submitted, now + TimeDelta::seconds(60), now), &[])
        .await
        .unwrap();
    store.create(&new_global("g3", GlobalStatus::Succeed, past, now), &[]).await.unwrap();
    let leased = store.lease_due("owner-a", now, Duration::from_secs(30), 10).await.unwrap();
    let gids: Vec<&str> = leased.iter().map(|t| t.global.gid.as_str()).collect();
    assert_eq!(gids, ["g1"], "not g2 (not due), not g3 (final)");
    assert_eq!(leased[0].branches.len(), 4);
    assert_eq!(leased[0].global.owner, "owner-a");
    assert_eq!(leased[0].global.next_cron_time, Some(now + TimeDelta::seconds(30)));
    assert!(
        store.lease_due("owner-b", now, Duration::from_secs(30), 10).await.unwrap().is_empty(),
        "held by a"
    );
    let later = now + TimeDelta::seconds(31);
    let again = store.lease_due("owner-c", later, Duration::from_secs(30), 10).await.unwrap();
    assert_eq!(again.len(), 1, "an expired lease is up for grabs");

    // update: conditional on the status; branch results ride along.
    let change = GlobalChange {
        status: Some(GlobalStatus::Succeed),
        rollback_reason: None,
        next_cron_time: now,
        next_cron_interval: 10,
    };
    let results = [
        BranchChange { branch_id: BranchId::nth(0), op: Op::Action, status: BranchStatus::Succeed },
        BranchChange { branch_id: BranchId::nth(1), op: Op::Action, status: BranchStatus::Succeed },
    ];
    assert!(
        !store.update(with_results("g1", GlobalStatus::Aborting, &change, &results, now)).await.unwrap(),
        "wrong status"
    );
    let t = store.find(&gid("g1")).await.unwrap().unwrap();
    assert_eq!(t.global.status, GlobalStatus::Submitted);
    assert!(
        t.branches.iter().all(|b| b.status == BranchStatus::Prepared),
        "a lost update writes no branch either"
    );
    assert!(store.update(with_results("g1", GlobalStatus::Submitted, &change, &results, now)).await.unwrap());
    let t = store.find(&gid("g1")).await.unwrap().unwrap();
    assert_eq!(t.global.status, GlobalStatus::Succeed);
    assert_eq!(t.global.finish_time, Some(now));
    let statuses: Vec<BranchStatus> = t.branches.iter().map(|b| b.status).collect();
    use BranchStatus::{Prepared as P, Succeed as S};
    assert_eq!(statuses, [P, S, P, S]);
    assert!(
        !store.update(StatusUpdate::global(&gid("g1"), GlobalStatus::Submitted, change, now)).await.unwrap(),
        "only once"
    );

    // rollback reason and failed.
    store.create(&new_global("g4", GlobalStatus::Submitted, now, now), &saga_rows()).await.unwrap();
    let abort = GlobalChange {
        status: Some(GlobalStatus::Aborting),
        rollback_reason: Some("no stock".into()),
        next_cron_time: now,
        next_cron_interval: 20,
    };
    assert!(
        store.update(StatusUpdate::global(&gid("g4"), GlobalStatus::Submitted, abort, now)).await.unwrap()
    );
    let g4 = store.find(&gid("g4")).await.unwrap().unwrap().global;
    assert_eq!(
        (g4.status, g4.rollback_reason.as_str(), g4.next_cron_interval),
        (GlobalStatus::Aborting, "no stock", 20)
    );

    // release, reset, force stop.
    store
        .create(&new_global("g5", GlobalStatus::Submitted, now + TimeDelta::seconds(3600), now), &[])
        .await
        .unwrap();
    assert_eq!(store.release(&[gid("g5"), gid("g3")], now).await.unwrap(), 1, "final rows are left alone");
    assert_eq!(store.find(&gid("g5")).await.unwrap().unwrap().global.next_cron_time, Some(now));
    store
        .create(&new_global("g6", GlobalStatus::Submitted, now + TimeDelta::seconds(3600), now), &[])
        .await
        .unwrap();
    let reset = store.reset_stale_cron_times(now, now + TimeDelta::seconds(600), 100).await.unwrap();
    assert_eq!((reset.succeed_count, reset.has_remaining), (1, false), "only g6 is scheduled that far ahead");
    assert!(store.reset_next_cron_time(&gid("g2"), now).await.unwrap());
    assert!(!store.reset_next_cron_time(&gid("nope"), now).await.unwrap());
    assert!(store.force_stop(&gid("g4"), now).await.unwrap());
    assert!(!store.force_stop(&gid("g4"), now).await.unwrap(), "already final");
    assert_eq!(store.find(&gid("g4")).await.unwrap().unwrap().global.status, GlobalStatus::Failed);

    // add_branches only on the expected status; duplicates refused.
    store.create(&new_global("t1", GlobalStatus::Prepared, now, now), &[]).await.unwrap();
    let tcc = vec![NewBranch {
        url: "http://h/cancel".into(),
        bin_data: vec![],
        branch_id: BranchId::nth(0),
        op: Op::Cancel,
    }];
    assert!(store.add_branches(&gid("t1"), GlobalStatus::Prepared, &tcc, now).await.unwrap());
    assert!(matches!(
        store.add_branches(&gid("t1"), GlobalStatus::Prepared, &tcc, now).await,
        Err(store::StoreError::Duplicate(_))
    ));
    assert!(!store.add_branches(&gid("g1"), GlobalStatus::Prepared, &tcc, now).await.unwrap());

    // list: newest first, keyset pagination, filters.
    let page = store.list(&ListFilter { limit: 3, ..Default::default() }).await.unwrap();
    let names: Vec<&str> = page.transactions.iter().map(|t| t.gid.as_str()).collect();
    assert_eq!(names, ["t1", "g6", "g5"]);
    let position = page.next_position.parse().unwrap();
    let page2 =
        store.list(&ListFilter { limit: 3, position: Some(position), ..Default::default() }).await.unwrap();
    let names: Vec<&str> = page2.transactions.iter().map(|t| t.gid.as_str()).collect();
    assert_eq!(names, ["g4", "g3", "g2"]);
    let last = store
        .list(&ListFilter { limit: 3, position: page2.next_position.parse().ok(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(last.transactions.len(), 1);
    assert_eq!(last.next_position, "", "a short page is the last one");
    let failed = store
        .list(&ListFilter { limit: 100, status: Some(GlobalStatus::Failed), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(failed.transactions.len(), 1);
    let one =
        store.list(&ListFilter { limit: 100, gid: Some(gid("g2")), ..Default::default() }).await.unwrap();
    assert_eq!(one.transactions.len(), 1);
    let since = |start, end| ListFilter {
        limit: 100,
        create_time_start: start,
        create_time_end: end,
        ..Default::default()
    };
    let recent = store.list(&since(Some(now - TimeDelta::milliseconds(1500)), None)).await.unwrap();
    assert_eq!(recent.transactions.len(), 7, "all rows were created at `now`");
    let old = store.list(&since(None, Some(now - TimeDelta::seconds(10)))).await.unwrap();
    assert!(old.transactions.is_empty());
    let json = serde_json::to_value(store.find(&gid("g1")).await.unwrap().unwrap()).unwrap();
    assert_eq!(json["global"]["status"], "succeed");
    assert_eq!(json["branches"][0]["bin_data"], "AAEC/w==", "bytes as base64, like Go");
}

fn new_trans(names: &[&str], now: chrono::DateTime<chrono::Utc>) -> Vec<NewTrans> {
    let lease = now + TimeDelta::seconds(30);
    names
        .iter()
        .map(|n| NewTrans {
            global: new_global(n, GlobalStatus::Submitted, lease, now),
            branches: saga_rows(),
        })
        .collect()
}

/// A saga's last write: `succeed`, both actions recorded.
fn finish(g: &str, now: chrono::DateTime<chrono::Utc>) -> StatusUpdate {
    StatusUpdate {
        gid: gid(g),
        expected: GlobalStatus::Submitted,
        change: GlobalChange {
            status: Some(GlobalStatus::Succeed),
            rollback_reason: None,
            next_cron_time: now + TimeDelta::seconds(30),
            next_cron_interval: 10,
        },
        branches: (0..2)
            .map(|k| BranchChange {
                branch_id: BranchId::nth(k),
                op: Op::Action,
                status: BranchStatus::Succeed,
            })
            .collect(),
        now,
    }
}

async fn status_of(store: &dyn Store, g: &str) -> Option<GlobalStatus> {
    store.find(&gid(g)).await.unwrap().map(|t| t.global.status)
}

/// `write_batch`: several creates and updates in one transaction, all or nothing.
async fn batch_contract(store: Arc<dyn Store>) {
    let now = store::now();
    assert!(store.write_batch(&new_trans(&["b1", "b2", "b3"], now), &[]).await.unwrap());
    for g in ["b1", "b2", "b3"] {
        let t = store.find(&gid(g)).await.unwrap().unwrap();
        assert_eq!((t.global.status, t.branches.len()), (GlobalStatus::Submitted, 4), "{g}");
    }

    // Creates and updates together; updates grouped by change.
    assert!(
        store.write_batch(&new_trans(&["b4"], now), &[finish("b1", now), finish("b2", now)]).await.unwrap()
    );
    for g in ["b1", "b2"] {
        let t = store.find(&gid(g)).await.unwrap().unwrap();
        assert_eq!(t.global.status, GlobalStatus::Succeed);
        assert_eq!(t.global.finish_time, Some(now));
        let statuses: Vec<(Op, BranchStatus)> = t.branches.iter().map(|b| (b.op, b.status)).collect();
        assert_eq!(
            statuses,
            [
                (Op::Compensate, BranchStatus::Prepared),
                (Op::Action, BranchStatus::Succeed),
                (Op::Compensate, BranchStatus::Prepared),
                (Op::Action, BranchStatus::Succeed)
            ],
            "{g}: exactly the named rows"
        );
    }
    assert_eq!(status_of(&*store, "b4").await, Some(GlobalStatus::Submitted));

    // Nothing of a batch is written when part of it cannot apply.
    let refused: [(&str, Vec<NewTrans>, Vec<StatusUpdate>); 3] = [
        ("a gid that exists", new_trans(&["b5", "b1"], now), vec![finish("b3", now)]),
        ("a status that moved", new_trans(&["b5"], now), vec![finish("b3", now), finish("b1", now)]),
        ("one gid twice", Vec::new(), vec![finish("b3", now), finish("b3", now)]),
    ];
    for (why, creates, updates) in refused {
        assert!(!store.write_batch(&creates, &updates).await.unwrap(), "{why}");
        assert_eq!(status_of(&*store, "b5").await, None, "{why}: the create was not kept");
        let b3 = store.find(&gid("b3")).await.unwrap().unwrap();
        assert_eq!(b3.global.status, GlobalStatus::Submitted, "{why}: the update was not kept");
        assert!(b3.branches.iter().all(|b| b.status == BranchStatus::Prepared), "{why}");
    }

    // Different changes in one batch: each row gets its own.
    let later = now + TimeDelta::seconds(60);
    let pending = StatusUpdate {
        gid: gid("b4"),
        expected: GlobalStatus::Submitted,
        change: GlobalChange {
            status: None,
            rollback_reason: Some("branch down".into()),
            next_cron_time: later,
            next_cron_interval: 20,
        },
        branches: vec![BranchChange {
            branch_id: BranchId::nth(0),
            op: Op::Action,
            status: BranchStatus::Succeed,
        }],
        now,
    };
    assert!(store.write_batch(&[], &[finish("b3", now), pending]).await.unwrap());
    assert_eq!(status_of(&*store, "b3").await, Some(GlobalStatus::Succeed));
    let b4 = store.find(&gid("b4")).await.unwrap().unwrap();
    assert_eq!(
        (
            b4.global.status,
            b4.global.next_cron_time,
            b4.global.next_cron_interval,
            b4.global.rollback_reason.as_str()
        ),
        (GlobalStatus::Submitted, Some(later), 20, "branch down")
    );
    assert_eq!(b4.branches.iter().filter(|b| b.status == BranchStatus::Succeed).count(), 1);
}

/// Through [`store::GroupCommit`] (what `store::open` returns), concurrent
/// writers each get their own answer, whether their write shared a batch or not.
async fn group_commit_answers_each_writer(store: Arc<dyn Store>) {
    const N: usize = 48;
    let now = store::now();
    let names: Vec<String> = (0..N).map(|i| format!("gc-{i}")).collect();
    let existing = new_trans(&["gc-existing"], now).remove(0);
    assert_eq!(store.create(&existing.global, &existing.branches).await.unwrap(), CreateOutcome::Created);

    let creates = futures::future::join_all(names.iter().map(|n| {
        let store = Arc::clone(&store);
        let t = new_trans(&[n], now).remove(0);
        async move { store.create(&t.global, &t.branches).await.unwrap() }
    }));
    let again = store.create(&existing.global, &existing.branches);
    let (created, again) = futures::join!(creates, again);
    assert!(created.iter().all(|c| *c == CreateOutcome::Created), "{created:?}");
    assert!(matches!(again.unwrap(), CreateOutcome::Exists(_)), "a gid that exists is answered as such");

    let updates = futures::future::join_all(names.iter().map(|n| {
        let store = Arc::clone(&store);
        let u = finish(n, now);
        async move { store.update(u).await.unwrap() }
    }));
    let mut stale = finish("gc-existing", now);
    stale.expected = GlobalStatus::Prepared;
    let lost = store.update(stale);
    let (saved, lost) = futures::join!(updates, lost);
    assert!(saved.iter().all(|s| *s), "{saved:?}");
    assert!(!lost.unwrap(), "an update whose status moved is answered false");
    for n in &names {
        assert_eq!(status_of(&*store, n).await, Some(GlobalStatus::Succeed), "{n}");
    }
    assert_eq!(status_of(&*store, "gc-existing").await, Some(GlobalStatus::Submitted));
}

#[tokio::test]
async fn batches_on_sqlite() {
    let db = test_support::sqlite_database();
    batch_contract(store::open_direct(&db.url, 4).await.unwrap()).await;
    group_commit_answers_each_writer(store::open(&db.url, 4).await.unwrap()).await;
}

/// A real store whose `create` panics for one gid, to prove the panic fence
/// of the group-commit writer.
#[derive(Debug)]
struct PanicsOn(&'static str, Arc<dyn Store>);

#[async_trait::async_trait]
impl Store for PanicsOn {
    async fn create(&self, global: &NewGlobal, branches: &[NewBranch]) -> Result<CreateOutcome, StoreError> {
        assert_ne!(global.gid.as_str(), self.0, "a bug in the store");
        self.1.create(global, branches).await
    }
    async fn update(&self, update: StatusUpdate) -> Result<bool, StoreError> {
        self.1.update(update).await
    }
    async fn write_batch(&self, creates: &[NewTrans], updates: &[StatusUpdate]) -> Result<bool, StoreError> {
        self.1.write_batch(creates, updates).await
    }
    async fn find(&self, gid: &Gid) -> Result<Option<StoredTrans>, StoreError> {
        self.1.find(gid).await
    }
    async fn list(&self, filter: &ListFilter) -> Result<Page, StoreError> {
        self.1.list(filter).await
    }
    async fn add_branches(
        &self,
        gid: &Gid,
        expected: GlobalStatus,
        branches: &[NewBranch],
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.1.add_branches(gid, expected, branches, now).await
    }
    async fn lease_due(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<StoredTrans>, StoreError> {
        self.1.lease_due(owner, now, lease_for, limit).await
    }
    async fn release(&self, gids: &[Gid], now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.1.release(gids, now).await
    }
    async fn force_stop(&self, gid: &Gid, now: DateTime<Utc>) -> Result<bool, StoreError> {
        self.1.force_stop(gid, now).await
    }
    async fn reset_next_cron_time(&self, gid: &Gid, now: DateTime<Utc>) -> Result<bool, StoreError> {
        self.1.reset_next_cron_time(gid, now).await
    }
    async fn reset_stale_cron_times(
        &self,
        now: DateTime<Utc>,
        later_than: DateTime<Utc>,
        limit: u32,
    ) -> Result<ResetCount, StoreError> {
        self.1.reset_stale_cron_times(now, later_than, limit).await
    }
}

/// A panic while writing fails the writes it held (`WriteLost`), and only
/// those: the single writer task keeps serving everyone else.
#[tokio::test]
async fn a_panicking_write_does_not_stop_the_group_commit_writer() {
    let db = test_support::sqlite_database();
    let inner = store::open_direct(&db.url, 4).await.unwrap();
    let store = GroupCommit::new(Arc::new(PanicsOn("boom", inner)));
    let now = store::now();
    let [boom, after] = <[NewTrans; 2]>::try_from(new_trans(&["boom", "after"], now)).unwrap();

    let lost = store.create(&boom.global, &boom.branches).await;
    assert!(matches!(lost, Err(StoreError::WriteLost)), "{lost:?}");
    assert_eq!(store.create(&after.global, &after.branches).await.unwrap(), CreateOutcome::Created);
    assert!(store.update(finish("after", now)).await.unwrap());
    assert_eq!(status_of(&store, "after").await, Some(GlobalStatus::Succeed));
    assert_eq!(status_of(&store, "boom").await, None, "the panicked write left nothing");
}

#[tokio::test]
async fn batches_on_mariadb() {
    let db = test_support::mysql_database().await;
    batch_contract(store::open_direct(&db.url, 4).await.unwrap()).await;
    group_commit_answers_each_writer(store::open(&db.url, 8).await.unwrap()).await;
}

#[tokio::test]
async fn batches_on_postgres() {
    let db = test_support::postgres_database().await;
    batch_contract(store::open_direct(&db.url, 4).await.unwrap()).await;
    group_commit_answers_each_writer(store::open(&db.url, 8).await.unwrap()).await;
}

#[tokio::test]
async fn store_contract_on_sqlite() {
    let db = test_support::sqlite_database();
    contract(store::open(&db.url, 4).await.unwrap()).await;
    // Opening again applies the schema again without harm.
    store::open(&db.url, 1).await.unwrap();
}

#[tokio::test]
async fn store_contract_on_mariadb() {
    let db = test_support::mysql_database().await;
    contract(store::open(&db.url, 4).await.unwrap()).await;
    store::open(&db.url, 1).await.unwrap();
}

#[tokio::test]
async fn store_contract_on_postgres() {
    let db = test_support::postgres_database().await;
    contract(store::open(&db.url, 4).await.unwrap()).await;
    store::open(&db.url, 1).await.unwrap();
}

#[tokio::test]
async fn unknown_store_urls_are_refused() {
    assert!(matches!(store::open("redis://localhost", 1).await, Err(store::StoreError::UnsupportedUrl(_))));
}
