//! CI smoke test of `quickorder-bench`: every mode runs briefly at low
//! concurrency (`compare` runs them all, three short rounds; the opt-in
//! modes `workflow` and `xa` and the variants it does not cover have a test
//! each) against a private MariaDB, as a
//! user runs it (the `quickorder-bench` binary, the service binaries next
//! to it), and must produce a JSON report with sagas and without errors.
//!
//! No timing is asserted: CI machines are shared, and the numbers belong
//! in BENCHMARKS.md, not in a pass/fail line.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use harness::{GuardedProcess, MariaDb, SystemSlot};
use serde_json::Value;

/// `target/<profile>/quickorder`, built by cargo for this test.
fn bench_tool() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_quickorder-bench"))
}

/// The service binaries next to `quickorder-bench` (cargo builds only this
/// package's binaries for its tests).
fn build_services() {
    harness::service_binaries();
}

/// The private MariaDB of this test binary: the server-wide counters the
/// bench reads then count only the bench's statements.
fn mariadb() -> &'static MariaDb {
    static SERVER: OnceLock<MariaDb> = OnceLock::new();
    SERVER.get_or_init(MariaDb::start)
}

/// One bench at a time in this binary (one server whose counters each run
/// reads), and a system slot shared with every other whole-system test.
struct Turn {
    /// Taken second, released first.
    _slot: SystemSlot,
    /// Taken first: threads queue here, never while holding a slot.
    _lock: std::sync::MutexGuard<'static, ()>,
}

fn one_at_a_time() -> Turn {
    static LOCK: Mutex<()> = Mutex::new(());
    let lock = LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Turn { _slot: harness::system_slot(), _lock: lock }
}

/// Runs `quickorder-bench <args> …` briefly; returns the JSON report.
fn bench(args: &[&str]) -> Value {
    bench_with_output(args).0
}

/// [`bench`], and what it printed on stdout.
fn bench_with_output(args: &[&str]) -> (Value, String) {
    build_services();
    let server = mariadb().url();
    let _turn = one_at_a_time();
    bench_in_turn(&server, args)
}

/// [`bench_with_output`] for a caller that already holds its [`Turn`].
/// A 300 ms warm-up unless `args` set one.
fn bench_in_turn(server: &str, args: &[&str]) -> (Value, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let warmup: &[&str] = if args.contains(&"--warmup") { &[] } else { &["--warmup", "300ms"] };
    let output = Command::new(bench_tool())
        .args(args)
        .args(warmup)
        .args(["--clients", "2", "--quiet", "--mysql", server])
        .arg("--json")
        .arg(&json)
        .env_remove("RUST_LOG")
        .output()
        .expect("run quickorder");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "quickorder-bench {args:?} failed:\n{stdout}\n{stderr}");
    println!("{stdout}");
    let text =
        std::fs::read_to_string(&json).unwrap_or_else(|err| panic!("no JSON report ({err}):\n{stderr}"));
    (serde_json::from_str(&text).expect("the report is JSON"), stdout.into_owned())
}

/// `compare --variant`: the plain `http` and the one with the setting,
/// side by side on databases of their own, with their ratio; and the
/// setting does reach the coordinator (one it cannot read stops the run).
#[test]
fn compare_measures_a_coordinator_setting_beside_the_shipped_one() {
    let variant = "http quickCreate with ATTEMPTS_RECORD=off";
    let (comparison, _) = bench_with_output(&[
        "compare",
        "--modes",
        "http",
        "--variant",
        "ATTEMPTS_RECORD=off",
        "--rounds",
        "2",
        "--duration",
        "250ms",
        "--warmup",
        "150ms",
    ]);
    assert_eq!(comparison["order"], serde_json::json!(["http quickCreate", variant]));
    for run in comparison["runs"].as_array().expect("runs") {
        assert_clean(run, &["coordinator", "order-api", "order-srv", "stock-srv"]);
    }
    let ratios = comparison["ratios"].as_array().expect("ratios");
    for measure in ["throughput", "cpu_per_saga"] {
        let ratio = ratios
            .iter()
            .find(|r| r["name"] == "http ATTEMPTS_RECORD=off / http" && r["measure"] == measure)
            .unwrap_or_else(|| panic!("no {measure} ratio of the variant: {ratios:#?}"));
        assert_eq!(
            (&ratio["numerator"], &ratio["denominator"]),
            (&variant.into(), &"http quickCreate".into())
        );
        assert_eq!(ratio["rounds"].as_array().map(Vec::len), Some(2), "{ratio:#}");
    }

    build_services();
    let server = mariadb().url();
    let _turn = one_at_a_time();
    let output = Command::new(bench_tool())
        .args([
            "http",
            "--variant",
            "ATTEMPTS_RECORD=maybe",
            "--requests",
            "5",
            "--quiet",
            "--mysql",
            &server,
        ])
        .env_remove("RUST_LOG")
        .output()
        .expect("run quickorder-bench");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a coordinator setting it cannot read must stop the run:\n{said}");
    assert!(said.contains("ATTEMPTS_RECORD"), "the coordinator names the setting:\n{said}");
}

/// What every report must show: sagas, no errors, and the readings.
fn assert_clean(report: &Value, processes: &[&str]) {
    let label = report["label"].as_str().unwrap_or("?");
    assert!(report["sagas"].as_u64().unwrap_or(0) > 0, "{label}: no sagas: {report:#}");
    assert_eq!(report["error_count"].as_u64(), Some(0), "{label}: errors: {:#}", report["errors"]);
    assert!(report["latency_ms"]["p50"].as_f64().unwrap_or(0.0) > 0.0, "{label}: {report:#}");
    assert!(report["sql"]["statements_per_saga"].as_f64().unwrap_or(0.0) > 0.0, "{label}: no SQL counted");
    let names: Vec<&str> =
        report["processes"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    for name in processes {
        assert!(names.contains(name), "{label}: {name} not accounted: {names:?}");
    }
    assert!(names.contains(&"mariadbd"), "{label}: the database server's CPU is missing: {names:?}");
    // /proc/stat is there (Linux): every run records the steal and the
    // CPU of processes it does not account for.
    for share in ["machine_steal", "other_cpu"] {
        let value = report[share].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&value), "{label}: {share} = {}", report[share]);
    }
    assert!(report["cpu_ms_per_saga_sum"].as_f64().is_some(), "{label}: no CPU sum");
}

#[test]
fn saga_mode_over_http_with_sql_and_empty_branches() {
    let report = bench(&["saga", "--api", "http", "--branches", "http", "--work", "sql", "--requests", "40"]);
    assert_eq!(report["sagas"], 40);
    assert_clean(&report, &["coordinator"]);
    let report = bench(&["saga", "--branches", "http", "--work", "none", "--duration", "2s"]);
    assert_clean(&report, &["coordinator"]);
}

/// `--store-history N`: the store holds N finished sagas before the run
/// (the bench counts them in the database), and the report says so.
#[test]
fn peer_mode_on_a_store_with_history() {
    let report =
        bench(&["peer", "--store-history", "2500", "--peer-name", "ours-history", "--duration", "1s"]);
    assert_eq!(report["label"], "peer ours-history");
    assert_clean(&report, &["coordinator"]);
    let notes = report["notes"].as_array().expect("notes");
    assert!(
        notes.iter().any(|n| n.as_str().unwrap_or_default().contains("held 2500 finished sagas")),
        "{notes:?}"
    );
}

/// `--dtm URL` with a coordinator the bench did not start: here ours on
/// SQLite (the embedded store), started by the test like any peer would be.
#[test]
fn peer_mode_against_a_given_url() {
    build_services();
    let server = mariadb().url();
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().expect("temp dir");
    let coordinator = bench_tool().with_file_name("coordinator");
    let args: Vec<String> = vec![
        "LISTEN_HOST=127.0.0.1".into(),
        "HTTP_PORT=0".into(),
        "GRPC_PORT=0".into(),
        "STORE_DRIVER=sqlite".into(),
        format!("STORE_DB={}", dir.path().join("coordinator.db").display()),
        "LOG_LEVEL=warn".into(),
        coordinator.display().to_string(),
    ];
    let process = GuardedProcess::spawn("env", &args, &dir.path().join("coordinator.log"), None);
    let http = process.wait_ready("coordinator", Duration::from_secs(60)).addr("http");
    let url = format!("http://{http}/api/dtmsvr");
    let pid = process.pid().to_string();
    let (report, _) = bench_in_turn(
        &server,
        &["peer", "--dtm", &url, "--peer-pid", &pid, "--peer-name", "sqlite", "--duration", "2s"],
    );
    assert_eq!(report["label"], "peer sqlite");
    let sagas = report["sagas"].as_u64().unwrap_or(0);
    assert!(sagas > 0 && report["error_count"] == 0, "{report:#}");
    let names: Vec<&str> =
        report["processes"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(names.contains(&"sqlite"), "{names:?}");
}

/// `compare` runs every mode in three short rounds, in alternating order
/// (db, direct, quick orders over HTTP, saga over gRPC, peer; then
/// reversed): one run covers what a test per mode would, so each mode's own
/// checks are made on every one of its runs here, then the comparison's
/// medians, ratios, steal and targets.
#[test]
fn compare_runs_every_mode_in_rounds_and_prints_ratios() {
    let (comparison, stdout) =
        bench_with_output(&["compare", "--rounds", "3", "--duration", "250ms", "--warmup", "150ms"]);
    let order = [
        "db insert-commit",
        "direct grpc work=sql",
        "http quickCreate",
        "saga api=grpc branches=grpc work=sql",
        "peer ours",
    ];
    assert_eq!(comparison["rounds"], 3);
    assert_eq!(comparison["order"], serde_json::json!(order));
    let runs = comparison["runs"].as_array().expect("runs");
    let ran: Vec<(u64, &str)> =
        runs.iter().map(|r| (r["round"].as_u64().unwrap_or(0), r["label"].as_str().unwrap_or("?"))).collect();
    let reversed: Vec<&str> = order.iter().rev().copied().collect();
    let expected: Vec<(u64, &str)> = [(1, order.to_vec()), (2, reversed), (3, order.to_vec())]
        .into_iter()
        .flat_map(|(round, labels)| labels.into_iter().map(move |label| (round, label)))
        .collect();
    assert_eq!(ran, expected, "A B … then reversed, three rounds");

    for run in runs {
        let label = run["label"].as_str().unwrap_or("?");
        // Each run's line on stdout names its round, its steal, the rest.
        let line = format!("round {}: {label}: ", run["round"]);
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&line) && l.contains("steal") && l.contains("other processes")),
            "no line for {line}:\n{stdout}"
        );
        match label {
            "db insert-commit" => {
                assert_clean(run, &["bench"]);
                assert!(run["sql"]["per_saga"]["Com_insert"].as_f64().unwrap_or(0.0) >= 1.0, "{run:#}");
            }
            "direct grpc work=sql" => assert_clean(run, &["order-srv", "stock-srv"]),
            "http quickCreate" => assert_clean(run, &["coordinator", "order-api", "order-srv", "stock-srv"]),
            "saga api=grpc branches=grpc work=sql" => {
                assert_clean(run, &["coordinator"]);
                let rss = &run["coordinator_rss_kib"];
                assert!(rss[0].as_u64().unwrap_or(0) > 0 && rss[1].as_u64().unwrap_or(0) > 0, "{rss}");
            }
            _ => assert_clean(run, &["coordinator"]),
        }
    }

    // Per mode: the medians over the three rounds, CPU per saga by process
    // and summed.
    let modes = comparison["modes"].as_array().expect("modes");
    assert_eq!(modes.len(), 5);
    for mode in modes {
        let sagas = &mode["sagas_per_s"];
        assert_eq!(sagas["n"], 3, "{mode:#}");
        let (min, median, max) = (
            sagas["min"].as_f64().unwrap_or(-1.0),
            sagas["median"].as_f64().unwrap_or(-1.0),
            sagas["max"].as_f64().unwrap_or(-1.0),
        );
        assert!(0.0 < min && min <= median && median <= max, "{sagas}");
        assert!(mode["cpu_ms_per_saga_sum"]["median"].as_f64().is_some(), "{mode:#}");
        assert!(mode["machine_steal"]["median"].as_f64().is_some(), "{mode:#}");
    }

    // Ratios per round, their median, and the pairs flagged for steal.
    let ratios = comparison["ratios"].as_array().expect("ratios");
    let find = |name: &str, measure: &str| {
        ratios
            .iter()
            .find(|r| r["name"] == name && r["measure"] == measure)
            .unwrap_or_else(|| panic!("no {measure} ratio {name}: {ratios:#?}"))
    };
    for (name, measure) in [
        ("http / direct", "throughput"),
        ("http / direct", "cpu_per_saga"),
        ("direct / db", "throughput"),
        ("saga / direct", "cpu_per_saga"),
    ] {
        let ratio = find(name, measure);
        assert_eq!(ratio["rounds"].as_array().map(Vec::len), Some(3), "{ratio:#}");
        assert!(ratio["median"].as_f64().unwrap_or(0.0) > 0.0, "{ratio:#}");
    }
    assert!(comparison["steal_flags"].is_array(), "{comparison:#}");
    let targets: Vec<&str> = comparison["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(targets.iter().any(|t| t.starts_with("coordinator CPU per saga in peer ours")), "{targets:?}");
    assert!(stdout.contains("ratios (median of the rounds' pairs"), "{stdout}");
    assert!(stdout.contains("CPU ms per saga"), "{stdout}");
}

/// The XA transactions prepared on `server` and not finished (`XA RECOVER`
/// lists the whole server's).
fn prepared_xa(server: &str) -> usize {
    use sqlx::Connection;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut conn = sqlx::MySqlConnection::connect(server).await.expect("connect");
        // XA statements cannot be prepared: a plain string goes as a simple query.
        let rows = sqlx::Executor::fetch_all(&mut conn, "XA RECOVER").await.expect("XA RECOVER");
        rows.len()
    })
}

/// `compare --modes saga,xa,http,workflow`: the opt-in modes beside the
/// saga each is compared with, one short round — every run clean, the
/// processes each mode starts accounted for, both ratios in both
/// measures — and no XA transaction left prepared once the bench is done.
#[test]
fn compare_measures_xa_against_saga_and_workflow_against_http() {
    let (comparison, stdout) = bench_with_output(&[
        "compare",
        "--modes",
        "saga,xa,http,workflow",
        "--rounds",
        "1",
        "--duration",
        "400ms",
    ]);
    let (saga, xa) = ("saga api=grpc branches=grpc work=sql", "xa api=grpc branches=http work=sql");
    assert_eq!(
        comparison["order"],
        serde_json::json!(["http quickCreate", "workflow quickCreate", saga, xa])
    );
    for run in comparison["runs"].as_array().expect("runs") {
        match run["label"].as_str().unwrap_or("?") {
            "http quickCreate" | "workflow quickCreate" => {
                assert_clean(run, &["coordinator", "order-api", "order-srv", "stock-srv"]);
            }
            // The branch servers of saga and xa run in the bench process.
            _ => assert_clean(run, &["coordinator", "bench (+branches)"]),
        }
    }
    let ratios = comparison["ratios"].as_array().expect("ratios");
    for (name, numerator, denominator) in
        [("workflow / http", "workflow quickCreate", "http quickCreate"), ("xa / saga", xa, saga)]
    {
        for measure in ["throughput", "cpu_per_saga"] {
            let ratio = ratios
                .iter()
                .find(|r| r["name"] == name && r["measure"] == measure)
                .unwrap_or_else(|| panic!("no {measure} ratio {name}: {ratios:#?}"));
            assert_eq!(
                (&ratio["numerator"], &ratio["denominator"]),
                (&numerator.into(), &denominator.into())
            );
            assert!(ratio["median"].as_f64().unwrap_or(0.0) > 0.0, "{ratio:#}");
        }
        assert!(stdout.contains(name), "{name} not printed:\n{stdout}");
    }
    assert_eq!(prepared_xa(&mariadb().url()), 0, "XA transactions left prepared after the bench");
}

/// `xa` alone, over the coordinator's HTTP API: every global transaction
/// committed, nothing left prepared.
#[test]
fn xa_mode_over_http_leaves_nothing_prepared() {
    let report = bench(&["xa", "--api", "http", "--requests", "30"]);
    assert_eq!(report["label"], "xa api=http branches=http work=sql");
    assert_eq!(report["sagas"], 30);
    assert_clean(&report, &["coordinator", "bench (+branches)"]);
    assert_eq!(prepared_xa(&mariadb().url()), 0, "XA transactions left prepared after the bench");
}

/// `scripts/bench.sh`, the README's way to regenerate BENCHMARKS.md, run
/// as a user runs it but shrunk (2 clients, one round, 1 s runs, a store
/// of 500 finished sagas, no soak) on the binaries this test was built
/// with (`BENCH_BIN`): it fills the results section between the markers
/// with every table it promises and keeps the prose around it.
#[test]
fn bench_script_regenerates_the_results_section() {
    build_services();
    let server = mariadb().url();
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().expect("temp dir");
    let markdown = dir.path().join("BENCHMARKS.md");
    std::fs::write(
        &markdown,
        "# Benchmarks\n\nprose before\n\n<!-- results:begin -->\nstale results\n<!-- results:end -->\n\nprose after\n",
    )
    .expect("write BENCHMARKS.md");
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new("bash")
        .arg(workspace.join("scripts/bench.sh"))
        .env("BENCH_BIN", bench_tool())
        .env("MYSQL_URL", &server)
        .env("CLIENTS", "2")
        .env("ROUNDS", "1")
        .env("DURATION", "1s")
        .env("WARMUP", "200ms")
        .env("HISTORY", "500")
        .env("SOAK", "0")
        .env("DTMRS", "")
        .env("MARKDOWN", &markdown)
        .env("OUT", dir.path().join("out"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "scripts/bench.sh failed:\n{stdout}\n{stderr}");
    let text = std::fs::read_to_string(&markdown).expect("read BENCHMARKS.md");
    assert!(!text.contains("stale results"), "the old section is replaced:\n{text}");
    let begin = text.find("<!-- results:begin -->").expect("begin marker kept");
    let end = text.find("<!-- results:end -->").expect("end marker kept");
    assert!(text[..begin].contains("prose before") && text[end..].contains("prose after"), "{text}");
    let section = &text[begin..end];
    for expected in [
        "Generated by `scripts/bench.sh`",
        "innodb_buffer_pool_size=",
        "compare: 1 rounds",
        "### 2 clients, MySQL store (MariaDB)",
        "http / direct",
        "| peer ours-sqlite | 2 |",
        "### A store holding 500 finished sagas, peer workload, 2 clients",
        "| peer ours-500-finished | 2 |",
        "- full / empty store: **",
    ] {
        assert!(section.contains(expected), "no {expected:?} in the results section:\n{section}");
    }
    assert!(!section.contains("### Soak"), "SOAK=0 skips the soak:\n{section}");
    assert!(stderr.contains("settled after"), "the history fill waits for InnoDB:\n{stderr}");
}
