//! Throwaway etcd servers.

use std::time::Duration;

use crate::process::{GuardedProcess, PORT_ATTEMPTS, find_binary, free_port, lost_port_race, wait_listening};

/// A private single-node etcd on random ports, or the cluster named by
/// `TEST_ETCD_ENDPOINTS` (comma-separated `host:port`). With an external
/// cluster, [`Etcd::stop`] and [`Etcd::restart`] are not available: tests
/// that need them always start their own.
pub struct Etcd {
    /// Data directory (None for an external cluster).
    dir: Option<tempfile::TempDir>,
    /// Client port.
    client_port: u16,
    /// Peer port.
    peer_port: u16,
    /// The running server.
    process: Option<GuardedProcess>,
    /// Client endpoints as `127.0.0.1:port`.
    endpoints: Vec<String>,
}

impl Etcd {
    /// `TEST_ETCD_ENDPOINTS` if set, otherwise a new private server.
    pub fn start() -> Etcd {
        if let Ok(list) = std::env::var("TEST_ETCD_ENDPOINTS") {
            let endpoints: Vec<String> =
                list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
            return Etcd { dir: None, client_port: 0, peer_port: 0, process: None, endpoints };
        }
        Etcd::start_private()
    }

    /// Always a new private server (for tests that stop and restart it).
    pub fn start_private() -> Etcd {
        let dir = tempfile::Builder::new().prefix("test-etcd-").tempdir().expect("temp dir");
        let client_port = free_port();
        let peer_port = free_port();
        let mut etcd = Etcd {
            dir: Some(dir),
            client_port,
            peer_port,
            process: None,
            endpoints: vec![format!("127.0.0.1:{client_port}")],
        };
        etcd.launch(true);
        etcd
    }

    /// Starts a stopped private server again, same ports and data.
    pub fn restart(&mut self) {
        self.launch(false);
    }

    /// Starts etcd and waits until *it* listens on its client port. On the
    /// first start (`may_move`) ports taken meanwhile by other processes
    /// are replaced by new ones; a restart must keep its ports.
    fn launch(&mut self, may_move: bool) {
        assert!(self.dir.is_some(), "restart needs a private etcd (Etcd::start_private)");
        if let Some(mut old) = self.process.take() {
            old.kill();
        }
        for _ in 0..PORT_ATTEMPTS {
            let process = self.spawn();
            if wait_listening(&process, self.client_port, Duration::from_secs(30)) {
                self.process = Some(process);
                return;
            }
            if may_move && lost_port_race(&process) {
                self.client_port = free_port();
                self.peer_port = free_port();
                self.endpoints = vec![format!("127.0.0.1:{}", self.client_port)];
                continue;
            }
            panic!("etcd did not start on port {}:\n{}", self.client_port, process.log_tail());
        }
        panic!("etcd lost its ports to other processes {PORT_ATTEMPTS} times in a row");
    }

    fn spawn(&self) -> GuardedProcess {
        let dir = self.dir.as_ref().expect("a private etcd");
        let etcd = find_binary("etcd", &[], "etcd-server");
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let args = vec![
            "--name=test".to_string(),
            format!("--data-dir={}", dir.path().join("data").display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=test={peer}"),
            "--log-level=warn".to_string(),
        ];
        let log = dir.path().join("etcd.log");
        GuardedProcess::spawn_owning(&etcd, &args, &log, None, dir.path())
    }

    /// SIGKILLs a private server; [`Etcd::restart`] brings it back.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Client endpoints (`127.0.0.1:port`), as etcd-client and go-zero's `Etcd.Hosts` take them.
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    /// Comma-joined endpoints, as they appear in `etcd://h1:2379,h2:2379/key` URLs.
    pub fn hosts(&self) -> String {
        self.endpoints.join(",")
    }
}
