//! Shared setup of the engine tests: the harness's recording branch
//! server (HTTP and gRPC on port 0, every call recorded with its dtm
//! parameters, answers from a per-path script of faults), here with an
//! optional barrier-guarded effect, plus helpers to build engines and sagas.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use barrier::{BarrierTable, BranchBarrier, BranchError};
use coordinator::model::TransRequestInput;
use coordinator::{Engine, EngineHooks, EngineSettings, GlobalStatus, TransRequest};
// Not every test binary uses every name.
use harness::branches::BranchServers;
#[allow(unused_imports)]
pub use harness::branches::{Call, Reply, Transport, c};

/// The branch servers: the harness's recording branch server (HTTP and
/// gRPC), with the engine tests' barrier-guarded effect.
#[derive(Clone)]
pub struct Branches {
    /// `http://127.0.0.1:port`.
    pub http: String,
    /// `127.0.0.1:port` of the gRPC server.
    pub grpc: String,
    /// The servers; shared by clones, stopped when the last clone goes.
    servers: Arc<BranchServers>,
}

impl Branches {
    /// Starts both servers.
    pub async fn start() -> Branches {
        let servers = BranchServers::start().await;
        Branches { http: servers.http.clone(), grpc: servers.grpc.clone(), servers: Arc::new(servers) }
    }

    /// Queues replies for the next calls to `path` (then OK forever).
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.servers.recorder.script(path, replies);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.servers.recorder.calls()
    }

    /// Calls of one gid, as `(path, branch_id, op)`.
    pub fn calls_of(&self, gid: &str) -> Vec<(String, String, String)> {
        self.servers.recorder.sequence(gid)
    }

    /// Waits until `gid` has at least `n` calls.
    pub async fn wait_calls(&self, gid: &str, n: usize, timeout: Duration) {
        self.servers.recorder.wait_calls(gid, n, timeout).await;
    }

    /// Makes every successful call run its effect through dtm's barrier
    /// in `pool`, inserting a row into `effect` — the test counts those
    /// rows (tables created here).
    pub async fn use_barrier_db(&self, pool: sqlx::MySqlPool) {
        let table = BarrierTable::new("barrier").unwrap();
        barrier::schema::ensure_barrier_table(&pool, &table).await.unwrap();
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS effect (id bigint AUTO_INCREMENT PRIMARY KEY, gid varchar(128), \
             branch_id varchar(128), op varchar(45))",
        )
        .execute(&pool)
        .await
        .unwrap();
        self.servers.recorder.on_success(move |call| {
            let pool = pool.clone();
            async move {
                match effect(&pool, &call).await {
                    Ok(()) => (200, r#"{"dtm_result":"SUCCESS"}"#.to_string()),
                    Err(e) => {
                        let (status, body) = e.into_http();
                        (status.as_u16(), body)
                    }
                }
            }
        });
    }

    /// The `http://…/<name>` URL of an HTTP branch.
    pub fn url(&self, name: &str) -> String {
        self.servers.http_url(name)
    }
}

/// Runs the business effect of `call` behind dtm's barrier.
async fn effect(pool: &sqlx::MySqlPool, call: &Call) -> Result<(), BranchError> {
    let mut barrier =
        BranchBarrier::from_received(&call.received())?.with_table(BarrierTable::new("barrier").unwrap());
    let (gid, branch_id, op) = (call.param("gid"), call.param("branch_id"), call.param("op"));
    // Skipped (duplicate or null compensation) is a success too.
    let _outcome = barrier
        .call_with_pool(pool, async move |conn: &mut sqlx::MySqlConnection| {
            sqlx::query("INSERT INTO effect (gid, branch_id, op) VALUES (?, ?, ?)")
                .bind(gid)
                .bind(branch_id)
                .bind(op)
                .execute(conn)
                .await?;
            Ok(())
        })
        .await?;
    Ok(())
}

/// Runs each test `fn(World)` once per store — MariaDB, PostgreSQL and
/// SQLite — as `mariadb::<test>`, `postgres::<test>`, `sqlite::<test>`;
/// the test binary defines `World::new(harness::TestDatabase)`.
#[allow(unused_macros)]
macro_rules! on_every_store {
    ($($test:ident),* $(,)?) => {
        mod mariadb {
            $(#[tokio::test] async fn $test() { super::$test(super::World::new(harness::mysql_database().await).await).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $test() { super::$test(super::World::new(harness::postgres_database().await).await).await })*
        }
        mod sqlite {
            $(#[tokio::test] async fn $test() { super::$test(super::World::new(harness::sqlite_database()).await).await })*
        }
    };
}

/// Settings with short intervals so that retries happen within a second or two.
pub fn fast_settings() -> EngineSettings {
    EngineSettings {
        retry_interval: Duration::from_secs(1),
        timeout_to_fail: Duration::from_secs(5),
        request_timeout: Duration::from_secs(3),
        max_retry_interval: Duration::from_secs(2),
        trans_cron_interval: Duration::from_millis(200),
        lease_duration: Duration::from_secs(2),
        max_in_flight: 64,
        lease_batch: 16,
        shutdown_timeout: Duration::from_secs(5),
        alert: coordinator::alert::AlertSettings::default(),
        attempts: coordinator::attempts::AttemptSettings::default(),
    }
}

/// An engine on `url` with [`fast_settings`].
pub async fn engine(url: &str) -> Engine {
    engine_with(url, fast_settings()).await
}

/// An engine on `url` with `settings`.
pub async fn engine_with(url: &str, settings: EngineSettings) -> Engine {
    let store = coordinator::store::open(url, 16).await.expect("open store");
    Engine::new(store, settings, EngineHooks::default()).expect("engine")
}

/// A saga request: `steps` are (action, compensate) URLs, payload `{"step":k}`.
pub fn saga(gid: &str, steps: &[(String, String)]) -> TransRequestInput {
    TransRequestInput {
        gid: gid.to_string(),
        trans_type: "saga".into(),
        steps: steps
            .iter()
            .map(|(a, c)| BTreeMap::from([("action".into(), a.clone()), ("compensate".into(), c.clone())]))
            .collect(),
        payloads: (0..steps.len()).map(|k| format!(r#"{{"step":{k}}}"#).into_bytes()).collect(),
        ..Default::default()
    }
}

/// Validates an input.
pub fn req(input: TransRequestInput) -> TransRequest {
    TransRequest::from_input(input).expect("valid request")
}

/// The stored status of `gid`.
pub async fn status(engine: &Engine, gid: &str) -> GlobalStatus {
    let detail = engine.query(&gid.parse().unwrap()).await.unwrap().expect("transaction exists");
    detail.transaction.unwrap().status
}

/// Polls until `gid` is final (or panics after `limit`).
pub async fn wait_final(engine: &Engine, gid: &str, limit: Duration) -> GlobalStatus {
    harness::wait_until(&format!("{gid} final"), limit, async || match status(engine, gid).await {
        s if s.is_final() => Ok(s),
        s => Err(format!("still {s}")),
    })
    .await
}

/// An engine on a fresh MariaDB database, warmed up (connections, statement
/// caches), with a connection that reads the server's `Com_*` counters —
/// for the tests that count our SQL. Such a test must be alone in its test
/// binary: harness starts one server per test process, so the
/// server-wide counters then count exactly its statements.
pub struct CountedEngine {
    /// The engine under test.
    pub engine: Engine,
    /// Reads the counters.
    pub monitor: sqlx::MySqlPool,
    /// A 2-step saga's (action, compensate) URLs on the branch servers.
    pub steps: [(String, String); 2],
    /// Kept alive for the test: the database and the branch servers.
    _db: harness::TestDatabase,
    _branches: Branches,
}

impl CountedEngine {
    /// Everything started, one saga run to warm up.
    pub async fn start() -> CountedEngine {
        let db = harness::mysql_database().await;
        let monitor = sqlx::MySqlPool::connect(&db.url).await.unwrap();
        let branches = Branches::start().await;
        // The saga's own SQL: the console's timeline is written beside it
        // by a task of its own (one INSERT per batch of attempts, measured
        // by the bench with recording on and off), not counted here.
        let settings = EngineSettings {
            attempts: coordinator::attempts::AttemptSettings {
                record: coordinator::attempts::AttemptsRecord::Off,
                ..Default::default()
            },
            ..fast_settings()
        };
        let engine = engine_with(&db.url, settings).await;
        let steps = [
            (branches.url("TransOut"), branches.url("TransOutRevert")),
            (branches.url("TransIn"), branches.url("TransInRevert")),
        ];
        let mut warm = saga("warm", &steps);
        warm.wait_result = true;
        engine.submit(req(warm)).await.unwrap();
        CountedEngine { engine, monitor, steps, _db: db, _branches: branches }
    }

    /// A `wait_result` saga over the two steps.
    pub fn saga(&self, gid: &str) -> TransRequest {
        let mut input = saga(gid, &self.steps);
        input.wait_result = true;
        req(input)
    }

    /// `SHOW GLOBAL STATUS LIKE 'Com_%'`, names lower-cased.
    pub async fn counters(&self) -> HashMap<String, i64> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Com\\_%'").fetch_all(&self.monitor).await.unwrap();
        rows.into_iter().map(|(k, v)| (k.to_lowercase(), v.parse().unwrap_or(0))).collect()
    }
}

/// How much counter `key` grew between two readings, per saga of `n`.
pub fn per_saga(before: &HashMap<String, i64>, after: &HashMap<String, i64>, key: &str, n: usize) -> f64 {
    (after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)) as f64 / n as f64
}
