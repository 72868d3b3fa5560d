//! The report of a chaos run: what was sent, what was injected, how fast
//! the system recovered, and every broken promise with its gid.
//!
//! The last lines are stable and meant for scripts and CI:
//!
//! ```text
//! summary: seed=7 workload=quick-order requests=1234 fencing_sagas=0 faults=14 sagas_succeed=820 sagas_failed=330 stuck=0 violations=0 branch_violations=0 quiescence_s=1.52 recovery_p99_s=2.31
//! RESULT: PASS
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Workload;
use super::checker::{Checked, Quiescence, Rule};
use super::fencing::{DtmAnswer, Middle, SagaRecord, TccRecord};
use super::schedule::{Fault, Injected};
use super::traffic::{Answer, Record};

/// Recovery after one kill.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The process killed.
    pub target: String,
    /// When (from the start of traffic).
    pub at: Duration,
    /// From the kill to the first saga outcome (200 or 409) of a request
    /// sent after the kill; `None` if there was none.
    pub recovered_after: Option<Duration>,
}

/// Per-link proxy counters.
#[derive(Debug, Clone)]
pub struct LinkSummary {
    /// The link.
    pub name: String,
    /// Where it listens and forwards to: `[::1]:P → 127.0.0.1:P`.
    pub route: String,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections reset by drop faults.
    pub reset: u64,
    /// Connections whose upstream was down.
    pub upstream_failed: u64,
}

/// Everything the run found.
#[derive(Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// `--duration`.
    pub planned: Duration,
    /// How long traffic actually ran.
    pub ran_for: Duration,
    /// `--clients`.
    pub clients: usize,
    /// `--workload`.
    pub workload: Workload,
    /// How far coordinator-2's clock ran ahead, as verified.
    pub clock_skew: Option<Duration>,
    /// The run folder.
    pub run_dir: PathBuf,
    /// Each process's log.
    pub logs: Vec<PathBuf>,
    /// Every quick order.
    pub records: Vec<Record>,
    /// Every fencing saga.
    pub sagas: Vec<SagaRecord>,
    /// Every TCC of the fencing clients.
    pub tccs: Vec<TccRecord>,
    /// Every fault, by start time.
    pub injected: Vec<Injected>,
    /// Proxy counters.
    pub links: Vec<LinkSummary>,
    /// The wait for quiescence.
    pub quiescence: Quiescence,
    /// The checker's findings.
    pub checked: Checked,
    /// Every request with its gid and final state ([`write_requests`]).
    pub requests_file: PathBuf,
    /// Every fencing saga and its submits ([`write_sagas`]).
    pub sagas_file: Option<PathBuf>,
    /// Per violating gid, its log lines from every process ([`write_traces`]).
    pub traces: Vec<PathBuf>,
}

/// Writes every request as a tab-separated line: start and end (seconds
/// from the start of traffic), user, goods, num, answer, gid, and the
/// saga's final state in the store.
pub fn write_requests(
    path: &Path,
    records: &[Record],
    sagas: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let mut text = String::from("started_s\tfinished_s\tuser\tgoods\tnum\tanswer\tgid\tfinal_state\n");
    for r in records {
        let gid = match &r.answer {
            Answer::Http { gid: Some(gid), .. } => gid.as_str(),
            _ => "",
        };
        let state = sagas.get(gid).map_or("", String::as_str);
        let _ = writeln!(
            text,
            "{:.3}\t{:.3}\t{}\t{}\t{}\t{}\t{gid}\t{state}",
            r.started.as_secs_f64(),
            r.finished.as_secs_f64(),
            r.user,
            r.goods,
            r.num,
            r.answer.label()
        );
    }
    std::fs::write(path, text)
}

/// Writes every fencing saga's submits as tab-separated lines: gid, the
/// middle step, start and end (seconds from the start of traffic),
/// coordinator, first submit or resubmit, answer, final state.
pub fn write_sagas(
    path: &Path,
    sagas: &[SagaRecord],
    states: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let mut text =
        String::from("gid\tmiddle\tstarted_s\tfinished_s\tcoordinator\tkind\tanswer\tfinal_state\n");
    for saga in sagas {
        let state = states.get(&saga.gid).map_or("", String::as_str);
        for s in &saga.submits {
            let _ = writeln!(
                text,
                "{}\t{}\t{:.3}\t{:.3}\tcoordinator-{}\t{}\t{}\t{state}",
                saga.gid,
                middle_label(&saga.plan.middle),
                s.at.as_secs_f64(),
                s.finished.as_secs_f64(),
                s.coordinator + 1,
                if s.resubmit { "resubmit" } else { "submit" },
                match &s.answer {
                    DtmAnswer::Other(text) => format!("other: {text}"),
                    DtmAnswer::AlreadyIn(status) => format!("refused: already {status}"),
                    answer => answer.label().to_string(),
                }
            );
        }
    }
    std::fs::write(path, text)
}

fn middle_label(middle: &Middle) -> String {
    match middle {
        Middle::Gate(gate) => format!("gate fail={} delay={}ms", gate.fail, gate.delay_ms),
        Middle::Stock { num } => format!("stock-B {num}"),
    }
}

/// For each gid (at most 20), every log line that names it, from every
/// process, in time order, in `dir/<gid>.log`: the saga's whole story.
/// `skewed` names the process whose clock ran ahead and by how much: its
/// lines are placed by their true time (and marked), not by their stamp.
pub fn write_traces<'a>(
    dir: &Path,
    gids: impl IntoIterator<Item = &'a str>,
    logs: &[PathBuf],
    skewed: Option<(&str, Duration)>,
) -> std::io::Result<Vec<PathBuf>> {
    let gids: BTreeSet<&str> = gids.into_iter().take(20).collect();
    if gids.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(dir)?;
    let texts: Vec<(String, String)> = logs
        .iter()
        .map(|log| {
            let name = log.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            (name, std::fs::read_to_string(log).unwrap_or_default())
        })
        .collect();
    let mut written = Vec::new();
    for gid in gids {
        // Lines start with an RFC 3339 UTC timestamp: sorting them sorts by
        // time, once a skewed process's stamps are brought back.
        let mut lines: Vec<((i64, String), &str, String)> = texts
            .iter()
            .flat_map(|(name, text)| {
                let skew = skewed.filter(|(n, _)| n == name).map(|(_, d)| d);
                text.lines().filter(|l| l.contains(gid)).map(move |l| {
                    let label = match skew {
                        Some(d) => format!("{name} (+{}s)", d.as_secs()),
                        None => name.clone(),
                    };
                    (true_time(l, skew), l, label)
                })
            })
            .collect();
        lines.sort();
        let mut trace = String::new();
        for (_, line, name) in lines {
            let _ = writeln!(trace, "{name:<14} {line}");
        }
        let path = dir.join(format!("{gid}.log"));
        std::fs::write(&path, trace)?;
        written.push(path);
    }
    Ok(written)
}

/// The sort key of a log line: its leading timestamp in microseconds,
/// minus `skew`; lines without one sort first, by their text.
fn true_time(line: &str, skew: Option<Duration>) -> (i64, String) {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    match sqlx::types::chrono::DateTime::parse_from_rfc3339(stamp) {
        Ok(t) => {
            let skew = skew.map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
            (t.timestamp_micros().saturating_sub(skew), String::new())
        }
        Err(_) => (i64::MIN, line.to_string()),
    }
}

impl Report {
    /// Recovery after each kill.
    pub fn recoveries(&self) -> Vec<Recovery> {
        self.injected
            .iter()
            .filter(|f| matches!(f.fault, Fault::Kill { .. }))
            .map(|kill| Recovery {
                target: kill.target.clone(),
                at: kill.at,
                recovered_after: self
                    .records
                    .iter()
                    .filter(|r| {
                        r.started >= kill.at && matches!(r.answer, Answer::Http { status: 200 | 409, .. })
                    })
                    .map(|r| r.finished)
                    .chain(
                        self.sagas
                            .iter()
                            .flat_map(|saga| &saga.submits)
                            .filter(|s| {
                                s.at >= kill.at && matches!(s.answer, DtmAnswer::Succeed | DtmAnswer::Failed)
                            })
                            .map(|s| s.finished),
                    )
                    .min()
                    .map(|done| done - kill.at),
            })
            .collect()
    }

    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.checked.violations.is_empty()
    }

    /// The recovery times of the kills that were followed by an outcome.
    fn recovery_times(&self) -> Vec<Duration> {
        self.recoveries().iter().filter_map(|r| r.recovered_after).collect()
    }

    fn count(&self, status: &str) -> usize {
        self.checked.sagas_by_status.get(status).copied().unwrap_or_default()
    }
}

fn workload_name(workload: Workload) -> &'static str {
    match workload {
        Workload::QuickOrder => "quick-order",
        Workload::Fencing => "fencing",
        Workload::Mixed => "mixed",
    }
}

/// The nearest-rank percentile `p` (0–100) of `values` (sorted here).
pub fn percentile(values: &[Duration], p: f64) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank: the smallest value with at least p% of values at or below it.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank - 1).copied()
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_header(f)?;
        self.fmt_requests(f)?;
        self.fmt_fencing(f)?;
        self.fmt_store(f)?;
        self.fmt_faults(f)?;
        self.fmt_recovery(f)?;
        self.fmt_invariants(f)?;
        self.fmt_files(f)?;
        self.fmt_summary(f)
    }
}

/// The report's sections, in print order.
impl Report {
    /// What was run: seed, length, clients, workload, clocks, where.
    fn fmt_header(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "quickorder-chaos: seed {}, {} planned ({} of traffic), {} clients",
            self.seed,
            secs(self.planned),
            secs(self.ran_for),
            self.clients
        )?;
        writeln!(f, "workload: {}", workload_name(self.workload))?;
        if let Some(skew) = self.clock_skew {
            writeln!(
                f,
                "clocks: coordinator-2's wall clock {} s ahead of coordinator-1's (libfaketime, checked in its log)",
                skew.as_secs()
            )?;
        }
        writeln!(f, "run folder: {}", self.run_dir.display())
    }

    /// The quick orders by answer, with what each answer means for the
    /// saga: a 202 or a 503 is not an outcome.
    fn fmt_requests(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut by_answer: BTreeMap<String, usize> = BTreeMap::new();
        for r in &self.records {
            *by_answer.entry(r.answer.label()).or_default() += 1;
        }
        writeln!(f, "\nrequests: {}", self.records.len())?;
        for (answer, n) in &by_answer {
            let meaning = match answer.as_str() {
                "200" => "  (succeed)",
                "409" => "  (failed: rolled back)",
                "202" => "  (submitted, outcome pending)",
                "503" => "  (unavailable, outcome unknown)",
                _ => "",
            };
            writeln!(f, "  {answer:<32} {n:>6}{meaning}")?;
        }
        Ok(())
    }

    /// The fencing clients' sagas and TCCs by call and answer; nothing
    /// when that workload did not run.
    fn fmt_fencing(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sagas.is_empty() {
            return Ok(());
        }
        let submits: Vec<_> = self.sagas.iter().flat_map(|s| &s.submits).collect();
        let resubmits = submits.iter().filter(|s| s.resubmit).count();
        let gates = self.sagas.iter().filter(|s| matches!(s.plan.middle, Middle::Gate(_))).count();
        let must_fail = self.sagas.iter().filter(|s| s.plan.must_fail()).count();
        writeln!(
            f,
            "fencing sagas: {} ({} with the gate as middle step, {} with stock B; {} must fail), \
             {} submits of which {} resubmits in flight",
            self.sagas.len(),
            gates,
            self.sagas.len() - gates,
            must_fail,
            submits.len(),
            resubmits
        )?;
        let mut by_answer: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for s in &submits {
            let kind = if s.resubmit { "resubmit" } else { "submit" };
            *by_answer.entry((kind, s.answer.label())).or_default() += 1;
        }
        for ((kind, answer), n) in &by_answer {
            writeln!(f, "  {kind:<9} {answer:<23} {n:>6}")?;
        }
        let mut tcc_calls: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (call, answer) in self.tccs.iter().flat_map(|t| &t.calls) {
            let call = if call.starts_with("try") { "try" } else { call.as_str() };
            *tcc_calls.entry((call, answer.label())).or_default() += 1;
        }
        writeln!(
            f,
            "fencing TCCs: {} ({} abort while their last try runs)",
            self.tccs.len(),
            self.tccs.iter().filter(|t| t.plan.abort_during_last_try).count()
        )?;
        for ((call, answer), n) in &tcc_calls {
            writeln!(f, "  {call:<9} {answer:<23} {n:>6}")?;
        }
        if let Some(file) = &self.sagas_file {
            writeln!(f, "  every submit, its answer and the final state: {}", file.display())?;
        }
        Ok(())
    }

    /// The sagas as the coordinator stored them, and how the answers
    /// without an outcome really ended: what no client could learn from
    /// its answer.
    fn fmt_store(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let statuses: Vec<String> =
            self.checked.sagas_by_status.iter().map(|(s, n)| format!("{s} {n}")).collect();
        writeln!(
            f,
            "sagas in the coordinator's store: {} ({})",
            self.checked.sagas_by_status.values().sum::<usize>(),
            statuses.join(", ")
        )?;
        if !self.checked.unknown_resolved.is_empty() {
            writeln!(f, "  answers without an outcome (202, 5xx), and how their sagas ended:")?;
            for (key, n) in &self.checked.unknown_resolved {
                let examples =
                    self.checked.unknown_examples.get(key).map(|g| g.join(", ")).unwrap_or_default();
                writeln!(f, "    {key:<24} {n:>5}  e.g. {examples}")?;
            }
        }
        writeln!(f, "  stored sagas whose gid no client saw (answer lost): {}", self.checked.untraced_sagas)?;
        let refused_but_stored: usize = self
            .checked
            .unknown_resolved
            .iter()
            .filter(|(key, _)| key.starts_with("502 →") && !key.ends_with("never stored"))
            .map(|(_, n)| n)
            .sum();
        if refused_but_stored > 0 {
            writeln!(
                f,
                "  note: {refused_but_stored} answers were 502 \"the coordinator refused the saga\", yet the saga \
                 was stored and ran to the end; a client that believes the 502 and orders again orders twice"
            )?;
        }
        Ok(())
    }

    /// Every fault injected, in time order, and the proxies' counters.
    fn fmt_faults(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut by_label: BTreeMap<&str, usize> = BTreeMap::new();
        for i in &self.injected {
            *by_label.entry(i.label()).or_default() += 1;
        }
        let labels: Vec<String> = by_label.iter().map(|(l, n)| format!("{l} {n}")).collect();
        writeln!(f, "\nfaults injected: {} ({})", self.injected.len(), labels.join(", "))?;
        for i in &self.injected {
            writeln!(f, "  +{:>7.2} s  {}", i.at.as_secs_f64(), i.describe())?;
        }
        writeln!(f, "fault proxies:")?;
        for link in &self.links {
            writeln!(
                f,
                "  {:<28} {:<34} {:>6} connections, {:>4} reset by faults, {:>4} with the upstream down",
                link.name, link.route, link.accepted, link.reset, link.upstream_failed
            )?;
        }
        Ok(())
    }

    /// How fast the system came back after each kill, and after the
    /// faults stopped.
    fn fmt_recovery(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let recoveries = self.recoveries();
        let times = self.recovery_times();
        writeln!(f, "\nrecovery after a kill (kill → first 200/409 of a request sent after it):")?;
        if let (Some(p50), Some(p99)) = (percentile(&times, 50.0), percentile(&times, 99.0)) {
            writeln!(f, "  n={}, p50 {}, p99 {}", times.len(), secs(p50), secs(p99))?;
        }
        for r in &recoveries {
            let after = r.recovered_after.map_or_else(|| "no outcome afterwards".to_string(), secs);
            writeln!(f, "  +{:>7.2} s  {:<14} {after}", r.at.as_secs_f64(), r.target)?;
        }
        match self.quiescence.pending {
            0 => writeln!(
                f,
                "time to quiescence: {} (from stopping the clients to every saga final)",
                secs(self.quiescence.took)
            ),
            n => writeln!(
                f,
                "time to quiescence: NOT REACHED in {} ({n} sagas not final)",
                secs(self.quiescence.took)
            ),
        }
    }

    /// Every promise with its verdict and counts, the stock, and every
    /// violation with the trace files of its gid.
    fn fmt_invariants(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\ninvariants:")?;
        for rule in Rule::ALL {
            let broken = self.checked.violations.iter().filter(|v| v.rule == rule).count();
            let checked = self.checked.checked.get(&rule).copied().unwrap_or_default();
            let verdict = if broken == 0 { "ok  " } else { "FAIL" };
            writeln!(f, "  {verdict} {} ({checked} checked, {broken} violations)", rule.describe())?;
        }
        let stock: Vec<String> = self
            .checked
            .stock
            .iter()
            .map(|(g, (start, now, live))| format!("goods {g}: {start} → {now} ({live} in live orders)"))
            .collect();
        writeln!(f, "  stock: {}", stock.join("; "))?;
        if self.checked.violations.is_empty() {
            return writeln!(f, "violations: none");
        }
        writeln!(f, "violations ({}):", self.checked.violations.len())?;
        for v in &self.checked.violations {
            writeln!(f, "  {v}")?;
        }
        writeln!(f, "traces (every log line of each violating gid, all processes, in time order):")?;
        for trace in &self.traces {
            writeln!(f, "  {}", trace.display())?;
        }
        Ok(())
    }

    /// Where the evidence is: the request table and every process's log.
    fn fmt_files(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\nevery request, its gid and final state: {}", self.requests_file.display())?;
        writeln!(f, "logs:")?;
        for log in &self.logs {
            writeln!(f, "  {}", log.display())?;
        }
        Ok(())
    }

    /// The last two lines, stable for scripts and CI (see the module's doc).
    fn fmt_summary(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p99 = percentile(&self.recovery_times(), 99.0)
            .map_or_else(|| "none".into(), |d| format!("{:.2}", d.as_secs_f64()));
        let stuck = self.checked.violations.iter().filter(|v| v.rule == Rule::Final).count();
        writeln!(
            f,
            "\nsummary: seed={} workload={} requests={} fencing_sagas={} tccs={} faults={} sagas_succeed={} sagas_failed={} stuck={stuck} violations={} branch_violations={} quiescence_s={:.2} recovery_p99_s={p99}",
            self.seed,
            workload_name(self.workload),
            self.records.len(),
            self.sagas.len(),
            self.tccs.len(),
            self.injected.len(),
            self.count("succeed"),
            self.count("failed"),
            self.checked.violations.len(),
            self.checked.violations.iter().filter(|v| v.rule == Rule::BranchEffects).count(),
            self.quiescence.took.as_secs_f64(),
        )?;
        writeln!(f, "RESULT: {}", if self.passed() { "PASS" } else { "FAIL" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_merges_every_log_line_of_a_gid_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let api = dir.path().join("order-api.log");
        let coordinator = dir.path().join("coordinator-1.log");
        std::fs::write(
            &api,
            "2026-01-01T00:00:01Z INFO gid=g1 submit\n2026-01-01T00:00:02Z INFO gid=g2 other\n",
        )
        .unwrap();
        std::fs::write(
            &coordinator,
            "2026-01-01T00:00:00Z INFO gid=g1 saved\n2026-01-01T00:00:03Z INFO gid=g1 done\n",
        )
        .unwrap();
        let traces =
            write_traces(&dir.path().join("traces"), ["g1", "g1"], &[api, coordinator], None).unwrap();
        assert_eq!(traces.len(), 1);
        let text = std::fs::read_to_string(&traces[0]).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("coordinator-1") && lines[0].ends_with("saved"), "{text}");
        assert!(lines[1].starts_with("order-api") && lines[1].ends_with("submit"), "{text}");
        assert!(lines[2].ends_with("done"), "{text}");
    }

    #[test]
    fn a_skewed_process_is_placed_by_its_true_time() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("coordinator-1.log");
        let two = dir.path().join("coordinator-2.log");
        std::fs::write(
            &one,
            "2026-01-01T00:00:01.000000Z INFO gid=g1 first\n2026-01-01T00:00:03.000000Z INFO gid=g1 third\n",
        )
        .unwrap();
        std::fs::write(&two, "2026-01-01T00:00:32.000000Z INFO gid=g1 second\n").unwrap();
        let skewed = Some(("coordinator-2", Duration::from_secs(30)));
        let traces = write_traces(&dir.path().join("traces"), ["g1"], &[one, two], skewed).unwrap();
        let text = std::fs::read_to_string(&traces[0]).unwrap();
        let order: Vec<&str> = text.lines().map(|l| l.rsplit(' ').next().unwrap()).collect();
        assert_eq!(order, ["first", "second", "third"], "{text}");
        assert!(text.contains("coordinator-2 (+30s)"), "{text}");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let ms = |v: &[u64]| v.iter().map(|&m| Duration::from_millis(m)).collect::<Vec<_>>();
        assert_eq!(percentile(&[], 99.0), None);
        assert_eq!(percentile(&ms(&[5]), 99.0), Some(Duration::from_millis(5)));
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&ms(&hundred), 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&ms(&hundred), 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&ms(&[30, 10, 20]), 99.0), Some(Duration::from_millis(30)));
    }
}
