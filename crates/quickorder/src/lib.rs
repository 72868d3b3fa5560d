//! `quickorder`: the whole quick-order saga behind one command.
//!
//! This is the top of the workspace: the crate a user runs, depending on
//! every service. Each subcommand is one module:
//!
//! | command | module | what it does |
//! |---|---|---|
//! | `quickorder up` | [`embedded`] + [`up`] | coordinator, order-srv, stock-srv and order-api in one process, on SQLite files in a data folder, talking real gRPC over loopback |
//! | `quickorder demo` | [`demo`] | replays the article's scenarios on a fresh embedded system and prints the rows each one leaves |
//! | `quickorder probe` | [`probe`] | one health check (gRPC `grpc.health.v1` or HTTP), for container healthchecks |
//!
//! [`embedded::System`] is the piece the others reuse: it loads the same
//! `etc/*.yaml` files a user runs the separate binaries with
//! ([`service_kit::shipped`]), fills their `${VAR}`s with embedded
//! defaults, swaps etcd for direct addresses, and starts the four servers
//! on tasks of one runtime. Nothing is faked: the coordinator calls the
//! branches over gRPC on loopback, exactly as it would across machines.
//!
//! The load generator and the fault injector are crates and binaries of
//! their own (`crates/bench` → `quickorder-bench`, `crates/chaos` →
//! `quickorder-chaos`), so that building the command users run compiles
//! neither, nor the test harness they stand on.

pub mod demo;
pub mod embedded;
pub mod probe;
pub mod up;
