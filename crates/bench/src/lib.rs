//! `quickorder-bench`: how fast is a saga, and what does the coordinator
//! cost?
//!
//! ```text
//! quickorder-bench http   --clients 16 --duration 20s   # POST /order/quickCreate, the user's path
//! quickorder-bench saga   --api grpc --branches grpc --work sql
//! quickorder-bench direct                               # the same two branch calls, no coordinator
//! quickorder-bench db                                   # single-row insert commits: the database's limit
//! quickorder-bench peer   --dtm http://127.0.0.1:36789/api/dtmsvr --peer-pid 1234 --peer-name dtmrs
//! quickorder-bench workflow                             # quickCreate with order-api in TRANS_MODE=workflow
//! quickorder-bench xa                                   # the saga's SQL under two-phase commit (XA on MariaDB)
//! quickorder-bench compare --peer-url http://…/api/dtmsvr  # db … peer, 3 rounds, with ratios
//! quickorder-bench compare --modes saga,xa,http,workflow   # what 2PC and a workflow cost (opt-in)
//! ```
//!
//! Answers are measured side by side in one sitting, because the machines
//! this runs on are shared and noisy: absolute numbers drift, and even
//! ratios drift with the neighbours unless measured the way [`compare`]
//! does (rounds in alternating order, medians, steal recorded per run,
//! CPU per saga as a result of its own; statistics in [`stats`]).
//! Each mode (see [`modes`]) starts what it needs as separate processes —
//! the release binaries next to `quickorder-bench` ([`system`]) — on fresh
//! databases of the `--mysql` server, drives them with a closed loop of
//! `--clients` ([`load`]), and reports ([`report`]):
//!
//! * sagas/s and the latency percentiles (HDR histogram);
//! * failures by kind;
//! * CPU milliseconds per saga of every process and their sum, from
//!   `/proc` ([`procstat`]);
//! * the machine's busy share, the hypervisor's steal and the CPU of
//!   processes not accounted for, from `/proc/stat`;
//! * SQL statements, commits and fsyncs per saga, from the server's
//!   status counters ([`dbstat`]);
//! * the coordinator's RSS at the start and end of the window.
//!
//! `--json FILE` writes the same as JSON. The branch servers of the `saga`
//! and `peer` modes run inside the bench process ([`branches`]), and so do
//! the XA branches of the `xa` mode ([`xa_branches`]).

pub mod branches;
pub mod compare;
pub mod dbstat;
pub mod load;
pub mod modes;
pub mod procstat;
pub mod report;
pub mod stats;
pub mod system;
pub mod xa_branches;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use self::branches::{Transport, Work};
use self::compare::Method;
use self::load::Limit;
use self::modes::{Api, ModeSpec, Settings};
use self::system::{Launcher, Server, Setting};
use harness::parse_duration;

/// Which measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `POST /order/quickCreate` through order-api, coordinator, order-srv, stock-srv.
    Http,
    /// Sagas straight to the coordinator, branch servers in the bench.
    Saga,
    /// The saga's two branch calls made by the client, no coordinator.
    Direct,
    /// Single-row insert commits: what the database alone can do.
    Db,
    /// Empty-branch HTTP sagas against a dtm-compatible coordinator.
    Peer,
    /// `http` with order-api running the quick order as a dtm workflow.
    Workflow,
    /// XA global transactions doing `saga --work sql`'s branch work under
    /// two-phase commit, branch servers in the bench.
    Xa,
    /// db, direct, http, saga and peer (workflow and xa when `--modes`
    /// names them), in rounds of alternating order, with medians and ratios.
    Compare,
}

/// `quickorder-bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub mode: Mode,
    /// compare: rounds of every mode, in alternating order (as listed, then
    /// reversed, …); the report gives each figure's median over the rounds
    /// and its spread. At least 1 (a round measures every mode once; a
    /// ratio needs its pair); 3 or more give a median one disturbed round
    /// cannot move. [default: 3]
    #[arg(long, value_name = "N", value_parser = parse_rounds)]
    pub rounds: Option<usize>,
    /// compare: flag a round's pair of runs whose steal (CPU time the
    /// hypervisor gave other guests) differs by more than this many
    /// percentage points. 5: at 30–40 % steal, a 5-point gap is ≈ 8 % more
    /// machine for one run of the pair, the size of the effects the
    /// targets measure.
    #[arg(long, value_name = "POINTS", default_value_t = stats::DEFAULT_MAX_STEAL_GAP_PP)]
    pub max_steal_gap: f64,
    /// compare: only these modes (comma-separated: `--modes direct,http`),
    /// in the usual order. `workflow` and `xa` run only when named here
    /// (`--modes saga,xa,http,workflow`). [default: db,direct,http,saga,peer]
    #[arg(long, value_enum, value_delimiter = ',', value_name = "MODES")]
    pub modes: Vec<Mode>,
    /// http/compare: a coordinator setting, as the environment variable of
    /// its key in `etc/coordinator.yaml` (`--variant ATTEMPTS_RECORD=off`;
    /// repeat for several). `http` runs with it; `compare` runs `http`
    /// twice per round, without and with it, side by side, and gives their
    /// ratios: what the setting costs, measured like the other ratios.
    #[arg(long, value_name = "KEY=VALUE", value_parser = Setting::parse)]
    pub variant: Vec<Setting>,
    /// Concurrent clients (closed loop: each waits for its answer).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// How long to measure each mode (`20s`, `1m`, `500ms`).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Measure this many operations instead of a duration.
    #[arg(long, conflicts_with = "duration")]
    pub requests: Option<u64>,
    /// Unmeasured load first (connections, prepared statements, caches).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// The MySQL/MariaDB server (no database): each run creates databases
    /// `qob_<id>_*` on it and drops them afterwards.
    #[arg(
        long,
        value_name = "URL",
        default_value = "mysql://root@127.0.0.1:3306",
        env = "QUICKORDER_BENCH_MYSQL"
    )]
    pub mysql: String,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also write the results as a Markdown table to this file (what
    /// scripts/bench.sh puts into BENCHMARKS.md).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// saga/xa: the coordinator API to submit through.
    #[arg(long, value_enum, default_value = "grpc")]
    pub api: Api,
    /// saga: how the coordinator calls the built-in branches.
    #[arg(long, value_enum, default_value = "grpc")]
    pub branches: Transport,
    /// saga: what the branches do (`sql`: barrier + order-srv/stock-srv's SQL).
    #[arg(long, value_enum, default_value = "sql")]
    pub work: Work,
    /// peer: a dtm-compatible coordinator's HTTP API; without it, ours is started.
    #[arg(long, value_name = "URL")]
    pub dtm: Option<String>,
    /// compare: also run `peer` against this coordinator.
    #[arg(long, value_name = "URL")]
    pub peer_url: Option<String>,
    /// peer/compare: the pid of that coordinator, to account its CPU.
    #[arg(long, value_name = "PID")]
    pub peer_pid: Option<u32>,
    /// peer/compare: its name in the report (default: `peer`, or `ours`
    /// for our own coordinator).
    #[arg(long)]
    pub peer_name: Option<String>,
    /// saga/http/peer: put this many finished sagas into our coordinator's
    /// store before measuring (does history slow it down?).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub store_history: u64,
    /// LOG_LEVEL of the started services.
    #[arg(long, default_value = "warn")]
    pub service_log_level: String,
    /// Where the service binaries are (default: next to quickorder-bench).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Keep the databases and the run folder (configs, service logs).
    #[arg(long)]
    pub keep: bool,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// `compare`'s rounds when `--rounds` is not given.
pub const DEFAULT_ROUNDS: usize = 3;

/// `--rounds N`: a whole number, at least 1.
fn parse_rounds(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("at least 1: a round measures every mode once, zero rounds measure nothing".into()),
        Ok(rounds) => Ok(rounds),
        Err(_) => Err(format!("a whole number of rounds, at least 1, not {text:?}")),
    }
}

/// Runs the bench; prints the report(s) on stdout.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if args.mode != Mode::Compare && args.rounds.is_some() {
        bail!("--rounds is for compare; a single mode is measured once (run it again, or use compare)");
    }
    if args.max_steal_gap.is_nan() || args.max_steal_gap < 0.0 {
        bail!("--max-steal-gap must be a number of percentage points, 0 or more");
    }
    if args.mode != Mode::Compare && !args.modes.is_empty() {
        bail!("--modes is for compare; the other modes are one mode each");
    }
    if args.modes.contains(&Mode::Compare) {
        bail!("--modes lists the modes compare runs: db, direct, http, workflow, saga, xa, peer");
    }
    if !args.variant.is_empty() && !matches!(args.mode, Mode::Http | Mode::Compare) {
        bail!("--variant changes the coordinator of http (and of http's second run in compare)");
    }
    if args.mode == Mode::Compare && !args.variant.is_empty() && !compares(&args, Mode::Http) {
        bail!("--variant is measured beside http: add http to --modes");
    }
    if args.mode == Mode::Compare && args.modes.contains(&Mode::Xa) && args.work == Work::None {
        // xa / saga compares the same branch work; xa's always does the SQL.
        bail!("xa is compared with saga doing the same SQL: drop --work none, or xa from --modes");
    }
    if args.mode == Mode::Peer && args.peer_url.is_some() {
        bail!("peer takes --dtm URL; --peer-url is for compare");
    }
    let binaries = harness::Binaries::locate(args.bin_dir.as_deref()).map_err(anyhow::Error::msg)?;
    let dir = tempfile::Builder::new()
        .prefix("quickorder-bench-")
        .tempdir()
        .context("cannot create a run folder")?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let specs = specs(&args);
    let settings = Settings {
        clients: args.clients,
        limit: args.requests.map_or(Limit::Duration(args.duration), Limit::Requests),
        warmup: args.warmup,
        progress: !args.quiet,
        server: Server::parse(&args.mysql)?,
        launcher: Launcher {
            binaries,
            dir: dir.path().to_path_buf(),
            log_level: args.service_log_level.clone(),
        },
        run_id,
        keep: args.keep,
        store_history: args.store_history,
        // compare keeps every mode running; a single mode has its own.
        connections_needed: modes::connections_needed(&specs, args.clients),
    };

    // Ctrl-C ends the measurement early; what ran is still reported and
    // everything is cleaned up.
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    let signal = tokio::spawn(async move {
        service_kit::shutdown::signal().await;
        on_signal.cancel();
    });

    let outcome = run_modes(&args, &specs, &settings, &cancel).await;
    signal.abort();
    if args.keep {
        let kept = dir.keep();
        eprintln!("run folder kept: {}", kept.display());
    }
    let (json, markdown) = outcome?;
    for (path, text) in [(&args.json, json), (&args.markdown, markdown)] {
        if let Some(path) = path {
            std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

/// The specs `args` asks for, one per run.
fn specs(args: &BenchArgs) -> Vec<ModeSpec> {
    let ours = || ModeSpec::Peer { dtm: None, pid: None, name: "ours".into() };
    let peer_name = || args.peer_name.clone().unwrap_or_else(|| "peer".into());
    match args.mode {
        Mode::Db => vec![ModeSpec::Db],
        Mode::Direct => vec![ModeSpec::Direct],
        Mode::Saga => vec![ModeSpec::Saga { api: args.api, branches: args.branches, work: args.work }],
        Mode::Http => vec![ModeSpec::Http { variant: args.variant.clone() }],
        Mode::Workflow => vec![ModeSpec::Workflow],
        Mode::Xa => vec![ModeSpec::Xa { api: args.api }],
        Mode::Peer => match &args.dtm {
            Some(url) => {
                vec![ModeSpec::Peer { dtm: Some(url.clone()), pid: args.peer_pid, name: peer_name() }]
            }
            None => vec![ModeSpec::Peer {
                dtm: None,
                pid: None,
                name: args.peer_name.clone().unwrap_or_else(|| "ours".into()),
            }],
        },
        Mode::Compare => {
            // The members of each ratio's pair next to each other (http and
            // saga beside direct, direct beside db, the peers together): the
            // closer in time, the closer their conditions.
            // A variant runs right after the plain `http` it is compared with,
            // `workflow` after `http`, `xa` after `saga`.
            let mut specs = Vec::new();
            if compares(args, Mode::Db) {
                specs.push(ModeSpec::Db);
            }
            if compares(args, Mode::Direct) {
                specs.push(ModeSpec::Direct);
            }
            if compares(args, Mode::Http) {
                specs.push(ModeSpec::Http { variant: Vec::new() });
                if !args.variant.is_empty() {
                    specs.push(ModeSpec::Http { variant: args.variant.clone() });
                }
            }
            if args.modes.contains(&Mode::Workflow) {
                specs.push(ModeSpec::Workflow);
            }
            if compares(args, Mode::Saga) {
                specs.push(ModeSpec::Saga { api: args.api, branches: args.branches, work: args.work });
            }
            if args.modes.contains(&Mode::Xa) {
                specs.push(ModeSpec::Xa { api: args.api });
            }
            if compares(args, Mode::Peer) {
                specs.push(ours());
                if let Some(url) = &args.peer_url {
                    specs.push(ModeSpec::Peer {
                        dtm: Some(url.clone()),
                        pid: args.peer_pid,
                        name: peer_name(),
                    });
                }
            }
            specs
        }
    }
}

/// Whether `compare` runs `mode` (every mode when `--modes` is not given;
/// `workflow` and `xa` only when named, see [`specs`]).
fn compares(args: &BenchArgs, mode: Mode) -> bool {
    args.modes.is_empty() || args.modes.contains(&mode)
}

/// Runs every spec (compare: in rounds), prints each report as it comes,
/// and returns the JSON and Markdown versions.
async fn run_modes(
    args: &BenchArgs,
    specs: &[ModeSpec],
    settings: &Settings,
    cancel: &CancellationToken,
) -> anyhow::Result<(String, String)> {
    if args.mode == Mode::Compare {
        let method =
            Method { rounds: args.rounds.unwrap_or(DEFAULT_ROUNDS), max_steal_gap_pp: args.max_steal_gap };
        let comparison = compare::run(settings, specs, method, cancel).await?;
        println!("{}", comparison.render());
        return Ok((serde_json::to_string_pretty(&comparison)?, comparison.markdown()));
    }
    let mut reports = Vec::new();
    for spec in specs {
        if cancel.is_cancelled() {
            break;
        }
        let report =
            modes::run(settings, spec, cancel).await.with_context(|| format!("bench {}", spec.label()))?;
        println!("{}", report.render());
        reports.push(report);
    }
    let markdown = report::markdown_table(&reports);
    match reports.pop() {
        Some(report) => Ok((serde_json::to_string_pretty(&report)?, markdown)),
        None => bail!("interrupted before anything was measured"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn compare_runs_every_mode_and_the_peer_when_given() {
        let cli = Cli::parse_from([
            "bench",
            "compare",
            "--peer-url",
            "http://h:1/api/dtmsvr",
            "--peer-name",
            "dtmrs",
        ]);
        let names: Vec<String> = specs(&cli.bench).iter().map(ModeSpec::label).collect();
        assert_eq!(
            names,
            [
                "db insert-commit",
                "direct grpc work=sql",
                "http quickCreate",
                "saga api=grpc branches=grpc work=sql",
                "peer ours",
                "peer dtmrs"
            ]
        );
        let cli = Cli::parse_from(["bench", "saga", "--api", "http", "--branches", "http", "--work", "none"]);
        assert_eq!(specs(&cli.bench)[0].label(), "saga api=http branches=http work=none");
        assert!(Cli::try_parse_from(["bench", "db", "--duration", "5s", "--requests", "10"]).is_err());
    }

    #[test]
    fn compare_runs_a_variant_beside_plain_http() {
        let cli = Cli::parse_from([
            "bench",
            "compare",
            "--modes",
            "http,direct",
            "--variant",
            "ATTEMPTS_RECORD=off",
            "--variant",
            "ATTEMPTS_PER_TRANSACTION=8",
        ]);
        let names: Vec<String> = specs(&cli.bench).iter().map(ModeSpec::label).collect();
        assert_eq!(
            names,
            [
                "direct grpc work=sql",
                "http quickCreate",
                "http quickCreate with ATTEMPTS_RECORD=off ATTEMPTS_PER_TRANSACTION=8"
            ]
        );
        let cli = Cli::parse_from(["bench", "http", "--variant", "ATTEMPTS_RECORD=off"]);
        assert_eq!(specs(&cli.bench)[0].label(), "http quickCreate with ATTEMPTS_RECORD=off");
    }

    #[tokio::test]
    async fn modes_and_variants_are_refused_where_they_mean_nothing() {
        let refused = |argv: &[&str]| {
            let mut full = vec!["bench"];
            full.extend_from_slice(argv);
            Cli::parse_from(full).bench
        };
        for (argv, says) in [
            (&["http", "--modes", "db"][..], "--modes is for compare"),
            (&["compare", "--modes", "compare"][..], "--modes lists the modes"),
            (&["saga", "--variant", "A=1"][..], "--variant changes the coordinator"),
            (&["compare", "--modes", "db", "--variant", "A=1"][..], "add http to --modes"),
            (&["compare", "--modes", "saga,xa", "--work", "none"][..], "drop --work none"),
        ] {
            let err = run(refused(argv)).await.expect_err("refused");
            assert!(err.to_string().contains(says), "{argv:?}: {err}");
        }
        for bad in ["ATTEMPTS_RECORD", "attempts_record=false", "=1", "A B=1"] {
            let err = Cli::try_parse_from(["bench", "http", "--variant", bad]).expect_err(bad);
            assert!(err.to_string().contains("coordinator setting"), "{bad}: {err}");
        }
    }

    /// `workflow` and `xa` run only when `--modes` names them, each right
    /// after the saga it is compared with; alone, each is one spec.
    #[test]
    fn workflow_and_xa_are_opt_in_beside_their_saga() {
        let labels = |argv: &[&str]| {
            let mut full = vec!["bench"];
            full.extend_from_slice(argv);
            specs(&Cli::parse_from(full).bench).iter().map(ModeSpec::label).collect::<Vec<_>>()
        };
        assert_eq!(
            labels(&["compare", "--modes", "xa,workflow,saga,http"]),
            [
                "http quickCreate",
                "workflow quickCreate",
                "saga api=grpc branches=grpc work=sql",
                "xa api=grpc branches=http work=sql"
            ]
        );
        let default = labels(&["compare"]);
        assert!(!default.iter().any(|l| l.starts_with("workflow") || l.starts_with("xa")), "{default:?}");
        assert_eq!(labels(&["workflow"]), ["workflow quickCreate"]);
        assert_eq!(labels(&["xa", "--api", "http"]), ["xa api=http branches=http work=sql"]);
    }

    /// workflow starts what http starts; xa's branches also open a session
    /// of their own per local transaction, up to one per client and branch.
    #[test]
    fn connections_needed_counts_the_new_modes_pools() {
        let http = modes::connections_needed(&[ModeSpec::Http { variant: Vec::new() }], 16);
        assert_eq!(modes::connections_needed(&[ModeSpec::Workflow], 16), http);
        assert_eq!(http, 3 * 64 + 16 + 16);
        let xa = modes::connections_needed(&[ModeSpec::Xa { api: Api::Grpc }], 16);
        assert_eq!(xa, 3 * 64 + 2 * 16 + 16 + 16);
        let both = modes::connections_needed(&[ModeSpec::Workflow, ModeSpec::Xa { api: Api::Http }], 16);
        assert_eq!(both, 3 * 64 + (3 * 64 + 2 * 16) + 16 + 2 * 16);
    }

    #[test]
    fn rounds_are_at_least_one() {
        let cli = Cli::parse_from(["bench", "compare"]);
        assert_eq!((cli.bench.rounds, cli.bench.max_steal_gap), (None, 5.0));
        let cli = Cli::parse_from(["bench", "compare", "--rounds", "5", "--max-steal-gap", "3.5"]);
        assert_eq!((cli.bench.rounds, cli.bench.max_steal_gap), (Some(5), 3.5));
        let err = Cli::try_parse_from(["bench", "compare", "--rounds", "0"]).expect_err("0 rounds");
        assert!(err.to_string().contains("zero rounds measure nothing"), "{err}");
        assert!(Cli::try_parse_from(["bench", "compare", "--rounds", "-1"]).is_err());
    }
}
