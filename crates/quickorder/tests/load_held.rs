//! Saturation for a minute: `quickorder up` (the real binary) under more
//! concurrent clients than it can serve at once. Every request must get an
//! answer — a saga outcome or a clear overload error, never a dropped
//! connection — and the server's memory must stay flat.
//!
//! Throughput is not asserted here (that is `quickorder-bench`'s job); only
//! that the system degrades cleanly.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::StdoutWatch;
use serde_json::json;
use tokio::sync::Mutex;

const CLIENTS: usize = 128;
const DURATION: Duration = Duration::from_secs(60);

struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident memory of a process in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process alive");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn saturation_for_a_minute_answers_every_request_with_flat_memory() {
    // A minute of saturation measures nothing useful next to other systems.
    let _slot = harness::system_slot();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_quickorder"))
        .arg("up")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--api-port", "0", "--coordinator-http-port", "0", "--coordinator-grpc-port", "0"])
        .args(["--order-port", "0", "--stock-port", "0"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start quickorder up");
    let pid = child.id();
    let stdout = StdoutWatch::new(child.stdout.take().expect("piped"), "quickorder", pid);
    let _up = Up(child);
    let api = stdout.wait_ready(Duration::from_secs(60)).unwrap_or_else(|err| panic!("{err}")).port("api");

    let url = format!("http://127.0.0.1:{api}/order/quickCreate");
    let outcomes: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let deadline = Instant::now() + DURATION;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();

    // Memory samples, once a second, while the load runs.
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        while Instant::now() < deadline {
            samples.push(rss_kib(pid));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        samples
    });

    let mut clients = Vec::new();
    for worker in 0..CLIENTS {
        let (client, url, outcomes) = (client.clone(), url.clone(), outcomes.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                // Mostly small orders; every tenth asks for more than exists.
                let num = if n.is_multiple_of(10) { 500 } else { 1 };
                let body = json!({"userId": worker + 1, "goodsId": 1, "num": num});
                let outcome = match client.post(&url).json(&body).send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        match response.json::<serde_json::Value>().await {
                            Ok(answer) if status >= 500 && answer["error"].as_str().is_none() => {
                                format!("{status} without an error message")
                            }
                            Ok(_) => status.to_string(),
                            Err(_) => format!("{status} without a JSON body"),
                        }
                    }
                    Err(err) => format!("no answer: {err}"),
                };
                *outcomes.lock().await.entry(outcome).or_default() += 1;
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let samples = sampler.await.unwrap();
    let outcomes = outcomes.lock().await.clone();
    eprintln!("outcomes: {outcomes:?}");
    eprintln!("rss KiB: {samples:?}");

    // Every request got a proper answer.
    let total: u64 = outcomes.values().sum();
    let answered: u64 = outcomes
        .iter()
        .filter(|(k, _)| ["200", "409", "202", "503"].contains(&k.as_str()))
        .map(|(_, n)| n)
        .sum();
    assert!(total > 0);
    assert_eq!(answered, total, "every request must be answered 200/409/202/503 with JSON: {outcomes:?}");
    assert!(outcomes.get("200").copied().unwrap_or(0) > 0, "some orders must succeed: {outcomes:?}");

    // Memory is bounded and flat: the last third of the run is not much
    // above the first third (no growth per request), and stays small.
    let third = samples.len() / 3;
    let early = *samples[..third].iter().max().unwrap();
    let late = *samples[samples.len() - third..].iter().max().unwrap();
    assert!(late <= early + early / 2 + 16 * 1024, "RSS grew from {early} KiB to {late} KiB");
    assert!(late < 512 * 1024, "RSS {late} KiB at saturation");
}
