//! CPU time and memory of processes, and how busy the machine was, from
//! `/proc`.
//!
//! * `/proc/<pid>/stat` fields 14 and 15 (`utime`, `stime`): CPU time of
//!   every thread of the process, in clock ticks. The difference across the
//!   measured window, divided by the sagas finished in it, is the CPU cost
//!   of one saga in that process — the number that says which process
//!   bounds throughput on a machine where everything shares two cores.
//! * `/proc/<pid>/status` `VmRSS` / `VmHWM`: resident memory now and at its
//!   peak (the coordinator's RSS target).
//! * `/proc/stat`'s first line: all CPUs' busy and total ticks, to tell a
//!   CPU-bound run (busy ≈ 100 %) from one that waits (on fsync, on locks);
//!   its `steal` ticks, the time the hypervisor gave our virtual CPUs to
//!   other guests (on a shared VM the largest source of noise: it moves
//!   minute to minute, and a run that lost more of the machine is slower
//!   for reasons that are not in the code); and the ticks charged to all
//!   processes (`user + nice + system`), from which the CPU of the
//!   processes a run accounts for is subtracted to tell how much of the
//!   machine *other* processes took ([`other_share`]).
//!
//! Linux only, like the rest of the bench's process handling; on other
//! systems the samples are simply absent.

use std::path::Path;
use std::sync::OnceLock;

/// A process the report accounts CPU and memory for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// `coordinator`, `order-api`, `mariadbd`, `bench (this process)`, …
    pub name: String,
    /// Its pid.
    pub pid: u32,
}

impl Watched {
    /// `name` at `pid`.
    pub fn new(name: impl Into<String>, pid: u32) -> Watched {
        Watched { name: name.into(), pid }
    }
}

/// One reading of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcSample {
    /// `utime + stime`, clock ticks.
    pub cpu_ticks: u64,
    /// `VmRSS`, KiB.
    pub rss_kib: Option<u64>,
    /// `VmHWM` (peak RSS), KiB.
    pub peak_rss_kib: Option<u64>,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; `None` when the
/// process is gone or `/proc` is not there.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let cpu_ticks = parse_cpu_ticks(&stat)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    Some(ProcSample {
        cpu_ticks,
        rss_kib: status_kib(&status, "VmRSS:"),
        peak_rss_kib: status_kib(&status, "VmHWM:"),
    })
}

/// `utime + stime` from a `/proc/<pid>/stat` line. The command name (field
/// 2) is in parentheses and may contain spaces, so fields are counted from
/// the last `)`: after it come field 3 (state), …, 14 (utime), 15 (stime).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS:   12345 kB` → 12345.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| line.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we know,
/// which is also the fallback). Asked once: the workspace forbids `unsafe`,
/// so no direct `sysconf`.
pub fn ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|&ticks| ticks > 0)
            .unwrap_or(100)
    })
}

/// All CPUs together, from `/proc/stat`, in the same clock ticks
/// (`USER_HZ`) as a process's `utime + stime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MachineSample {
    /// Ticks spent not idle (everything but `idle` and `iowait`; steal
    /// included: the CPU was wanted, someone else got it).
    pub busy_ticks: u64,
    /// All ticks.
    pub total_ticks: u64,
    /// `steal`: ticks our virtual CPUs were runnable but the hypervisor ran
    /// another guest. Kept apart because it is the noise a shared VM adds
    /// and the one figure that tells two runs' conditions apart.
    pub steal_ticks: u64,
    /// `user + nice + system`: ticks charged to processes, the sum the
    /// per-process `utime + stime` of every process adds up to (interrupt
    /// time, `irq + softirq`, is charged to no process and left out).
    pub task_ticks: u64,
}

/// The first (`cpu `) line of `/proc/stat`.
pub fn machine() -> Option<MachineSample> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine(&text)
}

fn parse_machine(text: &str) -> Option<MachineSample> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal guest guest_nice; the
    // guest times are already inside user/nice. Kernels before 2.6.11 have
    // no steal column: it reads as 0 there.
    let field = |i: usize| values.get(i).copied().unwrap_or(0);
    let total: u64 = values.iter().take(8).sum();
    let idle = field(3) + field(4);
    Some(MachineSample {
        busy_ticks: total.saturating_sub(idle),
        total_ticks: total,
        steal_ticks: field(7),
        task_ticks: field(0) + field(1) + field(2),
    })
}

/// Share (0..1) of all CPUs' time between two samples that was stolen by
/// the hypervisor; `None` when the samples are missing or no time passed.
pub fn steal_share(before: Option<MachineSample>, after: Option<MachineSample>) -> Option<f64> {
    let (before, after) = (before?, after?);
    let total = after.total_ticks.checked_sub(before.total_ticks).filter(|&t| t > 0)?;
    Some(after.steal_ticks.saturating_sub(before.steal_ticks) as f64 / total as f64)
}

/// Share (0..1) of all CPUs' time between two samples charged to processes
/// other than the accounted ones, which took `accounted_ticks` of it
/// (their `utime + stime` deltas summed). Clamped at 0: the machine's
/// ticks are sampled by the timer, a process's are not always, so the
/// accounted sum can exceed the machine's by a tick or two.
pub fn other_share(
    before: Option<MachineSample>,
    after: Option<MachineSample>,
    accounted_ticks: u64,
) -> Option<f64> {
    let (before, after) = (before?, after?);
    let total = after.total_ticks.checked_sub(before.total_ticks).filter(|&t| t > 0)?;
    let tasks = after.task_ticks.saturating_sub(before.task_ticks);
    Some(tasks.saturating_sub(accounted_ticks) as f64 / total as f64)
}

/// Logical CPUs of this machine.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The pid in a pid file, if that process is alive.
pub fn pid_from_file(path: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_count_fields_after_the_command_name() {
        // A command name with spaces and a ')' must not shift the fields.
        let stat =
            "4242 (tokio (worker) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 123 456 789";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let me = sample(std::process::id()).expect("/proc/self");
        assert!(me.rss_kib.unwrap_or(0) > 0);
        assert!(me.peak_rss_kib >= me.rss_kib);
        assert!(ticks_per_second() > 0);
        let m = machine().expect("/proc/stat");
        assert!(m.total_ticks >= m.busy_ticks && m.total_ticks > 0);
    }

    #[test]
    fn machine_line_excludes_idle_and_iowait() {
        let text = "cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 1 2 3 4 5 6 7 8\n";
        assert_eq!(
            parse_machine(text),
            Some(MachineSample { busy_ticks: 160, total_ticks: 1000, steal_ticks: 0, task_ticks: 155 })
        );
    }

    /// Two readings of a real 2-CPU guest's `/proc/stat` (the per-CPU
    /// lines and the counters after them trimmed), 10 s apart: 2 000
    /// ticks in all, 700 of them stolen.
    #[test]
    fn steal_and_other_processes_from_two_samples() {
        let before = "cpu  432121 0 38148 99503 2727 0 5126 83 0 0\n\
                      cpu0 216060 0 19074 49751 1363 0 2563 41 0 0\n\
                      cpu1 216061 0 19074 49752 1364 0 2563 42 0 0\n\
                      intr 123456 0 9 0\nctxt 987654\nbtime 1764772800\n";
        let after = "cpu  433021 0 38248 99603 2827 0 5226 783 0 0\n\
                     cpu0 216510 0 19124 49801 1413 0 2613 391 0 0\n\
                     cpu1 216511 0 19124 49802 1414 0 2613 392 0 0\n";
        let (before, after) = (parse_machine(before), parse_machine(after));
        let b = before.expect("parses");
        assert_eq!((b.steal_ticks, b.task_ticks), (83, 432_121 + 38_148));
        // user +900, system +100, idle +100, iowait +100, softirq +100,
        // steal +700.
        let a = after.expect("parses");
        assert_eq!(a.total_ticks - b.total_ticks, 2000);
        assert_eq!(a.busy_ticks - b.busy_ticks, 1800);
        assert_eq!(steal_share(before, after), Some(0.35));
        // The accounted processes took 800 of the 1 000 task ticks.
        assert_eq!(other_share(before, after, 800), Some(0.1));
        // More accounted than charged (sampling): no negative share.
        assert_eq!(other_share(before, after, 5000), Some(0.0));
        // No time between the samples, or a sample missing: no figure.
        assert_eq!(steal_share(before, before), None);
        assert_eq!(other_share(None, after, 0), None);
        // A kernel without the steal column.
        let old = parse_machine("cpu 10 0 5 85 0 0 0\n").expect("parses");
        assert_eq!((old.steal_ticks, old.total_ticks), (0, 100));
    }
}
