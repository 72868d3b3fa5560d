//! Throwaway PostgreSQL servers.

use std::time::Duration;

use crate::process::{GuardedProcess, PORT_ATTEMPTS, find_binary, free_port, lost_port_race};

/// A private `postgres` on a random port with trust authentication.
///
/// PostgreSQL refuses to run as root, so when the tests run as root the
/// server runs as the `postgres` system user (created by Debian's package).
pub struct Postgres {
    /// Owns the data directory.
    _dir: tempfile::TempDir,
    /// TCP port.
    port: u16,
    /// The running server.
    _process: GuardedProcess,
}

impl Postgres {
    /// Runs `initdb` in a temp directory and starts the server.
    pub fn start() -> Postgres {
        const DIRS: &[&str] = &["/usr/lib/postgresql/*/bin"];
        let initdb = find_binary("initdb", DIRS, "postgresql");
        let postgres = find_binary("postgres", DIRS, "postgresql");
        let dir = tempfile::Builder::new().prefix("test-postgres-").tempdir().expect("temp dir");
        let run_as = is_root().then_some("postgres");
        if run_as.is_some() {
            let status = std::process::Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .expect("chown the postgres temp dir");
            assert!(status.success(), "cannot chown {} to the postgres user", dir.path().display());
        }
        let data = dir.path().join("data");
        let mut init = match run_as {
            Some(user) => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", user, "--", &initdb]);
                c
            }
            None => std::process::Command::new(&initdb),
        };
        let output = init
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(output.status.success(), "initdb failed: {}", String::from_utf8_lossy(&output.stderr));
        let log = dir.path().join("postgres.log");
        let pg_isready = find_binary("pg_isready", DIRS, "postgresql");
        let mut found = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let args = vec![
                "-D".to_string(),
                data.display().to_string(),
                "-p".to_string(),
                port.to_string(),
                "-k".to_string(),
                dir.path().display().to_string(),
                "-c".to_string(),
                "listen_addresses=127.0.0.1".to_string(),
                "-c".to_string(),
                "max_connections=500".to_string(),
                // XA branches prepare their local transactions (dtm-client's xa tests).
                "-c".to_string(),
                "max_prepared_transactions=100".to_string(),
            ];
            let process = GuardedProcess::spawn_owning(&postgres, &args, &log, run_as, dir.path());
            // Its own log says when *it* accepts sessions (the port opens
            // earlier, and may be another process's); pg_isready confirms.
            if process.wait_logged("ready to accept connections", Duration::from_secs(60))
                && wait_until_ready(&pg_isready, port, Duration::from_secs(60))
            {
                found = Some((port, process));
                break;
            }
            if lost_port_race(&process) || process.has_logged("could not create any TCP/IP sockets") {
                continue;
            }
            panic!("postgres did not start on port {port}:\n{}", process.log_tail());
        }
        let (port, process) = found
            .unwrap_or_else(|| panic!("postgres lost its port to other processes {PORT_ATTEMPTS} times"));
        Postgres { _dir: dir, port, _process: process }
    }

    /// Server URL without a database: `postgres://postgres@127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }
}

/// Polls `pg_isready` (exit 0: accepting sessions) until the deadline.
fn wait_until_ready(pg_isready: &str, port: u16, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        let ready = std::process::Command::new(pg_isready)
            .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-p", &port.to_string()])
            .status()
            .is_ok_and(|status| status.success());
        if ready {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
