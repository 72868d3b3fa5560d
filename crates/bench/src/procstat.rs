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
//!   CPU-bound run (busy ≈ 100 %) from one that waits (on fsync, on locks).
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

/// All CPUs together, from `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MachineSample {
    /// Ticks spent not idle (everything but `idle` and `iowait`).
    pub busy_ticks: u64,
    /// All ticks.
    pub total_ticks: u64,
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
    // guest times are already inside user/nice.
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some(MachineSample { busy_ticks: total.saturating_sub(idle), total_ticks: total })
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
        assert_eq!(parse_machine(text), Some(MachineSample { busy_ticks: 160, total_ticks: 1000 }));
    }
}
