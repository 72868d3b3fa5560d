//! The harness every test, `quickorder-bench` and `quickorder-chaos` build
//! on: real database and etcd servers (never mocks), guarded processes and
//! their readiness lines.
//!
//! Every integration test in this workspace talks to real servers over real
//! connections. This crate finds them for the test:
//!
//! * **MariaDB / MySQL** — [`mysql_database`] gives each test a fresh, empty
//!   database. The server is either the one named by `TEST_MYSQL_URL`
//!   (e.g. `mysql://root@127.0.0.1:3306`), or a throwaway `mariadbd` that this
//!   crate starts once per test process on a random port in a temp directory.
//!   [`MariaDb::start`] starts a private server a test owns outright (to kill
//!   and restart it, or to give a multi-process system its own instance).
//! * **PostgreSQL** — [`postgres_database`], the same way (`TEST_PG_URL`, or a
//!   throwaway `postgres` started with `initdb`).
//! * **SQLite** — [`sqlite_database`]: a file in a temp directory.
//! * **etcd** — [`Etcd::start`] starts a throwaway `etcd` per test (it starts
//!   in well under a second), unless `TEST_ETCD_ENDPOINTS` is set.
//!
//! A missing server binary fails the test with a message naming the Debian
//! package to install. Nothing is ever skipped silently.
//!
//! Whole-system tests take a [`SystemSlot`] first ([`system_slot`]): at
//! most `QUICKORDER_TEST_SYSTEMS` (default 2) of them run at once, across
//! threads and test binaries. The workspace's own binaries are waited for
//! through their readiness line ([`GuardedProcess::wait_ready`]), never
//! through an open port.
//!
//! Servers of the workspace run on a task of the test through
//! [`RunningServer`], and every "poll until" is [`wait_until`]. With the
//! feature `branches`, [`branches`] is the one recording branch server
//! (HTTP and gRPC) that the coordinator's, the client's and the services'
//! tests call and inspect.
//!
//! Servers started here die with the test process: each runs under a small
//! `sh` guard that kills it as soon as its stdin (a pipe held by the test
//! process) closes, whichever way the test process ends. The bench and
//! chaos tools start the workspace's binaries ([`Binaries`]) the same way,
//! so nothing they start outlives them either, and read their command-line
//! durations with the one [`parse_duration`].

mod binaries;
#[cfg(feature = "branches")]
pub mod branches;
mod database;
mod duration;
mod etcd;
mod mariadb;
mod postgres;
mod process;
mod running;
mod slots;

pub use binaries::{Binaries, SERVICE_PACKAGES, service_binaries};
pub use database::{
    Backend, TestDatabase, mysql_database, mysql_database_on, postgres_database, sqlite_database,
};
pub use duration::parse_duration;
pub use etcd::Etcd;
pub use mariadb::MariaDb;
pub use postgres::Postgres;
pub use process::{
    GuardedProcess, ReadyLine, StdoutWatch, closed_port, free_port, listening_ports, listens_on, log_len,
    pid_alive, wait_for_port, wait_ready_line,
};
pub use running::{RunningServer, Shutdown, wait_until};
pub use slots::{DEFAULT_SYSTEMS, SYSTEMS_VAR, SystemSlot, system_slot, system_slots};

/// Installs a tracing subscriber once, printing only when `TEST_LOG` is set
/// (e.g. `TEST_LOG=debug cargo test`), so test output stays quiet by default.
pub fn init_tracing() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}
