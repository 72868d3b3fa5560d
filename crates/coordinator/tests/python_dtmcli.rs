//! Compatibility with a real dtm client: dtm's Python SDK, `dtmcli`
//! 1.7.7.0 from PyPI, drives the `coordinator` binary.
//!
//! A virtualenv with the pinned package is created once under
//! `target/tmp/` and reused by later runs (first run: a few seconds of
//! pip; then none). The Python side is a script written by this test: it
//! runs a sequential saga, TCC (with a nested branch) and 2-phase messages (one to a topic)
//! the way `dtmcli`'s README shows, against recording HTTP branches served
//! by this test. The test then checks, per transaction, the sequence of
//! branch calls, the query parameters and body each call received, and the
//! final state from `/api/dtmsvr/query`.
//!
//! `dtmcli` 1.7.7.0 has no topic or KV calls (no `subscribe`,
//! `unsubscribe`, `deleteTopic`, `queryKV`): the topic scenario subscribes
//! through the HTTP route and sends `dtmcli`'s own `Msg` with a
//! `topic://` action, which is what its API covers.
//!
//! `dtmcli`'s concurrent saga is not exercised: its `build_custom_options`
//! reads attributes that do not exist (`self.orders`), so it cannot submit.
//!
//! Needs `python3` with the `venv` module and access to PyPI; without them
//! the test fails and says what is missing.

mod edges_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use edges_support::{CoordinatorProcess, get};
use harness::branches::{BranchServers, Call, c};
use serde_json::Value;

/// The pinned SDK version (the latest on PyPI).
const DTMCLI_VERSION: &str = "1.7.7.0";
const FINAL_WITHIN: Duration = Duration::from_secs(20);

/// The Python side: `python3 drive.py <dtm base> <branch base> <scenario>`,
/// printing one JSON object of gids and observations on its last line.
const DRIVER: &str = r#"
import json, sys, time, traceback
from dtmcli import saga, tcc, msg, utils

dtm, busi, scenario = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}
body = {"amount": 30}

def saga_run():
    gid = utils.gen_gid(dtm)
    s = saga.Saga(dtm, gid).add(body, busi + "/TransOut", busi + "/TransOutRevert") \
        .add(body, busi + "/TransIn", busi + "/TransInRevert")
    s.trans_base.wait_result = True
    s.submit()
    out["ok"] = gid
    gid = utils.gen_gid(dtm)
    saga.Saga(dtm, gid).add(body, busi + "/TransOut", busi + "/TransOutRevert") \
        .add(body, busi + "/TransInFail", busi + "/TransInRevert").submit()
    out["rollback"] = gid

def tcc_run():
    def ok(t):
        t.call_branch(body, busi + "/TransOutTry", busi + "/TransOutConfirm", busi + "/TransOutCancel")
        # Branch 01 acting as a sub-transaction, as its try handler would.
        sub = tcc.tcc_from_req(t.dtm, t.gid, "01")
        sub.call_branch(body, busi + "/SubTry", busi + "/SubConfirm", busi + "/SubCancel")
        t.call_branch(body, busi + "/TransInTry", busi + "/TransInConfirm", busi + "/TransInCancel")
    gid = utils.gen_gid(dtm)
    out["ok"] = gid
    out["ok_returned"] = tcc.tcc_global_transaction(dtm, gid, ok)
    def fail(t):
        t.call_branch(body, busi + "/TransOutTry", busi + "/TransOutConfirm", busi + "/TransOutCancel")
        t.call_branch(body, busi + "/TransInTryFail", busi + "/TransInConfirm", busi + "/TransInCancel")
    gid = utils.gen_gid(dtm)
    out["rollback"] = gid
    out["rollback_returned"] = tcc.tcc_global_transaction(dtm, gid, fail)

def transfer(gid):
    return msg.Msg(dtm, gid).add(body, busi + "/TransOut").add(body, busi + "/TransIn")

def msg_run():
    gid = utils.gen_gid(dtm)
    m = transfer(gid)
    m.prepare(busi + "/QueryPrepared")
    m.submit()
    out["plain"] = gid

    def refuse(bb):
        raise utils.DTMFailureError("insufficient balance")
    gid = utils.gen_gid(dtm)
    out["abort"] = gid
    try:
        transfer(gid).do_and_submit(busi + "/QueryPrepared", refuse)
    except utils.DTMFailureError:
        out["abort_raised"] = "DTMFailureError"

    def lost(bb):
        raise Exception("the commit's answer was lost")
    gid = utils.gen_gid(dtm)
    out["client_check"] = gid
    try:
        transfer(gid).do_and_submit(busi + "/QueryPrepared", lost)
    except Exception as e:
        out["client_check_raised"] = str(e)

    for name, check in [("server_check_yes", "/QueryPrepared"), ("server_check_no", "/QueryPreparedNo")]:
        gid = utils.gen_gid(dtm)
        m = transfer(gid)
        m.trans_base.timeout_to_fail = 1
        m.prepare(busi + check)  # and "crash": never submitted
        out[name] = gid

    gid = utils.gen_gid(dtm)
    m = msg.Msg(dtm, gid).add(body, busi + "/Delayed")
    m.trans_base.custom_data = json.dumps({"delay": 2})
    out["delay_submitted_at"] = time.time()
    m.submit()
    out["delay"] = gid

def topic_run():
    # dtmcli 1.7.7.0 has no subscribe call: subscribe through dtm's HTTP
    # route, then send dtmcli's own Msg with a topic:// action.
    import requests
    for name in ["ShipA", "ShipB"]:
        utils.check_result(requests.get(dtm + "/subscribe",
            params={"topic": "py-orders", "url": busi + "/" + name, "remark": name}))
    gid = utils.gen_gid(dtm)
    msg.Msg(dtm, gid).add(body, "topic://py-orders").submit()
    out["topic"] = gid
    gid = utils.gen_gid(dtm)
    try:
        msg.Msg(dtm, gid).add(body, "topic://nobody").submit()
    except utils.DTMFailureError:
        out["unknown_topic_raised"] = "DTMFailureError"

{"saga": saga_run, "tcc": tcc_run, "msg": msg_run, "topic": topic_run}[scenario]()
print(json.dumps(out))
"#;

/// The venv's python, created (once per target dir) with the pinned SDK.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("python-dtmcli-{DTMCLI_VERSION}"));
        let python = dir.join("bin").join("python");
        if has_dtmcli(&python) {
            return python;
        }
        // Build next to it, then rename: a half-built venv is never reused.
        let building = dir.with_extension(format!("building-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&building);
        run_setup(
            Command::new("python3").args(["-m", "venv"]).arg(&building),
            "python3 with the venv module is needed (Debian: apt-get install python3-venv)",
        );
        run_setup(
            Command::new(building.join("bin").join("python")).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--timeout",
                "30",
                &format!("dtmcli=={DTMCLI_VERSION}"),
            ]),
            &format!("pip could not install dtmcli=={DTMCLI_VERSION} from PyPI (is PyPI reachable?)"),
        );
        let _ = std::fs::remove_dir_all(&dir);
        if std::fs::rename(&building, &dir).is_err() {
            // Another test process won the race: use its venv.
            let _ = std::fs::remove_dir_all(&building);
        }
        assert!(has_dtmcli(&python), "the virtualenv at {} has no dtmcli {DTMCLI_VERSION}", dir.display());
        python
    })
}

fn has_dtmcli(python: &Path) -> bool {
    python.exists()
        && Command::new(python)
            .args([
                "-c",
                &format!(
                    "import dtmcli, importlib.metadata as m; assert m.version('dtmcli') == '{DTMCLI_VERSION}'"
                ),
            ])
            .output()
            .is_ok_and(|o| o.status.success())
}

fn run_setup(command: &mut Command, what_is_missing: &str) {
    match command.output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "{what_is_missing}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(err) => panic!("{what_is_missing}: {err}"),
    }
}

/// Recording HTTP branches (the harness's branch server): every path
/// answers SUCCESS, except paths ending in `Fail` or `No`, which answer 409
/// FAILURE.
struct Branches {
    /// `http://127.0.0.1:port/api/busi`, the base URL the scenarios get.
    base: String,
    /// The server.
    servers: BranchServers,
}

impl Branches {
    async fn start() -> Branches {
        let servers = BranchServers::start().await;
        servers.recorder.on_success(async |call: Call| {
            if call.path.ends_with("Fail") || call.path.ends_with("No") {
                (409, r#"{"dtm_result":"FAILURE","message":"no"}"#.to_string())
            } else {
                (200, r#"{"dtm_result":"SUCCESS"}"#.to_string())
            }
        });
        Branches { base: servers.http_url("api/busi"), servers }
    }

    fn calls_of(&self, gid: &str) -> Vec<Call> {
        self.servers.recorder.calls_of(gid)
    }

    /// `(path without /api/busi, branch_id, op)` of each call of `gid`.
    fn sequence(&self, gid: &str) -> Vec<(String, String, String)> {
        self.servers
            .recorder
            .sequence(gid)
            .into_iter()
            .map(|(path, branch_id, op)| (path.trim_start_matches("/api/busi").to_string(), branch_id, op))
            .collect()
    }
}

/// A coordinator process, the branches, and the Python scenario's output.
struct Run {
    coordinator: CoordinatorProcess,
    branches: Branches,
    out: Value,
    _dir: tempfile::TempDir,
}

impl Run {
    async fn scenario(name: &str) -> Run {
        harness::init_tracing();
        let python = tokio::task::spawn_blocking(python).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "Store:\n  Db: {}\nRetryInterval: 1\nMaxRetryInterval: 2\nTimeoutToFail: 5\nTransCronInterval: 1\n",
            dir.path().join("coordinator.db").display()
        );
        let coordinator = CoordinatorProcess::start(dir.path(), name, &yaml);
        let branches = Branches::start().await;
        let script = dir.path().join("drive.py");
        std::fs::write(&script, DRIVER).unwrap();
        let dtm = format!("{}/api/dtmsvr", coordinator.http());
        let mut command = tokio::process::Command::new(python);
        command.arg(&script).args([&dtm, &branches.base, name]).kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .expect("the Python driver finished within 60 s")
            .expect("the Python driver runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "the Python driver failed:\n{stdout}\n{}\ncoordinator log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            coordinator.log_tail()
        );
        let out = serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("JSON on the last line");
        Run { coordinator, branches, out, _dir: dir }
    }

    fn gid(&self, key: &str) -> String {
        self.out[key].as_str().unwrap_or_else(|| panic!("no {key} in {}", self.out)).to_string()
    }

    async fn query(&self, gid: &str) -> Value {
        let (status, body) =
            get(&reqwest::Client::new(), &format!("{}/api/dtmsvr/query?gid={gid}", self.coordinator.http()))
                .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn wait_final(&self, gid: &str) -> Value {
        harness::wait_until(&format!("{gid} final"), FINAL_WITHIN, async || {
            let body = self.query(gid).await;
            match body["transaction"]["status"].as_str() {
                Some("succeed" | "failed") => Ok(body),
                _ => Err(body.to_string()),
            }
        })
        .await
    }

    /// Every call of `gid` carries exactly the protocol parameters (plus
    /// `dtm` when `with_dtm` says the application made it) and the body
    /// Python sent (`json.dumps` spacing, verbatim).
    fn check_params(&self, gid: &str, trans_type: &str) {
        for call in self.branches.calls_of(gid) {
            let mut keys: Vec<&str> = call.params.keys().map(String::as_str).collect();
            keys.retain(|k| *k != "dtm");
            assert_eq!(keys, ["branch_id", "gid", "op", "trans_type"], "{call:?}");
            assert_eq!(call.params["trans_type"], trans_type, "{call:?}");
            if call.params["op"] == "msg" {
                assert_eq!((call.method.as_str(), call.text().as_str()), ("GET", ""), "{call:?}");
            } else {
                assert_eq!(
                    (call.method.as_str(), call.text().as_str()),
                    ("POST", r#"{"amount": 30}"#),
                    "{call:?}"
                );
            }
        }
    }
}

/// `(branch_id, op, status)` of each branch row.
fn rows(query: &Value) -> Vec<(String, String, String)> {
    query["branches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let s = |k: &str| b[k].as_str().unwrap().to_string();
            (s("branch_id"), s("op"), s("status"))
        })
        .collect()
}

fn row(branch_id: &str, op: &str, status: &str) -> (String, String, String) {
    (branch_id.to_string(), op.to_string(), status.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sequential_saga_succeeds_and_rolls_back() {
    let run = Run::scenario("saga").await;

    let ok = run.gid("ok");
    let query = run.query(&ok).await; // wait_result: final already
    assert_eq!(query["transaction"]["status"], "succeed", "{query}");
    assert_eq!(run.branches.sequence(&ok), [c("/TransOut", "01", "action"), c("/TransIn", "02", "action")]);
    assert_eq!(
        rows(&query),
        [
            row("01", "compensate", "prepared"),
            row("01", "action", "succeed"),
            row("02", "compensate", "prepared"),
            row("02", "action", "succeed")
        ]
    );
    run.check_params(&ok, "saga");

    let rollback = run.gid("rollback");
    let query = run.wait_final(&rollback).await;
    assert_eq!(query["transaction"]["status"], "failed", "{query}");
    assert_eq!(
        run.branches.sequence(&rollback),
        [
            c("/TransOut", "01", "action"),
            c("/TransInFail", "02", "action"),
            c("/TransInRevert", "02", "compensate"),
            c("/TransOutRevert", "01", "compensate"),
        ]
    );
    run.check_params(&rollback, "saga");
    // The Python client's options arrived as sent (dtmcli's default request_timeout is 8).
    let options: Value = serde_json::from_str(query["transaction"]["options"].as_str().unwrap()).unwrap();
    assert_eq!(options["request_timeout"], 8, "{options}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tcc_confirms_with_a_nested_branch_and_cancels_after_a_failed_try() {
    let run = Run::scenario("tcc").await;

    let ok = run.gid("ok");
    assert_eq!(run.out["ok_returned"], ok.as_str(), "tcc_global_transaction returns the gid on success");
    assert_eq!(run.wait_final(&ok).await["transaction"]["status"], "succeed");
    assert_eq!(
        run.branches.sequence(&ok),
        [
            c("/TransOutTry", "01", "try"),
            c("/SubTry", "0101", "try"),
            c("/TransInTry", "02", "try"),
            // Newest registration first.
            c("/TransInConfirm", "02", "confirm"),
            c("/SubConfirm", "0101", "confirm"),
            c("/TransOutConfirm", "01", "confirm"),
        ]
    );
    run.check_params(&ok, "tcc");
    assert!(
        run.branches.calls_of(&ok).iter().all(|call| !call.params.contains_key("dtm")),
        "dtmcli-py sends no dtm parameter with its tries, and the coordinator none with confirms"
    );

    let rollback = run.gid("rollback");
    assert_eq!(run.out["rollback_returned"], "", "tcc_global_transaction returns \"\" after an abort");
    let query = run.wait_final(&rollback).await;
    assert_eq!(query["transaction"]["status"], "failed");
    assert_eq!(
        run.branches.sequence(&rollback),
        [
            c("/TransOutTry", "01", "try"),
            c("/TransInTryFail", "02", "try"),
            c("/TransInCancel", "02", "cancel"),
            c("/TransOutCancel", "01", "cancel"),
        ]
    );
    run.check_params(&rollback, "tcc");
    assert_eq!(
        rows(&query),
        [
            row("01", "cancel", "succeed"),
            row("01", "confirm", "prepared"),
            row("02", "cancel", "succeed"),
            row("02", "confirm", "prepared"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_messages_submit_abort_check_back_and_delay() {
    let run = Run::scenario("msg").await;
    let delivered = [c("/TransOut", "01", "action"), c("/TransIn", "02", "action")];

    let plain = run.gid("plain");
    assert_eq!(run.wait_final(&plain).await["transaction"]["status"], "succeed");
    assert_eq!(run.branches.sequence(&plain), delivered);
    run.check_params(&plain, "msg");

    let abort = run.gid("abort");
    assert_eq!(run.out["abort_raised"], "DTMFailureError");
    assert_eq!(run.query(&abort).await["transaction"]["status"], "failed");
    assert!(run.branches.sequence(&abort).is_empty(), "an aborted message delivers nothing");

    // DoAndSubmit saw an unknown error: dtmcli asks the check-back itself
    // (naming the coordinator in `dtm`), then submits.
    let client_check = run.gid("client_check");
    assert_eq!(run.out["client_check_raised"], "the commit's answer was lost");
    assert_eq!(run.wait_final(&client_check).await["transaction"]["status"], "succeed");
    let mut expected = vec![c("/QueryPrepared", "00", "msg")];
    expected.extend(delivered.clone());
    assert_eq!(run.branches.sequence(&client_check), expected);
    assert_eq!(
        run.branches.calls_of(&client_check)[0].params.get("dtm").map(String::as_str),
        Some(format!("{}/api/dtmsvr", run.coordinator.http()).as_str())
    );
    run.check_params(&client_check, "msg");

    // Prepared and never submitted: the coordinator asks after timeout_to_fail.
    let yes = run.gid("server_check_yes");
    assert_eq!(run.wait_final(&yes).await["transaction"]["status"], "succeed");
    assert_eq!(run.branches.sequence(&yes), expected);
    assert_eq!(run.branches.calls_of(&yes)[0].params.get("dtm"), None);
    run.check_params(&yes, "msg");
    let no = run.gid("server_check_no");
    assert_eq!(run.wait_final(&no).await["transaction"]["status"], "failed");
    assert_eq!(run.branches.sequence(&no), [c("/QueryPreparedNo", "00", "msg")]);
    run.check_params(&no, "msg");

    let delay = run.gid("delay");
    let query = run.wait_final(&delay).await;
    assert_eq!(query["transaction"]["status"], "succeed");
    assert_eq!(query["transaction"]["custom_data"], r#"{"delay": 2}"#);
    let calls = run.branches.calls_of(&delay);
    assert_eq!(calls.len(), 1, "{calls:?}");
    let waited = calls[0].wall_clock.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
        - run.out["delay_submitted_at"].as_f64().unwrap();
    // Creation time is kept in whole seconds: up to 1 s early at most.
    assert!(waited >= 1.0, "delivered {waited:.2} s after the submit, before its 2 s delay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_message_to_a_topic_reaches_every_subscriber() {
    let run = Run::scenario("topic").await;
    let gid = run.gid("topic");
    assert_eq!(run.wait_final(&gid).await["transaction"]["status"], "succeed");
    assert_eq!(run.branches.sequence(&gid), [c("/ShipA", "01-01", "action"), c("/ShipB", "01-02", "action")]);
    run.check_params(&gid, "msg");
    assert_eq!(run.out["unknown_topic_raised"], "DTMFailureError", "dtm's \"topic not found\" is a FAILURE");
}
