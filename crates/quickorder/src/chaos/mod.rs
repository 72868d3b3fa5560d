//! `quickorder chaos`: the real system as separate processes, concurrent
//! quick orders, a seeded schedule of faults, and a check of every promise
//! the saga makes once the faults stop.
//!
//! ```text
//! quickorder chaos --duration 60s --seed 7 [--clients 4] [--run-dir DIR]
//! ```
//!
//! 1. [`topology`] starts a private MariaDB and etcd, two coordinators on
//!    one MySQL database, two order-srv, two stock-srv and order-api, each
//!    the real binary next to `quickorder`, with fault [`proxy`]s between
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
//! quickorder chaos --duration 10m --seed 42 --clients 8
//! for seed in $(seq 1 20); do quickorder chaos --duration 120s --seed $seed || break; done
//! ```

pub mod checker;
pub mod proxy;
pub mod report;
pub mod schedule;
pub mod topology;
pub mod traffic;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use self::report::{LinkSummary, Report};
use self::schedule::Shape;
use self::topology::{Layout, Topology};
use self::traffic::Driver;

/// How long traffic keeps running after the last fault ended, so the
/// recovery from it is measured.
const TAIL: Duration = Duration::from_secs(3);

/// `quickorder chaos` options.
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
    if args.clients == 0 {
        return Err(ChaosError::Setup("--clients must be at least 1".into()));
    }
    if args.duration < Duration::from_secs(10) {
        return Err(ChaosError::Setup("--duration must be at least 10s".into()));
    }
    let run_dir = match &args.run_dir {
        Some(dir) => dir.clone(),
        None => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
            std::env::temp_dir().join(format!("quickorder-chaos-{now}-seed{}", args.seed))
        }
    };
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| ChaosError::io(format!("creating {}", run_dir.display()), e))?;
    let run_dir =
        run_dir.canonicalize().map_err(|e| ChaosError::io(format!("resolving {}", run_dir.display()), e))?;
    let bin_dir =
        match &args.bin_dir {
            Some(dir) => dir.clone(),
            None => std::env::current_exe().ok().and_then(|exe| exe.parent().map(PathBuf::from)).ok_or_else(
                || ChaosError::Setup("cannot find the folder of this executable; pass --bin-dir".into()),
            )?,
        };
    let layout = Layout { run_dir: run_dir.clone(), bin_dir };

    eprintln!("chaos: starting the system in {}", run_dir.display());
    let started = Instant::now();
    let topology = Topology::start(&layout).await?;
    let server_url = topology.server_url();
    traffic::seed_stock(&server_url).await?;
    let window = args.duration.mul_f64(0.8);
    let plan = schedule::plan(args.seed, window, &Shape::of(&topology));
    eprintln!(
        "chaos: up in {:.1} s; {} clients for {:?}, {} process and {} network faults planned (seed {})",
        started.elapsed().as_secs_f64(),
        args.clients,
        args.duration,
        plan.process.len(),
        plan.network.len(),
        args.seed
    );

    // Traffic and both fault tracks.
    let t0 = Instant::now();
    let driver = Driver::start(&topology.api_url(), args.clients, args.seed, t0)?;
    let links = topology.links.clone();
    let process_track = tokio::spawn(schedule::run_process_track(plan.process, topology, t0));
    let network_track = tokio::spawn(schedule::run_network_track(plan.network, links.clone(), t0));
    tokio::time::sleep_until(t0 + args.duration).await;
    let (mut topology, mut injected) =
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
    let records = driver.stop().await;

    // Heal, wait for quiescence, check.
    topology.heal().await?;
    let quiescence = checker::wait_quiescent(&server_url, stopping, args.quiesce_timeout).await?;
    eprintln!("chaos: checking invariants");
    let snapshot = checker::Snapshot::read(&server_url).await?;
    let checked = checker::check(&snapshot, &records, &traffic::GOODS);
    let logs: Vec<PathBuf> = topology.logs().into_iter().map(PathBuf::from).collect();
    let requests_file = run_dir.join("requests.tsv");
    report::write_requests(&requests_file, &records, &snapshot.sagas)
        .map_err(|e| ChaosError::io(format!("writing {}", requests_file.display()), e))?;
    let traces_dir = run_dir.join("traces");
    let traces =
        report::write_traces(&traces_dir, checked.violations.iter().filter_map(|v| v.gid.as_deref()), &logs)
            .map_err(|e| ChaosError::io(format!("writing {}", traces_dir.display()), e))?;
    let report = Report {
        seed: args.seed,
        planned: args.duration,
        ran_for,
        clients: args.clients,
        run_dir: run_dir.clone(),
        logs,
        records,
        injected,
        links: links
            .iter()
            .map(|link| LinkSummary {
                name: link.name.clone(),
                route: format!("{} → {}", link.listen, link.upstream),
                accepted: link.stats.accepted.load(std::sync::atomic::Ordering::Relaxed),
                reset: link.stats.reset.load(std::sync::atomic::Ordering::Relaxed),
                upstream_failed: link.stats.upstream_failed.load(std::sync::atomic::Ordering::Relaxed),
            })
            .collect(),
        quiescence,
        checked,
        requests_file,
        traces,
    };
    topology.shutdown().await;
    let text = report.to_string();
    print!("{text}");
    let report_file = run_dir.join("report.txt");
    std::fs::write(&report_file, &text)
        .map_err(|e| ChaosError::io(format!("writing {}", report_file.display()), e))?;

    if !report.passed() {
        return Err(ChaosError::Violations {
            count: report.checked.violations.len(),
            seed: args.seed,
            run_dir,
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

/// `500ms`, `30s`, `2m`, `1h`, or plain seconds (`90`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 60s or 2m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit {other:?} in {text:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_the_docs_say() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 days").is_err());
    }
}
