//! Throwaway MariaDB servers.

use std::path::PathBuf;
use std::time::Duration;

use crate::process::{GuardedProcess, PORT_ATTEMPTS, find_binary, free_port, lost_port_race, wait_listening};

/// Redo log size for throwaway servers: the same at bootstrap and at every
/// start (a different size would make InnoDB resize the log on start).
const INNODB_LOG_FILE_SIZE: &str = "--innodb-log-file-size=16M";

/// A private `mariadbd` on a random port, with its data in a temp directory.
///
/// Root has no password and may connect over TCP from 127.0.0.1. The server
/// can be killed and started again on the same port and data (to prove that a
/// system survives a database restart).
pub struct MariaDb {
    /// Owns the data directory; removed when the server is dropped.
    dir: tempfile::TempDir,
    /// TCP port, fixed for the life of this value so restarts keep the URL.
    port: u16,
    /// The running server, `None` while stopped.
    process: Option<GuardedProcess>,
    /// Set up like Debian's mariadb-server package ([`MariaDb::start_like_debian`]).
    like_debian: bool,
}

impl MariaDb {
    /// Initialises a data directory and starts the server.
    pub fn start() -> MariaDb {
        MariaDb::bootstrap(false)
    }

    /// A server set up as Debian's `mariadb-server` package sets it up, for
    /// tests of instructions written for that package: `root@localhost`
    /// logs in through the unix socket only (as the OS user running the
    /// test; reach it with `mariadb --no-defaults --socket=` [`MariaDb::socket`]:
    /// an option file such as Debian's /etc/mysql/my.cnf names another
    /// socket, and wins over `MYSQL_UNIX_PORT`), and
    /// host names are resolved, so TCP from 127.0.0.1 is `localhost` too.
    pub fn start_like_debian() -> MariaDb {
        MariaDb::bootstrap(true)
    }

    fn bootstrap(like_debian: bool) -> MariaDb {
        let install_db = find_binary("mariadb-install-db", &[], "mariadb-server");
        let dir = tempfile::Builder::new().prefix("test-mariadb-").tempdir().expect("temp dir");
        let data = dir.path().join("data");
        // A private tmpdir: bootstraps running side by side in the shared /tmp
        // collide on their temporary tables ("Unknown table mysql.tmp_user_sys").
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("create mariadb tmpdir");
        let mut command = std::process::Command::new(&install_db);
        command.args([
            "--no-defaults",
            "--user=root",
            "--skip-test-db",
            // The default 96 MiB redo log is preallocated per server; a
            // test run starts dozens of servers side by side.
            INNODB_LOG_FILE_SIZE,
        ]);
        if like_debian {
            // Debian's default: root via unix_socket, as whoever runs the test.
            let user = std::process::Command::new("id")
                .arg("-un")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_else(|_| "root".into());
            command.arg(format!("--auth-root-socket-user={user}"));
        } else {
            command.arg("--auth-root-authentication-method=normal");
        }
        let output = command
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .output()
            .expect("run mariadb-install-db");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "mariadb-install-db failed{}: {stderr}",
            if stderr.contains("error 28") {
                " (error 28: no space left on the disk that holds the temp dir)"
            } else {
                ""
            }
        );
        let mut server = MariaDb { dir, port: free_port(), process: None, like_debian };
        server.launch(true);
        server
    }

    /// Starts (again) a stopped server on the same port and data.
    pub fn restart(&mut self) {
        self.launch(false);
    }

    /// Starts the server and waits until *it* listens on its port. On the
    /// first start (`may_move`) a port taken meanwhile by another process
    /// is replaced by a new one; a restart must keep its port.
    fn launch(&mut self, may_move: bool) {
        if let Some(mut old) = self.process.take() {
            old.kill();
        }
        for _ in 0..PORT_ATTEMPTS {
            let process = self.spawn();
            if wait_listening(&process, self.port, Duration::from_secs(60)) {
                self.process = Some(process);
                return;
            }
            if may_move && lost_port_race(&process) {
                self.port = free_port();
                continue;
            }
            panic!("mariadbd did not start on port {}:\n{}", self.port, process.log_tail());
        }
        panic!("mariadbd lost its port to other processes {PORT_ATTEMPTS} times in a row");
    }

    fn spawn(&self) -> GuardedProcess {
        let mariadbd = find_binary("mariadbd", &["/usr/sbin"], "mariadb-server");
        let log = self.log_path();
        let mut args = vec![
            "--no-defaults".to_string(),
            format!("--datadir={}", self.dir.path().join("data").display()),
            format!("--port={}", self.port),
            "--bind-address=127.0.0.1".to_string(),
            format!("--socket={}", self.dir.path().join("mysqld.sock").display()),
            format!("--pid-file={}", self.dir.path().join("mysqld.pid").display()),
            format!("--tmpdir={}", self.dir.path().join("tmp").display()),
            "--user=root".to_string(),
            "--skip-log-bin".to_string(),
            "--max-connections=1000".to_string(),
            "--innodb-buffer-pool-size=128M".to_string(),
            INNODB_LOG_FILE_SIZE.to_string(),
            "--character-set-server=utf8mb4".to_string(),
            "--collation-server=utf8mb4_general_ci".to_string(),
        ];
        if !self.like_debian {
            args.push("--skip-name-resolve".to_string());
        }
        GuardedProcess::spawn_owning(&mariadbd, &args, &log, None, self.dir.path())
    }

    /// SIGKILLs the server (data stays, [`MariaDb::restart`] brings it back).
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// The running server process, for signals.
    pub fn process(&self) -> Option<&GuardedProcess> {
        self.process.as_ref()
    }

    /// TCP port of the server.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Server URL without a database: `mysql://root@127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    /// The server's unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("mysqld.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mariadbd.log")
    }
}
