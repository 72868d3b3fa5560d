//! The real `coordinator` binary, killed and restarted, and run twice on one
//! database: no acknowledged saga is lost, none is left unfinished, and no
//! business effect happens twice.
//!
//! The branch service counts effects in MariaDB behind dtm's subtransaction
//! barrier (the `barrier` crate): the coordinator must deliver a stable
//! `(gid, branch_id, op)` on every retry for that to hold, and must never
//! compensate a saga that succeeded or run a step after its compensation.

mod edges_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edges_support::{BranchServer, CoordinatorProcess, get, post, saga, steps};
use futures::StreamExt;
use serde_json::{Value, json};

/// The store part of a coordinator YAML for database `db` on `port`.
fn mysql_yaml(port: u16, db: &str) -> String {
    format!(
        "Store:\n  Driver: mysql\n  Host: 127.0.0.1\n  Port: {port}\n  User: root\n  Db: {db}\n\
         RetryInterval: 1\nMaxRetryInterval: 2\nTimeoutToFail: 3\nRequestTimeout: 3\nTransCronInterval: 1\n"
    )
}

/// Statuses of every transaction, from `/api/dtmsvr/all`.
async fn all_statuses(c: &reqwest::Client, base: &str) -> BTreeMap<String, String> {
    let (status, page) = get(c, &format!("{base}/api/dtmsvr/all?limit=1000")).await;
    assert_eq!(status, 200, "{page}");
    page["transactions"]
        .as_array()
        .expect("transactions")
        .iter()
        .map(|t| (t["gid"].as_str().unwrap().to_string(), t["status"].as_str().unwrap().to_string()))
        .collect()
}

/// Waits until every gid in `gids` is final; returns their statuses.
async fn wait_all_final(
    c: &reqwest::Client,
    base: &str,
    gids: &[String],
    timeout: Duration,
) -> BTreeMap<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let statuses = all_statuses(c, base).await;
        let unfinished: Vec<&String> = gids
            .iter()
            .filter(|g| !matches!(statuses.get(*g).map(String::as_str), Some("succeed" | "failed")))
            .collect();
        if unfinished.is_empty() {
            return statuses;
        }
        assert!(
            Instant::now() < deadline,
            "{} sagas not final after {timeout:?}: {unfinished:?}",
            unfinished.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks every saga's effects: succeeded sagas did both actions once and no
/// compensation; failed ones did step 1 and its compensation once, and
/// nothing of the failing step 2 (its action rolled back, its compensation
/// was a null compensation).
async fn assert_exactly_once(branches: &BranchServer, statuses: &BTreeMap<String, String>, gids: &[String]) {
    let effects = branches.effects().await;
    if let Some((key, n)) = effects.iter().find(|(_, n)| **n != 1) {
        panic!("effect {key:?} happened {n} times");
    }
    for gid in gids {
        let has =
            |branch: &str, op: &str| effects.contains_key(&(gid.clone(), branch.to_string(), op.to_string()));
        match statuses[gid].as_str() {
            "succeed" => {
                assert!(has("01", "action") && has("02", "action"), "{gid}: actions missing");
                assert!(!has("01", "compensate") && !has("02", "compensate"), "{gid}: compensated a success");
            }
            "failed" => {
                assert!(has("01", "action") && has("01", "compensate"), "{gid}: step 1 not undone");
                assert!(
                    !has("02", "action") && !has("02", "compensate"),
                    "{gid}: failed step left an effect"
                );
            }
            other => panic!("{gid} is {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sagas_survive_sigkill_and_finish_exactly_once() {
    harness::init_tracing();
    let _slot = harness::system_slot();
    let store_db = harness::mysql_database().await;
    let busi_db = harness::mysql_database_on(&store_db.server_url).await;
    let pool = sqlx::MySqlPool::connect(&busi_db.url).await.unwrap();
    let branches = BranchServer::with_effects(pool).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = mysql_yaml(edges_support::port_of(&store_db.server_url), &store_db.name);
    let c = reqwest::Client::new();

    let mut coordinator = CoordinatorProcess::start(dir.path(), "crash", &yaml);
    let (http_port, grpc_port) = (coordinator.http_port, coordinator.grpc_port);
    let submit = |base: String, gid: String, fail: bool| {
        let c = c.clone();
        let body = saga(
            &gid,
            &steps(&branches, 2),
            &[json!({"delay_ms": 200}), json!({"delay_ms": 200, "fail": fail})],
            false,
        );
        async move {
            let (status, reply) = post(&c, &format!("{base}/api/dtmsvr/submit"), &body).await;
            assert_eq!(status, 200, "{gid}: {reply}");
        }
    };

    // Crash 1: right after the last Submit is acknowledged.
    let mut gids = Vec::new();
    for i in 0..10 {
        let gid = format!("crash-a-{i}");
        submit(coordinator.http(), gid.clone(), i % 4 == 3).await;
        gids.push(gid);
    }
    coordinator.kill();
    let mut coordinator = CoordinatorProcess::start_on(dir.path(), "crash", &yaml, http_port, grpc_port);

    // Crash 2: in the middle of running sagas.
    for i in 0..10 {
        let gid = format!("crash-b-{i}");
        submit(coordinator.http(), gid.clone(), i % 4 == 3).await;
        gids.push(gid);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    coordinator.kill();
    let coordinator = CoordinatorProcess::start_on(dir.path(), "crash", &yaml, http_port, grpc_port);

    let started = Instant::now();
    let statuses = wait_all_final(&c, &coordinator.http(), &gids, Duration::from_secs(60)).await;
    for (i, gid) in gids.iter().enumerate() {
        let expected = if i % 10 % 4 == 3 { "failed" } else { "succeed" };
        assert_eq!(statuses[gid], expected, "{gid}\n{}", coordinator.log_tail());
    }
    assert_exactly_once(&branches, &statuses, &gids).await;
    let calls = branches.calls().len();
    let effects: i64 = branches.effects().await.values().sum();
    println!(
        "crash test: {} sagas final {:?} after the last restart; {calls} branch calls, {effects} effects \
         ({} duplicate deliveries absorbed by the barrier)",
        gids.len(),
        started.elapsed(),
        calls as i64 - effects
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_on_one_database_finish_200_concurrent_sagas_exactly_once() {
    harness::init_tracing();
    let _slot = harness::system_slot();
    let store_db = harness::mysql_database().await;
    let busi_db = harness::mysql_database_on(&store_db.server_url).await;
    let pool = sqlx::MySqlPool::connect(&busi_db.url).await.unwrap();
    let branches = BranchServer::with_effects(pool).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = mysql_yaml(edges_support::port_of(&store_db.server_url), &store_db.name);
    // The first one creates the tables; start the second after it.
    let first = CoordinatorProcess::start(dir.path(), "first", &yaml);
    let second = CoordinatorProcess::start(dir.path(), "second", &yaml);
    let bases = [first.http(), second.http()];
    let c = reqwest::Client::new();

    let gids: Vec<String> = (0..200).map(|i| format!("pair-{i}")).collect();
    let started = Instant::now();
    futures::stream::iter(gids.iter().enumerate())
        .map(|(i, gid)| {
            let (c, base) = (c.clone(), bases[i % 2].clone());
            let body: Value = saga(gid, &steps(&branches, 2), &[json!({"i": i}), json!({"i": i})], false);
            async move {
                let (status, reply) = post(&c, &format!("{base}/api/dtmsvr/submit"), &body).await;
                assert_eq!(status, 200, "{reply}");
            }
        })
        .buffer_unordered(200)
        .collect::<Vec<()>>()
        .await;
    let submitted = started.elapsed();
    let statuses = wait_all_final(&c, &bases[0], &gids, Duration::from_secs(90)).await;
    let finished = started.elapsed();
    assert!(gids.iter().all(|g| statuses[g] == "succeed"), "{statuses:?}");
    assert_exactly_once(&branches, &statuses, &gids).await;
    let calls = branches.calls().len();
    println!(
        "two coordinators: 200 sagas submitted in {submitted:?}, all final after {finished:?} \
         ({:.0} sagas/s); {calls} branch calls for 400 effects",
        200.0 / finished.as_secs_f64()
    );
}
