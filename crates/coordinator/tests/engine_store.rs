//! The store contract, one body run on MariaDB, PostgreSQL and SQLite.

mod store_support;

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use coordinator::model::{BranchStatus, GlobalStatus, Protocol};
use dtm_protocol::{BranchId, Gid, Op, TransType};
use store_support::Intercepted;

use coordinator::store::{
    self, BranchChange, CreateOutcome, Fence, GlobalChange, GroupCommit, LeaseToken, ListFilter, NewBranch,
    NewGlobal, NewTrans, Schedule, StatusUpdate, Store, StoreError,
};

fn gid(s: &str) -> Gid {
    s.parse().unwrap()
}

/// The lease token a test's pass on `g` holds.
fn tok(g: &str) -> LeaseToken {
    LeaseToken::new(format!("tok-{g}"))
}

/// A new transaction; `lease`: held by `tok(g)` that long, `None`: unowned and due now.
fn new_global(
    g: &str,
    status: GlobalStatus,
    lease: Option<Duration>,
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
        owner: lease.map(|_| tok(g)),
        lease: lease.unwrap_or_default(),
        rollback_reason: String::new(),
        ext_data: String::new(),
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
    StatusUpdate {
        gid: gid(g),
        expected,
        fence: Fence::Owner(tok(g)),
        change: change.clone(),
        branches: results.to_vec(),
        now,
    }
}

/// `next_cron_time` minus the database's now, in seconds (give or take one:
/// the store's clock is the database's, ours only approximates it).
async fn due_in(store: &dyn Store, g: &str) -> i64 {
    let t = store.find(&gid(g)).await.unwrap().unwrap().global;
    (t.next_cron_time.unwrap() - store::now()).num_seconds()
}

// One scenario of ~240 lines, not several tests: every section works on the
// rows the sections before it left (leases taken, statuses moved), and the
// `list` section at the end checks the order and count of all of them. Split
// up, each part would have to rebuild that state first.
async fn contract(store: Arc<dyn Store>) {
    let now = store::now();

    // create: all rows in one go, insert-if-absent.
    assert_eq!(
        store.create(&new_global("g1", GlobalStatus::Submitted, None, now), &saga_rows()).await.unwrap(),
        CreateOutcome::Created
    );
    match store.create(&new_global("g1", GlobalStatus::Prepared, None, now), &[]).await.unwrap() {
        CreateOutcome::Exists(row) => assert_eq!(row.status, GlobalStatus::Submitted),
        CreateOutcome::Created => panic!("a second create must not insert"),
    }
    let t = store.find(&gid("g1")).await.unwrap().unwrap();
    assert_eq!(t.global.protocol, Protocol::Grpc);
    assert_eq!(t.global.create_time, Some(now), "UTC, whole seconds, read back unchanged");
    assert!(due_in(&*store, "g1").await <= 0, "unowned: due now");
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

    // lease: due rows only, each once, until the lease expires; the lease
    // is on the database's clock.
    store
        .create(&new_global("g2", GlobalStatus::Submitted, Some(Duration::from_secs(60)), now), &[])
        .await
        .unwrap();
    assert!((59..=61).contains(&due_in(&*store, "g2").await));
    store.create(&new_global("g3", GlobalStatus::Succeed, None, now), &[]).await.unwrap();
    let (a, b) = (LeaseToken::new("owner-a"), LeaseToken::new("owner-b"));
    let leased = store.lease_due(&a, Duration::from_secs(30), 10, &[], now).await.unwrap();
    let gids: Vec<&str> = leased.iter().map(|t| t.global.gid.as_str()).collect();
    assert_eq!(gids, ["g1"], "not g2 (held), not g3 (final)");
    assert_eq!(leased[0].branches.len(), 4);
    assert_eq!(leased[0].global.owner, "owner-a");
    assert!((29..=31).contains(&due_in(&*store, "g1").await));
    assert!(
        store.lease_due(&b, Duration::from_secs(30), 10, &[], now).await.unwrap().is_empty(),
        "held by a"
    );
    let skewed = now + TimeDelta::days(1);
    assert!(
        store.lease_due(&b, Duration::from_secs(30), 10, &[], skewed).await.unwrap().is_empty(),
        "a caller whose clock is a day ahead still sees a's lease: leases are on the database's clock"
    );
    assert!(store.acquire(&gid("g1"), &b, Duration::from_secs(30), skewed).await.unwrap().is_none());
    store
        .create(&new_global("g7", GlobalStatus::Submitted, Some(Duration::from_secs(1)), now), &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(
        store.lease_due(&b, Duration::from_secs(30), 10, &[gid("g7")], now).await.unwrap().is_empty(),
        "g7's lease expired, but it is skipped (the caller drives it)"
    );
    let again = store.lease_due(&b, Duration::from_secs(30), 10, &[], now).await.unwrap();
    assert_eq!(again.len(), 1, "an expired lease is up for grabs");
    assert_eq!(again[0].global.owner, "owner-b");

    // update: conditional on the status AND the owner; branch results ride along.
    let change = GlobalChange {
        status: Some(GlobalStatus::Succeed),
        rollback_reason: None,
        schedule: Schedule::Release(Duration::ZERO),
        next_cron_interval: 10,
    };
    let results = [
        BranchChange { branch_id: BranchId::nth(0), op: Op::Action, status: BranchStatus::Succeed },
        BranchChange { branch_id: BranchId::nth(1), op: Op::Action, status: BranchStatus::Succeed },
    ];
    let as_owner = |owner: &LeaseToken, expected| StatusUpdate {
        fence: Fence::Owner(owner.clone()),
        ..with_results("g1", expected, &change, &results, now)
    };
    assert!(!store.update(as_owner(&a, GlobalStatus::Aborting)).await.unwrap(), "wrong status");
    assert!(!store.update(as_owner(&b, GlobalStatus::Submitted)).await.unwrap(), "not the owner");
    let t = store.find(&gid("g1")).await.unwrap().unwrap();
    assert_eq!((t.global.status, t.global.owner.as_str()), (GlobalStatus::Submitted, "owner-a"));
    assert!(
        t.branches.iter().all(|b| b.status == BranchStatus::Prepared),
        "a refused update writes no branch either"
    );
    assert!(store.update(as_owner(&a, GlobalStatus::Submitted)).await.unwrap());
    let t = store.find(&gid("g1")).await.unwrap().unwrap();
    assert_eq!(t.global.status, GlobalStatus::Succeed);
    assert_eq!(t.global.finish_time, Some(now));
    assert_eq!(t.global.owner, "", "a pass's last write lets go of the lease");
    let statuses: Vec<BranchStatus> = t.branches.iter().map(|b| b.status).collect();
    use BranchStatus::{Prepared as P, Succeed as S};
    assert_eq!(statuses, [P, S, P, S]);
    assert!(!store.update(as_owner(&a, GlobalStatus::Submitted)).await.unwrap(), "only once");

    // A hold extends the lease; a take-over applies whoever owns it and takes it.
    store
        .create(&new_global("g4", GlobalStatus::Submitted, Some(Duration::from_secs(5)), now), &saga_rows())
        .await
        .unwrap();
    let abort = GlobalChange {
        status: Some(GlobalStatus::Aborting),
        rollback_reason: Some("no stock".into()),
        schedule: Schedule::Hold(Duration::from_secs(40)),
        next_cron_interval: 20,
    };
    let taker = LeaseToken::new("taker");
    assert!(
        store
            .update(StatusUpdate::global(
                &gid("g4"),
                GlobalStatus::Submitted,
                Fence::TakeOver(taker.clone()),
                abort,
                now
            ))
            .await
            .unwrap()
    );
    let g4 = store.find(&gid("g4")).await.unwrap().unwrap().global;
    assert_eq!(
        (g4.status, g4.rollback_reason.as_str(), g4.next_cron_interval, g4.owner.as_str()),
        (GlobalStatus::Aborting, "no stock", 20, "taker")
    );
    assert!((39..=41).contains(&due_in(&*store, "g4").await));

    // acquire: only what nobody holds.
    assert!(
        store.acquire(&gid("g4"), &a, Duration::from_secs(9), now).await.unwrap().is_none(),
        "live lease"
    );
    assert!(store.acquire(&gid("g1"), &a, Duration::from_secs(9), now).await.unwrap().is_none(), "final");
    assert!(store.acquire(&gid("nope"), &a, Duration::from_secs(9), now).await.unwrap().is_none());
    store.create(&new_global("g8", GlobalStatus::Submitted, None, now), &saga_rows()).await.unwrap();
    let mine = store.acquire(&gid("g8"), &a, Duration::from_secs(9), now).await.unwrap().expect("unowned");
    assert_eq!((mine.global.owner.as_str(), mine.branches.len()), ("owner-a", 4));
    assert!((8..=10).contains(&due_in(&*store, "g8").await));
    assert!(store.acquire(&gid("g8"), &b, Duration::from_secs(9), now).await.unwrap().is_none(), "now held");

    // release: only leases still held by the given token.
    store
        .create(&new_global("g5", GlobalStatus::Submitted, Some(Duration::from_secs(3600)), now), &[])
        .await
        .unwrap();
    let held = [(gid("g5"), tok("g5")), (gid("g3"), tok("g3")), (gid("g8"), b.clone())];
    assert_eq!(store.release(&held, now).await.unwrap(), 1, "final rows and others' leases are left alone");
    let g5 = store.find(&gid("g5")).await.unwrap().unwrap().global;
    assert_eq!(g5.owner, "");
    assert!(due_in(&*store, "g5").await <= 0);
    assert_eq!(store.find(&gid("g8")).await.unwrap().unwrap().global.owner, "owner-a");

    // resetNextCronTime moves a retry time, never a live lease.
    let retry_later = GlobalChange {
        status: None,
        rollback_reason: None,
        schedule: Schedule::Release(Duration::from_secs(3600)),
        next_cron_interval: 10,
    };
    store
        .create(&new_global("g6", GlobalStatus::Submitted, Some(Duration::from_secs(60)), now), &[])
        .await
        .unwrap();
    assert!(
        store
            .update(StatusUpdate::global(
                &gid("g6"),
                GlobalStatus::Submitted,
                Fence::Owner(tok("g6")),
                retry_later,
                now
            ))
            .await
            .unwrap()
    );
    assert!((3599..=3601).contains(&due_in(&*store, "g6").await));
    assert!(store.reset_next_cron_time(&gid("g2"), now).await.unwrap(), "found");
    assert!(due_in(&*store, "g2").await > 50, "g2's live lease is untouched");
    let reset = store.reset_stale_cron_times(Duration::from_secs(600), 100, now).await.unwrap();
    assert_eq!((reset.succeed_count, reset.has_remaining), (1, false), "only g6 waits that long, unowned");
    assert!(due_in(&*store, "g6").await <= 0);
    assert!(!store.reset_next_cron_time(&gid("nope"), now).await.unwrap());
    assert!(store.force_stop(&gid("g4"), now).await.unwrap());
    assert!(!store.force_stop(&gid("g4"), now).await.unwrap(), "already final");
    assert_eq!(store.find(&gid("g4")).await.unwrap().unwrap().global.status, GlobalStatus::Failed);

    // add_branches only on the expected status; duplicates refused.
    store.create(&new_global("t1", GlobalStatus::Prepared, None, now), &[]).await.unwrap();
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
    let page = store.list(&ListFilter { limit: 4, ..Default::default() }).await.unwrap();
    let names: Vec<&str> = page.transactions.iter().map(|t| t.gid.as_str()).collect();
    assert_eq!(names, ["t1", "g6", "g5", "g8"]);
    let position = page.next_position.parse().unwrap();
    let page2 =
        store.list(&ListFilter { limit: 4, position: Some(position), ..Default::default() }).await.unwrap();
    let names: Vec<&str> = page2.transactions.iter().map(|t| t.gid.as_str()).collect();
    assert_eq!(names, ["g4", "g7", "g3", "g2"]);
    let last = store
        .list(&ListFilter { limit: 4, position: page2.next_position.parse().ok(), ..Default::default() })
        .await
        .unwrap();
    let names: Vec<&str> = last.transactions.iter().map(|t| t.gid.as_str()).collect();
    assert_eq!(names, ["g1"]);
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
    assert_eq!(recent.transactions.len(), 9, "all rows were created at `now`");
    let old = store.list(&since(None, Some(now - TimeDelta::seconds(10)))).await.unwrap();
    assert!(old.transactions.is_empty());
    let json = serde_json::to_value(store.find(&gid("g1")).await.unwrap().unwrap()).unwrap();
    assert_eq!(json["global"]["status"], "succeed");
    assert_eq!(json["branches"][0]["bin_data"], "AAEC/w==", "bytes as base64, like Go");
}

fn new_trans(names: &[&str], now: chrono::DateTime<chrono::Utc>) -> Vec<NewTrans> {
    let lease = Some(Duration::from_secs(30));
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
        fence: Fence::Owner(tok(g)),
        change: GlobalChange {
            status: Some(GlobalStatus::Succeed),
            rollback_reason: None,
            schedule: Schedule::Release(Duration::ZERO),
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
    // A pass that lost its lease, batched with one that holds its own: the
    // shared `owner IN (…)` must not let the first through.
    let lost_lease = StatusUpdate { fence: Fence::Owner(tok("b2")), ..finish("b3", now) };
    let refused: [(&str, Vec<NewTrans>, Vec<StatusUpdate>); 4] = [
        ("a gid that exists", new_trans(&["b5", "b1"], now), vec![finish("b3", now)]),
        ("a status that moved", new_trans(&["b5"], now), vec![finish("b3", now), finish("b1", now)]),
        ("one gid twice", Vec::new(), vec![finish("b3", now), finish("b3", now)]),
        ("a lease that was lost", new_trans(&["b5"], now), vec![finish("b4", now), lost_lease]),
    ];
    for (why, creates, updates) in refused {
        assert!(!store.write_batch(&creates, &updates).await.unwrap(), "{why}");
        assert_eq!(status_of(&*store, "b5").await, None, "{why}: the create was not kept");
        let b3 = store.find(&gid("b3")).await.unwrap().unwrap();
        assert_eq!(b3.global.status, GlobalStatus::Submitted, "{why}: the update was not kept");
        assert!(b3.branches.iter().all(|b| b.status == BranchStatus::Prepared), "{why}");
    }

    // Different changes in one batch: each row gets its own.
    let pending = StatusUpdate {
        gid: gid("b4"),
        expected: GlobalStatus::Submitted,
        fence: Fence::Owner(tok("b4")),
        change: GlobalChange {
            status: None,
            rollback_reason: Some("branch down".into()),
            schedule: Schedule::Release(Duration::from_secs(60)),
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
            b4.global.owner.as_str(),
            b4.global.next_cron_interval,
            b4.global.rollback_reason.as_str()
        ),
        (GlobalStatus::Submitted, "", 20, "branch down")
    );
    assert!((59..=61).contains(&due_in(&*store, "b4").await));
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
    let db = harness::sqlite_database();
    batch_contract(store::open_direct(&db.url, 4).await.unwrap()).await;
    group_commit_answers_each_writer(store::open(&db.url, 4).await.unwrap()).await;
}

/// A panic while writing fails the writes it held (`WriteLost`), and only
/// those: the single writer task keeps serving everyone else.
#[tokio::test]
async fn a_panicking_write_does_not_stop_the_group_commit_writer() {
    let db = harness::sqlite_database();
    let inner = store::open_direct(&db.url, 4).await.unwrap();
    let panics_on_boom = Intercepted {
        before_create: Box::new(|global| assert_ne!(global.gid.as_str(), "boom", "a bug in the store")),
        ..Intercepted::new(inner)
    };
    let store = GroupCommit::new(Arc::new(panics_on_boom));
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
    let db = harness::mysql_database().await;
    batch_contract(store::open_direct(&db.url, 4).await.unwrap()).await;
    group_commit_answers_each_writer(store::open(&db.url, 8).await.unwrap()).await;
}

#[tokio::test]
async fn batches_on_postgres() {
    let db = harness::postgres_database().await;
    batch_contract(store::open_direct(&db.url, 4).await.unwrap()).await;
    group_commit_answers_each_writer(store::open(&db.url, 8).await.unwrap()).await;
}

#[tokio::test]
async fn store_contract_on_sqlite() {
    let db = harness::sqlite_database();
    contract(store::open(&db.url, 4).await.unwrap()).await;
    // Opening again applies the schema again without harm.
    store::open(&db.url, 1).await.unwrap();
}

#[tokio::test]
async fn store_contract_on_mariadb() {
    let db = harness::mysql_database().await;
    contract(store::open(&db.url, 4).await.unwrap()).await;
    store::open(&db.url, 1).await.unwrap();
}

#[tokio::test]
async fn store_contract_on_postgres() {
    let db = harness::postgres_database().await;
    contract(store::open(&db.url, 4).await.unwrap()).await;
    store::open(&db.url, 1).await.unwrap();
}

#[tokio::test]
async fn unknown_store_urls_are_refused() {
    assert!(matches!(store::open("redis://localhost", 1).await, Err(store::StoreError::UnsupportedUrl(_))));
}
