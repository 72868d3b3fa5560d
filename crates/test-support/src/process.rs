//! Child processes that cannot outlive the test process.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
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
}

impl GuardedProcess {
    /// Spawns `program args…` under the guard, its output appended to `log`.
    pub fn spawn(program: &str, args: &[String], log: &Path, run_as: Option<&str>) -> GuardedProcess {
        let script = r#"
            "$@" >>"$LOG" 2>&1 &
            child=$!
            echo "$child"
            read _ignored
            kill -KILL "$child" 2>/dev/null
            wait "$child" 2>/dev/null
            exit 0
        "#;
        let mut command = Command::new("sh");
        command.arg("-c").arg(script).arg("sh");
        if let Some(user) = run_as {
            command.arg("runuser").arg("-u").arg(user).arg("--");
        }
        command.arg(program).args(args);
        command.env("LOG", log);
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut guard = command.spawn().unwrap_or_else(|e| panic!("cannot run sh to start {program}: {e}"));
        let stdin = guard.stdin.take();
        let stdout = guard.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("guard prints the child pid");
        let pid = line.trim().parse().unwrap_or_else(|_| panic!("guard printed {line:?} instead of a pid"));
        GuardedProcess { guard, stdin, pid, name: program.to_string() }
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

    /// Whether the server process still exists.
    pub fn is_running(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

impl Drop for GuardedProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind 127.0.0.1:0")
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
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
         `apt-get install {install}`, or point the test at a running server (see the test-support crate docs)."
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

/// Log tail for failure messages.
pub(crate) fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
