//! The modes: what each one starts, what one operation is, and the common
//! measuring frame around them.
//!
//! | mode | processes started | one operation |
//! |---|---|---|
//! | `db` | — | `INSERT` of one row, autocommit |
//! | `direct` | order-srv, stock-srv | the saga's two actions, called by the client itself over gRPC (no coordinator) |
//! | `saga` | coordinator | a 2-step saga with `wait_result`, over the coordinator's gRPC or HTTP API, branches in the bench process |
//! | `http` | coordinator, order-srv, stock-srv, order-api | `POST /order/quickCreate` (order-api submits with `wait_result`) |
//! | `peer` | coordinator (or none: `--dtm URL`) | an empty-branch HTTP saga, timed until its last action reached the branch server |
//! | `workflow` | as `http`, order-api with `TRANS_MODE=workflow` | `POST /order/quickCreate`, run by order-api as a dtm workflow (it calls the branches, the coordinator records each step) |
//! | `xa` | coordinator | a 2-branch XA global transaction (prepare, two HTTP branch calls, submit with `wait_result`), the branches' barrier + SQL inside `XA START … PREPARE` on MariaDB in the bench process ([`super::xa_branches`]), phase 2 by the coordinator |
//!
//! The frame: fresh databases and the processes ([`start`]), then per
//! measurement ([`Running::measure`]) a short warm-up (not measured:
//! connections, prepared statements, caches), readings of `/proc` and of
//! the database counters, the measured load, readings again; at the end
//! everything stopped and the databases dropped ([`Running::stop`]).
//! [`run`] does it once; `compare` measures every mode once per round.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use dtm_client::{ClientError, DtmClient, Xa};
use dtm_protocol::{BranchCall, BranchId, Gid, Op as BranchOp, TransType};
use futures::FutureExt;
use proto::order::{CreateBody, CreateReq, OrderClient};
use proto::stock::{DeductBody, DeductReq, StockClient};
use tokio_util::sync::CancellationToken;

use order_api::config::TransMode;

use super::branches::{BranchDbs, BranchServers, Transport, Work};
use super::dbstat::Monitor;
use super::load::{self, Limit, Op, OpError, Plan};
use super::procstat::{self, Watched};
use super::report::{Inputs, Readings, Report};
use super::system::{BranchService, CoordinatorProcess, Databases, Launcher, Server, Service, Setting};
use super::xa_branches::{self, XaBranchServer};

/// The coordinator API a `saga` client submits through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Api {
    /// `/dtmgimp.Dtm/Submit` (dtmgrpc).
    Grpc,
    /// `POST /api/dtmsvr/submit` (dtmcli).
    Http,
}

/// One mode, fully specified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModeSpec {
    /// Single-row insert commits.
    Db,
    /// The two branch calls without a coordinator.
    Direct,
    /// Sagas straight to the coordinator.
    Saga {
        /// Its API.
        api: Api,
        /// How it calls the branches.
        branches: Transport,
        /// What the branches do.
        work: Work,
    },
    /// The user's path through order-api.
    Http {
        /// Settings given to the coordinator as environment variables
        /// (`ATTEMPTS_RECORD=off`): empty for the shipped configuration;
        /// `compare --variant` runs a second `http` with them, to measure
        /// what one setting costs beside the run without it.
        variant: Vec<Setting>,
    },
    /// The user's path with order-api running the quick order as a dtm
    /// workflow: what the workflow costs against `http`'s saga.
    Workflow,
    /// XA global transactions straight to the coordinator, doing the
    /// `saga --work sql` branches' work under two-phase commit: what 2PC
    /// costs against `saga`'s compensation.
    Xa {
        /// The coordinator API the application side uses (the branches
        /// are HTTP: `--api http --branches http` makes `saga` the same).
        api: Api,
    },
    /// Empty-branch HTTP sagas against any dtm-compatible coordinator.
    Peer {
        /// Its `…/api/dtmsvr` URL; `None` starts ours.
        dtm: Option<String>,
        /// Its pid, to account its CPU (when it runs on this machine).
        pid: Option<u32>,
        /// Its name in the report (`ours` when started here).
        name: String,
    },
}

impl ModeSpec {
    /// `http`, `saga`, …
    pub fn name(&self) -> &'static str {
        match self {
            ModeSpec::Db => "db",
            ModeSpec::Direct => "direct",
            ModeSpec::Saga { .. } => "saga",
            ModeSpec::Http { .. } => "http",
            ModeSpec::Workflow => "workflow",
            ModeSpec::Xa { .. } => "xa",
            ModeSpec::Peer { .. } => "peer",
        }
    }

    /// What the report calls this run.
    pub fn label(&self) -> String {
        match self {
            ModeSpec::Db => "db insert-commit".into(),
            ModeSpec::Direct => "direct grpc work=sql".into(),
            ModeSpec::Saga { api, branches, work } => format!(
                "saga api={} branches={} work={}",
                format!("{api:?}").to_lowercase(),
                format!("{branches:?}").to_lowercase(),
                format!("{work:?}").to_lowercase()
            ),
            ModeSpec::Http { variant } if variant.is_empty() => "http quickCreate".into(),
            ModeSpec::Http { variant } => {
                let settings: Vec<String> = variant.iter().map(Setting::to_string).collect();
                format!("http quickCreate{VARIANT_MARK}{}", settings.join(" "))
            }
            ModeSpec::Workflow => "workflow quickCreate".into(),
            ModeSpec::Xa { api } => {
                format!("xa api={} branches=http work=sql", format!("{api:?}").to_lowercase())
            }
            ModeSpec::Peer { name, .. } => format!("peer {name}"),
        }
    }
}

/// Between a mode's label and its variant's settings:
/// `http quickCreate with ATTEMPTS_RECORD=off`.
pub const VARIANT_MARK: &str = " with ";

/// What every mode shares.
pub struct Settings {
    /// Concurrent clients.
    pub clients: usize,
    /// Length of the measured window.
    pub limit: Limit,
    /// Unmeasured load before the window.
    pub warmup: Duration,
    /// Show the live progress line.
    pub progress: bool,
    /// The database server.
    pub server: Server,
    /// Starts the service binaries.
    pub launcher: Launcher,
    /// Unique per invocation; part of every database name and gid.
    pub run_id: String,
    /// Keep the databases (for a look afterwards).
    pub keep: bool,
    /// Finished sagas put into our coordinator's store before the run.
    pub store_history: u64,
    /// Connections the pools of every mode kept running may open
    /// ([`connections_needed`]): below that, the server's `max_connections`
    /// is worth a warning.
    pub connections_needed: u64,
}

/// What a mode has started, stopped at the end whatever happened.
#[derive(Default)]
struct Parts {
    /// Spawned processes, in start order.
    services: Vec<Service>,
    /// The built-in branch servers.
    branches: Option<BranchServers>,
    /// The built-in XA branch server (`xa`).
    xa_branches: Option<XaBranchServer>,
}

impl Parts {
    async fn stop(self) -> anyhow::Result<()> {
        // The callers first, the branches last: nothing calls a stopped server.
        for service in self.services.into_iter().rev() {
            service.stop().await;
        }
        let xa = match self.xa_branches {
            Some(server) => server.stop().await,
            None => Ok(()),
        };
        let saga = match self.branches {
            Some(branches) => branches.stop().await,
            None => Ok(()),
        };
        xa.and(saga)
    }
}

/// What a mode's set-up hands the frame.
struct Prepared {
    /// One operation.
    op: Op,
    /// The spawned processes to account for (the frame adds the database
    /// server and the bench itself).
    watched: Vec<Watched>,
    /// For the reader of the report.
    notes: Vec<String>,
}

/// A mode set up and ready to measure: its databases, its processes, its
/// operation. `compare` keeps every mode's up across its rounds, so a
/// round costs only the measured windows; a single mode measures once.
pub struct Running {
    /// What runs.
    spec: ModeSpec,
    /// Its label, for messages.
    label: String,
    /// Its fresh databases, dropped by [`Running::stop`].
    dbs: Databases,
    /// The processes and branch servers it started.
    parts: Parts,
    /// One operation.
    op: Op,
    /// The processes each report accounts for, the database server and
    /// the bench included.
    watched: Vec<Watched>,
    /// Notes every report of this mode carries.
    notes: Vec<String>,
    /// The connection the database counters are read through.
    monitor: Monitor,
}

/// Runs one mode from fresh databases to dropped databases.
pub async fn run(settings: &Settings, spec: &ModeSpec, cancel: &CancellationToken) -> anyhow::Result<Report> {
    let mut running = start(settings, spec).await?;
    let result = running.measure(settings, None, cancel).await;
    let stopped = running.stop(settings).await;
    let report = result?;
    stopped?;
    Ok(report)
}

/// Sets `spec` up on fresh databases: everything but the measuring. On an
/// error, whatever was started is stopped and the databases dropped.
pub async fn start(settings: &Settings, spec: &ModeSpec) -> anyhow::Result<Running> {
    // A variant runs beside the plain mode, on databases of its own.
    let variant =
        if matches!(spec, ModeSpec::Http { variant } if !variant.is_empty()) { "_variant" } else { "" };
    let prefix = format!("qob_{}_{}{variant}", settings.run_id, spec.name());
    let mut dbs = Databases::open(&settings.server, prefix).await?;
    let mut parts = Parts::default();
    match set_up(settings, spec, &mut dbs, &mut parts).await {
        Ok((prepared, watched, notes, monitor)) => Ok(Running {
            spec: spec.clone(),
            label: spec.label(),
            dbs,
            parts,
            op: prepared.op,
            watched,
            notes,
            monitor,
        }),
        Err(err) => {
            // The set-up error is the one to report; a clean-up failure
            // after it is only logged.
            if let Err(cleanup) = tear_down(settings, dbs, parts).await {
                eprintln!("[{}] clean-up after a failed start: {cleanup:#}", spec.label());
            }
            Err(err)
        }
    }
}

/// Stops `parts` and drops `dbs` (unless `--keep`); the first error wins,
/// but both are attempted.
async fn tear_down(settings: &Settings, dbs: Databases, parts: Parts) -> anyhow::Result<()> {
    let stopped = parts.stop().await;
    let dropped = if settings.keep {
        eprintln!("keeping databases {}_* and logs in {}", dbs.prefix(), settings.launcher.dir.display());
        Ok(())
    } else {
        dbs.drop_all().await
    };
    stopped?;
    dropped
}

impl Running {
    /// What the reports call this mode.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// One measurement: the warm-up (the closed loop ramps up, and in
    /// `compare` the database's caches come back from the previous mode's
    /// run), the readings, the measured window, the readings again.
    /// `round` is `compare`'s round number, written into the report.
    pub async fn measure(
        &mut self,
        settings: &Settings,
        round: Option<usize>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Report> {
        let label = &self.label;
        // A service that died since the last round would only show as
        // errors; say which one, with its log.
        if let Some(dead) = self.parts.services.iter().find(|s| !s.is_alive()) {
            bail!(
                "[{label}] {} (pid {}) is no longer running; its log:\n{}",
                dead.name,
                dead.pid,
                dead.log_tail()
            );
        }
        if !settings.warmup.is_zero() {
            let plan = Plan {
                clients: settings.clients,
                limit: Limit::Duration(settings.warmup),
                label: format!("{label} warm-up"),
                progress: false,
            };
            let warm = load::run(&plan, &self.op, cancel).await;
            if warm.ok == 0
                && let Some((kind, error)) = warm.errors.iter().next()
            {
                bail!("[{label}] every warm-up operation failed; first {kind}: {}", error.sample);
            }
        }

        let before = readings(&self.watched, &mut self.monitor).await;
        let plan = Plan {
            clients: settings.clients,
            limit: settings.limit,
            label: match round {
                Some(round) => format!("{label} round {round}"),
                None => label.clone(),
            },
            progress: settings.progress,
        };
        let outcome = load::run(&plan, &self.op, cancel).await;
        let after = readings(&self.watched, &mut self.monitor).await;

        Ok(Report::build(Inputs {
            mode: self.spec.name(),
            label: label.clone(),
            round,
            clients: settings.clients,
            outcome: &outcome,
            watched: &self.watched,
            before: &before,
            after: &after,
            notes: self.notes.clone(),
        }))
    }

    /// Stops its processes and drops its databases.
    pub async fn stop(self, settings: &Settings) -> anyhow::Result<()> {
        tear_down(settings, self.dbs, self.parts).await
    }
}

/// Starts what `spec` needs and opens the monitor connection; returns the
/// operation, the processes to account for and the notes.
async fn set_up(
    settings: &Settings,
    spec: &ModeSpec,
    dbs: &mut Databases,
    parts: &mut Parts,
) -> anyhow::Result<(Prepared, Vec<Watched>, Vec<String>, Monitor)> {
    let label = spec.label();
    eprintln!("[{label}] starting");
    let mut prepared = match spec {
        ModeSpec::Db => db(settings, dbs).await?,
        ModeSpec::Direct => direct(settings, dbs, parts).await?,
        ModeSpec::Saga { api, branches, work } => saga(settings, dbs, parts, *api, *branches, *work).await?,
        ModeSpec::Http { variant } => http(settings, dbs, parts, variant, TransMode::Saga).await?,
        ModeSpec::Workflow => http(settings, dbs, parts, &[], TransMode::Workflow).await?,
        ModeSpec::Xa { api } => xa(settings, dbs, parts, *api).await?,
        ModeSpec::Peer { dtm, pid, name } => peer(settings, dbs, parts, dtm.as_deref(), *pid, name).await?,
    };

    let mut monitor =
        Monitor::connect(settings.server.url()).await.context("cannot open the monitor connection")?;
    let mut watched = std::mem::take(&mut prepared.watched);
    if let Some(pid) = monitor.server_pid().await {
        watched.push(Watched::new("mariadbd", pid));
    }
    let bench_name = if matches!(spec, ModeSpec::Saga { .. } | ModeSpec::Peer { .. } | ModeSpec::Xa { .. }) {
        "bench (+branches)"
    } else {
        "bench"
    };
    watched.push(Watched::new(bench_name, std::process::id()));
    let mut notes = std::mem::take(&mut prepared.notes);
    notes.push(format!("database: {}", monitor.describe().await));
    if settings.store_history > 0 && !matches!(spec, ModeSpec::Db | ModeSpec::Direct) {
        // Counted, not assumed: the fill is part of what is being measured.
        let finished = dbs.finished_sagas().await?;
        notes.push(format!("our coordinator's store held {finished} finished sagas before the warm-up"));
    }
    let need = settings.connections_needed;
    if !matches!(spec, ModeSpec::Db)
        && let Some(limit) = monitor.max_connections().await
        && limit < need
    {
        let warning = format!(
            "max_connections={limit} is below the {need} connections the pools may open (64 per service \
             pool, plus the clients, for every mode kept running): expect \"Too many connections\" under \
             load; SET GLOBAL max_connections = 1000"
        );
        eprintln!("[{label}] warning: {warning}");
        notes.push(warning);
    }
    Ok((prepared, watched, notes, monitor))
}

/// The connections the pools of the modes in `specs`, all running at once,
/// may open: 64 per pool (go-zero's and the coordinator's default size),
/// the bench's own for `db`, and some slack per mode for the monitor and
/// admin connections.
pub fn connections_needed(specs: &[ModeSpec], clients: usize) -> u64 {
    const POOL: u64 = 64;
    let clients = clients as u64;
    let pools: u64 = specs
        .iter()
        .map(|spec| match spec {
            ModeSpec::Db => clients,
            ModeSpec::Direct => 2 * POOL,
            ModeSpec::Saga { work: Work::Sql, .. } => 3 * POOL,
            ModeSpec::Saga { work: Work::None, .. } => POOL,
            ModeSpec::Http { .. } | ModeSpec::Workflow => 3 * POOL,
            // The coordinator's pool, the branches' two, and the session
            // each branch's local transaction opens of its own (at most one
            // per client and branch at a time).
            ModeSpec::Xa { .. } => 3 * POOL + 2 * clients,
            ModeSpec::Peer { dtm: None, .. } => POOL,
            ModeSpec::Peer { dtm: Some(_), .. } => 0,
        })
        .sum();
    pools + clients + 16 * specs.len() as u64
}

async fn readings(watched: &[Watched], monitor: &mut Monitor) -> Readings {
    let counters = monitor.snapshot().await.ok();
    Readings {
        processes: watched.iter().map(|w| procstat::sample(w.pid)).collect(),
        machine: procstat::machine(),
        counters,
    }
}

/// Gids `<prefix>-<n>`: unique per run, and the clean-up finds their
/// barrier rows by the prefix.
fn gids(prefix: &str) -> impl Fn() -> String + Send + Sync + 'static {
    let prefix = prefix.to_string();
    let next = AtomicU64::new(0);
    move || format!("{prefix}-{}", next.fetch_add(1, Ordering::Relaxed))
}

fn service_note(settings: &Settings) -> String {
    format!("services run with LOG_LEVEL={} and direct addresses (no etcd)", settings.launcher.log_level)
}

// ---- db ---------------------------------------------------------------

async fn db(settings: &Settings, dbs: &mut Databases) -> anyhow::Result<Prepared> {
    let name = dbs.create("db").await?;
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(u32::try_from(settings.clients.max(1)).unwrap_or(u32::MAX))
        .connect(&settings.server.database_url(&name))
        .await?;
    sqlx::query(
        "CREATE TABLE bench (id BIGINT AUTO_INCREMENT PRIMARY KEY, gid VARCHAR(128) NOT NULL, \
         created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP) ENGINE=InnoDB",
    )
    .execute(&pool)
    .await?;
    let gid = gids(dbs.prefix());
    let op: Op = Arc::new(move || {
        let pool = pool.clone();
        let gid = gid();
        async move {
            sqlx::query("INSERT INTO bench (gid) VALUES (?)")
                .bind(gid)
                .execute(&pool)
                .await
                .map(drop)
                .map_err(|err| OpError::new("sql", err))
        }
        .boxed()
    });
    Ok(Prepared { op, watched: Vec::new(), notes: vec!["one autocommit INSERT per operation".into()] })
}

// ---- direct -----------------------------------------------------------

/// A saga action as the coordinator calls it: dtm's metadata written by
/// the coordinator's own [`BranchCall`], the same deadline as the
/// services' (2 s... plus slack). `index` is the step (0: `01`).
fn branch_request<T>(message: T, gid: &str, index: usize) -> Result<tonic::Request<T>, OpError> {
    let gid = Gid::new(gid).map_err(|err| OpError::new("bad_metadata", err))?;
    let call = BranchCall::new(gid, TransType::Saga, BranchId::nth(index), BranchOp::Action);
    let mut request = call.grpc_request(message).map_err(|err| OpError::new("bad_metadata", err))?;
    request.set_timeout(Duration::from_secs(3));
    Ok(request)
}

fn grpc_error(status: &tonic::Status) -> OpError {
    OpError::new(format!("grpc_{:?}", status.code()).to_lowercase(), status.message())
}

async fn channel(addr: std::net::SocketAddr) -> anyhow::Result<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

/// order-srv and stock-srv as processes on fresh databases, the stock
/// raised for the run; returns their gRPC addresses.
async fn branch_services(
    settings: &Settings,
    dbs: &mut Databases,
    parts: &mut Parts,
) -> anyhow::Result<(std::net::SocketAddr, std::net::SocketAddr)> {
    let order_db = dbs.create("order").await?;
    let stock_db = dbs.create("stock").await?;
    let launcher = &settings.launcher;
    let (order, order_addr) =
        launcher.branch_service(BranchService::Order, &settings.server.database_url(&order_db)).await?;
    parts.services.push(order);
    let (stock, stock_addr) =
        launcher.branch_service(BranchService::Stock, &settings.server.database_url(&stock_db)).await?;
    parts.services.push(stock);
    dbs.raise_stock(&stock_db).await?;
    Ok((order_addr, stock_addr))
}

async fn direct(settings: &Settings, dbs: &mut Databases, parts: &mut Parts) -> anyhow::Result<Prepared> {
    let (order_addr, stock_addr) = branch_services(settings, dbs, parts).await?;

    // One HTTP/2 connection per service, shared by all clients: what the
    // coordinator does too.
    let order_client = OrderClient::new(channel(order_addr).await?);
    let stock_client = StockClient::new(channel(stock_addr).await?);
    let gid = gids(dbs.prefix());
    let op: Op = Arc::new(move || {
        let (mut order, mut stock) = (order_client.clone(), stock_client.clone());
        let gid = gid();
        async move {
            let create = CreateReq { user_id: 1, goods_id: 1, num: 1 };
            order.create(branch_request(create, &gid, 0)?).await.map_err(|s| grpc_error(&s))?;
            let deduct = DeductReq { goods_id: 1, num: 1 };
            stock.deduct(branch_request(deduct, &gid, 1)?).await.map_err(|s| grpc_error(&s))?;
            Ok(())
        }
        .boxed()
    });
    let watched = parts.services.iter().map(|s| Watched::new(s.name, s.pid)).collect();
    Ok(Prepared { op, watched, notes: vec![service_note(settings)] })
}

// ---- saga and peer ----------------------------------------------------

fn client_error(err: &ClientError) -> OpError {
    let kind = match err {
        ClientError::Failure(_) => "saga_failed",
        ClientError::Ongoing => "saga_ongoing",
        ClientError::Unavailable(_) => "unavailable",
        ClientError::InvalidArgument(_) => "invalid_argument",
        ClientError::Other(_) => "other",
    };
    OpError::new(kind, err)
}

/// Our coordinator on a fresh store database, which first gets
/// `--store-history` finished sagas when asked.
/// Our coordinator on a fresh store, with `variant`'s settings on top of
/// the shipped configuration.
async fn our_coordinator(
    settings: &Settings,
    dbs: &mut Databases,
    variant: &[Setting],
) -> anyhow::Result<CoordinatorProcess> {
    let store = dbs.create_store("dtm").await?;
    let coordinator = settings.launcher.coordinator(&settings.server, &store, variant).await?;
    if settings.store_history > 0 {
        dbs.fill_store(&store, settings.store_history).await?;
    }
    Ok(coordinator)
}

/// Our coordinator, for a client of `api`: its address on that API, and
/// the process to account for.
async fn coordinator_at(
    settings: &Settings,
    dbs: &mut Databases,
    parts: &mut Parts,
    api: Api,
) -> anyhow::Result<(String, Vec<Watched>)> {
    let coordinator = our_coordinator(settings, dbs, &[]).await?;
    let watched = vec![Watched::new("coordinator", coordinator.service.pid)];
    let address = match api {
        Api::Grpc => coordinator.grpc.to_string(),
        Api::Http => coordinator.http_base(),
    };
    parts.services.push(coordinator.service);
    Ok((address, watched))
}

/// Fresh order and stock databases for the branches built into the bench.
async fn branch_databases(settings: &Settings, dbs: &mut Databases) -> anyhow::Result<BranchDbs> {
    Ok(BranchDbs {
        order: settings.server.database_url(&dbs.create("order").await?),
        stock: settings.server.database_url(&dbs.create("stock").await?),
    })
}

async fn saga(
    settings: &Settings,
    dbs: &mut Databases,
    parts: &mut Parts,
    api: Api,
    transport: Transport,
    work: Work,
) -> anyhow::Result<Prepared> {
    let (address, watched) = coordinator_at(settings, dbs, parts, api).await?;
    let branch_dbs = match work {
        Work::Sql => Some(branch_databases(settings, dbs).await?),
        Work::None => None,
    };
    let servers = BranchServers::start(transport, work, branch_dbs.as_ref()).await?;
    if work == Work::Sql {
        let stock_db = format!("{}_stock", dbs.prefix());
        dbs.raise_stock(&stock_db).await?;
    }
    let client = DtmClient::with_timeout(&address, discovery::ChannelCache::new(), Duration::from_secs(15))?;
    let shape = servers.shape.clone();
    parts.branches = Some(servers);

    let gid = gids(dbs.prefix());
    let op: Op = Arc::new(move || {
        let client = client.clone();
        let saga = Gid::new(gid()).map(|gid| shape.saga(gid));
        async move {
            let saga = saga.map_err(|err| OpError::new("bad_gid", err))?;
            client.submit(&saga).await.map_err(|err| client_error(&err))
        }
        .boxed()
    });
    let notes = vec![
        "the branch servers run inside the bench process: its CPU includes them".to_string(),
        service_note(settings),
    ];
    Ok(Prepared { op, watched, notes })
}

async fn peer(
    settings: &Settings,
    dbs: &mut Databases,
    parts: &mut Parts,
    dtm: Option<&str>,
    pid: Option<u32>,
    name: &str,
) -> anyhow::Result<Prepared> {
    let mut watched = Vec::new();
    let base = match dtm {
        Some(url) => {
            if let Some(pid) = pid {
                watched.push(Watched::new(name, pid));
            }
            url.trim_end_matches('/').to_string()
        }
        None => {
            let coordinator = our_coordinator(settings, dbs, &[]).await?;
            watched.push(Watched::new("coordinator", coordinator.service.pid));
            let base = coordinator.http_base();
            parts.services.push(coordinator.service);
            base
        }
    };
    if !base.starts_with("http://") && !base.starts_with("https://") {
        bail!("--dtm wants the coordinator's HTTP API, e.g. http://127.0.0.1:36789/api/dtmsvr, not {base}");
    }
    let client = DtmClient::with_timeout(&base, discovery::ChannelCache::new(), Duration::from_secs(15))?;
    let servers = BranchServers::start(Transport::Http, Work::None, None).await?;
    let shape = servers.shape.clone();
    let finals = Arc::clone(&servers.finals);
    parts.branches = Some(servers);

    let gid = gids(dbs.prefix());
    let op: Op = Arc::new(move || {
        let client = client.clone();
        let finals = Arc::clone(&finals);
        let gid = gid();
        let saga = Gid::new(gid.clone()).map(|g| shape.saga(g));
        async move {
            let saga = saga.map_err(|err| OpError::new("bad_gid", err))?;
            let last_action = finals.expect(&gid);
            if let Err(err) = client.submit(&saga).await {
                finals.forget(&gid);
                return Err(client_error(&err));
            }
            // Final = the last branch has been called; a coordinator that
            // honours wait_result is already there when submit returns.
            match tokio::time::timeout(Duration::from_secs(20), last_action).await {
                Ok(Ok(())) => Ok(()),
                _ => {
                    finals.forget(&gid);
                    Err(OpError::new("not_final", format!("{gid}: last action not called within 20 s")))
                }
            }
        }
        .boxed()
    });
    let mut notes = vec![
        "empty HTTP branches in the bench process; each saga is timed until its last action arrived"
            .to_string(),
    ];
    if dtm.is_some() && pid.is_none() {
        notes.push("no --peer-pid: the peer's CPU is not accounted".into());
    }
    if dtm.is_none() {
        notes.push(service_note(settings));
    }
    Ok(Prepared { op, watched, notes })
}

// ---- http -------------------------------------------------------------

async fn http(
    settings: &Settings,
    dbs: &mut Databases,
    parts: &mut Parts,
    variant: &[Setting],
    trans_mode: TransMode,
) -> anyhow::Result<Prepared> {
    let coordinator = our_coordinator(settings, dbs, variant).await?;
    let (dtm_grpc, dtm_http) = (coordinator.grpc, coordinator.http_base());
    parts.services.push(coordinator.service);
    let (order_addr, stock_addr) = branch_services(settings, dbs, parts).await?;
    let (api, api_addr) =
        settings.launcher.order_api(dtm_grpc, &dtm_http, order_addr, stock_addr, trans_mode).await?;
    parts.services.push(api);
    let watched = parts.services.iter().map(|s| Watched::new(s.name, s.pid)).collect();

    let client =
        reqwest::Client::builder().pool_max_idle_per_host(settings.clients).tcp_nodelay(true).build()?;
    let url = format!("http://{api_addr}/order/quickCreate");
    let op: Op = Arc::new(move || {
        let request = client.post(&url).json(&serde_json::json!({"userId": 1, "goodsId": 1, "num": 1}));
        async move {
            let response = request.send().await.map_err(|err| OpError::new("http_send", err))?;
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            if status == 200 && body.contains(r#""status":"succeed""#) {
                Ok(())
            } else {
                Err(OpError::new(format!("http_{status}"), body))
            }
        }
        .boxed()
    });
    Ok(Prepared { op, watched, notes: vec![service_note(settings)] })
}

// ---- xa ---------------------------------------------------------------

async fn xa(
    settings: &Settings,
    dbs: &mut Databases,
    parts: &mut Parts,
    api: Api,
) -> anyhow::Result<Prepared> {
    let (address, watched) = coordinator_at(settings, dbs, parts, api).await?;
    let branch_dbs = branch_databases(settings, dbs).await?;
    let client = DtmClient::with_timeout(&address, discovery::ChannelCache::new(), Duration::from_secs(15))?;
    let server = XaBranchServer::start(&branch_dbs, client.clone()).await?;
    let (order_url, stock_url) = (
        format!("{}{}", server.base, xa_branches::ORDER_PATH),
        format!("{}{}", server.base, xa_branches::STOCK_PATH),
    );
    parts.xa_branches = Some(server);
    let stock_db = format!("{}_stock", dbs.prefix());
    dbs.raise_stock(&stock_db).await?;

    let gid = gids(dbs.prefix());
    let (order_url, stock_url) = (Arc::new(order_url), Arc::new(stock_url));
    let op: Op = Arc::new(move || {
        let (client, order_url, stock_url) = (client.clone(), Arc::clone(&order_url), Arc::clone(&stock_url));
        let gid = Gid::new(gid());
        async move {
            let gid = gid.map_err(|err| OpError::new("bad_gid", err))?;
            let create = CreateBody::from(&CreateReq { user_id: 1, goods_id: 1, num: 1 });
            let deduct = DeductBody::from(&DeductReq { goods_id: 1, num: 1 });
            Xa::new(client, gid)
                .wait_result(true)
                .run(async |xa: &Xa| {
                    xa.call_branch_json(&create, &order_url).await?;
                    xa.call_branch_json(&deduct, &stock_url).await?;
                    Ok(())
                })
                .await
                .map_err(|err| client_error(&err))
        }
        .boxed()
    });
    let notes = vec![
        "the XA branch server runs inside the bench process: its CPU includes it".to_string(),
        "every order deducts the same stock row, whose lock an XA branch holds until phase 2".to_string(),
        service_note(settings),
    ];
    Ok(Prepared { op, watched, notes })
}
