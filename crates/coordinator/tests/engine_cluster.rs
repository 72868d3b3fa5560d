//! Several coordinators on one MariaDB database: shared recovery, crashes,
//! graceful hand-over. Branch effects go through dtm's barrier into an
//! `effect` table, so a doubled call that slipped through would show up as
//! a duplicate row.

mod engine_support;

use std::time::Duration;

use coordinator::{EngineSettings, GlobalStatus};
use engine_support::{Branches, Reply, engine_with, fast_settings, req, saga, status, wait_final};

/// `(gid, branch_id, op) → count` of business effects.
async fn effect_counts(pool: &sqlx::MySqlPool) -> Vec<(String, String, String, i64)> {
    sqlx::query_as("SELECT gid, branch_id, op, COUNT(*) FROM effect GROUP BY gid, branch_id, op")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn two_engines_finish_200_sagas_with_faults_and_no_duplicate_effects() {
    harness::init_tracing();
    let db = harness::mysql_database().await;
    let business = harness::mysql_database().await;
    let pool = sqlx::MySqlPool::connect(&business.url).await.unwrap();
    let b = Branches::start().await;
    b.use_barrier_db(pool.clone()).await;

    let settings = EngineSettings { lease_duration: Duration::from_secs(2), ..fast_settings() };
    let a = engine_with(&db.url, settings.clone()).await;
    let c = engine_with(&db.url, settings).await;
    let pollers = [a.spawn_poller(), c.spawn_poller()];

    // Faults: transient errors, ONGOING, calls slower than the lease (so the
    // other engine picks the saga up while the first is still on it), and
    // business failures that roll sagas back.
    b.script("/TransIn", [Reply::Error; 40]);
    b.script("/TransOut", [Reply::Ongoing; 20]);
    b.script("/TransOut", [Reply::Slow(Duration::from_secs(3)); 5]);
    b.script("/Risky", [Reply::Failure; 20]);
    b.script("/TransOutRevert", [Reply::Error; 10]);

    let mut submits = Vec::new();
    for i in 0..200 {
        let second = if i % 5 == 0 { b.url("Risky") } else { b.url("TransIn") };
        let input = saga(
            &format!("many-{i}"),
            &[(b.url("TransOut"), b.url("TransOutRevert")), (second, b.url("TransInRevert"))],
        );
        let engine = if i % 2 == 0 { a.clone() } else { c.clone() };
        submits.push(tokio::spawn(async move { engine.submit(req(input)).await }));
    }
    for s in submits {
        s.await.unwrap().expect("submit accepted");
    }

    let mut outcomes = [0usize; 2];
    for i in 0..200 {
        match wait_final(&a, &format!("many-{i}"), Duration::from_secs(90)).await {
            GlobalStatus::Succeed => outcomes[0] += 1,
            _ => outcomes[1] += 1,
        }
    }
    // 20 FAILURE answers are queued for /Risky; a saga picked up twice
    // (slow call, expired lease) may consume two of them.
    assert!((10..=20).contains(&outcomes[1]), "{} sagas rolled back", outcomes[1]);

    let counts = effect_counts(&pool).await;
    let duplicated: Vec<_> = counts.iter().filter(|(_, _, _, n)| *n > 1).collect();
    assert!(duplicated.is_empty(), "duplicated effects: {duplicated:?}");
    // Every succeeded saga: both actions took effect, no compensation did.
    for i in 0..200 {
        let gid = format!("many-{i}");
        let has =
            |branch: &str, op: &str| counts.iter().any(|(g, b, o, _)| *g == gid && b == branch && o == op);
        let s = status(&a, &gid).await;
        if s == GlobalStatus::Succeed {
            assert!(has("01", "action") && has("02", "action"), "{gid}: both actions took effect");
            assert!(!has("01", "compensate") && !has("02", "compensate"), "{gid}: nothing undone");
        } else {
            // Every action that took effect was undone; a failed action left
            // nothing, so its compensation was a null one.
            for branch in ["01", "02"] {
                assert_eq!(has(branch, "action"), has(branch, "compensate"), "{gid} branch {branch}");
            }
            assert!(has("01", "action"), "{gid}: step 1 ran before step 2 failed");
        }
    }
    let calls = b.calls().len();
    tracing::info!(calls, "branch calls for 200 sagas");
    assert!(calls > 400, "the faults caused retries");

    a.shutdown().await;
    c.shutdown().await;
    for p in pollers {
        p.await.unwrap();
    }
}

#[tokio::test]
async fn a_crashed_engine_leaves_its_saga_to_another_one() {
    let db = harness::mysql_database().await;
    let business = harness::mysql_database().await;
    let pool = sqlx::MySqlPool::connect(&business.url).await.unwrap();
    let b = Branches::start().await;
    b.use_barrier_db(pool.clone()).await;
    b.script("/TransIn", [Reply::Slow(Duration::from_secs(30))]);

    let doomed = engine_with(&db.url, fast_settings()).await;
    doomed.submit(req(saga("crash-1", &two(&b)))).await.unwrap();
    wait_for_calls(&b, "crash-1", 2).await;
    // Mid-saga: TransOut done, TransIn in flight. Kill without releasing anything.
    doomed.abandon();
    assert_eq!(status(&doomed, "crash-1").await, GlobalStatus::Submitted);

    let survivor = engine_with(&db.url, fast_settings()).await;
    let poller = survivor.spawn_poller();
    assert_eq!(wait_final(&survivor, "crash-1", Duration::from_secs(20)).await, GlobalStatus::Succeed);
    let calls = b.calls_of("crash-1");
    assert_eq!(
        calls.iter().filter(|(p, ..)| p == "/TransOut").count(),
        2,
        "the lost result is re-asked: {calls:?}"
    );
    let counts = effect_counts(&pool).await;
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert!(counts.iter().all(|(.., n)| *n == 1), "each action took effect once: {counts:?}");
    survivor.shutdown().await;
    poller.await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_hands_unfinished_passes_over_at_once() {
    let db = harness::mysql_database().await;
    let b = Branches::start().await;
    b.script("/TransIn", [Reply::Slow(Duration::from_secs(30))]);
    let settings = EngineSettings {
        lease_duration: Duration::from_secs(600),
        shutdown_timeout: Duration::from_millis(300),
        ..fast_settings()
    };
    let first = engine_with(&db.url, settings.clone()).await;
    first.submit(req(saga("handover-1", &two(&b)))).await.unwrap();
    wait_for_calls(&b, "handover-1", 2).await;
    assert_eq!(first.passes_in_flight(), 1);
    first.shutdown().await;
    assert_eq!(first.passes_in_flight(), 0);

    // The lease was 10 minutes; released, a second engine takes over at once.
    let second = engine_with(&db.url, settings).await;
    let poller = second.spawn_poller();
    assert_eq!(wait_final(&second, "handover-1", Duration::from_secs(20)).await, GlobalStatus::Succeed);
    second.shutdown().await;
    poller.await.unwrap();
}

fn two(b: &Branches) -> Vec<(String, String)> {
    vec![(b.url("TransOut"), b.url("TransOutRevert")), (b.url("TransIn"), b.url("TransInRevert"))]
}

async fn wait_for_calls(b: &Branches, gid: &str, n: usize) {
    b.wait_calls(gid, n, Duration::from_secs(10)).await;
}
