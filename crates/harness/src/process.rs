//! Child processes that cannot outlive the test process, and how to know
//! that one of them is ready.
//!
//! Readiness is established, not assumed: the workspace's binaries print a
//! readiness line (`ready <name> pid=<pid> <label>=<addr>…`, see
//! `service_kit::ready`) once they serve, and [`GuardedProcess::wait_ready`]
//! waits for that line *from that process* — started with port 0, it also
//! says which ports it got. A TCP connect to a port picked in advance proves
//! little: the kernel accepts on a bound listener before anything serves,
//! and under parallel tests the port may belong to another test's process.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process run under an `sh` guard.
///
/// The guard starts the server in the background, prints its pid, then blocks
/// reading its own stdin. That stdin is a pipe whose only writer is this
/// struct, so when the test process exits (normally, by panic, or killed) the
/// pipe closes, `read` returns and the guard SIGKILLs the server. Rust's
/// `Drop` is not enough on its own: statics are never dropped.
pub struct GuardedProcess {
    /// The `sh` guard itself.
    guard: Child,
    /// Held open for the server's lifetime; closing it kills the server.
    stdin: Option<ChildStdin>,
    /// The server's own pid, for signals (SIGSTOP/SIGCONT in fault tests).
    pid: u32,
    /// Human name for messages ("mariadbd", "etcd", …).
    name: String,
    /// Where its stdout and stderr are appended.
    log: PathBuf,
    /// The log's length when this process started: what it wrote comes
    /// after (a restarted service appends to the same file).
    log_start: u64,
}

impl GuardedProcess {
    /// Spawns `program args…` under the guard, its output appended to `log`.
    pub fn spawn(program: &str, args: &[String], log: &Path, run_as: Option<&str>) -> GuardedProcess {
        GuardedProcess::spawn_in(program, args, log, run_as, None)
    }

    /// [`GuardedProcess::spawn`] for a server whose files live in `data`:
    /// if the test process exits without dropping the server (a server in a
    /// `static`, a test process killed), the guard also removes `data`, so
    /// test runs leave no database folders behind. An explicit
    /// [`GuardedProcess::kill`] (a restart) leaves the folder alone.
    pub fn spawn_owning(
        program: &str,
        args: &[String],
        log: &Path,
        run_as: Option<&str>,
        data: &Path,
    ) -> GuardedProcess {
        GuardedProcess::spawn_in(program, args, log, run_as, Some(data))
    }

    /// [`GuardedProcess::spawn`] for a caller that reports errors instead of
    /// panicking (the bench and chaos tools): `sh` missing or a guard that
    /// printed no pid is an `Err` naming `program`.
    pub fn try_spawn(program: &str, args: &[String], log: &Path) -> Result<GuardedProcess, String> {
        GuardedProcess::try_spawn_in(program, args, log, None, None)
    }

    fn spawn_in(
        program: &str,
        args: &[String],
        log: &Path,
        run_as: Option<&str>,
        data: Option<&Path>,
    ) -> GuardedProcess {
        GuardedProcess::try_spawn_in(program, args, log, run_as, data).unwrap_or_else(|err| panic!("{err}"))
    }

    fn try_spawn_in(
        program: &str,
        args: &[String],
        log: &Path,
        run_as: Option<&str>,
        data: Option<&Path>,
    ) -> Result<GuardedProcess, String> {
        // `read` succeeds on the newline `kill` writes, and fails at end of
        // file: the test process is gone, and nobody else will clean up.
        let script = r#"
            "$@" >>"$LOG" 2>&1 &
            child=$!
            echo "$child"
            if read _ignored; then orphaned=no; else orphaned=yes; fi
            kill -KILL "$child" 2>/dev/null
            wait "$child" 2>/dev/null
            if [ "$orphaned" = yes ] && [ -n "$DATA" ]; then rm -rf "$DATA"; fi
            exit 0
        "#;
        let mut command = Command::new("sh");
        command.arg("-c").arg(script).arg("sh");
        if let Some(user) = run_as {
            command.arg("runuser").arg("-u").arg(user).arg("--");
        }
        command.arg(program).args(args);
        command.env("LOG", log);
        command.env("DATA", data.unwrap_or(Path::new("")));
        let log_start = log_len(log);
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut guard = command.spawn().map_err(|e| format!("cannot run sh to start {program}: {e}"))?;
        let stdin = guard.stdin.take();
        let stdout = guard.stdout.take().ok_or_else(|| format!("no stdout from the guard of {program}"))?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("the guard of {program} printed no pid: {e}"))?;
        let pid =
            line.trim().parse().map_err(|_| format!("the guard of {program} printed {line:?}, not a pid"))?;
        Ok(GuardedProcess { guard, stdin, pid, name: program.to_string(), log: log.to_path_buf(), log_start })
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`, `KILL`, …) to the server.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid.to_string()).status();
        assert!(status.is_ok(), "cannot signal {} ({})", self.name, self.pid);
    }

    /// SIGKILLs the server and waits until the guard has reaped it.
    pub fn kill(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"\n");
        }
        let _ = self.guard.wait();
    }

    /// Stops the server politely: SIGTERM, then up to `grace` for it to
    /// drain and exit, then SIGKILL. Returns whether it exited by itself.
    pub fn stop(&mut self, grace: Duration) -> bool {
        self.signal("TERM");
        let deadline = Instant::now() + grace;
        while self.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(25));
        }
        let exited = !self.is_running();
        self.kill();
        exited
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Where its output starts in [`GuardedProcess::log_path`] (earlier
    /// processes may have appended to the same file): for
    /// [`wait_ready_line`] on another thread.
    pub fn log_start(&self) -> u64 {
        self.log_start
    }

    /// Whether the server process still runs (a zombie waiting for the
    /// guard to reap it does not).
    pub fn is_running(&self) -> bool {
        pid_alive(self.pid)
    }

    /// What this process has written to its log so far (not what earlier
    /// processes appended to the same file).
    pub fn output(&self) -> String {
        output_since(&self.log, self.log_start)
    }

    /// Whether this process's output has a line containing `text`.
    pub fn has_logged(&self, text: &str) -> bool {
        self.output().lines().any(|line| line.contains(text))
    }

    /// This process's readiness line as `name`, if printed yet (for async
    /// callers that poll between other work).
    pub fn ready_line(&self, name: &str) -> Option<ReadyLine> {
        self.output().lines().filter_map(ReadyLine::parse).find(|r| r.name == name && r.pid == self.pid)
    }

    /// Waits for this process's readiness line (`ready <name> pid=<its
    /// pid> …`); fails as soon as the process exits, or after `timeout`,
    /// with the end of its log.
    pub fn try_wait_ready(&self, name: &str, timeout: Duration) -> Result<ReadyLine, String> {
        wait_ready_line(&self.log, self.log_start, name, self.pid, timeout)
    }

    /// [`GuardedProcess::try_wait_ready`], panicking with its message.
    pub fn wait_ready(&self, name: &str, timeout: Duration) -> ReadyLine {
        self.try_wait_ready(name, timeout).unwrap_or_else(|err| panic!("{err}"))
    }

    /// The last lines this process wrote, for failure messages.
    pub fn log_tail(&self) -> String {
        last_lines(&self.output(), 30)
    }

    /// Waits until this process has logged a line containing `text` (how a
    /// third-party server — MariaDB, PostgreSQL, etcd — says it serves),
    /// failing early if it exits. `false` after `timeout` or on exit.
    pub fn wait_logged(&self, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.has_logged(text) {
                return true;
            }
            if !self.is_running() {
                // Whatever it logged, an exited server serves nothing.
                return false;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        false
    }
}

/// Whether process `pid` runs (a zombie, dead but not yet reaped, does not).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The length of `log` now (0 if missing): pass it to [`wait_ready_line`]
/// when starting a process that appends to an existing log.
pub fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

fn output_since(log: &Path, start: u64) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let start = usize::try_from(start).unwrap_or(usize::MAX).min(text.len());
    String::from_utf8_lossy(&text[start..]).into_owned()
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits until process `pid`, whose stdout is appended to `log` from byte
/// `log_start` on, prints its readiness line as `name`; fails as soon as
/// it exits, or after `timeout`, with the end of what it wrote.
pub fn wait_ready_line(
    log: &Path,
    log_start: u64,
    name: &str,
    pid: u32,
    timeout: Duration,
) -> Result<ReadyLine, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let output = output_since(log, log_start);
        let ready = output.lines().filter_map(ReadyLine::parse).find(|r| r.name == name && r.pid == pid);
        if let Some(ready) = ready {
            return Ok(ready);
        }
        if !pid_alive(pid) {
            return Err(format!(
                "{name} (pid {pid}) exited before it was ready:\n{}",
                last_lines(&output, 30)
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{name} (pid {pid}) was not ready within {timeout:?}:\n{}",
                last_lines(&output, 30)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A parsed readiness line: `ready <name> pid=<pid> <label>=<ip:port>…`
/// (printed by `service_kit::ready::announce`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyLine {
    /// The process's name (`order-srv`, `coordinator`, …).
    pub name: String,
    /// The process's pid.
    pub pid: u32,
    /// The labelled addresses (`grpc`, `http`), in order.
    pub addrs: Vec<(String, SocketAddr)>,
}

impl ReadyLine {
    /// Parses one output line; `None` for anything else (log lines).
    pub fn parse(line: &str) -> Option<ReadyLine> {
        let mut words = line.trim_end().split(' ');
        if words.next()? != "ready" {
            return None;
        }
        let name = words.next()?.to_string();
        let pid = words.next()?.strip_prefix("pid=")?.parse().ok()?;
        let mut addrs = Vec::new();
        for word in words {
            let (label, addr) = word.split_once('=')?;
            addrs.push((label.to_string(), addr.parse().ok()?));
        }
        Some(ReadyLine { name, pid, addrs })
    }

    /// The address labelled `label`; panics if the line has none.
    pub fn addr(&self, label: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, addr)| *addr)
            .unwrap_or_else(|| panic!("{}'s readiness line has no {label}= address: {self:?}", self.name))
    }

    /// The port of [`ReadyLine::addr`].
    pub fn port(&self, label: &str) -> u16 {
        self.addr(label).port()
    }
}

impl Drop for GuardedProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago (bind to port 0, read it, release it).
///
/// Racy by nature: another process may take it before the child binds it.
/// Use it only for servers that cannot bind port 0 and report the port
/// (MariaDB, PostgreSQL, etcd), whose start then checks that *its* process
/// serves ([`GuardedProcess::wait_logged`]), or for an address that must
/// refuse connections.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind 127.0.0.1:0")
}

/// Waits until something accepts TCP connections on `127.0.0.1:port` —
/// not necessarily the process you started: pair it with a check that
/// your process is the one serving.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// Finds `name` on PATH or in the extra directories; panics with `install`
/// (what to install) when it is nowhere.
pub(crate) fn find_binary(name: &str, extra_dirs: &[&str], install: &str) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut dirs: Vec<String> = path.split(':').map(str::to_string).collect();
    for pattern in extra_dirs {
        dirs.extend(glob_dirs(pattern));
    }
    for dir in dirs {
        let candidate = Path::new(&dir).join(name);
        if candidate.is_file() {
            return candidate.to_string_lossy().into_owned();
        }
    }
    panic!(
        "`{name}` was not found on PATH: this test needs a real server. Install it with \
         `apt-get install {install}`, or point the test at a running server (see the harness crate docs)."
    )
}

/// Expands a single `*` component such as `/usr/lib/postgresql/*/bin`.
fn glob_dirs(pattern: &str) -> Vec<String> {
    let Some((head, tail)) = pattern.split_once('*') else { return vec![pattern.to_string()] };
    let Ok(entries) = std::fs::read_dir(head) else { return Vec::new() };
    let mut found: Vec<String> =
        entries.flatten().map(|e| format!("{}{}", e.path().display(), tail)).collect();
    found.sort();
    found.reverse(); // newest version first
    found
}

/// Whether process `pid` itself holds a listening TCP socket on `port`:
/// proof that a server we started — not another test's — owns the port it
/// was given.
pub fn listens_on(pid: u32, port: u16) -> bool {
    listening_ports(pid).contains(&port)
}

/// The TCP ports process `pid` listens on (from `/proc/net/tcp{,6}` and
/// `/proc/<pid>/fd`), sorted.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let mut listening = std::collections::HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let port = local.rsplit_once(':').and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok());
            // State 0A is LISTEN.
            if let (Some(port), "0A") = (port, *state) {
                listening.insert(format!("socket:[{inode}]"), port);
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    let mut ports: Vec<u16> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| listening.get(target.to_str()?).copied())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Whether a server that exited at start-up did so because its port was
/// taken (the race [`free_port`] cannot avoid): then a new port is chosen.
pub(crate) fn lost_port_race(process: &GuardedProcess) -> bool {
    let output = process.output().to_ascii_lowercase();
    !process.is_running() && output.contains("address already in use")
}

/// How many times a server that lost its port to another process is
/// started again on a new one.
pub(crate) const PORT_ATTEMPTS: usize = 5;

/// Waits until `process` listens on `port` itself and accepts connections
/// there; `false` on exit or timeout.
pub(crate) fn wait_listening(process: &GuardedProcess, port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !process.is_running() {
            return false;
        }
        if listens_on(process.pid(), port) && TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// Reads a child's piped stdout on a thread: keeps all of it (for the
/// test's assertions) and hands over the child's readiness line as soon as
/// it appears. Reading continuously also keeps the child from blocking on
/// a full pipe.
pub struct StdoutWatch {
    /// Everything read so far.
    output: std::sync::Arc<std::sync::Mutex<String>>,
    /// Delivers the readiness line (once), or closes at end of output.
    ready: std::sync::mpsc::Receiver<ReadyLine>,
    /// The reading thread; ends at end of output.
    thread: Option<std::thread::JoinHandle<()>>,
    /// Whose line is awaited.
    name: String,
    /// The child's pid.
    pid: u32,
}

impl StdoutWatch {
    /// Starts reading `stdout` of process `pid`, expecting `ready <name>
    /// pid=<pid> …`.
    pub fn new(stdout: impl std::io::Read + Send + 'static, name: &str, pid: u32) -> StdoutWatch {
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (sender, ready) = std::sync::mpsc::channel();
        let (kept, wanted) = (output.clone(), name.to_string());
        let thread = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(found) = ReadyLine::parse(&line).filter(|r| r.name == wanted && r.pid == pid) {
                    let _ = sender.send(found);
                }
                let mut all = kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                all.push_str(&line);
                all.push('\n');
            }
        });
        StdoutWatch { output, ready, thread: Some(thread), name: name.to_string(), pid }
    }

    /// Waits for the readiness line; an error (with the output so far) if
    /// the output ends first or `timeout` passes.
    pub fn wait_ready(&self, timeout: Duration) -> Result<ReadyLine, String> {
        let (name, pid) = (&self.name, self.pid);
        self.ready.recv_timeout(timeout).map_err(|err| {
            let why = match err {
                std::sync::mpsc::RecvTimeoutError::Timeout => format!("was not ready within {timeout:?}"),
                std::sync::mpsc::RecvTimeoutError::Disconnected => {
                    "closed its output before it was ready".into()
                }
            };
            format!("{name} (pid {pid}) {why}; its output:\n{}", last_lines(&self.output(), 30))
        })
    }

    /// The output read so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Waits for the end of the output (the child exited) and returns all of it.
    pub fn finish(mut self) -> String {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.output()
    }
}

/// A loopback port that refuses connections for as long as this test
/// process lives: bound (so no other process can listen on it) but never
/// listening. For tests of "nothing answers there" — a port from
/// [`free_port`] could be taken by another test's server meanwhile, and
/// then something would answer.
pub fn closed_port() -> u16 {
    static HELD: std::sync::OnceLock<(tokio::net::TcpSocket, u16)> = std::sync::OnceLock::new();
    HELD.get_or_init(|| {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind 127.0.0.1:0");
        let port = socket.local_addr().expect("bound address").port();
        (socket, port)
    })
    .1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the guard does when the test process is gone: its stdin closes
    /// without the newline `kill` writes.
    fn orphan(mut process: GuardedProcess) {
        drop(process.stdin.take());
        let _ = process.guard.wait();
    }

    #[test]
    fn an_orphaned_guard_kills_its_server_and_removes_its_data() {
        let data = tempfile::tempdir().expect("temp dir").keep();
        std::fs::write(data.join("file"), b"rows").expect("write");
        let process = GuardedProcess::spawn_owning("sleep", &["60".into()], &data.join("log"), None, &data);
        let pid = process.pid();
        assert!(pid_alive(pid));
        orphan(process);
        assert!(!pid_alive(pid), "the server outlived its guard");
        assert!(!data.exists(), "{} was left behind", data.display());
    }

    #[test]
    fn an_explicit_kill_keeps_the_data_for_a_restart() {
        let data = tempfile::tempdir().expect("temp dir");
        // A file of our own: the log is created by the guard's background
        // job, which a kill right after the start may come before.
        std::fs::write(data.path().join("file"), b"rows").expect("write");
        let mut process = GuardedProcess::spawn_owning(
            "sleep",
            &["60".into()],
            &data.path().join("log"),
            None,
            data.path(),
        );
        let pid = process.pid();
        process.kill();
        assert!(!pid_alive(pid), "kill left the server running");
        assert!(data.path().join("file").exists(), "a restart needs the data folder");
    }
}
