//! `quickorder-chaos`: the real system as separate processes, concurrent
//! quick orders, a seeded schedule of faults, and a check of every promise
//! the saga makes once the faults stop.
//!
//! ```text
//! quickorder-chaos --duration 60s --seed 7 [--clients 4] [--workload quick-order|fencing|mixed] [--run-dir DIR]
//! ```
//!
//! 1. [`topology`] starts a private MariaDB and etcd, two coordinators on
//!    one MySQL database, two order-srv, two stock-srv and order-api, each
//!    the real binary next to `quickorder-chaos`, with fault [`proxy`]s between
//!    the coordinators and every branch instance and between each group of
//!    database clients and MariaDB;
//! 2. [`traffic`] posts quick orders from `--clients` concurrent clients
//!    (random users, goods 1..=3 with known stock, a share of orders larger
//!    than any stock) for `--duration`;
//! 3. meanwhile [`schedule`] plays a plan derived from `--seed`: SIGKILL and
//!    restart of every kind of process (coordinators, services, order-api,
//!    MariaDB, etcd), SIGSTOP/SIGCONT pauses longer than the request
//!    timeout, and latency, stalls and dropped connections on the proxies;
//! 4. then the faults stop, everything is healed, and the run waits (at
//!    most `--quiesce-timeout`) until no saga is left unfinished;
//! 5. [`checker`] reads the coordinator's store and the business and
//!    barrier tables and checks every invariant; [`report`] prints what
//!    happened and every violation with its gid, and the command exits
//!    non-zero if there is one.
//!
//! `--workload fencing` replaces the quick orders by [`fencing`] sagas:
//! three steps whose middle one fails, submitted straight to both
//! coordinators by clients that resubmit a saga while it runs, with the
//! slow middle step served by the chaos process itself ([`gate`]);
//! coordinator-2 runs with its wall clock `--clock-skew` ahead (30 s by
//! default, libfaketime) and one coordinator is paused for far longer
//! than the lease; a third of those clients' transactions are TCCs that
//! dawdle past their timeout or abort while a try runs. `--workload mixed` runs both kinds of clients. The
//! checker then also proves, step by step from the barrier rows, that a
//! failed saga left no action in force and a succeeded one every action
//! exactly once.
//!
//! Logs of every process are in `<run folder>/logs`, appended to across
//! restarts; a gid from the report can be followed through all of them
//! with `grep`. MariaDB's and etcd's data stay in the run folder after a
//! failing run (or with `--keep-data`) for a post-mortem.
//!
//! Longer runs find rarer interleavings; the fault window is the first
//! 80 % of `--duration`, and extra random faults fill it once every
//! mandatory one has run:
//!
//! ```text
//! quickorder-chaos --duration 10m --seed 42 --clients 8
//! for seed in $(seq 1 20); do quickorder-chaos --duration 120s --seed $seed || break; done
//! ```

pub mod checker;
pub mod fencing;
pub mod gate;
pub mod proxy;
pub mod report;
pub mod schedule;
pub mod topology;
pub mod traffic;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use self::report::{LinkSummary, Report};
use self::schedule::Shape;
use self::topology::{Layout, Topology};
use self::traffic::Driver;
use harness::parse_duration;

/// How long traffic keeps running after the last fault ended, so the
/// recovery from it is measured.
const TAIL: Duration = Duration::from_secs(3);

/// What the clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Quick orders through order-api (`POST /order/quickCreate`).
    QuickOrder,
    /// Three-step sagas with a failing middle step, straight to both
    /// coordinators, resubmitted while in flight; one coordinator's clock
    /// ahead by more than the lease.
    Fencing,
    /// Both: half of `--clients` each (at least one of each).
    Mixed,
}

impl Workload {
    fn quick_order_clients(self, clients: usize) -> usize {
        match self {
            Workload::QuickOrder => clients,
            Workload::Fencing => 0,
            Workload::Mixed => clients.div_ceil(2),
        }
    }

    fn fencing_clients(self, clients: usize) -> usize {
        match self {
            Workload::QuickOrder => 0,
            Workload::Fencing => clients,
            Workload::Mixed => (clients / 2).max(1),
        }
    }

    /// The goods the run seeds and checks.
    fn goods(self) -> Vec<(i64, i32)> {
        let mut goods = Vec::new();
        if self != Workload::Fencing {
            goods.extend(traffic::GOODS);
        }
        if self != Workload::QuickOrder {
            goods.extend(fencing::GOODS);
        }
        goods
    }
}

/// `quickorder-chaos` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// How long traffic runs with faults (`60s`, `2m`, `90`). Faults start
    /// in the first 80 %; the run extends if the mandatory ones need longer.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Seed of the fault plan and the traffic: the same seed, the same plan.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Folder for logs, data and the report (default: a new folder in the
    /// temp dir, named after the time and the seed).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Folder holding the coordinator, order-srv, stock-srv and order-api
    /// binaries (default: the folder of this executable).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Longest wait for every saga to become final after the faults stop.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub quiesce_timeout: Duration,
    /// Keep MariaDB's and etcd's data after a passing run too.
    #[arg(long)]
    pub keep_data: bool,
    /// What the clients do.
    #[arg(long, value_enum, default_value_t = Workload::QuickOrder)]
    pub workload: Workload,
    /// How far coordinator-2's wall clock runs ahead of coordinator-1's
    /// (libfaketime; `0s`: none). Default: 30s with the fencing and mixed
    /// workloads — far beyond the 1 s lease — and none with quick-order.
    #[arg(long, value_parser = parse_duration)]
    pub clock_skew: Option<Duration>,
}

/// Why a chaos run did not pass.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// The system could not be set up or restored (a binary missing, a
    /// process that would not start).
    #[error("{0}")]
    Setup(String),
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// MariaDB could not be prepared or read.
    #[error("MariaDB: {0}")]
    Database(#[from] sqlx::Error),
    /// The run completed and broke invariants.
    #[error("{count} invariant violation(s) with seed {seed}; the report and the logs are in {}", run_dir.display())]
    Violations {
        /// How many.
        count: usize,
        /// The seed, to replay the plan.
        seed: u64,
        /// Where the evidence is.
        run_dir: PathBuf,
    },
}

impl ChaosError {
    fn io(what: impl Into<String>, source: std::io::Error) -> ChaosError {
        ChaosError::Io { what: what.into(), source }
    }
}

/// Runs the whole experiment; prints the report to stdout and progress to
/// stderr. `Err(Violations)` when an invariant broke.
pub async fn run(args: ChaosArgs) -> Result<(), ChaosError> {
    // The experiment's state machine is large (two drivers, the topology,
    // both fault tracks): on the heap, not on the caller's stack.
    Box::pin(experiment(args)).await
}

/// The run, phase by phase: the steps 1–5 of the crate's doc. A phase
/// that fails ends the run there; dropping the topology SIGKILLs every
/// process through its guard.
async fn experiment(args: ChaosArgs) -> Result<(), ChaosError> {
    let setting = Setting::from_args(&args)?;
    let Started { topology, gate, plan } = set_up(&args, &setting).await?;
    let gate_port = gate.as_ref().map(|(_, port)| *port);
    let (mut topology, traffic) = traffic_and_faults(&args, &setting, topology, gate_port, plan).await?;
    let found = quiesce_and_check(&args, &setting, &mut topology, &traffic).await?;
    let report = gather_report(&args, &setting, &topology, traffic, found)?;
    if let Some((gate, _)) = gate {
        gate.stop().await;
    }
    topology.shutdown().await;
    conclude(&args, &setting, &report)
}

/// What the arguments decide before anything starts.
struct Setting {
    /// The run folder (created, canonical) and the binaries.
    layout: Layout,
    /// What the clients do.
    workload: Workload,
    /// Whether fencing clients run (alone or mixed): they need the gate,
    /// and the faults include a long coordinator pause.
    fencing_on: bool,
    /// How far coordinator-2's clock is to run ahead; `None`: not at all.
    clock_skew: Option<Duration>,
    /// The goods the run seeds and checks: (goods, initial stock).
    goods: Vec<(i64, i32)>,
}

impl Setting {
    /// Checks the arguments, creates the run folder and finds the
    /// binaries: a bad argument fails before any process starts.
    fn from_args(args: &ChaosArgs) -> Result<Setting, ChaosError> {
        if args.clients == 0 {
            return Err(ChaosError::Setup("--clients must be at least 1".into()));
        }
        if args.duration < Duration::from_secs(10) {
            return Err(ChaosError::Setup("--duration must be at least 10s".into()));
        }
        let run_dir = match &args.run_dir {
            Some(dir) => dir.clone(),
            None => {
                let now =
                    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
                std::env::temp_dir().join(format!("quickorder-chaos-{now}-seed{}", args.seed))
            }
        };
        std::fs::create_dir_all(&run_dir)
            .map_err(|e| ChaosError::io(format!("creating {}", run_dir.display()), e))?;
        let run_dir = run_dir
            .canonicalize()
            .map_err(|e| ChaosError::io(format!("resolving {}", run_dir.display()), e))?;
        let binaries = harness::Binaries::locate(args.bin_dir.as_deref()).map_err(ChaosError::Setup)?;
        let workload = args.workload;
        let fencing_on = workload != Workload::QuickOrder;
        let default_skew = if fencing_on { Duration::from_secs(30) } else { Duration::ZERO };
        let clock_skew = Some(args.clock_skew.unwrap_or(default_skew)).filter(|skew| !skew.is_zero());
        if let Some(skew) = clock_skew
            && skew.subsec_nanos() != 0
        {
            return Err(ChaosError::Setup(format!("--clock-skew must be whole seconds, not {skew:?}")));
        }
        Ok(Setting {
            layout: Layout { run_dir, binaries },
            workload,
            fencing_on,
            clock_skew,
            goods: workload.goods(),
        })
    }

    fn run_dir(&self) -> &Path {
        &self.layout.run_dir
    }
}

/// The system, up and seeded, and the faults it is going to get.
struct Started {
    topology: Topology,
    /// The fencing workload's gate and the port of its fault proxy.
    gate: Option<(gate::Gate, u16)>,
    /// The fault plan derived from the seed.
    plan: schedule::Plan,
}

/// Starts the system, seeds the stock and, for the fencing workload,
/// starts the gate behind its own fault proxy; then plans the faults, which
/// must come last: the plan draws its targets from every process and link.
async fn set_up(args: &ChaosArgs, setting: &Setting) -> Result<Started, ChaosError> {
    eprintln!("chaos: starting the system in {}", setting.run_dir().display());
    let started = Instant::now();
    let (workload, clock_skew) = (setting.workload, setting.clock_skew);
    let mut topology = Topology::start(&setting.layout, topology::Options { clock_skew }).await?;
    let server_url = topology.server_url();
    traffic::seed_stock(&server_url, &setting.goods).await?;
    // The fencing workload's slow middle step, behind its own fault proxy.
    let gate = if setting.fencing_on {
        let gate = gate::Gate::start(&server_url).await?;
        let port = topology.add_hosted_branch_link("coordinators→gate", gate.addr).await?;
        Some((gate, port))
    } else {
        None
    };
    let window = args.duration.mul_f64(0.8);
    let shape = Shape { long_pause: setting.fencing_on, ..Shape::of(&topology) };
    let plan = schedule::plan(args.seed, window, &shape);
    eprintln!(
        "chaos: up in {:.1} s; {} clients ({workload:?}) for {:?}, {} process and {} network faults planned (seed {}){}",
        started.elapsed().as_secs_f64(),
        args.clients,
        args.duration,
        plan.process.len(),
        plan.network.len(),
        args.seed,
        topology.clock_skew.map_or_else(String::new, |s| format!(
            "; coordinator-2's clock is {} s ahead (checked in its log)",
            s.as_secs()
        )),
    );
    Ok(Started { topology, gate, plan })
}

/// What the run saw while the faults played: the clients' answers, the
/// faults injected, and the proxies (whose counters the report reads).
struct Traffic {
    /// Every fault proxy.
    links: Vec<Arc<proxy::Link>>,
    /// Every fault, by start time.
    injected: Vec<schedule::Injected>,
    /// Every quick order.
    records: Vec<traffic::Record>,
    /// Every fencing saga.
    sagas: Vec<fencing::SagaRecord>,
    /// Every TCC of the fencing clients.
    tccs: Vec<fencing::TccRecord>,
    /// How long traffic ran.
    ran_for: Duration,
    /// When the clients were told to stop: quiescence is measured from here.
    stopping: Instant,
}

/// Runs the clients for `--duration` while both fault tracks play, keeps
/// them running for [`TAIL`] after the last fault ended, then stops them.
/// The process track owns the topology while it plays (it kills and
/// restarts processes) and hands it back.
async fn traffic_and_faults(
    args: &ChaosArgs,
    setting: &Setting,
    topology: Topology,
    gate_port: Option<u16>,
    plan: schedule::Plan,
) -> Result<(Topology, Traffic), ChaosError> {
    let t0 = Instant::now();
    let workload = setting.workload;
    let quick_clients = workload.quick_order_clients(args.clients);
    let driver = (quick_clients > 0)
        .then(|| Driver::start(&topology.api_url(), quick_clients, args.seed, t0))
        .transpose()?;
    let fencing_driver = match gate_port {
        Some(gate_port) => {
            let targets = fencing::Targets {
                grpc: topology.coordinator_grpc.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
                etcd: format!("etcd://{}", topology.etcd_hosts),
                gate: format!("http://127.0.0.1:{gate_port}"),
            };
            Some(fencing::FencingDriver::start(
                &targets,
                workload.fencing_clients(args.clients),
                args.seed,
                t0,
            )?)
        }
        None => None,
    };
    let links = topology.links.clone();
    let process_track = tokio::spawn(schedule::run_process_track(plan.process, topology, t0));
    let network_track = tokio::spawn(schedule::run_network_track(plan.network, links.clone(), t0));
    tokio::time::sleep_until(t0 + args.duration).await;
    let (topology, mut injected) =
        process_track.await.map_err(|e| ChaosError::Setup(format!("the process fault track failed: {e}")))?;
    injected.extend(
        network_track.await.map_err(|e| ChaosError::Setup(format!("the network fault track failed: {e}")))?,
    );
    injected.sort_by_key(|i| i.at);
    if let Some(last) = injected.iter().map(|i| i.ended).max() {
        tokio::time::sleep_until(t0 + last + TAIL).await;
    }
    eprintln!("chaos: faults over after {:.1} s; stopping traffic", t0.elapsed().as_secs_f64());
    let stopping = Instant::now();
    let ran_for = t0.elapsed();
    let (records, sagas) = tokio::join!(
        async {
            match driver {
                Some(driver) => driver.stop().await,
                None => Vec::new(),
            }
        },
        async {
            match fencing_driver {
                Some(driver) => driver.stop().await,
                None => (Vec::new(), Vec::new()),
            }
        }
    );
    let (sagas, tccs) = sagas;
    Ok((topology, Traffic { links, injected, records, sagas, tccs, ran_for, stopping }))
}

/// What the checker found once the system was quiet.
struct Found {
    /// The wait for quiescence.
    quiescence: checker::Quiescence,
    /// The tables as read.
    snapshot: checker::Snapshot,
    /// The verdict on every rule.
    checked: checker::Checked,
}

/// Heals every fault, waits until every saga is final (at most
/// `--quiesce-timeout`), then reads the tables and checks every promise:
/// checked any earlier, a saga still running would look like a broken one.
async fn quiesce_and_check(
    args: &ChaosArgs,
    setting: &Setting,
    topology: &mut Topology,
    traffic: &Traffic,
) -> Result<Found, ChaosError> {
    let server_url = topology.server_url();
    topology.heal().await?;
    let quiescence = checker::wait_quiescent(&server_url, traffic.stopping, args.quiesce_timeout).await?;
    eprintln!("chaos: checking invariants");
    let snapshot = checker::Snapshot::read(&server_url, setting.fencing_on).await?;
    let checked = checker::check(&snapshot, &traffic.records, &traffic.sagas, &setting.goods, &traffic.tccs);
    Ok(Found { quiescence, snapshot, checked })
}

/// Writes the evidence files next to the report — every request, every
/// fencing submit, the trace of each violating gid — and gathers the
/// report from everything the run saw and found.
fn gather_report(
    args: &ChaosArgs,
    setting: &Setting,
    topology: &Topology,
    traffic: Traffic,
    found: Found,
) -> Result<Report, ChaosError> {
    let run_dir = setting.run_dir();
    let Found { quiescence, snapshot, checked } = found;
    let Traffic { links, injected, records, sagas, tccs, ran_for, .. } = traffic;
    let clock_skew = topology.clock_skew;
    let logs: Vec<PathBuf> = topology.logs().into_iter().map(PathBuf::from).collect();
    let requests_file = run_dir.join("requests.tsv");
    report::write_requests(&requests_file, &records, &snapshot.sagas)
        .map_err(|e| ChaosError::io(format!("writing {}", requests_file.display()), e))?;
    let sagas_file = setting.fencing_on.then(|| run_dir.join("sagas.tsv"));
    if let Some(file) = &sagas_file {
        report::write_sagas(file, &sagas, &snapshot.sagas)
            .map_err(|e| ChaosError::io(format!("writing {}", file.display()), e))?;
    }
    let traces_dir = run_dir.join("traces");
    let traces = report::write_traces(
        &traces_dir,
        checked.violations.iter().filter_map(|v| v.gid.as_deref()),
        &logs,
        clock_skew.map(|skew| ("coordinator-2", skew)),
    )
    .map_err(|e| ChaosError::io(format!("writing {}", traces_dir.display()), e))?;
    Ok(Report {
        seed: args.seed,
        planned: args.duration,
        ran_for,
        clients: args.clients,
        workload: setting.workload,
        clock_skew,
        run_dir: run_dir.to_path_buf(),
        logs,
        records,
        sagas,
        tccs,
        injected,
        links: links.iter().map(|link| link_summary(link)).collect(),
        quiescence,
        checked,
        requests_file,
        sagas_file,
        traces,
    })
}

/// A proxy's counters as the report prints them.
fn link_summary(link: &proxy::Link) -> LinkSummary {
    LinkSummary {
        name: link.name.clone(),
        route: format!("{} → {}", link.listen, link.upstream),
        accepted: link.stats.accepted.load(std::sync::atomic::Ordering::Relaxed),
        reset: link.stats.reset.load(std::sync::atomic::Ordering::Relaxed),
        upstream_failed: link.stats.upstream_failed.load(std::sync::atomic::Ordering::Relaxed),
    }
}

/// Prints the report and keeps it in the run folder; the verdict is the
/// result. A passing run's database data is removed unless `--keep-data`.
fn conclude(args: &ChaosArgs, setting: &Setting, report: &Report) -> Result<(), ChaosError> {
    let run_dir = setting.run_dir();
    let text = report.to_string();
    print!("{text}");
    let report_file = run_dir.join("report.txt");
    std::fs::write(&report_file, &text)
        .map_err(|e| ChaosError::io(format!("writing {}", report_file.display()), e))?;

    if !report.passed() {
        return Err(ChaosError::Violations {
            count: report.checked.violations.len(),
            seed: args.seed,
            run_dir: run_dir.to_path_buf(),
        });
    }
    if !args.keep_data {
        // Logs and the report stay; the data is only worth keeping for a post-mortem.
        for data in ["mariadb", "etcd"] {
            let _ = std::fs::remove_dir_all(run_dir.join(data));
        }
    }
    Ok(())
}
