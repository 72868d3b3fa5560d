//! The readiness line: how a process says "I am serving" to whoever
//! started it.
//!
//! An open port is not readiness. The kernel accepts connections on a bound
//! listener before anything serves them, and under parallel tests the port
//! a harness picked may even belong to another process. So every binary of
//! the demo, once it is really serving — tables created, listeners bound
//! and accepting, registered in etcd when configured — prints exactly one
//! line to stdout:
//!
//! ```text
//! ready order-srv pid=4242 grpc=127.0.0.1:40123 http=127.0.0.1:40124 metrics=127.0.0.1:40125
//! ```
//!
//! (`http=` only with `HttpListenOn`, `metrics=` only when the
//! `Prometheus` block has a `Host`: the metrics listener, whose path is the
//! block's `Path`.)
//!
//! It names the process (binary name and pid) and the addresses it actually
//! bound, so a harness can start it with port 0 and learn the ports from
//! the line instead of guessing a free port and polling it. The format is
//! `ready <name> pid=<pid>` followed by `<label>=<ip:port>` pairs; it is
//! parsed by `harness::ReadyLine` and by the bench's launcher.

use std::io::Write;
use std::net::SocketAddr;

/// The word every readiness line starts with.
pub const PREFIX: &str = "ready";

/// The readiness line of process `name` (this process's pid) with the
/// labelled addresses it serves on.
pub fn line(name: &str, addrs: &[(&str, SocketAddr)]) -> String {
    let mut line = format!("{PREFIX} {name} pid={}", std::process::id());
    for (label, addr) in addrs {
        line.push_str(&format!(" {label}={addr}"));
    }
    line
}

/// Prints [`line`] to stdout and flushes it, so a harness reading the
/// output sees it at once even when stdout is a pipe or a file.
pub fn announce(name: &str, addrs: &[(&str, SocketAddr)]) {
    let line = line(name, addrs);
    let mut out = std::io::stdout().lock();
    // A closed stdout must not stop a service that is otherwise fine.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    tracing::info!(%line, "ready");
}

/// Called once when a server is ready (see [`announce`]).
pub type OnReady = Box<dyn FnOnce() + Send>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_the_process_and_every_address() {
        let grpc: SocketAddr = "127.0.0.1:40123".parse().unwrap();
        let http: SocketAddr = "127.0.0.1:40124".parse().unwrap();
        let line = line("order-srv", &[("grpc", grpc), ("http", http)]);
        assert_eq!(
            line,
            format!("ready order-srv pid={} grpc=127.0.0.1:40123 http=127.0.0.1:40124", std::process::id())
        );
    }
}
