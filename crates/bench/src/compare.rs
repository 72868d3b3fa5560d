//! `quickorder-bench compare`: every mode, in rounds, and the figures that
//! survive the noise of a shared machine.
//!
//! On a shared VM the hypervisor's steal moves minute to minute (32–39 %
//! on the 2-core machine of BENCHMARKS.md), so running each mode once, in
//! sequence, measures the neighbours as much as the code: seven such runs
//! gave `http / direct` anywhere from 0.28 to 0.62. So `compare`:
//!
//! 1. starts every mode once ([`modes::start`]) and keeps it running: a
//!    round then costs only its measured windows, and every round runs with
//!    the same processes alive;
//! 2. measures the modes `--rounds` times, **in alternating order** — as
//!    given in odd rounds, reversed in even ones ([`round_order`]) — so a
//!    drift over the sitting weighs on both runs of a pair alike, and the
//!    modes whose ratio matters run next to each other;
//! 3. records per run the steal and the CPU taken by other processes
//!    (`/proc/stat`), and prints them on the run's line;
//! 4. reports per figure the median over the rounds and its spread
//!    (min–max, [`Spread`]); a ratio is taken per round, from the pair of
//!    runs of that round, and its median over the pairs;
//! 5. flags a pair whose runs' steal differs by more than
//!    `--max-steal-gap` points ([`StealFlag`]);
//! 6. makes CPU ms per saga — per process and their sum — a result of its
//!    own, with its ratio against `direct`: CPU time is what steal distorts
//!    least (a stolen tick is charged to no process), so it compares code
//!    where throughput compares code *and* conditions.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::modes::{self, ModeSpec, Running, Settings, VARIANT_MARK};
use super::report::{self, Report, markdown_table, percent};
use super::stats::{Spread, steal_gap_flagged, steal_gap_pp};

/// How `compare` measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Method {
    /// Rounds of every mode (at least 1).
    pub rounds: usize,
    /// The largest steal gap (percentage points) between a pair's runs
    /// that is not flagged.
    pub max_steal_gap_pp: f64,
}

/// The positions of `modes` modes in round `round` (1-based): as given in
/// odd rounds, reversed in even ones (A B C, C B A, A B C, …).
pub fn round_order(modes: usize, round: usize) -> Vec<usize> {
    let forward = 0..modes;
    if round.is_multiple_of(2) { forward.rev().collect() } else { forward.collect() }
}

/// Starts every mode of `specs`, measures them `method.rounds` times in
/// alternating order, printing each run's line as it ends, stops them all,
/// and returns the comparison. Ctrl-C (`cancel`) ends the rounds early;
/// what ran is still compared.
pub async fn run(
    settings: &Settings,
    specs: &[ModeSpec],
    method: Method,
    cancel: &CancellationToken,
) -> anyhow::Result<Comparison> {
    if method.rounds == 0 {
        bail!("compare needs at least one round");
    }
    let mut running: Vec<Running> = Vec::new();
    for spec in specs {
        if cancel.is_cancelled() {
            break;
        }
        match modes::start(settings, spec).await {
            Ok(mode) => running.push(mode),
            Err(err) => {
                // The start's error is the one to report; a failure to stop
                // the modes already running is only logged.
                if let Err(cleanup) = stop_all(settings, running).await {
                    eprintln!("clean-up after {} failed to start: {cleanup:#}", spec.label());
                }
                return Err(err.context(format!("bench {}", spec.label())));
            }
        }
    }
    let mut runs = Vec::new();
    let measured = measure_rounds(settings, &mut running, method.rounds, &mut runs, cancel).await;
    let stopped = stop_all(settings, running).await;
    measured?;
    stopped?;
    if runs.is_empty() {
        bail!("interrupted before anything was measured");
    }
    Ok(Comparison::new(runs, method))
}

async fn measure_rounds(
    settings: &Settings,
    running: &mut [Running],
    rounds: usize,
    runs: &mut Vec<Report>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    for round in 1..=rounds {
        for position in round_order(running.len(), round) {
            if cancel.is_cancelled() {
                return Ok(());
            }
            let mode = &mut running[position];
            let report = mode
                .measure(settings, Some(round), cancel)
                .await
                .with_context(|| format!("bench {}, round {round}", mode.label()))?;
            println!("{}", report.line());
            runs.push(report);
        }
    }
    Ok(())
}

/// Stops every mode, the last started first; returns the first error.
async fn stop_all(settings: &Settings, running: Vec<Running>) -> anyhow::Result<()> {
    let mut first = Ok(());
    for mode in running.into_iter().rev() {
        let label = mode.label().to_string();
        if let Err(err) = mode.stop(settings).await
            && first.is_ok()
        {
            first = Err(err.context(format!("stopping {label}")));
        }
    }
    first
}

/// What a ratio compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// sagas/s of the numerator over the denominator's.
    Throughput,
    /// CPU ms per saga, all accounted processes summed, of the numerator
    /// over the denominator's.
    CpuPerSaga,
}

impl Measure {
    fn describe(self) -> &'static str {
        match self {
            Measure::Throughput => "sagas/s",
            Measure::CpuPerSaga => "CPU per saga",
        }
    }
}

/// One round's value of a ratio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairValue {
    /// The round.
    pub round: usize,
    /// Numerator over denominator, both of this round.
    pub value: f64,
    /// How far apart the two runs' steal was, in percentage points.
    pub steal_gap_pp: Option<f64>,
    /// The gap was above `--max-steal-gap`: this round's value is suspect.
    pub flagged: bool,
}

/// A ratio between two modes, over the rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// `http / direct`, `peer ours / peer dtmrs`, …
    pub name: String,
    /// Of what.
    pub measure: Measure,
    /// The numerator's run label.
    pub numerator: String,
    /// The denominator's run label.
    pub denominator: String,
    /// Median and spread of the per-round values.
    #[serde(flatten)]
    pub spread: Spread,
    /// The per-round values, in round order.
    pub rounds: Vec<PairValue>,
}

impl Ratio {
    /// How many rounds' pairs were flagged.
    pub fn flagged(&self) -> usize {
        self.rounds.iter().filter(|r| r.flagged).count()
    }
}

/// A pair of runs whose steal differed by more than the method allows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StealFlag {
    /// The round.
    pub round: usize,
    /// The pair, `http / direct`.
    pub pair: String,
    /// The numerator run's steal, percent of the machine.
    pub steal_a_pct: f64,
    /// The denominator run's steal, percent.
    pub steal_b_pct: f64,
    /// Their distance, percentage points.
    pub gap_pp: f64,
}

impl StealFlag {
    fn describe(&self, max_gap_pp: f64) -> String {
        format!(
            "round {}, {}: steal {:.0}% against {:.0}%, {:.1} points apart (more than {max_gap_pp}): \
             that round's ratios of this pair are suspect",
            self.round, self.pair, self.steal_a_pct, self.steal_b_pct, self.gap_pp
        )
    }
}

/// CPU ms per saga of one process over the rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessCpu {
    /// The process, as in the runs' reports.
    pub name: String,
    /// Median and spread over the rounds.
    #[serde(flatten)]
    pub ms_per_saga: Spread,
}

/// One mode over the rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeSummary {
    /// The runs' label.
    pub label: String,
    /// The runs' mode.
    pub mode: String,
    /// Concurrent clients.
    pub clients: usize,
    /// sagas/s.
    pub sagas_per_s: Spread,
    /// Median latency, ms.
    pub p50_ms: Spread,
    /// 99th percentile latency, ms.
    pub p99_ms: Spread,
    /// Failed sagas of every round together.
    pub errors: u64,
    /// CPU ms per saga of each process.
    pub cpu_ms_per_saga: Vec<ProcessCpu>,
    /// The per-round sums of `cpu_ms_per_saga` (the median of the sums,
    /// which is not the sum of the medians).
    pub cpu_ms_per_saga_sum: Spread,
    /// SQL statements per saga.
    pub statements_per_saga: Option<Spread>,
    /// Explicit commits per saga.
    pub commits_per_saga: Option<Spread>,
    /// fsyncs per saga.
    pub fsyncs_per_saga: Option<Spread>,
    /// Share of the machine busy (0..1).
    pub machine_busy: Option<Spread>,
    /// Share stolen by the hypervisor (0..1).
    pub machine_steal: Option<Spread>,
    /// Share taken by processes not accounted for (0..1).
    pub other_cpu: Option<Spread>,
    /// Coordinator RSS at the start of the first round's window and the
    /// end of the last one, KiB.
    pub coordinator_rss_kib: Option<(u64, u64)>,
    /// The first run's notes (the same for every round).
    pub notes: Vec<String>,
}

impl ModeSummary {
    fn of(label: &str, runs: &[&Report]) -> Option<ModeSummary> {
        let first = runs.first()?;
        let last = runs.last()?;
        let spread = |value: &dyn Fn(&Report) -> Option<f64>| {
            Spread::of(&runs.iter().filter_map(|r| value(r)).collect::<Vec<_>>())
        };
        let mut names: Vec<&str> = Vec::new();
        for process in runs.iter().flat_map(|r| &r.processes) {
            if !names.contains(&process.name.as_str()) {
                names.push(&process.name);
            }
        }
        let cpu_ms_per_saga = names
            .iter()
            .filter_map(|&name| {
                let ms_per_saga = spread(&|r: &Report| r.cpu_ms(name))?;
                Some(ProcessCpu { name: name.to_string(), ms_per_saga })
            })
            .collect();
        let coordinator_rss_kib = match (first.coordinator_rss_kib, last.coordinator_rss_kib) {
            (Some((start, _)), Some((_, end))) => Some((start, end)),
            _ => None,
        };
        Some(ModeSummary {
            label: label.to_string(),
            mode: first.mode.clone(),
            clients: first.clients,
            sagas_per_s: spread(&|r: &Report| Some(r.sagas_per_s))?,
            p50_ms: spread(&|r: &Report| Some(r.latency_ms.p50))?,
            p99_ms: spread(&|r: &Report| Some(r.latency_ms.p99))?,
            errors: runs.iter().map(|r| r.error_count).sum(),
            cpu_ms_per_saga,
            cpu_ms_per_saga_sum: spread(&|r: &Report| Some(r.cpu_ms_per_saga_sum))?,
            statements_per_saga: spread(&|r: &Report| r.sql.as_ref().map(|s| s.statements_per_saga)),
            commits_per_saga: spread(&|r: &Report| r.sql.as_ref().map(|s| s.commits_per_saga)),
            fsyncs_per_saga: spread(&|r: &Report| r.sql.as_ref().map(|s| s.fsyncs_per_saga)),
            machine_busy: spread(&|r: &Report| r.machine_busy),
            machine_steal: spread(&|r: &Report| r.machine_steal),
            other_cpu: spread(&|r: &Report| r.other_cpu),
            coordinator_rss_kib,
            notes: first.notes.clone(),
        })
    }

    /// Median CPU ms per saga of process `name`, with its spread.
    pub fn cpu(&self, name: &str) -> Option<Spread> {
        self.cpu_ms_per_saga.iter().find(|p| p.name == name).map(|p| p.ms_per_saga)
    }
}

/// A performance target, and what this comparison measured for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetResult {
    /// What is asked, in words: `quick order total CPU per saga ≤ 1.6 × direct's`.
    pub name: String,
    /// The bound, e.g. `<= 1.6`.
    pub target: String,
    /// The median over the rounds and its spread (absent: not measured in
    /// this comparison, e.g. no peer given).
    pub measured: Option<Spread>,
    /// Rounds whose pair was flagged for steal (ratios only).
    pub flagged_rounds: usize,
}

/// `quickorder-bench compare`: every run, the summaries, the ratios.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Rounds asked for.
    pub rounds: usize,
    /// Steal gap above which a pair is flagged, percentage points.
    pub max_steal_gap_pp: f64,
    /// The modes in the order of odd rounds (even rounds ran them reversed).
    pub order: Vec<String>,
    /// Every run, in the order it ran, each with its round.
    pub runs: Vec<Report>,
    /// Each mode over the rounds, in `order`.
    pub modes: Vec<ModeSummary>,
    /// Ratios between modes, per round and as median and spread.
    pub ratios: Vec<Ratio>,
    /// The pairs whose steal differed too much.
    pub steal_flags: Vec<StealFlag>,
    /// The performance targets with the figures measured for them.
    pub targets: Vec<TargetResult>,
}

// The performance targets (BENCHMARKS.md, "Targets"), stated in the terms this method measures.

/// The quick order's throughput over `direct`'s, median of the pairs: at least.
const QUICK_ORDER_THROUGHPUT: f64 = 0.75;
/// The quick order's CPU per saga, all processes, over `direct`'s: at most.
const QUICK_ORDER_CPU: f64 = 1.6;
/// Our coordinator's throughput in `peer` over the peer's: at least.
const PEER_THROUGHPUT: f64 = 3.0;
/// Our coordinator's own CPU ms per saga in `peer`: at most.
const COORDINATOR_CPU_MS_IN_PEER: f64 = 0.25;

impl Comparison {
    /// Summarises `runs` (each with its round) measured with `method`.
    pub fn new(runs: Vec<Report>, method: Method) -> Comparison {
        let mut order: Vec<String> = Vec::new();
        for run in &runs {
            if !order.contains(&run.label) {
                order.push(run.label.clone());
            }
        }
        let modes: Vec<ModeSummary> = order
            .iter()
            .filter_map(|label| {
                let of_mode: Vec<&Report> = runs.iter().filter(|r| &r.label == label).collect();
                ModeSummary::of(label, &of_mode)
            })
            .collect();

        // The plain run of a mode, not a `--variant` of it.
        let label_of = |mode: &str| {
            modes.iter().find(|m| m.mode == mode && !is_variant(&m.label)).map(|m| m.label.clone())
        };
        let peers: Vec<&ModeSummary> = modes.iter().filter(|m| m.mode == "peer").collect();
        let mut pairs: Vec<(String, String, Vec<Measure>)> = Vec::new();
        let mut pair = |a: Option<String>, b: Option<String>, measures: Vec<Measure>| {
            if let (Some(a), Some(b)) = (a, b) {
                pairs.push((a, b, measures));
            }
        };
        let both = vec![Measure::Throughput, Measure::CpuPerSaga];
        pair(label_of("http"), label_of("direct"), both.clone());
        pair(label_of("saga"), label_of("direct"), both.clone());
        pair(label_of("direct"), label_of("db"), vec![Measure::Throughput]);
        // What the other transaction modes cost against the saga doing the
        // same work: a workflow against the quick order's saga, XA's
        // two-phase commit against compensation.
        pair(label_of("workflow"), label_of("http"), both.clone());
        pair(label_of("xa"), label_of("saga"), both.clone());
        for variant in modes.iter().filter(|m| is_variant(&m.label)) {
            pair(Some(variant.label.clone()), label_of(&variant.mode), both.clone());
        }
        if let [ours, theirs, ..] = peers.as_slice() {
            // Their CPU only counts when their process was accounted
            // (`--peer-pid`): mariadbd and the bench alone would flatter them.
            let theirs_accounted = theirs.cpu_ms_per_saga.len() > 2;
            let measures = if theirs_accounted { both } else { vec![Measure::Throughput] };
            pair(Some(ours.label.clone()), Some(theirs.label.clone()), measures);
        }

        let mut ratios = Vec::new();
        let mut steal_flags = Vec::new();
        for (a, b, measures) in &pairs {
            let name = format!("{} / {}", short(a), short(b));
            let mut values: BTreeMap<Measure, Vec<PairValue>> = BTreeMap::new();
            let rounds: Vec<usize> = runs.iter().filter(|r| &r.label == a).filter_map(|r| r.round).collect();
            for round in rounds {
                let find = |label: &str| runs.iter().find(|r| r.label == label && r.round == Some(round));
                let (Some(ra), Some(rb)) = (find(a), find(b)) else { continue };
                let gap = steal_gap_pp(ra.machine_steal, rb.machine_steal);
                let flagged = steal_gap_flagged(gap, method.max_steal_gap_pp);
                if flagged && let Some(gap_pp) = gap {
                    steal_flags.push(StealFlag {
                        round,
                        pair: name.clone(),
                        steal_a_pct: report::round(ra.machine_steal.unwrap_or(0.0) * 100.0, 1),
                        steal_b_pct: report::round(rb.machine_steal.unwrap_or(0.0) * 100.0, 1),
                        gap_pp: report::round(gap_pp, 1),
                    });
                }
                for &measure in measures {
                    let (x, y) = match measure {
                        Measure::Throughput => (ra.sagas_per_s, rb.sagas_per_s),
                        Measure::CpuPerSaga => (ra.cpu_ms_per_saga_sum, rb.cpu_ms_per_saga_sum),
                    };
                    if x > 0.0 && y > 0.0 {
                        values.entry(measure).or_default().push(PairValue {
                            round,
                            value: report::round(x / y, 3),
                            steal_gap_pp: gap.map(|g| report::round(g, 1)),
                            flagged,
                        });
                    }
                }
            }
            for &measure in measures {
                let rounds = values.remove(&measure).unwrap_or_default();
                let Some(spread) = Spread::of(&rounds.iter().map(|v| v.value).collect::<Vec<_>>()) else {
                    continue;
                };
                ratios.push(Ratio {
                    name: name.clone(),
                    measure,
                    numerator: a.clone(),
                    denominator: b.clone(),
                    spread,
                    rounds,
                });
            }
        }

        let targets = targets(&modes, &ratios);
        Comparison {
            rounds: method.rounds,
            max_steal_gap_pp: method.max_steal_gap_pp,
            order,
            runs,
            modes,
            ratios,
            steal_flags,
            targets,
        }
    }

    /// The ratio `name` of `measure`, if measured.
    pub fn ratio(&self, name: &str, measure: Measure) -> Option<&Ratio> {
        self.ratios.iter().find(|r| r.name == name && r.measure == measure)
    }

    /// `sum / direct` for a mode's CPU table row.
    fn cpu_vs_direct(&self, mode: &ModeSummary) -> String {
        if mode.mode == "direct" {
            return "1".into();
        }
        self.ratios
            .iter()
            .find(|r| {
                r.measure == Measure::CpuPerSaga && r.numerator == mode.label && r.name.ends_with("/ direct")
            })
            .map_or("-".into(), |r| r.spread.display(2))
    }

    /// The process columns of the CPU table: every process of any mode,
    /// the bench under one column.
    fn cpu_columns(&self) -> Vec<String> {
        let mut columns: Vec<String> = Vec::new();
        for process in self.modes.iter().flat_map(|m| &m.cpu_ms_per_saga) {
            let column = column_of(&process.name).to_string();
            if !columns.contains(&column) {
                columns.push(column);
            }
        }
        // The system's processes in the order a saga goes through them,
        // then a peer's, then the database, the bench last: it is the load
        // generator, not the system.
        let rank = |column: &str| match column {
            "coordinator" => 0,
            "order-api" => 1,
            "order-srv" => 2,
            "stock-srv" => 3,
            "mariadbd" => 5,
            "bench" => 6,
            _ => 4,
        };
        columns.sort_by_key(|c| rank(c));
        columns
    }

    /// A mode's CPU ms per saga in `column`, as text.
    fn cpu_cell(mode: &ModeSummary, column: &str, digits: usize) -> String {
        mode.cpu_ms_per_saga
            .iter()
            .find(|p| column_of(&p.name) == column)
            .map_or("-".into(), |p| format!("{:.digits$}", p.ms_per_saga.median))
    }

    /// Everything after the rounds, for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n== compare: {} round(s), median (min–max) over the rounds; order {} (reversed in even rounds)",
            self.rounds,
            self.order.join(" → ")
        );
        let _ = writeln!(
            out,
            "{:<40} {:>22} {:>8} {:>8} {:>6} {:>8} {:>7} {:>12} {:>12}",
            "run", "sagas/s", "p50 ms", "p99 ms", "errors", "SQL/saga", "commits", "steal", "other procs"
        );
        for m in &self.modes {
            let _ = writeln!(
                out,
                "{:<40} {:>22} {:>8.2} {:>8.2} {:>6} {:>8} {:>7} {:>12} {:>12}",
                m.label,
                m.sagas_per_s.display(1),
                m.p50_ms.median,
                m.p99_ms.median,
                m.errors,
                median_text(m.statements_per_saga, 2),
                median_text(m.commits_per_saga, 2),
                percent_spread(m.machine_steal),
                percent_spread(m.other_cpu),
            );
        }
        let columns = self.cpu_columns();
        let _ = writeln!(out, "\nCPU ms per saga (median over the rounds; sum: median of each round's sum)");
        let mut header = format!("{:<40}", "run");
        for column in &columns {
            let _ = write!(header, " {:>12}", truncate(column, 12));
        }
        let _ = write!(header, " {:>20} {:>18}", "sum", "sum / direct");
        let _ = writeln!(out, "{header}");
        for m in &self.modes {
            let mut line = format!("{:<40}", m.label);
            for column in &columns {
                let _ = write!(line, " {:>12}", Self::cpu_cell(m, column, 3));
            }
            let _ = write!(line, " {:>20} {:>18}", m.cpu_ms_per_saga_sum.display(3), self.cpu_vs_direct(m));
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "\nratios (median of the rounds' pairs, min–max)");
        for r in &self.ratios {
            let flagged = match r.flagged() {
                0 => String::new(),
                n => format!("   ⚠ {n} of {} pairs flagged for steal", r.rounds.len()),
            };
            let _ = writeln!(
                out,
                "  {:<14} {:<40} {:>20}{flagged}",
                r.measure.describe(),
                r.name,
                r.spread.display(2)
            );
        }
        if !self.targets.is_empty() {
            let _ = writeln!(out, "\ntargets");
            for t in &self.targets {
                let measured = t.measured.map_or("not measured".into(), |s| s.display(2));
                let _ = writeln!(out, "  {:<62} {:>20}", t.name, measured);
            }
        }
        for flag in &self.steal_flags {
            let _ = writeln!(out, "⚠ {}", flag.describe(self.max_steal_gap_pp));
        }
        // The modes' notes once each (most are the same for every mode).
        let mut notes: Vec<&str> = Vec::new();
        for note in self.modes.iter().flat_map(|m| &m.notes) {
            if !notes.contains(&note.as_str()) {
                notes.push(note);
            }
        }
        for note in notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }

    /// The tables and the ratios in Markdown (BENCHMARKS.md).
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Median over {} rounds, (min–max) where they differ; in each round the modes ran in the order \
             below, reversed in even rounds. Steal and other processes: share of the machine during the \
             run.\n",
            self.rounds
        );
        out.push_str(
            "| run | clients | sagas/s | p50 ms | p99 ms | errors | SQL stmts/saga | commits/saga | \
             fsyncs/saga | machine busy | steal | other processes | coordinator RSS MiB |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for m in &self.modes {
            let rss = m
                .coordinator_rss_kib
                .map_or("-".into(), |(a, b)| format!("{:.0}→{:.0}", a as f64 / 1024.0, b as f64 / 1024.0));
            let _ = writeln!(
                out,
                "| {} | {} | **{:.0}**{} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {rss} |",
                m.label,
                m.clients,
                m.sagas_per_s.median,
                m.sagas_per_s.range(0),
                m.p50_ms.median,
                m.p99_ms.median,
                m.errors,
                median_text(m.statements_per_saga, 1),
                median_text(m.commits_per_saga, 1),
                median_text(m.fsyncs_per_saga, 2),
                percent_spread(m.machine_busy),
                percent_spread(m.machine_steal),
                percent_spread(m.other_cpu),
            );
        }

        let columns = self.cpu_columns();
        let _ = writeln!(
            out,
            "\nCPU ms per saga, by process (median over the rounds; sum: the median of each round's sum, \
             with its spread; sum / direct: the median of the rounds' ratios):\n"
        );
        let _ = writeln!(out, "| run | {} | sum | sum / direct |", columns.join(" | "));
        let _ = writeln!(out, "|---|{}---|---|", "---|".repeat(columns.len()));
        for m in &self.modes {
            let cells: Vec<String> = columns.iter().map(|c| Self::cpu_cell(m, c, 2)).collect();
            let _ = writeln!(
                out,
                "| {} | {} | **{}** | {} |",
                m.label,
                cells.join(" | "),
                m.cpu_ms_per_saga_sum.display(2),
                self.cpu_vs_direct(m)
            );
        }
        if columns.iter().any(|c| c == "bench") {
            let _ = writeln!(
                out,
                "\n(bench: the load generator; in saga and peer also the branch servers built into it.)"
            );
        }

        let _ = writeln!(out, "\nRatios, median of the rounds' pairs (min–max):\n");
        for r in &self.ratios {
            let flagged = match r.flagged() {
                0 => String::new(),
                n => format!(" — ⚠ {n} of {} pairs flagged for steal", r.rounds.len()),
            };
            let _ = writeln!(
                out,
                "- {}, {}: **{:.2}**{}{flagged}",
                r.name,
                r.measure.describe(),
                r.spread.median,
                r.spread.range(2)
            );
        }
        if !self.targets.is_empty() {
            let _ = writeln!(out, "\nTargets (BENCHMARKS.md), as measured here:\n");
            let _ = writeln!(out, "| target | measured, median (min–max) | pairs flagged for steal |");
            let _ = writeln!(out, "|---|---|---|");
            for t in &self.targets {
                let measured = t.measured.map_or("not measured".into(), |s| s.display(2));
                let _ = writeln!(out, "| {} | {measured} | {} |", t.name, t.flagged_rounds);
            }
        }
        for flag in &self.steal_flags {
            let _ = writeln!(out, "\n- ⚠ {}", flag.describe(self.max_steal_gap_pp));
        }
        let _ = writeln!(out, "\n<details><summary>Every run, in the order it ran</summary>\n");
        out.push_str(&markdown_table(&self.runs));
        let _ = writeln!(out, "\n</details>");
        out
    }
}

/// The performance targets, from the summaries and ratios measured.
fn targets(modes: &[ModeSummary], ratios: &[Ratio]) -> Vec<TargetResult> {
    let from_ratio = |name: &str, measure: Measure, words: String, target: String| {
        let ratio = ratios.iter().find(|r| r.name == name && r.measure == measure);
        TargetResult {
            name: words,
            target,
            measured: ratio.map(|r| r.spread),
            flagged_rounds: ratio.map_or(0, Ratio::flagged),
        }
    };
    let mut targets = vec![
        from_ratio(
            "http / direct",
            Measure::CpuPerSaga,
            format!("quick order total CPU per saga ≤ {QUICK_ORDER_CPU} × direct's"),
            format!("<= {QUICK_ORDER_CPU}"),
        ),
        from_ratio(
            "http / direct",
            Measure::Throughput,
            format!("quick order throughput ≥ {QUICK_ORDER_THROUGHPUT} × direct's"),
            format!(">= {QUICK_ORDER_THROUGHPUT}"),
        ),
    ];
    // Our coordinator in `peer`: the first peer run that has a coordinator.
    let ours = modes.iter().find(|m| m.mode == "peer" && m.cpu("coordinator").is_some());
    if let Some(ours) = ours {
        targets.push(TargetResult {
            name: format!("coordinator CPU per saga in {} ≤ {COORDINATOR_CPU_MS_IN_PEER} ms", ours.label),
            target: format!("<= {COORDINATOR_CPU_MS_IN_PEER}"),
            measured: ours.cpu("coordinator"),
            flagged_rounds: 0,
        });
    }
    let peers: Vec<&ModeSummary> = modes.iter().filter(|m| m.mode == "peer").collect();
    if let [ours, theirs, ..] = peers.as_slice() {
        let name = format!("{} / {}", short(&ours.label), short(&theirs.label));
        targets.push(from_ratio(
            &name,
            Measure::Throughput,
            format!("{} ≥ {PEER_THROUGHPUT} × {} (sagas/s)", ours.label, theirs.label),
            format!(">= {PEER_THROUGHPUT}"),
        ));
    }
    targets
}

/// A run label's short name in a ratio: its first word (`http`,
/// `direct`), or the whole label for a peer (`peer ours`).
/// A run's name in a ratio: `http`, `peer dtmrs`, `http ATTEMPTS_RECORD=off`.
fn short(label: &str) -> String {
    let mode = label.split_whitespace().next().unwrap_or(label);
    if label.starts_with("peer ") {
        label.to_string()
    } else if let Some((_, settings)) = label.split_once(VARIANT_MARK) {
        format!("{mode} {settings}")
    } else {
        mode.to_string()
    }
}

/// A `--variant` run (its label carries the settings).
fn is_variant(label: &str) -> bool {
    label.contains(VARIANT_MARK)
}

/// The CPU table's column for a process: the bench's runs share one.
fn column_of(process: &str) -> &str {
    if process.starts_with("bench") { "bench" } else { process }
}

fn truncate(text: &str, width: usize) -> String {
    text.chars().take(width).collect()
}

fn median_text(spread: Option<Spread>, digits: usize) -> String {
    spread.map_or("-".into(), |s| format!("{:.digits$}", s.median))
}

/// `34% (31–40%)` for a share over the rounds.
fn percent_spread(spread: Option<Spread>) -> String {
    match spread {
        None => "-".into(),
        Some(s) => {
            let (min, max) = (format!("{:.0}", s.min * 100.0), format!("{:.0}", s.max * 100.0));
            if min == max {
                percent(Some(s.median))
            } else {
                format!("{} ({min}–{max}%)", percent(Some(s.median)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ProcessReport;

    /// A run as `compare` records it, with the figures the comparison reads.
    fn run(label: &str, round: usize, rate: f64, cpu: &[(&str, f64)], steal: f64) -> Report {
        let mode = label.split_whitespace().next().unwrap_or(label);
        let processes: Vec<ProcessReport> = cpu
            .iter()
            .map(|&(name, ms)| ProcessReport {
                name: name.into(),
                pid: 1,
                cpu_seconds: 0.0,
                cpu_ms_per_saga: ms,
                cores: 0.0,
                rss_start_kib: None,
                rss_end_kib: None,
                rss_peak_kib: None,
            })
            .collect();
        Report {
            mode: mode.into(),
            label: label.into(),
            round: Some(round),
            clients: 16,
            elapsed_s: 20.0,
            sagas: (rate * 20.0) as u64,
            sagas_per_s: rate,
            latency_ms: report::Latency { p50: 10.0, p90: 20.0, p99: 30.0, max: 40.0, mean: 12.0 },
            error_count: 0,
            errors: BTreeMap::new(),
            cpu_ms_per_saga_sum: report::round(cpu.iter().map(|(_, ms)| ms).sum(), 4),
            processes,
            sql: None,
            machine_cpus: 2,
            machine_busy: Some(0.9),
            machine_steal: Some(steal),
            other_cpu: Some(0.02),
            coordinator_rss_kib: None,
            interrupted: false,
            notes: vec![],
        }
    }

    const METHOD: Method = Method { rounds: 3, max_steal_gap_pp: 5.0 };

    /// Three rounds of direct and http (the second in reverse order), one
    /// of them under a burst of steal on http's run.
    fn three_rounds() -> Comparison {
        let direct = |round, rate, steal| {
            run(
                "direct grpc",
                round,
                rate,
                &[("order-srv", 0.4), ("stock-srv", 0.4), ("mariadbd", 1.0), ("bench", 0.2)],
                steal,
            )
        };
        let http = |round, rate, steal, coordinator| {
            run(
                "http quickCreate",
                round,
                rate,
                &[
                    ("coordinator", coordinator),
                    ("order-srv", 0.4),
                    ("stock-srv", 0.4),
                    ("mariadbd", 1.4),
                    ("bench", 0.1),
                ],
                steal,
            )
        };
        Comparison::new(
            vec![
                direct(1, 800.0, 0.33),
                http(1, 400.0, 0.35, 0.5),
                http(2, 480.0, 0.34, 0.5),
                direct(2, 800.0, 0.36),
                direct(3, 1000.0, 0.32),
                http(3, 200.0, 0.41, 0.7),
            ],
            METHOD,
        )
    }

    #[test]
    fn a_variant_is_compared_with_the_plain_run_of_its_mode() {
        let http = |label: &str, round, rate, coordinator| {
            run(label, round, rate, &[("coordinator", coordinator), ("mariadbd", 1.0)], 0.3)
        };
        let variant = "http quickCreate with ATTEMPTS_RECORD=off";
        let comparison = Comparison::new(
            vec![
                run("direct grpc", 1, 800.0, &[("mariadbd", 1.0)], 0.3),
                http("http quickCreate", 1, 400.0, 0.5),
                http(variant, 1, 440.0, 0.4),
                http(variant, 2, 400.0, 0.45),
                http("http quickCreate", 2, 400.0, 0.5),
                run("direct grpc", 2, 800.0, &[("mariadbd", 1.0)], 0.3),
            ],
            Method { rounds: 2, max_steal_gap_pp: 5.0 },
        );
        let ratio = comparison
            .ratio("http ATTEMPTS_RECORD=off / http", Measure::Throughput)
            .expect("variant / plain, sagas/s");
        assert_eq!((ratio.numerator.as_str(), ratio.denominator.as_str()), (variant, "http quickCreate"));
        assert_eq!(ratio.rounds.iter().map(|r| r.value).collect::<Vec<_>>(), [1.1, 1.0]);
        let cpu = comparison.ratio("http ATTEMPTS_RECORD=off / http", Measure::CpuPerSaga).expect("CPU");
        assert_eq!(cpu.rounds.iter().map(|r| r.value).collect::<Vec<_>>(), [0.933, 0.967]);
        // The targets stay on the plain run.
        let plain = comparison.ratio("http / direct", Measure::Throughput).expect("http / direct");
        assert_eq!(plain.numerator, "http quickCreate");
    }

    /// `workflow` is measured against `http` (the quick order as a saga),
    /// `xa` against `saga` (the same branch work by compensation), in
    /// both measures; neither touches the ratios against `direct`.
    #[test]
    fn workflow_and_xa_are_compared_with_their_saga() {
        let mode = |label: &str, round, rate, coordinator| {
            run(label, round, rate, &[("coordinator", coordinator), ("mariadbd", 1.0)], 0.3)
        };
        let (saga, xa) = ("saga api=grpc branches=grpc work=sql", "xa api=grpc branches=http work=sql");
        let comparison = Comparison::new(
            vec![
                mode("http quickCreate", 1, 400.0, 0.5),
                mode("workflow quickCreate", 1, 300.0, 1.0),
                mode(saga, 1, 500.0, 0.5),
                mode(xa, 1, 100.0, 1.5),
                mode(xa, 2, 120.0, 1.0),
                mode(saga, 2, 400.0, 0.5),
                mode("workflow quickCreate", 2, 200.0, 0.5),
                mode("http quickCreate", 2, 400.0, 0.5),
            ],
            Method { rounds: 2, max_steal_gap_pp: 5.0 },
        );
        let values = |name: &str, measure| {
            let ratio = comparison.ratio(name, measure).unwrap_or_else(|| panic!("no {name} {measure:?}"));
            (
                ratio.numerator.clone(),
                ratio.denominator.clone(),
                ratio.rounds.iter().map(|r| r.value).collect(),
            )
        };
        let pair = |a: &str, b: &str, rounds: Vec<f64>| (a.to_string(), b.to_string(), rounds);
        assert_eq!(
            values("workflow / http", Measure::Throughput),
            pair("workflow quickCreate", "http quickCreate", vec![0.75, 0.5])
        );
        // CPU per saga: (1.0 + 1.0) / (0.5 + 1.0), then (0.5 + 1.0) / (0.5 + 1.0).
        assert_eq!(
            values("workflow / http", Measure::CpuPerSaga),
            pair("workflow quickCreate", "http quickCreate", vec![1.333, 1.0])
        );
        assert_eq!(values("xa / saga", Measure::Throughput), pair(xa, saga, vec![0.2, 0.3]));
        assert_eq!(values("xa / saga", Measure::CpuPerSaga), pair(xa, saga, vec![1.667, 1.333]));
        assert!(comparison.ratio("xa / direct", Measure::Throughput).is_none(), "no direct run, no ratio");
    }

    #[test]
    fn rounds_alternate_their_order() {
        assert_eq!(round_order(3, 1), [0, 1, 2]);
        assert_eq!(round_order(3, 2), [2, 1, 0]);
        assert_eq!(round_order(3, 3), [0, 1, 2]);
        assert!(round_order(0, 2).is_empty());
    }

    #[test]
    fn ratios_are_medians_of_the_rounds_pairs() {
        let comparison = three_rounds();
        assert_eq!(comparison.order, ["direct grpc", "http quickCreate"]);
        // Per round: 0.5, 0.6, 0.2 → median 0.5; a ratio of medians
        // (440 / 800 = 0.55) would mix rounds.
        let throughput = comparison.ratio("http / direct", Measure::Throughput).expect("measured");
        assert_eq!(throughput.spread, Spread { median: 0.5, min: 0.2, max: 0.6, n: 3 });
        assert_eq!(throughput.rounds.iter().map(|r| r.value).collect::<Vec<_>>(), [0.5, 0.6, 0.2]);
        // CPU: direct 2.0 ms a saga, http 2.8 (2.8, 2.8, 3.0).
        let cpu = comparison.ratio("http / direct", Measure::CpuPerSaga).expect("measured");
        assert_eq!((cpu.spread.median, cpu.spread.min, cpu.spread.max), (1.4, 1.4, 1.5));
        assert!(comparison.ratio("saga / direct", Measure::Throughput).is_none(), "no saga run");
        let http = &comparison.modes[1];
        assert_eq!(http.sagas_per_s, Spread { median: 400.0, min: 200.0, max: 480.0, n: 3 });
        assert_eq!(http.cpu("coordinator").map(|s| s.median), Some(0.5));
        assert_eq!(http.cpu_ms_per_saga_sum.median, 2.8);
    }

    #[test]
    fn a_pair_with_a_steal_gap_is_flagged() {
        let comparison = three_rounds();
        // Round 3: 32 % against 41 %: 9 points. Rounds 1 and 2: 2 points.
        assert_eq!(
            comparison.steal_flags,
            [StealFlag {
                round: 3,
                pair: "http / direct".into(),
                steal_a_pct: 41.0,
                steal_b_pct: 32.0,
                gap_pp: 9.0
            }]
        );
        let throughput = comparison.ratio("http / direct", Measure::Throughput).expect("measured");
        assert_eq!(throughput.rounds.iter().map(|r| r.flagged).collect::<Vec<_>>(), [false, false, true]);
        assert_eq!(throughput.flagged(), 1);
        let text = comparison.render();
        assert!(text.contains("⚠ round 3, http / direct: steal 41% against 32%, 9.0 points apart"), "{text}");
        let markdown = comparison.markdown();
        assert!(markdown.contains("⚠ 1 of 3 pairs flagged for steal"), "{markdown}");
        // A wider allowance flags nothing.
        let calm = Comparison::new(comparison.runs.clone(), Method { max_steal_gap_pp: 10.0, ..METHOD });
        assert!(calm.steal_flags.is_empty());
    }

    #[test]
    fn targets_and_tables_in_the_reports() {
        let comparison = three_rounds();
        let names: Vec<&str> = comparison.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["quick order total CPU per saga ≤ 1.6 × direct's", "quick order throughput ≥ 0.75 × direct's"]
        );
        assert_eq!(comparison.targets[1].measured.map(|s| s.median), Some(0.5));
        assert_eq!(comparison.targets[1].flagged_rounds, 1);
        let markdown = comparison.markdown();
        assert!(markdown.contains("| direct grpc | 16 | **800** (800–1000) |"), "{markdown}");
        assert!(
            markdown.contains(
                "| run | coordinator | order-srv | stock-srv | mariadbd | bench | sum | sum / direct |"
            ),
            "{markdown}"
        );
        assert!(
            markdown.contains(
                "| http quickCreate | 0.50 | 0.40 | 0.40 | 1.40 | 0.10 | **2.80 (2.80–3.00)** | 1.40 (1.40–1.50) |"
            ),
            "{markdown}"
        );
        assert!(
            markdown.contains("| direct grpc | - | 0.40 | 0.40 | 1.00 | 0.20 | **2.00** | 1 |"),
            "{markdown}"
        );
        assert!(markdown.contains("- http / direct, sagas/s: **0.50** (0.20–0.60)"), "{markdown}");
        assert!(
            markdown.contains("| quick order throughput ≥ 0.75 × direct's | 0.50 (0.20–0.60) | 1 |"),
            "{markdown}"
        );
        // Every run, each with its round.
        assert_eq!(
            markdown.lines().filter(|l| l.starts_with("| direct grpc · round")).count(),
            3,
            "{markdown}"
        );
        let json = serde_json::to_string(&comparison).expect("serializes");
        assert_eq!(serde_json::from_str::<Comparison>(&json).expect("parses"), comparison);
        assert!(json.contains(r#""median":0.5"#) && json.contains(r#""steal_flags":[{"round":3"#), "{json}");
    }

    #[test]
    fn peers_are_compared_and_our_coordinator_has_a_cpu_target() {
        let peer = |name: &str, round, rate, cpu: &[(&str, f64)]| {
            run(&format!("peer {name}"), round, rate, cpu, 0.3)
        };
        let runs = vec![
            peer("ours", 1, 1200.0, &[("coordinator", 0.40), ("mariadbd", 0.4), ("bench (+branches)", 0.2)]),
            peer("dtmrs", 1, 400.0, &[("dtmrs", 1.3), ("mariadbd", 2.6), ("bench (+branches)", 0.3)]),
            peer("dtmrs", 2, 420.0, &[("dtmrs", 1.3), ("mariadbd", 2.6), ("bench (+branches)", 0.3)]),
            peer("ours", 2, 1300.0, &[("coordinator", 0.44), ("mariadbd", 0.4), ("bench (+branches)", 0.2)]),
        ];
        let comparison = Comparison::new(runs, Method { rounds: 2, ..METHOD });
        let ratio = comparison.ratio("peer ours / peer dtmrs", Measure::Throughput).expect("measured");
        assert_eq!(ratio.rounds.iter().map(|r| r.value).collect::<Vec<_>>(), [3.0, 3.095]);
        assert!(comparison.ratio("peer ours / peer dtmrs", Measure::CpuPerSaga).is_some(), "dtmrs accounted");
        let coordinator =
            comparison.targets.iter().find(|t| t.name.starts_with("coordinator CPU")).expect("target");
        assert_eq!(coordinator.name, "coordinator CPU per saga in peer ours ≤ 0.25 ms");
        assert!((coordinator.measured.expect("measured").median - 0.42).abs() < 1e-9);
        assert!(comparison.targets.iter().any(|t| t.name == "peer ours ≥ 3 × peer dtmrs (sagas/s)"));
        // The bench's two names share a column.
        assert_eq!(comparison.cpu_columns(), ["coordinator", "dtmrs", "mariadbd", "bench"]);
    }
}
