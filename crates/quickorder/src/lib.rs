//! `quickorder`: the whole quick-order saga behind one command.
//!
//! This is the top of the workspace and the only crate that depends on the
//! services. Each subcommand is one module:
//!
//! | command | module | what it does |
//! |---|---|---|
//! | `quickorder up` | [`embedded`] + [`up`] | coordinator, order-srv, stock-srv and order-api in one process, on SQLite files in a data folder, talking real gRPC over loopback |
//! | `quickorder demo` | [`demo`] | replays the article's scenarios on a fresh embedded system and prints the rows each one leaves |
//! | `quickorder probe` | [`probe`] | one health check (gRPC `grpc.health.v1` or HTTP), for container healthchecks |
//! | `quickorder bench` | [`bench`](mod@bench) | load generator: sagas/s, latency, CPU and SQL per saga for each process, side by side with no-coordinator and database baselines and a peer coordinator |
//! | `quickorder chaos` | [`chaos`] | the real binaries as separate processes (MariaDB, etcd, two coordinators, two of each service, order-api) under concurrent orders and seeded faults — kills, pauses, database and etcd restarts, latency, stalls and drops through a fault proxy — then checks every saga invariant; non-zero exit on a violation |
//!
//! [`embedded::System`] is the piece the others reuse: it loads the same
//! `etc/*.yaml` files a user runs the separate binaries with (compiled into
//! the binary), fills their `${VAR}`s with embedded defaults, swaps etcd for
//! direct addresses, and starts the four servers on tasks of one runtime.
//! Nothing is faked: the coordinator calls the branches over gRPC on
//! loopback, exactly as it would across machines. [`duration`] is the one
//! parser of command-line durations, so every subcommand accepts the same
//! words.

pub mod bench;
pub mod chaos;
pub mod demo;
pub mod duration;
pub mod embedded;
pub mod probe;
pub mod up;
