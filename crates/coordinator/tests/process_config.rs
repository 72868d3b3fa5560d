//! The `coordinator` binary's start-up contract: configuration from the
//! environment alone (dtm's UPPER_SNAKE names), a refused configuration
//! named precisely with exit code 2, dtm's `-c` flag, a clean exit on
//! SIGTERM, and JSON log lines when asked (`LOG_ENCODING=json`).

use std::process::Command;
use std::time::Duration;

#[test]
fn a_bad_config_is_refused_at_start_up_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("Stroe:\n  Driver: mysql\n", "Stroe"),
        ("Store:\n  Driver: mysql\n  Port: 3306\n  User: root\n", "Store.Host"),
        ("RetryInterval: 0\n", "RetryInterval"),
        ("LogEncoding: xml\n", "LogEncoding"),
        ("Store:\n  Password: ${COORDINATOR_TEST_UNSET_VAR}\n", "COORDINATOR_TEST_UNSET_VAR"),
    ];
    for (i, (yaml, expected)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        // `-c` like dtm (`-f` like go-zero works too).
        let output = Command::new(env!("CARGO_BIN_EXE_coordinator")).arg("-c").arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{yaml:?}: {stderr}");
        assert!(stderr.contains(expected), "{yaml:?} should name {expected:?}: {stderr}");
    }
}

#[test]
fn without_a_file_the_environment_configures_everything_and_sigterm_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    // Ports 0: the readiness line says which ports it got, and that they
    // are not the defaults (36789/36790) proves HTTP_PORT and GRPC_PORT ruled.
    let log = dir.path().join("coordinator.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .env("LISTEN_HOST", "127.0.0.1")
        .env("HTTP_PORT", "0")
        .env("GRPC_PORT", "0")
        .env("STORE_DRIVER", "sqlite")
        .env("STORE_DB", dir.path().join("env.db"))
        .env("RETRY_INTERVAL", "1")
        .env("TIMEOUT_TO_FAIL", "2")
        .env("AUTH_TOKEN", "from-env")
        .env("LOG_ENCODING", "json")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let ready = harness::wait_ready_line(&log, 0, "coordinator", child.id(), Duration::from_secs(60))
        .unwrap_or_else(|err| panic!("{err}"));
    let (http_port, grpc_port) = (ready.port("http"), ready.port("grpc"));
    assert!(![36789, 0].contains(&http_port) && ![36790, 0].contains(&grpc_port), "{ready:?}");
    assert_eq!(ready.addr("http").ip().to_string(), "127.0.0.1", "LISTEN_HOST honoured");
    let without = raw_http::get_status(http_port, "/api/dtmsvr/newGid", None);
    assert_eq!(without, 401, "AUTH_TOKEN from the environment is enforced");
    assert_eq!(raw_http::get_status(http_port, "/api/dtmsvr/newGid", Some("from-env")), 200);
    assert!(dir.path().join("env.db").exists(), "STORE_DB names the SQLite file");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));

    // LOG_ENCODING=json: every log line is one JSON object (the readiness
    // line, printed for supervisors, is the one plain line).
    let text = std::fs::read_to_string(&log).unwrap();
    let mut messages = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with("ready coordinator ")) {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{text}"));
        assert!(entry["level"].is_string() && entry["timestamp"].is_string(), "{line}");
        messages.push(entry["message"].as_str().unwrap_or_default().to_string());
    }
    assert!(messages.iter().any(|m| m == "coordinator listening"), "{messages:?}");
}

/// A tiny HTTP/1.1 GET over a std TCP socket (these tests have no runtime).
mod raw_http {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// Returns the status code of `GET path` on `127.0.0.1:port`.
    pub fn get_status(port: u16, path: &str, token: Option<&str>) -> u16 {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n").unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply.split_whitespace().nth(1).and_then(|code| code.parse().ok()).expect("status line")
    }
}
