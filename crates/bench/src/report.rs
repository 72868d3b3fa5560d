//! The report of a run: built from the load outcome and the before/after
//! readings, printed for people, written as JSON for scripts.
//!
//! "Saga" is the unit everywhere, whatever the mode: one quick order
//! (`http`), one saga (`saga`, `peer`), one pair of branch calls
//! (`direct`), one insert commit (`db`). Per-saga figures divide by the
//! successful ones.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::dbstat::{self, Counters};
use super::load::{ErrorCount, Outcome};
use super::procstat::{self, MachineSample, ProcSample, Watched, ticks_per_second};

/// Latency percentiles of the successful sagas, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// CPU and memory of one process over the measured window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessReport {
    /// `coordinator`, `mariadbd`, `bench` (this process: load generator,
    /// and the branch servers in `saga`/`peer`), …
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// User + system CPU seconds in the window.
    pub cpu_seconds: f64,
    /// `cpu_seconds / sagas`, in milliseconds.
    pub cpu_ms_per_saga: f64,
    /// `cpu_seconds / elapsed`: how many cores it kept busy on average.
    pub cores: f64,
    /// RSS at the start of the window, KiB.
    pub rss_start_kib: Option<u64>,
    /// RSS at the end, KiB.
    pub rss_end_kib: Option<u64>,
    /// Peak RSS since the process started (`VmHWM`), KiB.
    pub rss_peak_kib: Option<u64>,
}

/// What the database server did per saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlReport {
    /// `Com_select + Com_insert + Com_update + Com_delete` per saga.
    pub statements_per_saga: f64,
    /// Explicit commits (`Com_commit`) per saga.
    pub commits_per_saga: f64,
    /// InnoDB fsyncs (`Innodb_data_fsyncs`, redo log included) per saga.
    pub fsyncs_per_saga: f64,
    /// Every counter of [`dbstat::COUNTERS`], per saga.
    pub per_saga: BTreeMap<String, f64>,
    /// The raw differences.
    pub totals: Counters,
}

/// One mode's run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `http`, `saga`, `direct`, `db`, `peer`.
    pub mode: String,
    /// What exactly ran, e.g. `saga api=grpc branches=grpc work=sql`.
    pub label: String,
    /// `compare`'s round this run belongs to (1, 2, …); absent for a
    /// single mode's run.
    #[serde(default)]
    pub round: Option<usize>,
    /// Concurrent clients.
    pub clients: usize,
    /// Length of the measured window, seconds.
    pub elapsed_s: f64,
    /// Successful sagas in the window.
    pub sagas: u64,
    /// `sagas / elapsed_s`.
    pub sagas_per_s: f64,
    /// Latency of the successful sagas.
    pub latency_ms: Latency,
    /// Failed sagas, total.
    pub error_count: u64,
    /// Failed sagas by kind, with a sample message.
    pub errors: BTreeMap<String, ErrorCount>,
    /// CPU and memory per process.
    pub processes: Vec<ProcessReport>,
    /// The sum of `processes`' `cpu_ms_per_saga`: what one saga cost the
    /// whole machine, as far as the bench can account for it. The figure
    /// steal distorts least (a stolen tick is charged to no process), so
    /// the one to compare modes by on a shared machine.
    pub cpu_ms_per_saga_sum: f64,
    /// The database's counters (absent if they could not be read).
    pub sql: Option<SqlReport>,
    /// Logical CPUs of the machine.
    pub machine_cpus: usize,
    /// Share of all CPUs busy during the window (0..1), steal included.
    pub machine_busy: Option<f64>,
    /// Share of all CPUs' time the hypervisor gave to other guests during
    /// the window (0..1): the noise of a shared VM, recorded per run so
    /// that runs under different conditions can be told apart.
    #[serde(default)]
    pub machine_steal: Option<f64>,
    /// Share of all CPUs' time charged to processes the report does not
    /// account for (0..1): whatever else ran on the machine (another test
    /// suite, the other modes' idle services in `compare`). Absent when a
    /// process's readings are missing, rather than counting it as other.
    #[serde(default)]
    pub other_cpu: Option<f64>,
    /// Coordinator RSS at the start and end of the window, KiB.
    pub coordinator_rss_kib: Option<(u64, u64)>,
    /// Stopped by Ctrl-C before the limit.
    pub interrupted: bool,
    /// Anything a reader must know to compare this run (database
    /// settings, where the branch servers ran, …).
    pub notes: Vec<String>,
}

/// The readings at one edge of the measured window.
#[derive(Debug, Clone, Default)]
pub struct Readings {
    /// Per watched process, in the order watched.
    pub processes: Vec<Option<ProcSample>>,
    /// The whole machine.
    pub machine: Option<MachineSample>,
    /// The database server's counters.
    pub counters: Option<Counters>,
}

/// Everything a [`Report`] is made of.
pub struct Inputs<'a> {
    /// The mode's name.
    pub mode: &'a str,
    /// Its label.
    pub label: String,
    /// `compare`'s round, if any.
    pub round: Option<usize>,
    /// Clients.
    pub clients: usize,
    /// The load run.
    pub outcome: &'a Outcome,
    /// The processes, in the order of the readings.
    pub watched: &'a [Watched],
    /// Before the window.
    pub before: &'a Readings,
    /// After it.
    pub after: &'a Readings,
    /// Notes.
    pub notes: Vec<String>,
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// A share (0..1) as `34%`, `-` when unknown.
pub fn percent(share: Option<f64>) -> String {
    share.map_or("-".to_string(), |s| format!("{:.0}%", s * 100.0))
}

/// `value` rounded to `digits` decimals (what the JSON shows).
pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

impl Report {
    /// Builds the report.
    pub fn build(inputs: Inputs<'_>) -> Report {
        let outcome = inputs.outcome;
        let elapsed = outcome.elapsed.as_secs_f64().max(1e-9);
        let sagas = outcome.ok;
        let per = |value: f64| if sagas == 0 { 0.0 } else { value / sagas as f64 };
        let h = &outcome.latency_us;
        let latency_ms = if h.is_empty() {
            Latency { p50: 0.0, p90: 0.0, p99: 0.0, max: 0.0, mean: 0.0 }
        } else {
            Latency {
                p50: ms(h.value_at_quantile(0.50)),
                p90: ms(h.value_at_quantile(0.90)),
                p99: ms(h.value_at_quantile(0.99)),
                max: ms(h.max()),
                mean: round(h.mean() / 1000.0, 3),
            }
        };

        let ticks = ticks_per_second() as f64;
        let mut processes = Vec::new();
        let mut coordinator_rss_kib = None;
        let mut accounted_ticks = 0;
        let mut all_accounted = true;
        for (i, watched) in inputs.watched.iter().enumerate() {
            let before = inputs.before.processes.get(i).copied().flatten();
            let after = inputs.after.processes.get(i).copied().flatten();
            let (Some(before), Some(after)) = (before, after) else {
                all_accounted = false;
                continue;
            };
            let cpu_ticks = after.cpu_ticks.saturating_sub(before.cpu_ticks);
            accounted_ticks += cpu_ticks;
            let cpu_seconds = cpu_ticks as f64 / ticks;
            if watched.name == "coordinator"
                && let (Some(start), Some(end)) = (before.rss_kib, after.rss_kib)
            {
                coordinator_rss_kib = Some((start, end));
            }
            processes.push(ProcessReport {
                name: watched.name.clone(),
                pid: watched.pid,
                cpu_seconds: round(cpu_seconds, 2),
                cpu_ms_per_saga: round(per(cpu_seconds * 1000.0), 4),
                cores: round(cpu_seconds / elapsed, 3),
                rss_start_kib: before.rss_kib,
                rss_end_kib: after.rss_kib,
                rss_peak_kib: after.peak_rss_kib,
            });
        }

        let sql = match (&inputs.before.counters, &inputs.after.counters) {
            (Some(before), Some(after)) => {
                let totals = dbstat::delta(before, after);
                let get = |name: &str| totals.get(name).copied().unwrap_or(0) as f64;
                Some(SqlReport {
                    statements_per_saga: round(per(dbstat::statements(&totals) as f64), 3),
                    commits_per_saga: round(per(get("Com_commit")), 3),
                    fsyncs_per_saga: round(per(get("Innodb_data_fsyncs")), 3),
                    per_saga: totals.iter().map(|(k, &v)| (k.clone(), round(per(v as f64), 3))).collect(),
                    totals,
                })
            }
            _ => None,
        };

        let cpu_ms_per_saga_sum = round(processes.iter().map(|p| p.cpu_ms_per_saga).sum(), 4);
        let (machine_before, machine_after) = (inputs.before.machine, inputs.after.machine);
        let machine_steal = procstat::steal_share(machine_before, machine_after).map(|s| round(s, 3));
        let other_cpu = procstat::other_share(machine_before, machine_after, accounted_ticks)
            .filter(|_| all_accounted)
            .map(|s| round(s, 3));
        let machine_busy = match (inputs.before.machine, inputs.after.machine) {
            (Some(before), Some(after)) if after.total_ticks > before.total_ticks => Some(round(
                (after.busy_ticks - before.busy_ticks) as f64
                    / (after.total_ticks - before.total_ticks) as f64,
                3,
            )),
            _ => None,
        };

        Report {
            mode: inputs.mode.to_string(),
            label: inputs.label,
            round: inputs.round,
            clients: inputs.clients,
            elapsed_s: round(elapsed, 3),
            sagas,
            sagas_per_s: round(sagas as f64 / elapsed, 1),
            latency_ms,
            error_count: outcome.error_count(),
            errors: outcome.errors.clone(),
            processes,
            cpu_ms_per_saga_sum,
            sql,
            machine_cpus: super::procstat::cpu_count(),
            machine_busy,
            machine_steal,
            other_cpu,
            coordinator_rss_kib,
            interrupted: outcome.interrupted,
            notes: inputs.notes,
        }
    }

    /// The report for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let l = &self.latency_ms;
        let _ = writeln!(out, "== {} — {} clients, {:.1} s", self.label, self.clients, self.elapsed_s);
        let _ = writeln!(
            out,
            "   {:.1} sagas/s   ({} ok, {} failed{})",
            self.sagas_per_s,
            self.sagas,
            self.error_count,
            if self.interrupted { ", interrupted" } else { "" }
        );
        let _ = writeln!(
            out,
            "   latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  (p99/p50 {:.1})",
            l.p50,
            l.p90,
            l.p99,
            l.max,
            if l.p50 > 0.0 { l.p99 / l.p50 } else { 0.0 }
        );
        for (kind, error) in &self.errors {
            let _ = writeln!(out, "   error {kind}: {} (e.g. {})", error.count, error.sample);
        }
        if let Some(busy) = self.machine_busy {
            let _ = writeln!(
                out,
                "   machine: {} CPUs, {:.0}% busy, steal {}, other processes {}",
                self.machine_cpus,
                busy * 100.0,
                percent(self.machine_steal),
                percent(self.other_cpu)
            );
        }
        if !self.processes.is_empty() {
            let _ =
                writeln!(out, "   {:<22} {:>10} {:>8} {:>12}", "process", "CPU ms/saga", "cores", "RSS MiB");
            for p in &self.processes {
                let rss = match (p.rss_start_kib, p.rss_end_kib) {
                    (Some(a), Some(b)) => format!("{:.1}→{:.1}", a as f64 / 1024.0, b as f64 / 1024.0),
                    _ => "-".to_string(),
                };
                let _ = writeln!(
                    out,
                    "   {:<22} {:>10.3} {:>8.2} {:>12}",
                    p.name, p.cpu_ms_per_saga, p.cores, rss
                );
            }
            let _ = writeln!(out, "   {:<22} {:>10.3}", "sum", self.cpu_ms_per_saga_sum);
        }
        if let Some(sql) = &self.sql {
            let get = |k: &str| sql.per_saga.get(k).copied().unwrap_or(0.0);
            let _ = writeln!(
                out,
                "   SQL per saga: {:.2} statements (select {:.2}, insert {:.2}, update {:.2}, delete {:.2}), \
                 {:.2} commits, {:.2} questions, {:.2} fsyncs",
                sql.statements_per_saga,
                get("Com_select"),
                get("Com_insert"),
                get("Com_update"),
                get("Com_delete"),
                sql.commits_per_saga,
                get("Questions"),
                sql.fsyncs_per_saga,
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "   note: {note}");
        }
        out
    }

    /// One line for `compare`'s progress: the figures that tell a round's
    /// run from another's.
    pub fn line(&self) -> String {
        let round = self.round.map(|r| format!("round {r}: ")).unwrap_or_default();
        format!(
            "{round}{}: {:.1} sagas/s, p50 {:.2} ms, {} errors, CPU {:.3} ms/saga, busy {}, steal {}, other processes {}",
            self.label,
            self.sagas_per_s,
            self.latency_ms.p50,
            self.error_count,
            self.cpu_ms_per_saga_sum,
            percent(self.machine_busy),
            percent(self.machine_steal),
            percent(self.other_cpu),
        )
    }

    /// One row of [`markdown_table`].
    fn markdown_row(&self) -> String {
        let l = &self.latency_ms;
        let (statements, commits, fsyncs) =
            self.sql.as_ref().map_or(("-".into(), "-".into(), "-".into()), |s| {
                (
                    format!("{:.1}", s.statements_per_saga),
                    format!("{:.1}", s.commits_per_saga),
                    format!("{:.2}", s.fsyncs_per_saga),
                )
            });
        let cpu = self
            .processes
            .iter()
            .map(|p| format!("{} {:.2}", p.name, p.cpu_ms_per_saga))
            .collect::<Vec<_>>()
            .join(" · ");
        let rss = self
            .coordinator_rss_kib
            .map_or("-".to_string(), |(a, b)| format!("{:.0}→{:.0}", a as f64 / 1024.0, b as f64 / 1024.0));
        let run = match self.round {
            Some(round) => format!("{} · round {round}", self.label),
            None => self.label.clone(),
        };
        format!(
            "| {run} | {} | **{:.0}** | {:.2} | {:.2} | {:.2} | {} | {statements} | {commits} | {fsyncs} | {cpu} | {:.2} | {} | {} | {} | {rss} |",
            self.clients,
            self.sagas_per_s,
            l.p50,
            l.p90,
            l.p99,
            self.error_count,
            self.cpu_ms_per_saga_sum,
            percent(self.machine_busy),
            percent(self.machine_steal),
            percent(self.other_cpu),
        )
    }

    /// CPU ms per saga of process `name`, if watched.
    pub fn cpu_ms(&self, name: &str) -> Option<f64> {
        self.processes.iter().find(|p| p.name == name).map(|p| p.cpu_ms_per_saga)
    }
}

/// The runs as a Markdown table (BENCHMARKS.md).
pub fn markdown_table(reports: &[Report]) -> String {
    let mut out = String::from(
        "| run | clients | sagas/s | p50 ms | p90 ms | p99 ms | errors | SQL stmts/saga | commits/saga | \
         fsyncs/saga | CPU ms per saga, by process | CPU ms per saga, sum | machine busy | steal | \
         other processes | coordinator RSS MiB |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for report in reports {
        out.push_str(&report.markdown_row());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn outcome(ok_latencies_us: &[u64]) -> Outcome {
        let mut latency_us = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
        for &v in ok_latencies_us {
            latency_us.record(v).unwrap();
        }
        let errors =
            BTreeMap::from([("http_503".to_string(), ErrorCount { count: 2, sample: "busy".into() })]);
        Outcome {
            ok: latency_us.len(),
            errors,
            elapsed: Duration::from_secs(2),
            latency_us,
            interrupted: false,
        }
    }

    #[test]
    fn per_saga_figures_divide_by_successful_sagas() {
        let outcome = outcome(&[1000, 2000, 3000, 4000]);
        let watched = [Watched::new("coordinator", 1), Watched::new("mariadbd", 2)];
        let idle = ProcSample { cpu_ticks: 7, rss_kib: None, peak_rss_kib: None };
        let before = Readings {
            processes: vec![
                Some(ProcSample { cpu_ticks: 100, rss_kib: Some(1000), peak_rss_kib: Some(1000) }),
                Some(idle),
            ],
            machine: Some(MachineSample { busy_ticks: 0, total_ticks: 0, steal_ticks: 0, task_ticks: 0 }),
            counters: Some(Counters::from([("Com_insert".to_string(), 10), ("Com_commit".to_string(), 0)])),
        };
        // The machine: 200 ticks, 20 of them stolen; processes were charged
        // the coordinator's second and 20 ticks more, which nobody watched.
        let after = Readings {
            processes: vec![
                Some(ProcSample {
                    cpu_ticks: 100 + ticks_per_second(),
                    rss_kib: Some(2000),
                    peak_rss_kib: Some(2048),
                }),
                Some(idle),
            ],
            machine: Some(MachineSample {
                busy_ticks: 150,
                total_ticks: 200,
                steal_ticks: 20,
                task_ticks: ticks_per_second() + 20,
            }),
            counters: Some(Counters::from([("Com_insert".to_string(), 18), ("Com_commit".to_string(), 4)])),
        };
        let inputs = || Inputs {
            mode: "saga",
            label: "saga x".into(),
            round: Some(2),
            clients: 4,
            outcome: &outcome,
            watched: &watched,
            before: &before,
            after: &after,
            notes: vec![],
        };
        let report = Report::build(inputs());
        assert_eq!(report.sagas, 4);
        assert_eq!(report.sagas_per_s, 2.0);
        assert_eq!(report.error_count, 2);
        assert_eq!(report.processes[0].cpu_seconds, 1.0);
        assert_eq!(report.processes[0].cpu_ms_per_saga, 250.0);
        assert_eq!(report.processes[0].cores, 0.5);
        assert_eq!(report.coordinator_rss_kib, Some((1000, 2000)));
        let sql = report.sql.as_ref().unwrap();
        assert_eq!((sql.statements_per_saga, sql.commits_per_saga), (2.0, 1.0));
        assert_eq!(report.machine_busy, Some(0.75));
        assert_eq!(report.machine_steal, Some(0.1));
        assert_eq!(report.other_cpu, Some(0.1));
        assert_eq!(report.processes[1].cpu_ms_per_saga, 0.0);
        assert_eq!(report.cpu_ms_per_saga_sum, 250.0);
        assert!((report.latency_ms.p50 - 2.0).abs() < 0.01, "{:?}", report.latency_ms);
        let text = report.render();
        assert!(text.contains("2.0 sagas/s") && text.contains("http_503"), "{text}");
        assert!(text.contains("steal 10%, other processes 10%"), "{text}");
        let line = report.line();
        assert!(line.starts_with("round 2: saga x: 2.0 sagas/s") && line.contains("steal 10%"), "{line}");
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);

        // A watched process without readings (it died): its CPU would
        // count as another process's, so "other" is not reported.
        let gone = Readings { processes: vec![after.processes[0], None], ..after.clone() };
        let report = Report::build(Inputs { after: &gone, ..inputs() });
        assert_eq!(report.other_cpu, None);
        assert_eq!(report.machine_steal, Some(0.1));
    }
}
