//! The system under test as separate processes, and the controls the
//! fault schedule needs: SIGKILL, restart, SIGSTOP, SIGCONT.
//!
//! ```text
//!                  ┌────────────── etcd ──────────────┐ (registrations, discovery)
//!  clients ─HTTP─▶ order-api ─gRPC─▶ coordinator-1 ─┐  │
//!                             └───▶ coordinator-2 ─┤  │ branch calls, balanced over
//!                                    │ store        │  │ the instances found in etcd
//!                                  [db proxy]       ├─▶ [proxy] ─▶ order-srv-1 ─[db proxy]─┐
//!                                    │              ├─▶ [proxy] ─▶ order-srv-2 ─[db proxy]─┤
//!                                    ▼              ├─▶ [proxy] ─▶ stock-srv-1 ─[db proxy]─┤
//!                                 MariaDB ◀─────────┴─▶ [proxy] ─▶ stock-srv-2 ─[db proxy]─┘
//! ```
//!
//! Every process is the real binary with the `etc/*.yaml` file a user
//! gets (written into the run folder from the copies compiled into
//! quickorder), configured only through the `${VAR}`s of that file, in a
//! hermetic environment (`env -i`): nothing from the caller's shell leaks in.
//!
//! **How the coordinator's branch calls go through a proxy.** The
//! coordinator resolves `etcd://…/order.rpc/pb.order/create` to whatever
//! the instances registered, so the proxy's address must be what gets
//! registered. A service listening on `0.0.0.0:P` publishes `$POD_IP:P`
//! (go-zero's rule, [`discovery::publish_address`]); with `POD_IP=[::1]` it
//! publishes `[::1]:P`, and the proxy listens on exactly that IPv6 loopback
//! address and port and forwards to `127.0.0.1:P`. (An IPv4 wildcard and
//! an IPv6 address can share a port; two IPv4 addresses cannot share one
//! with a wildcard.) So the services register themselves, the coordinator
//! discovers and balances as in production, and every branch call crosses
//! a proxy. The services do listen on every IPv4 interface for the length
//! of the run; the machine needs an IPv6 loopback.
//!
//! The three groups of database clients (coordinators, order-srv,
//! stock-srv) each reach MariaDB through their own proxy, so a fault can
//! hit one group. The invariant checker reads MariaDB directly.
//!
//! **Skewed clocks.** With [`Options::clock_skew`], coordinator-2 runs
//! under libfaketime (`LD_PRELOAD`, `FAKETIME=+Ns`,
//! `FAKETIME_DONT_FAKE_MONOTONIC=1`): its wall clock — the one its leases
//! and `next_cron_time`s are computed from — is N seconds ahead, while its
//! monotonic clock (tokio's timers, request timeouts) is untouched. The
//! offset is read back from the timestamps of its own log lines after it
//! starts, so a preload that did not take effect fails the run instead of
//! passing untested. (Its log lines sort N seconds late in the traces.)
//!
//! Logs: `<run>/logs/<process>.log`, appended to across restarts. Data:
//! `<run>/mariadb`, `<run>/etcd`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use harness::{Binaries, GuardedProcess, free_port};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use service_kit::shipped;
use sqlx::Connection;
use sqlx::types::chrono;
use tokio::time::Instant;

use super::ChaosError;
use super::proxy::Link;

/// The coordinators' `RequestTimeout` (seconds): pauses are longer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// `RetryInterval` (= the recovery lease): short, so that sagas held by a
/// killed or paused coordinator are taken over during the run.
const RETRY_INTERVAL_SECS: u64 = 1;
/// The coordinators' lease, as configured: coordinator pauses are longer,
/// and a clock offset between them is meant to exceed it.
pub const LEASE: Duration = Duration::from_secs(RETRY_INTERVAL_SECS);
/// `MaxRetryInterval`: caps the backoff so quiescence stays quick.
const MAX_RETRY_INTERVAL_SECS: u64 = 3;
/// `TransCronInterval`.
const TRANS_CRON_INTERVAL_SECS: u64 = 1;

/// The databases of the run (names of the demo, with `_` for `-`).
pub const COORDINATOR_DB: &str = "dtm";
/// order-srv's database.
pub const ORDER_DB: &str = "dtm_gozero_order";
/// stock-srv's database.
pub const STOCK_DB: &str = "dtm_gozero_stock";
/// dtm's fixed barrier database, shared by both services.
pub const BARRIER_DB: &str = "dtm_barrier";

/// What a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The database server.
    MariaDb,
    /// The discovery server.
    Etcd,
    /// A saga coordinator.
    Coordinator,
    /// An order service instance.
    OrderSrv,
    /// A stock service instance.
    StockSrv,
    /// The HTTP gateway.
    OrderApi,
}

impl Kind {
    /// Every kind, in start order.
    pub const ALL: [Kind; 6] =
        [Kind::MariaDb, Kind::Etcd, Kind::Coordinator, Kind::OrderSrv, Kind::StockSrv, Kind::OrderApi];

    /// Name, as in the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::MariaDb => "mariadb",
            Kind::Etcd => "etcd",
            Kind::Coordinator => "coordinator",
            Kind::OrderSrv => "order-srv",
            Kind::StockSrv => "stock-srv",
            Kind::OrderApi => "order-api",
        }
    }

    /// The name in its readiness line, for the workspace's own binaries
    /// (`None`: a third-party server, checked by socket ownership).
    fn ready_name(self) -> Option<&'static str> {
        match self {
            Kind::MariaDb | Kind::Etcd => None,
            other => Some(other.name()),
        }
    }

    /// How long a start may take before it counts as failed.
    fn start_timeout(self) -> Duration {
        match self {
            // InnoDB crash recovery after a SIGKILL.
            Kind::MariaDb => Duration::from_secs(90),
            _ => Duration::from_secs(45),
        }
    }
}

/// How to (re)start one process.
#[derive(Debug, Clone)]
struct Command {
    /// Absolute path of the program.
    program: PathBuf,
    /// Its arguments.
    args: Vec<String>,
    /// Its whole environment (it gets nothing else).
    env: Vec<(String, String)>,
    /// TCP ports on 127.0.0.1 that must accept connections before it
    /// counts as started.
    ports: Vec<u16>,
}

/// One process of the system.
pub struct Proc {
    /// `coordinator-2`, for the schedule and the report.
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// How to start it again after a kill.
    command: Command,
    /// Its log (appended to by every incarnation).
    pub log: PathBuf,
    /// The running incarnation, `None` while killed. The guard kills it if
    /// quickorder itself dies.
    process: Option<GuardedProcess>,
    /// Whether it is SIGSTOPped now.
    paused: bool,
}

impl Proc {
    /// Starts it and waits until *it* is ready: our binaries print their
    /// readiness line (serving, registered), a third-party server must own
    /// its listening port and accept there — an open port alone may belong
    /// to another process. A start that exits early (its database or etcd
    /// unreachable at that moment) is retried until the kind's start timeout.
    pub async fn start(&mut self) -> Result<(), ChaosError> {
        let timeout = self.kind.start_timeout();
        let deadline = Instant::now() + timeout;
        loop {
            self.spawn();
            loop {
                if self.ready().await {
                    return Ok(());
                }
                if !self.alive() || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.kill().await;
            if Instant::now() >= deadline {
                return Err(ChaosError::Setup(format!(
                    "{} did not start within {timeout:?}; its log is {}:\n{}",
                    self.name,
                    self.log.display(),
                    log_tail(&self.log, 20)
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Whether the process just spawned is ready (see [`Proc::start`]).
    async fn ready(&self) -> bool {
        let Some(process) = &self.process else { return false };
        match self.kind.ready_name() {
            Some(name) => process.ready_line(name).is_some(),
            None => {
                let owns = self.command.ports.iter().all(|port| harness::listens_on(process.pid(), *port));
                owns && ports_open(&self.command.ports).await
            }
        }
    }

    fn spawn(&mut self) {
        // `env -i K=V … program args`: exactly these variables, and the
        // server's pid is the one the guard reports (env execs).
        let mut argv = vec!["-i".to_string()];
        argv.extend(self.command.env.iter().map(|(k, v)| format!("{k}={v}")));
        argv.push(self.command.program.display().to_string());
        argv.extend(self.command.args.iter().cloned());
        self.process = Some(GuardedProcess::spawn("env", &argv, &self.log, None));
        self.paused = false;
    }

    /// SIGKILL (through the guard, which also reaps it).
    pub async fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            // Dropping the guard SIGKILLs the server and waits for it.
            let _ = tokio::task::spawn_blocking(move || drop(process)).await;
        }
        self.paused = false;
    }

    /// SIGSTOP.
    pub fn pause(&mut self) -> Result<(), ChaosError> {
        self.signal(Signal::SIGSTOP)?;
        self.paused = true;
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self) -> Result<(), ChaosError> {
        self.signal(Signal::SIGCONT)?;
        self.paused = false;
        Ok(())
    }

    fn signal(&self, signal: Signal) -> Result<(), ChaosError> {
        let process = self
            .process
            .as_ref()
            .ok_or_else(|| ChaosError::Setup(format!("{} is not running", self.name)))?;
        let pid = i32::try_from(process.pid()).map_err(|_| ChaosError::Setup("pid out of range".into()))?;
        kill(Pid::from_raw(pid), signal)
            .map_err(|err| ChaosError::Setup(format!("cannot send {signal} to {}: {err}", self.name)))
    }

    /// Running (or stopped), not dead and not a zombie.
    pub fn alive(&self) -> bool {
        self.process.as_ref().is_some_and(GuardedProcess::is_running)
    }

    /// Whether it is SIGSTOPped now.
    pub fn paused(&self) -> bool {
        self.paused
    }
}

/// The whole system.
pub struct Topology {
    /// Every process, in start order (stopped in reverse).
    pub procs: Vec<Proc>,
    /// Every fault proxy.
    pub links: Vec<Arc<Link>>,
    /// MariaDB's real port (the checker's way in, bypassing the proxies).
    pub mariadb_port: u16,
    /// order-api's port.
    pub api_port: u16,
    /// Each coordinator's gRPC port.
    pub coordinator_grpc: Vec<u16>,
    /// `127.0.0.1:P` of etcd.
    pub etcd_hosts: String,
    /// How far coordinator-2's wall clock is ahead, verified from its log.
    pub clock_skew: Option<Duration>,
}

/// How the system is set up beyond its fixed shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Run coordinator-2 with its wall clock this far ahead (libfaketime);
    /// its monotonic clock, which timers and timeouts use, stays true.
    pub clock_skew: Option<Duration>,
}

/// Where the run's files go and where the binaries are.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The run folder (created).
    pub run_dir: PathBuf,
    /// The folder with coordinator, order-srv, stock-srv, order-api.
    pub binaries: Binaries,
}

impl Layout {
    fn logs(&self) -> PathBuf {
        self.run_dir.join("logs")
    }

    fn binary(&self, name: &str) -> Result<PathBuf, ChaosError> {
        self.binaries.path(name).map_err(ChaosError::Setup)
    }
}

/// What every process of a run shares: the run's files and the two
/// variables every environment gets.
struct RunFiles<'a> {
    /// Where the run folder and the binaries are.
    layout: &'a Layout,
    /// `<run>/logs`.
    logs: PathBuf,
    /// `<run>/etc`, holding the shipped config files.
    etc: PathBuf,
    /// The caller's `PATH`: the one thing of its environment passed on.
    path_env: (String, String),
    /// Plain log lines (no ANSI colours), so gids can be grepped.
    no_color: (String, String),
}

impl<'a> RunFiles<'a> {
    /// Creates the logs and etc folders and writes the shipped `etc/*.yaml`
    /// into the latter: every process reads the very file a user gets.
    fn write(layout: &'a Layout) -> Result<RunFiles<'a>, ChaosError> {
        let logs = layout.logs();
        let etc = layout.run_dir.join("etc");
        for dir in [&logs, &etc] {
            std::fs::create_dir_all(dir)
                .map_err(|e| ChaosError::io(format!("creating {}", dir.display()), e))?;
        }
        for config in shipped::ALL {
            let path = etc.join(config.file);
            std::fs::write(&path, config.text)
                .map_err(|e| ChaosError::io(format!("writing {}", path.display()), e))?;
        }
        Ok(RunFiles {
            layout,
            logs,
            etc,
            path_env: ("PATH".to_string(), std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())),
            no_color: var("NO_COLOR", "1"),
        })
    }

    /// The path of a config file, as a `-f` argument.
    fn config(&self, name: &str) -> String {
        self.etc.join(name).display().to_string()
    }
}

/// The ports of the database proxies, one per group of database clients.
struct DatabaseLinks {
    /// The coordinators' store.
    coordinators: u16,
    /// order-srv's database.
    order: u16,
    /// stock-srv's database.
    stock: u16,
}

impl Topology {
    /// Starts everything: MariaDB, etcd, the proxies, two coordinators,
    /// two order-srv, two stock-srv, order-api; returns once the services
    /// are registered in etcd and order-api accepts connections.
    ///
    /// Each phase starts what the next one connects to, and the waits for
    /// registrations sit between them: what order-api resolves through etcd
    /// is there before it starts.
    pub async fn start(layout: &Layout, options: Options) -> Result<Topology, ChaosError> {
        let run = RunFiles::write(layout)?;
        // Before anything starts: a missing libfaketime fails at once.
        let faketime = options.clock_skew.map(|_| find_libfaketime()).transpose()?;
        let binaries = [
            layout.binary("coordinator")?,
            layout.binary("order-srv")?,
            layout.binary("stock-srv")?,
            layout.binary("order-api")?,
        ];
        let [coordinator_bin, order_bin, stock_bin, api_bin] = binaries;
        let mut topology = Topology {
            procs: Vec::new(),
            links: Vec::new(),
            mariadb_port: free_port(),
            api_port: free_port(),
            coordinator_grpc: Vec::new(),
            etcd_hosts: String::new(),
            clock_skew: None,
        };

        let db = topology.start_infrastructure(&run).await?;
        let coordinator_http = topology
            .start_coordinators(
                &run,
                &coordinator_bin,
                db.coordinators,
                options.clock_skew,
                faketime.as_deref(),
            )
            .await?;
        wait_registered(&topology.etcd_hosts, "dtmservice", 2).await?;
        topology.start_branch_services(&run, &order_bin, &stock_bin, &db).await?;
        wait_registered(&topology.etcd_hosts, "order.rpc", 2).await?;
        wait_registered(&topology.etcd_hosts, "stock.rpc", 2).await?;
        topology.start_order_api(&run, api_bin, coordinator_http[0]).await?;
        Ok(topology)
    }

    /// What the services stand on: MariaDB with the run's databases, etcd,
    /// and one database proxy per group of database clients.
    async fn start_infrastructure(&mut self, run: &RunFiles<'_>) -> Result<DatabaseLinks, ChaosError> {
        self.start_mariadb(run).await?;
        self.start_etcd(run).await?;
        self.add_database_links().await
    }

    /// MariaDB, initialised in the run folder, with the four databases.
    async fn start_mariadb(&mut self, run: &RunFiles<'_>) -> Result<(), ChaosError> {
        let mariadb_dir = run.layout.run_dir.join("mariadb");
        install_mariadb(&mariadb_dir).await?;
        let mariadbd = find_program("mariadbd", &["/usr/sbin"], "mariadb-server")?;
        let port = self.mariadb_port;
        let sub = |name: &str| mariadb_dir.join(name).display().to_string();
        self.add(
            Kind::MariaDb,
            "mariadb",
            &run.logs,
            Command {
                program: mariadbd,
                args: vec![
                    "--no-defaults".into(),
                    format!("--datadir={}", sub("data")),
                    format!("--port={port}"),
                    "--bind-address=127.0.0.1".into(),
                    format!("--socket={}", sub("mysqld.sock")),
                    format!("--pid-file={}", sub("mysqld.pid")),
                    format!("--tmpdir={}", sub("tmp")),
                    "--user=root".into(),
                    "--skip-name-resolve".into(),
                    "--skip-log-bin".into(),
                    "--max-connections=1000".into(),
                    "--innodb-buffer-pool-size=128M".into(),
                    "--character-set-server=utf8mb4".into(),
                    "--collation-server=utf8mb4_general_ci".into(),
                ],
                env: vec![run.path_env.clone()],
                ports: vec![port],
            },
        )
        .await?;
        create_databases(&self.server_url()).await
    }

    /// etcd, a single member with its data in the run folder.
    async fn start_etcd(&mut self, run: &RunFiles<'_>) -> Result<(), ChaosError> {
        let etcd = find_program("etcd", &[], "etcd-server")?;
        let (client_port, peer_port) = (free_port(), free_port());
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        self.add(
            Kind::Etcd,
            "etcd",
            &run.logs,
            Command {
                program: etcd,
                args: vec![
                    "--name=chaos".into(),
                    format!("--data-dir={}", run.layout.run_dir.join("etcd").display()),
                    format!("--listen-client-urls={client}"),
                    format!("--advertise-client-urls={client}"),
                    format!("--listen-peer-urls={peer}"),
                    format!("--initial-advertise-peer-urls={peer}"),
                    format!("--initial-cluster=chaos={peer}"),
                    "--log-level=warn".into(),
                ],
                env: vec![run.path_env.clone()],
                ports: vec![client_port],
            },
        )
        .await?;
        self.etcd_hosts = format!("127.0.0.1:{client_port}");
        Ok(())
    }

    /// The database proxies, one per client group, so a fault can cut
    /// one group off MariaDB while the others keep working.
    async fn add_database_links(&mut self) -> Result<DatabaseLinks, ChaosError> {
        let mariadb_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.mariadb_port);
        Ok(DatabaseLinks {
            coordinators: self.add_link("coordinators→mariadb", loopback_any(), mariadb_addr).await?,
            order: self.add_link("order-srv→mariadb", loopback_any(), mariadb_addr).await?,
            stock: self.add_link("stock-srv→mariadb", loopback_any(), mariadb_addr).await?,
        })
    }

    /// Two coordinators on one MySQL database (through `store_port`),
    /// coordinator-2 under libfaketime when a clock skew is asked for, its
    /// offset then verified from its log. Returns their HTTP ports.
    async fn start_coordinators(
        &mut self,
        run: &RunFiles<'_>,
        binary: &Path,
        store_port: u16,
        clock_skew: Option<Duration>,
        faketime: Option<&Path>,
    ) -> Result<[u16; 2], ChaosError> {
        let etcd_hosts = self.etcd_hosts.clone();
        let coordinator_http = [free_port(), free_port()];
        for (i, http) in coordinator_http.iter().enumerate() {
            let grpc = free_port();
            let mut env = vec![
                run.path_env.clone(),
                run.no_color.clone(),
                var("LOG_LEVEL", "info"),
                var("LISTEN_HOST", "127.0.0.1"),
                var("HTTP_PORT", http.to_string()),
                var("GRPC_PORT", grpc.to_string()),
                var("STORE_DRIVER", "mysql"),
                var("STORE_HOST", "127.0.0.1"),
                var("STORE_PORT", store_port.to_string()),
                var("STORE_USER", "root"),
                var("STORE_PASSWORD", ""),
                var("STORE_DB", COORDINATOR_DB),
                var("MICRO_SERVICE_DRIVER", "dtm-driver-gozero"),
                var("MICRO_SERVICE_TARGET", format!("etcd://{etcd_hosts}/dtmservice")),
                var("MICRO_SERVICE_END_POINT", format!("127.0.0.1:{grpc}")),
                var("RETRY_INTERVAL", RETRY_INTERVAL_SECS.to_string()),
                var("MAX_RETRY_INTERVAL", MAX_RETRY_INTERVAL_SECS.to_string()),
                var("REQUEST_TIMEOUT", REQUEST_TIMEOUT.as_secs().to_string()),
                var("TRANS_CRON_INTERVAL", TRANS_CRON_INTERVAL_SECS.to_string()),
            ];
            let skewed = match (i, clock_skew, faketime) {
                (1, Some(skew), Some(library)) => {
                    // libfaketime shifts what CLOCK_REALTIME answers (Rust's
                    // SystemTime, chrono's Utc::now, the log timestamps) and,
                    // with DONT_FAKE_MONOTONIC, leaves CLOCK_MONOTONIC alone:
                    // tokio's timers and the request timeouts stay true.
                    env.push(var("LD_PRELOAD", library.display().to_string()));
                    env.push(var("FAKETIME", format!("+{}s", skew.as_secs())));
                    env.push(var("FAKETIME_DONT_FAKE_MONOTONIC", "1"));
                    Some(skew)
                }
                _ => None,
            };
            self.coordinator_grpc.push(grpc);
            let command = Command {
                program: binary.to_path_buf(),
                args: vec!["-f".into(), run.config("coordinator.yaml")],
                env,
                ports: vec![grpc, *http],
            };
            let name = format!("coordinator-{}", i + 1);
            self.add(Kind::Coordinator, &name, &run.logs, command).await?;
            if let Some(skew) = skewed {
                let log = run.logs.join(format!("{name}.log"));
                self.clock_skew = Some(verify_skew(&name, &log, skew).await?);
            }
        }
        Ok(coordinator_http)
    }

    /// Two instances of each branch service, each behind its proxy: a
    /// service registers the proxy's address, so every branch call the
    /// coordinators make crosses it.
    async fn start_branch_services(
        &mut self,
        run: &RunFiles<'_>,
        order_bin: &Path,
        stock_bin: &Path,
        db: &DatabaseLinks,
    ) -> Result<(), ChaosError> {
        let services = [
            (
                Kind::OrderSrv,
                order_bin,
                "order-srv.yaml",
                "ORDER_SRV_LISTEN_ON",
                "ORDER_DSN",
                db.order,
                ORDER_DB,
            ),
            (
                Kind::StockSrv,
                stock_bin,
                "stock-srv.yaml",
                "STOCK_SRV_LISTEN_ON",
                "STOCK_DSN",
                db.stock,
                STOCK_DB,
            ),
        ];
        for (kind, binary, file, listen_var, dsn_var, db_proxy, db) in services {
            for i in 1..=2 {
                let name = format!("{}-{i}", kind.name());
                let port = self.add_branch_link(&format!("coordinators→{name}")).await?;
                let env = vec![
                    run.path_env.clone(),
                    run.no_color.clone(),
                    var("LOG_LEVEL", "info"),
                    var(listen_var, format!("0.0.0.0:{port}")),
                    // Published as [::1]:port, the proxy's address.
                    var(discovery::address::POD_IP_ENV, "[::1]"),
                    var(dsn_var, format!("mysql://root@127.0.0.1:{db_proxy}/{db}")),
                    var("ETCD_HOSTS", self.etcd_hosts.clone()),
                ];
                let command = Command {
                    program: binary.to_path_buf(),
                    args: vec!["-f".into(), run.config(file)],
                    env,
                    ports: vec![port],
                };
                self.add(kind, &name, &run.logs, command).await?;
            }
        }
        Ok(())
    }

    /// order-api: the coordinators found in etcd; status queries go to
    /// coordinator-1's HTTP API (`coordinator_http`: dtm has no gRPC query).
    async fn start_order_api(
        &mut self,
        run: &RunFiles<'_>,
        binary: PathBuf,
        coordinator_http: u16,
    ) -> Result<(), ChaosError> {
        let api_port = self.api_port;
        let etcd_hosts = &self.etcd_hosts;
        let env = vec![
            run.path_env.clone(),
            run.no_color.clone(),
            var("LOG_LEVEL", "info"),
            var("ORDER_API_HOST", "127.0.0.1"),
            var("ORDER_API_LISTEN_PORT", api_port.to_string()),
            var("DTM_SERVER", format!("etcd://{etcd_hosts}/dtmservice")),
            var("DTM_HTTP_SERVER", format!("http://127.0.0.1:{coordinator_http}/api/dtmsvr")),
            var("ETCD_HOSTS", etcd_hosts.clone()),
        ];
        let command = Command {
            program: binary,
            args: vec!["-f".into(), run.config("order-api.yaml")],
            env,
            ports: vec![api_port],
        };
        self.add(Kind::OrderApi, "order-api", &run.logs, command).await
    }

    async fn add(&mut self, kind: Kind, name: &str, logs: &Path, command: Command) -> Result<(), ChaosError> {
        let mut proc = Proc {
            name: name.to_string(),
            kind,
            command,
            log: logs.join(format!("{name}.log")),
            process: None,
            paused: false,
        };
        proc.start().await?;
        self.procs.push(proc);
        Ok(())
    }

    async fn add_link(
        &mut self,
        name: &str,
        listen: SocketAddr,
        upstream: SocketAddr,
    ) -> Result<u16, ChaosError> {
        let link = Link::bind(name, listen, upstream)
            .await
            .map_err(|e| ChaosError::io(format!("starting the fault proxy {name} on {listen}"), e))?;
        let port = link.listen.port();
        self.links.push(Arc::new(link));
        Ok(port)
    }

    /// A proxy on `[::1]:P` forwarding to `127.0.0.1:P`, for a service that
    /// will listen on `0.0.0.0:P`; returns P.
    async fn add_branch_link(&mut self, name: &str) -> Result<u16, ChaosError> {
        let mut last_error = None;
        for _ in 0..10 {
            let port = free_port();
            let listen = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
            let upstream = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            match Link::bind(name, listen, upstream).await {
                Ok(link) => {
                    self.links.push(Arc::new(link));
                    return Ok(port);
                }
                Err(err) => last_error = Some(err),
            }
        }
        let err = last_error.unwrap_or_else(|| std::io::Error::other("no port"));
        Err(ChaosError::io(
            format!("binding the fault proxy {name} on [::1] (this harness needs an IPv6 loopback address)"),
            err,
        ))
    }

    /// A fault proxy in front of a branch server the chaos process hosts
    /// (the fencing workload's gate); returns the port to call.
    pub async fn add_hosted_branch_link(
        &mut self,
        name: &str,
        upstream: SocketAddr,
    ) -> Result<u16, ChaosError> {
        self.add_link(name, loopback_any(), upstream).await
    }

    /// `mysql://root@127.0.0.1:<port>`: MariaDB itself, not a proxy.
    pub fn server_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.mariadb_port)
    }

    /// `http://127.0.0.1:<port>` of order-api.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// Ends every fault: paused processes continue, dead ones start again,
    /// every link is clean.
    pub async fn heal(&mut self) -> Result<(), ChaosError> {
        for link in &self.links {
            link.heal();
        }
        for proc in &mut self.procs {
            if proc.paused() {
                proc.resume()?;
            }
        }
        for proc in &mut self.procs {
            if !proc.alive() {
                proc.start().await?;
            }
        }
        Ok(())
    }

    /// SIGKILLs everything, the gateway first.
    pub async fn shutdown(&mut self) {
        for proc in self.procs.iter_mut().rev() {
            proc.kill().await;
        }
    }

    /// Every process's log file.
    pub fn logs(&self) -> Vec<&Path> {
        self.procs.iter().map(|p| p.log.as_path()).collect()
    }
}

fn var(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_string(), value.into())
}

fn loopback_any() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
}

/// Whether every port accepts a connection on 127.0.0.1 right now.
async fn ports_open(ports: &[u16]) -> bool {
    for port in ports {
        let connect = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, *port));
        if !matches!(tokio::time::timeout(Duration::from_millis(500), connect).await, Ok(Ok(_))) {
            return false;
        }
    }
    true
}

/// Waits until `count` instances are registered under `key` in etcd.
async fn wait_registered(etcd_hosts: &str, key: &str, count: usize) -> Result<(), ChaosError> {
    let conf = discovery::EtcdConf::new(vec![etcd_hosts.to_string()], key);
    let resolver = discovery::Resolver::connect(&conf)
        .await
        .map_err(|e| ChaosError::Setup(format!("cannot read etcd at {etcd_hosts}: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = resolver.current().len();
        if found >= count {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ChaosError::Setup(format!(
                "{key}: {found} instances registered in etcd, expected {count}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `mariadb-install-db` into `dir/data` (root without password, TCP from
/// 127.0.0.1), the way harness does it.
async fn install_mariadb(dir: &Path) -> Result<(), ChaosError> {
    let install_db = find_program("mariadb-install-db", &[], "mariadb-server")?;
    let data = dir.join("data");
    // A private tmpdir: bootstraps side by side in a shared /tmp collide.
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| ChaosError::io(format!("creating {}", tmp.display()), e))?;
    let output = tokio::process::Command::new(&install_db)
        .args(["--no-defaults", "--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"])
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--tmpdir={}", tmp.display()))
        .output()
        .await
        .map_err(|e| ChaosError::io(format!("running {}", install_db.display()), e))?;
    if !output.status.success() {
        return Err(ChaosError::Setup(format!(
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(())
}

/// The four databases. The services would create theirs, but the
/// coordinator expects an administrator to have made its one.
async fn create_databases(server: &str) -> Result<(), ChaosError> {
    let mut conn = sqlx::MySqlConnection::connect(server).await?;
    for db in [COORDINATOR_DB, ORDER_DB, STOCK_DB, BARRIER_DB] {
        sqlx::query(&format!("CREATE DATABASE IF NOT EXISTS `{db}`")).execute(&mut conn).await?;
    }
    conn.close().await?;
    Ok(())
}

/// `name` on PATH or in `extra_dirs`, or an error saying which Debian
/// package to install.
fn find_program(name: &str, extra_dirs: &[&str], package: &str) -> Result<PathBuf, ChaosError> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(extra_dirs.iter().copied())
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            ChaosError::Setup(format!(
                "`{name}` was not found on PATH: quickorder-chaos runs a private server; \
                 install it with `apt-get install {package}`"
            ))
        })
}

/// libfaketime's preload library (Debian package `faketime`), the
/// thread-safe build when there is one: the coordinator is multi-threaded.
fn find_libfaketime() -> Result<PathBuf, ChaosError> {
    let dirs =
        ["/usr/lib/x86_64-linux-gnu/faketime", "/usr/lib/aarch64-linux-gnu/faketime", "/usr/lib/faketime"];
    ["libfaketimeMT.so.1", "libfaketime.so.1"]
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| Path::new(dir).join(name)))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            ChaosError::Setup(
                "libfaketime was not found: the clock offset between the coordinators needs it; \
                 install it with `apt-get install faketime` (or pass --clock-skew 0s)"
                    .into(),
            )
        })
}

/// Checks that a coordinator started with a shifted clock really lives in
/// the future: its own log lines carry its `SystemTime`. Returns the
/// measured offset (whole seconds), or an error if it is off by more than
/// two seconds from what was asked — libfaketime not taking effect must
/// not pass silently as "tested with skewed clocks".
async fn verify_skew(name: &str, log: &Path, want: Duration) -> Result<Duration, ChaosError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let now = chrono::Utc::now();
        let stamps: Vec<chrono::DateTime<chrono::Utc>> = text
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter_map(|stamp| chrono::DateTime::parse_from_rfc3339(stamp).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .collect();
        if let Some(last) = stamps.last() {
            let ahead = (*last - now).num_milliseconds() as f64 / 1000.0;
            let wanted = want.as_secs() as f64;
            if (ahead - wanted).abs() <= 2.0 {
                return Ok(Duration::from_secs(want.as_secs()));
            }
            if Instant::now() >= deadline {
                return Err(ChaosError::Setup(format!(
                    "{name} was started with its clock {wanted:.0} s ahead (libfaketime), but its log says \
                     {ahead:.1} s: the clock offset did not take effect"
                )));
            }
        } else if Instant::now() >= deadline {
            return Err(ChaosError::Setup(format!("{name} logged no timestamp to verify its clock offset")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last `lines` lines of a log, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
