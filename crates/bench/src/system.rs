//! The system under test as separate processes, and its throwaway databases.
//!
//! The bench measures the binaries a user deploys — `coordinator`,
//! `order-srv`, `stock-srv`, `order-api` — found next to the running
//! `quickorder-bench` (the same `target/<profile>/` folder after
//! `cargo build --release --bins`), each in its own process so that the
//! CPU each one burns can be read from `/proc`.
//!
//! Each process gets the shipped `etc/*.yaml` (compiled in, written to the
//! run folder) and is configured only through its `${VAR}` environment
//! variables, as a user would, with one exception: discovery. The shipped
//! files find the services through etcd; the bench gives them direct
//! addresses instead (go-zero's `Endpoints`, and no `Etcd` block for the
//! servers), so that no etcd server is needed and resolver work is not in
//! the numbers. That edit is done on the YAML text, top-level block by
//! top-level block, and fails loudly if the file's shape ever changes.
//!
//! Every service is started on port 0 and waited for through its readiness
//! line (`ready <name> pid=<pid> grpc=… http=…`, printed once it serves:
//! tables created, listening, registered), which also names the ports it
//! got. Polling a port picked in advance would let the bench start while a
//! service is bound but not yet prepared, or talk to another process that
//! took the port meanwhile.
//!
//! Every process runs under the harness's [`GuardedProcess`]: a small `sh`
//! guard that holds a pipe to the bench, so when the bench exits, however
//! it exits, the pipe closes and the guard kills the server. Nothing
//! outlives a run. A normal end stops each server politely first
//! (SIGTERM, then SIGKILL after 5 s).
//!
//! [`Databases`] creates each run's databases with a unique prefix
//! (`qob_<8 hex>_…`) and drops them at the end. The services' barrier table
//! is dtm's fixed `dtm_barrier.barrier`, shared with anything else on the
//! server: the bench deletes only its own rows there, and drops the
//! `dtm_barrier` database only if it created it and left it empty.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use harness::{Binaries, GuardedProcess, ReadyLine};
use order_api::config::TransMode;
use service_kit::shipped::{self, replace_block};
use sqlx::ConnectOptions;

/// How long a spawned server may take to print its readiness line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a server may take to drain after SIGTERM at the end of a run.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Longest wait for InnoDB to settle after `--store-history`'s bulk fill.
const SETTLE_LIMIT: Duration = Duration::from_secs(300);

/// A server process under its guard. Dropping it kills the server too
/// (without waiting); [`Service::stop`] stops it politely and waits.
pub struct Service {
    /// `coordinator`, `order-srv`, …
    pub name: &'static str,
    /// The server's own pid (not the guard's): what `/proc` is read for.
    pub pid: u32,
    /// The guarded process itself.
    process: GuardedProcess,
}

impl Service {
    /// Starts `program args…` with `env` added to this process's
    /// environment (`RUST_LOG` removed, so the config's log level rules),
    /// its output appended to `log`.
    fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: &Path,
    ) -> anyhow::Result<Service> {
        let mut argv = vec!["-u".to_string(), "RUST_LOG".to_string()];
        argv.extend(env.iter().map(|(key, value)| format!("{key}={value}")));
        argv.push(program.display().to_string());
        argv.extend(args.iter().cloned());
        let process = GuardedProcess::try_spawn("env", &argv, log).map_err(|err| anyhow!("{name}: {err}"))?;
        Ok(Service { name, pid: process.pid(), process })
    }

    /// Running, and not a zombie.
    pub fn is_alive(&self) -> bool {
        self.process.is_running()
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// Waits for its readiness line (it prints one once serving) and
    /// returns it; fails early, with its log, if the process exits.
    async fn wait_ready(&self) -> anyhow::Result<ReadyLine> {
        let (log, start, name, pid) =
            (self.process.log_path().to_path_buf(), self.process.log_start(), self.name, self.pid);
        tokio::task::spawn_blocking(move || {
            let ready = harness::wait_ready_line(&log, start, name, pid, START_TIMEOUT);
            ready.map_err(|err| anyhow!("{err}\n(its log: {})", log.display()))
        })
        .await?
    }

    /// Stops the server (SIGTERM, SIGKILL after 5 s) and waits for it.
    pub async fn stop(mut self) {
        let _ = tokio::task::spawn_blocking(move || self.process.stop(STOP_GRACE)).await;
    }
}

/// The address labelled `label` in a readiness line.
fn ready_addr(ready: &ReadyLine, label: &str) -> anyhow::Result<SocketAddr> {
    ready
        .addrs
        .iter()
        .find(|(l, _)| l == label)
        .map(|(_, addr)| *addr)
        .ok_or_else(|| anyhow!("{}'s readiness line has no {label}= address: {ready:?}", ready.name))
}

/// The MySQL/MariaDB server the bench uses, as given by `--mysql`.
#[derive(Debug, Clone)]
pub struct Server {
    /// `mysql://user:pw@host:port`, no trailing `/`.
    url: String,
    /// Parsed, for the coordinator's `STORE_*` variables.
    parsed: url::Url,
}

impl Server {
    /// Checks `url` names a server and no database.
    pub fn parse(url: &str) -> anyhow::Result<Server> {
        let parsed = url::Url::parse(url).with_context(|| format!("--mysql {url}: not a URL"))?;
        if !matches!(parsed.scheme(), "mysql" | "mariadb") || !matches!(parsed.path(), "" | "/") {
            bail!("--mysql wants a server URL without a database, e.g. mysql://root@127.0.0.1:3306");
        }
        Ok(Server { url: url.trim_end_matches('/').to_string(), parsed })
    }

    /// The server URL, for connections without a database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of database `db` on this server.
    pub fn database_url(&self, db: &str) -> String {
        format!("{}/{db}", self.url)
    }

    /// Host and port, for messages and for telling a local server.
    pub fn host(&self) -> &str {
        self.parsed.host_str().unwrap_or("127.0.0.1")
    }

    /// The coordinator's `Store` block for database `db`, as variables.
    fn store_env(&self, db: &str) -> Vec<(String, String)> {
        let decode = |text: &str| percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned();
        vec![
            ("STORE_DRIVER".into(), "mysql".into()),
            ("STORE_HOST".into(), self.host().to_string()),
            ("STORE_PORT".into(), self.parsed.port().unwrap_or(3306).to_string()),
            ("STORE_USER".into(), decode(self.parsed.username())),
            ("STORE_PASSWORD".into(), decode(self.parsed.password().unwrap_or_default())),
            ("STORE_DB".into(), db.to_string()),
        ]
    }
}

/// dtm's fixed barrier database, where order-srv and stock-srv write.
const BARRIER_DB: &str = "dtm_barrier";

/// The databases of one run: created with a unique prefix, dropped by
/// [`Databases::drop_all`].
pub struct Databases {
    /// The server.
    server: Server,
    /// `qob_<8 hex>_<mode>`: every database and every bench-made gid
    /// starts with it.
    prefix: String,
    /// An administrative connection (create, drop, clean up).
    admin: sqlx::MySqlConnection,
    /// What this run created, to drop.
    created: Vec<String>,
    /// Whether `dtm_barrier` existed before the run (then only our rows
    /// are deleted from it).
    barrier_db_existed: bool,
    /// Coordinator databases whose gids' barrier rows must be deleted.
    coordinator_dbs: Vec<String>,
}

impl Databases {
    /// Connects; nothing is created yet.
    pub async fn open(server: &Server, prefix: String) -> anyhow::Result<Databases> {
        // Statement logging off: filling a store runs statements that take
        // seconds on purpose, and sqlx would warn about each.
        let options: sqlx::mysql::MySqlConnectOptions = server.url().parse()?;
        let mut admin = options.disable_statement_logging().connect().await.with_context(|| {
            format!("cannot connect to MySQL/MariaDB at {} (--mysql)", redact(&server.parsed))
        })?;
        let existing: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?")
                .bind(BARRIER_DB)
                .fetch_one(&mut admin)
                .await?;
        Ok(Databases {
            server: server.clone(),
            prefix,
            admin,
            created: Vec::new(),
            barrier_db_existed: existing > 0,
            coordinator_dbs: Vec::new(),
        })
    }

    /// The run's prefix; gids made by the bench start with it too.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The server.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Creates `<prefix>_<suffix>` (utf8mb4); returns its name.
    pub async fn create(&mut self, suffix: &str) -> anyhow::Result<String> {
        let name = format!("{}_{suffix}", self.prefix);
        sqlx::query(&format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
            .execute(&mut self.admin)
            .await
            .with_context(|| format!("cannot create database {name}"))?;
        self.created.push(name.clone());
        Ok(name)
    }

    /// Creates the database of a coordinator store, remembered so that the
    /// barrier rows of its sagas (gids the coordinator made) are cleaned up.
    pub async fn create_store(&mut self, suffix: &str) -> anyhow::Result<String> {
        let name = self.create(suffix).await?;
        self.coordinator_dbs.push(name.clone());
        Ok(name)
    }

    /// Puts `count` finished sagas into the coordinator store `store_db`
    /// (tables already made by the coordinator): the "full store" runs of
    /// BENCHMARKS.md, which ask whether a store holding history slows the
    /// coordinator down. Each is shaped like a bench saga — two steps, four
    /// `succeed` branch rows — and written 100 000 per transaction with
    /// `INSERT … SELECT` over a generated number table (no round trip per row).
    pub async fn fill_store(&mut self, store_db: &str, count: u64) -> anyhow::Result<()> {
        const CHUNK: u64 = 100_000;
        let digit = "(SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL \
                     SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 \
                     UNION ALL SELECT 9)";
        let numbers = format!(
            "(SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d AS n \
             FROM {digit} a, {digit} b, {digit} c, {digit} e, {digit} f)"
        );
        let ops = "(SELECT '01' AS bid, 'compensate' AS op UNION ALL SELECT '01', 'action' \
                   UNION ALL SELECT '02', 'compensate' UNION ALL SELECT '02', 'action')";
        let started = std::time::Instant::now();
        for first in (0..count).step_by(CHUNK as usize) {
            let size = CHUNK.min(count - first);
            let gid = format!("CONCAT('{}-history-', {first} + t.n)", self.prefix);
            let statements = [
                format!(
                    "INSERT INTO `{store_db}`.trans_global (gid, trans_type, status, query_prepared, protocol, \
                     create_time, update_time, finish_time, options, custom_data, next_cron_interval, \
                     next_cron_time, owner, ext_data, result, rollback_reason) \
                     SELECT {gid}, 'saga', 'succeed', '', 'http', UTC_TIMESTAMP(), UTC_TIMESTAMP(), \
                     UTC_TIMESTAMP(), '{{}}', '{{\"orders\":{{}}}}', 10, UTC_TIMESTAMP(), '', '', '', '' \
                     FROM {numbers} t WHERE t.n < {size}"
                ),
                format!(
                    "INSERT INTO `{store_db}`.trans_branch_op (gid, url, bin_data, branch_id, op, status, \
                     finish_time, create_time, update_time) \
                     SELECT {gid}, CONCAT('http://127.0.0.1:9/branch/', o.op), '{{}}', o.bid, o.op, 'succeed', \
                     UTC_TIMESTAMP(), UTC_TIMESTAMP(), UTC_TIMESTAMP() FROM {numbers} t, {ops} o WHERE t.n < {size}"
                ),
            ];
            let mut tx = sqlx::Connection::begin(&mut self.admin).await?;
            for statement in &statements {
                sqlx::query(statement)
                    .execute(&mut *tx)
                    .await
                    .with_context(|| format!("cannot fill the store {store_db}"))?;
            }
            tx.commit().await?;
            eprint!("\rfilling {store_db}: {} of {count} finished sagas", first + size);
        }
        eprintln!(" ({:.0} s)", started.elapsed().as_secs_f64());
        self.settle().await
    }

    /// Waits (up to [`SETTLE_LIMIT`]) until InnoDB has purged the undo
    /// history a bulk fill left and its flushing of the dirtied pages has
    /// run its course (at most 1 % of the pool dirty, or no fewer dirty
    /// pages than 10 s before: InnoDB may keep some dirty when idle).
    /// Without it the server's background work on the fill runs inside the
    /// measured window and slows every process alike, which reads as
    /// "history slows the coordinator down".
    async fn settle(&mut self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let mut dirty_before = std::collections::VecDeque::new();
        loop {
            let (dirty, total, history) = self.innodb_backlog().await?;
            dirty_before.push_back(dirty);
            // Ten readings a second apart: the oldest is from 10 s ago.
            let stalled = dirty_before.len() > 10 && dirty_before.pop_front().is_some_and(|old| dirty >= old);
            let settled = history < 1_000 && (dirty * 100 <= total || stalled);
            if settled || started.elapsed() >= SETTLE_LIMIT {
                eprintln!(
                    "settled after {:.0} s: {dirty} of {total} buffer pool pages dirty, history list length {history}{}",
                    started.elapsed().as_secs_f64(),
                    if settled { "" } else { " (gave up waiting)" }
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// InnoDB's dirty pages, total pages and undo history length.
    async fn innodb_backlog(&mut self) -> anyhow::Result<(u64, u64, u64)> {
        const DIRTY: &str = "Innodb_buffer_pool_pages_dirty";
        const TOTAL: &str = "Innodb_buffer_pool_pages_total";
        const HISTORY: &str = "Innodb_history_list_length";
        let status = crate::dbstat::global_status(&mut self.admin, &[DIRTY, TOTAL, HISTORY])
            .await
            .context("cannot read InnoDB's status")?;
        let value = |name: &str| status.get(name).copied();
        Ok((value(DIRTY).unwrap_or(0), value(TOTAL).unwrap_or(1), value(HISTORY).unwrap_or(0)))
    }

    /// Finished sagas in the coordinator stores of this run, counted.
    pub async fn finished_sagas(&mut self) -> anyhow::Result<i64> {
        let mut total = 0;
        for db in &self.coordinator_dbs {
            let count: i64 = sqlx::query_scalar(&format!(
                "SELECT COUNT(*) FROM `{db}`.trans_global WHERE status IN ('succeed', 'failed')"
            ))
            .fetch_one(&mut self.admin)
            .await
            .with_context(|| format!("cannot count the sagas in {db}"))?;
            total += count;
        }
        Ok(total)
    }

    /// Raises goods 1's stock in `stock_db` far above what any run sells,
    /// so that every saga succeeds.
    pub async fn raise_stock(&mut self, stock_db: &str) -> anyhow::Result<()> {
        sqlx::query(&format!(
            "INSERT INTO `{stock_db}`.stock (goods_id, num) VALUES (1, 2000000000) \
             ON DUPLICATE KEY UPDATE num = 2000000000"
        ))
        .execute(&mut self.admin)
        .await
        .with_context(|| format!("cannot raise the stock in {stock_db}"))?;
        Ok(())
    }

    /// Deletes this run's barrier rows and drops every database it created.
    pub async fn drop_all(mut self) -> anyhow::Result<()> {
        let mut first_error: Option<anyhow::Error> = None;
        let barrier_table: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = 'barrier'",
        )
        .bind(BARRIER_DB)
        .fetch_one(&mut self.admin)
        .await
        .unwrap_or(0);
        if barrier_table > 0 {
            let mut cleanups =
                vec![format!("DELETE FROM {BARRIER_DB}.barrier WHERE gid LIKE '{}%'", self.prefix)];
            for db in &self.coordinator_dbs {
                cleanups.push(format!(
                    "DELETE FROM {BARRIER_DB}.barrier WHERE gid IN (SELECT gid FROM `{db}`.trans_global)"
                ));
            }
            for statement in cleanups {
                if let Err(err) = sqlx::query(&statement).execute(&mut self.admin).await {
                    // A store that never got its tables has nothing to clean.
                    tracing::debug!(%err, statement, "barrier clean-up");
                }
            }
        }
        for name in std::mem::take(&mut self.created) {
            if let Err(err) =
                sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`")).execute(&mut self.admin).await
            {
                first_error.get_or_insert(anyhow!(err).context(format!("cannot drop database {name}")));
            }
        }
        if !self.barrier_db_existed && barrier_table > 0 {
            let left: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {BARRIER_DB}.barrier"))
                .fetch_one(&mut self.admin)
                .await
                .unwrap_or(1);
            if left == 0 {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {BARRIER_DB}"))
                    .execute(&mut self.admin)
                    .await;
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn redact(url: &url::Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

/// What every spawned service needs.
pub struct Launcher {
    /// Where the binaries are.
    pub binaries: Binaries,
    /// The run folder: config files and logs.
    pub dir: PathBuf,
    /// `LOG_LEVEL` of the services.
    pub log_level: String,
}

/// One coordinator setting, as the environment variable that overrides it
/// in `etc/coordinator.yaml` (`AttemptsRecord` → `ATTEMPTS_RECORD`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The variable: capitals, digits and `_`.
    pub key: String,
    /// Its value, as the coordinator's config loader reads it.
    pub value: String,
}

impl Setting {
    /// `KEY=VALUE`.
    pub fn parse(text: &str) -> Result<Setting, String> {
        let (key, value) = text.split_once('=').ok_or_else(|| {
            format!("a coordinator setting as KEY=VALUE (ATTEMPTS_RECORD=off), not {text:?}")
        })?;
        let valid_key =
            !key.is_empty() && key.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !valid_key {
            return Err(format!(
                "{key:?} is not a coordinator setting's variable (capitals, digits and _, e.g. ATTEMPTS_RECORD)"
            ));
        }
        Ok(Setting { key: key.to_string(), value: value.to_string() })
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// A running coordinator.
pub struct CoordinatorProcess {
    /// The process.
    pub service: Service,
    /// Its gRPC API (dtm's 36790).
    pub grpc: SocketAddr,
    /// Its HTTP API (dtm's 36789); the dtm base URL is
    /// `http://<this>/api/dtmsvr`.
    pub http: SocketAddr,
}

impl CoordinatorProcess {
    /// `http://127.0.0.1:<port>/api/dtmsvr`.
    pub fn http_base(&self) -> String {
        format!("http://{}/api/dtmsvr", self.http)
    }
}

/// Which branch service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchService {
    /// `order-srv`.
    Order,
    /// `stock-srv`.
    Stock,
}

impl Launcher {
    fn write_config(&self, file: &str, text: &str) -> anyhow::Result<String> {
        let path = self.dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path.display().to_string())
    }

    fn spawn(&self, name: &'static str, config: &str, env: Vec<(String, String)>) -> anyhow::Result<Service> {
        let program = self.binaries.path(name).map_err(|err| anyhow!(err))?;
        let log = self.dir.join(format!("{name}.log"));
        let mut env = env;
        env.push(("LOG_LEVEL".into(), self.log_level.clone()));
        env.push(("MODE".into(), "pro".into()));
        Service::spawn(name, &program, &["-f".to_string(), config.to_string()], &env, &log)
    }

    /// The coordinator on `etc/coordinator.yaml` with a MySQL store in
    /// database `store_db` (created by the caller; the coordinator makes
    /// its tables), and `variant`'s settings on top.
    pub async fn coordinator(
        &self,
        server: &Server,
        store_db: &str,
        variant: &[Setting],
    ) -> anyhow::Result<CoordinatorProcess> {
        let config = self.write_config(shipped::COORDINATOR.file, shipped::COORDINATOR.text)?;
        let mut env = vec![
            ("LISTEN_HOST".into(), "127.0.0.1".into()),
            ("HTTP_PORT".into(), "0".into()),
            ("GRPC_PORT".into(), "0".into()),
            // The bench dials it directly: no etcd registration.
            ("MICRO_SERVICE_DRIVER".into(), "default".into()),
        ];
        env.extend(server.store_env(store_db));
        env.extend(variant.iter().map(|s| (s.key.clone(), s.value.clone())));
        let service = self.spawn("coordinator", &config, env)?;
        let ready = service.wait_ready().await?;
        Ok(CoordinatorProcess {
            grpc: ready_addr(&ready, "grpc")?,
            http: ready_addr(&ready, "http")?,
            service,
        })
    }

    /// order-srv or stock-srv on its `etc/` file, without etcd, on database
    /// `db_url` (created by the caller; the service makes its tables and
    /// `dtm_barrier.barrier`).
    pub async fn branch_service(
        &self,
        which: BranchService,
        db_url: &str,
    ) -> anyhow::Result<(Service, SocketAddr)> {
        let (name, shipped, listen, dsn) = match which {
            BranchService::Order => ("order-srv", shipped::ORDER_SRV, "ORDER_SRV_LISTEN_ON", "ORDER_DSN"),
            BranchService::Stock => ("stock-srv", shipped::STOCK_SRV, "STOCK_SRV_LISTEN_ON", "STOCK_DSN"),
        };
        let yaml =
            replace_block(shipped.text, "Etcd", "").with_context(|| format!("etc/{}", shipped.file))?;
        let config = self.write_config(shipped.file, &yaml)?;
        let env =
            vec![(listen.to_string(), "127.0.0.1:0".to_string()), (dsn.to_string(), db_url.to_string())];
        let service = self.spawn(name, &config, env)?;
        let addr = ready_addr(&service.wait_ready().await?, "grpc")?;
        Ok((service, addr))
    }

    /// order-api on `etc/order-api.yaml`, pointed at the coordinator
    /// (`dtm_grpc`, `dtm_http` = its `…/api/dtmsvr`) and at the two
    /// services by address, running the quick order as `trans_mode` says
    /// (`TransMode`, set through its `TRANS_MODE` variable).
    pub async fn order_api(
        &self,
        dtm_grpc: SocketAddr,
        dtm_http: &str,
        order: SocketAddr,
        stock: SocketAddr,
        trans_mode: TransMode,
    ) -> anyhow::Result<(Service, SocketAddr)> {
        let yaml = replace_block(
            shipped::ORDER_API.text,
            "OrderRpcConf",
            &format!("OrderRpcConf:\n  Endpoints: [{order}]\n"),
        )
        .and_then(|yaml| {
            replace_block(&yaml, "StockRpcConf", &format!("StockRpcConf:\n  Endpoints: [{stock}]\n"))
        })
        .context("etc/order-api.yaml")?;
        let config = self.write_config(shipped::ORDER_API.file, &yaml)?;
        let env = vec![
            ("ORDER_API_HOST".into(), "127.0.0.1".into()),
            ("ORDER_API_LISTEN_PORT".into(), "0".into()),
            ("DTM_SERVER".into(), dtm_grpc.to_string()),
            ("DTM_HTTP_SERVER".into(), dtm_http.to_string()),
            ("TRANS_MODE".into(), trans_mode_value(trans_mode).into()),
        ];
        let service = self.spawn("order-api", &config, env)?;
        let addr = ready_addr(&service.wait_ready().await?, "http")?;
        Ok((service, addr))
    }
}

/// `TransMode`'s value in `etc/order-api.yaml` (its serde name).
fn trans_mode_value(mode: TransMode) -> &'static str {
    match mode {
        TransMode::Saga => "saga",
        TransMode::Workflow => "workflow",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_files_with_direct_addresses_still_parse() {
        let yaml = replace_block(
            shipped::ORDER_API.text,
            "OrderRpcConf",
            "OrderRpcConf:\n  Endpoints: [127.0.0.1:1]\n",
        )
        .and_then(|y| replace_block(&y, "StockRpcConf", "StockRpcConf:\n  Endpoints: [127.0.0.1:2]\n"))
        .unwrap();
        let config: order_api::Config =
            service_kit::config::parse_yaml(Path::new("order-api.yaml"), &yaml, |_| None).unwrap();
        assert!(config.order_rpc_conf.etcd.is_none());
        assert_eq!(config.stock_rpc_conf.endpoints, vec!["127.0.0.1:2".to_string()]);
        let config: order_srv::Config = service_kit::config::parse_yaml(
            Path::new("order-srv.yaml"),
            &replace_block(shipped::ORDER_SRV.text, "Etcd", "").unwrap(),
            |_| None,
        )
        .unwrap();
        assert!(config.etcd.is_none());
    }

    #[test]
    fn server_urls_must_not_name_a_database() {
        assert!(Server::parse("mysql://root@127.0.0.1:3306").is_ok());
        assert!(Server::parse("mysql://root@127.0.0.1:3306/db").is_err());
        assert!(Server::parse("postgres://x@y").is_err());
        let server = Server::parse("mysql://u:p%40ss@db:3307/").unwrap();
        assert_eq!(server.database_url("d"), "mysql://u:p%40ss@db:3307/d");
        let env = server.store_env("d");
        assert!(env.contains(&("STORE_PASSWORD".into(), "p@ss".into())));
        assert!(env.contains(&("STORE_PORT".into(), "3307".into())));
    }
}
