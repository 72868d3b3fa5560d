//! The web console (`/admin`) in a real browser: Debian's `chromium`
//! driven through `chromedriver` (WebDriver, with the `fantoccini` client)
//! against an in-process coordinator on random ports with a throwaway
//! SQLite store and the harness's recording branch server.
//!
//! * `console_in_chromium`: sign in with the `AuthToken`, see the list and
//!   its counts, filter it (status, gid prefix), open a transaction whose
//!   branch keeps failing and see each attempt on its timeline, fix the
//!   branch, press "retry now", confirm, and watch it finish; force stop
//!   another one; a hostile gid, payload and branch answer
//!   (`<img … onerror=…>`) are shown as text, no element injected, no
//!   script run. Screenshots go to the target folder; with `QUICKORDER_BLESS=1`
//!   to `docs/console-*.png` (the README's).
//! * `console_api_and_headers`: the JSON API the console uses, without a
//!   browser: bearer auth, 4xx JSON for actions on final transactions, the
//!   Content-Security-Policy of the pages, dtm's `all` unchanged, and which
//!   calls the default `AttemptsRecord: troubled` records.

mod edges_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edges_support::{InProcess, get, post};
use fantoccini::{Client, ClientBuilder, Locator};
use harness::GuardedProcess;
use harness::branches::BranchServers;
use serde_json::{Value, json};

const TOKEN: &str = "console-test-token";

/// A gid, payload and branch answer that would run script if any of them
/// were parsed as HTML.
const HOSTILE_GID: &str = "<img/src=x/onerror=window.pwned=1>";
const HOSTILE_TEXT: &str = "<img src=x onerror=window.pwned=2><b>bold</b>";

/// chromedriver on a free port, under the harness's guard (killed with the test).
struct Driver {
    process: GuardedProcess,
    url: String,
    _dir: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        let missing: Vec<&str> =
            ["chromium", "chromedriver"].into_iter().filter(|p| which(p).is_none()).collect();
        assert!(
            missing.is_empty(),
            "the console's browser test needs {missing:?} on PATH: apt-get install -y chromium chromium-driver"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let port = harness::free_port();
        let log = dir.path().join("chromedriver.log");
        let process = GuardedProcess::spawn("chromedriver", &[format!("--port={port}")], &log, None);
        assert!(
            process.wait_logged("started successfully", Duration::from_secs(30)),
            "chromedriver did not start: {}",
            process.log_tail()
        );
        Driver { process, url: format!("http://127.0.0.1:{port}"), _dir: dir }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": which("chromium").expect("chromium").display().to_string(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,860", "--user-data-dir=".to_string() + &self._dir.path().join("profile").display().to_string()],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("chromedriver refused a session: {e}\n{}", self.process.log_tail()))
    }
}

/// chromedriver starts chromium as its child, and killing chromedriver
/// (the guard does, when a test fails half-way) leaves chromium running.
/// Every process of *this* browser names this test's profile folder on its
/// command line: those, and only those, are killed here, by pid.
impl Drop for Driver {
    fn drop(&mut self) {
        let profile = self._dir.path().join("profile").display().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else { return };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else { continue };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&profile) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}

/// Branches: `/ok` succeeds, `/stuck` fails with a hostile 500 until
/// `fixed` is set, `/never` always fails.
async fn branches(fixed: Arc<AtomicBool>) -> BranchServers {
    let servers = BranchServers::start().await;
    servers.recorder.hook("/stuck", move |_call| {
        let fixed = fixed.clone();
        async move {
            if fixed.load(Ordering::SeqCst) {
                (200, json!({"dtm_result": "SUCCESS"}).to_string())
            } else {
                (500, HOSTILE_TEXT.to_string())
            }
        }
    });
    servers.recorder.hook("/never", |_call| async { (503, "down for maintenance".to_string()) });
    servers
}

/// A two-step saga body.
fn saga(gid: &str, action: &str, compensate: &str, payload: &Value) -> Value {
    json!({
        "gid": gid, "trans_type": "saga",
        "steps": [{"action": action, "compensate": compensate}],
        "payloads": [payload.to_string()],
    })
}

/// The coordinator: token set, slow retries (a failed saga waits 60 s, so
/// only "retry now" can finish it within the test), fast poller.
async fn coordinator() -> InProcess {
    InProcess::sqlite(|config| {
        config.auth_token = coordinator::config::Secret::new(TOKEN.to_string());
        config.retry_interval = 60;
        config.max_retry_interval = 120;
        config.timeout_to_fail = 120;
        config.trans_cron_interval = 1;
    })
    .await
}

async fn authed_post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let response = client.post(url).bearer_auth(TOKEN).json(body).send().await.expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn authed_get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).bearer_auth(TOKEN).send().await.expect("get");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn status(client: &reqwest::Client, base: &str, gid: &str) -> String {
    let url = format!("{base}/api/admin/transaction?gid={}", urlencode(gid));
    let (_, body) = authed_get(client, &url).await;
    body["transaction"]["status"].as_str().unwrap_or("").to_string()
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Submits the test's transactions: three that succeed (one hostile),
/// one stuck, one that never succeeds. Returns once the stuck one has
/// failed its first call.
async fn seed(http: &reqwest::Client, base: &str, servers: &BranchServers) {
    let submit = format!("{base}/api/dtmsvr/submit");
    let (ok, undo) = (servers.http_url("ok"), servers.http_url("undo"));
    for gid in ["shop-order-1", "shop-order-2"] {
        let (code, body) =
            authed_post(http, &submit, &saga(gid, &ok, &undo, &json!({"userId": 1, "num": 1}))).await;
        assert_eq!(code, 200, "{body}");
    }
    let hostile = saga(HOSTILE_GID, &ok, &undo, &json!({"note": HOSTILE_TEXT}));
    assert_eq!(authed_post(http, &submit, &hostile).await.0, 200);
    let stuck = saga("stuck-order-1", &servers.http_url("stuck"), &undo, &json!({"goodsId": 7}));
    assert_eq!(authed_post(http, &submit, &stuck).await.0, 200);
    let never = saga("never-order-1", &servers.http_url("never"), &undo, &json!({}));
    assert_eq!(authed_post(http, &submit, &never).await.0, 200);
    for gid in ["shop-order-1", "shop-order-2", HOSTILE_GID] {
        harness::wait_until(&format!("{gid} succeeds"), Duration::from_secs(20), async || {
            let s = status(http, base, gid).await;
            if s == "succeed" { Ok(()) } else { Err(s) }
        })
        .await;
    }
    harness::wait_until("the stuck saga's first attempt is recorded", Duration::from_secs(20), async || {
        let url = format!("{base}/api/admin/transaction?gid=stuck-order-1");
        let (_, body) = authed_get(http, &url).await;
        let n = body["attempts"].as_array().map_or(0, Vec::len);
        if n >= 1 { Ok(()) } else { Err(body.to_string()) }
    })
    .await;
}

/// The pages re-render every few seconds (auto-refresh): an element found
/// a moment ago may be replaced before it is used. Each helper finds it
/// afresh and tries again a few times.
const TRIES: usize = 5;

async fn text(browser: &Client, css: &str) -> String {
    let mut last = String::new();
    for _ in 0..TRIES {
        let found = browser.wait().at_most(Duration::from_secs(15)).for_element(Locator::Css(css)).await;
        match found {
            Ok(element) => match element.text().await {
                Ok(text) => return text,
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
    }
    panic!("no text at {css}: {last}")
}

async fn click(browser: &Client, css: &str) {
    let mut last = String::new();
    for _ in 0..TRIES {
        let found = browser.wait().at_most(Duration::from_secs(15)).for_element(Locator::Css(css)).await;
        match found {
            Ok(element) => match element.click().await {
                Ok(()) => return,
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot click {css}: {last}")
}

/// Runs `script` (a JavaScript expression) in the page until it is true.
async fn wait_js(browser: &Client, what: &str, script: &str) {
    harness::wait_until(what, Duration::from_secs(20), async || {
        match browser.execute(&format!("return !!({script});"), vec![]).await {
            Ok(Value::Bool(true)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    // The README's pictures are refreshed on request only: a test run must
    // not change tracked files.
    let docs = if std::env::var_os("QUICKORDER_BLESS").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
    };
    std::fs::create_dir_all(&docs).expect("screenshot folder");
    let path = docs.join(format!("console-{name}.png"));
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Asserts that no hostile markup became an element or ran.
async fn assert_nothing_injected(browser: &Client) {
    let injected = browser
        .execute("return [document.querySelectorAll('img, b').length, window.pwned === undefined];", vec![])
        .await
        .expect("execute");
    assert_eq!(injected, json!([0, true]), "hostile text was parsed as HTML");
}

#[tokio::test(flavor = "multi_thread")]
async fn console_in_chromium() {
    let driver = Driver::start();
    let fixed = Arc::new(AtomicBool::new(false));
    let servers = branches(fixed.clone()).await;
    let coordinator = coordinator().await;
    let base = coordinator.http.clone();
    let http = reqwest::Client::new();
    seed(&http, &base, &servers).await;

    let browser = driver.browser().await;
    browser.goto(&format!("{base}/admin/")).await.expect("open the console");
    // Signing in: the token goes to sessionStorage, never into the URL.
    click(&browser, "#token").await;
    browser.find(Locator::Css("#token")).await.expect("token").send_keys(TOKEN).await.expect("type");
    click(&browser, "#login-button").await;
    wait_js(
        &browser,
        "the list shows five transactions",
        "document.querySelectorAll('tr.trans').length === 5",
    )
    .await;
    assert!(!browser.current_url().await.expect("url").as_str().contains(TOKEN));
    wait_js(&browser, "counts", "document.getElementById('count-succeed')?.textContent === 'succeed 3'")
        .await;
    assert_eq!(text(&browser, "#count-submitted").await, "submitted 2");
    assert_nothing_injected(&browser).await;
    let gids: Vec<Value> = match browser
        .execute("return [...document.querySelectorAll('a.gid')].map(a => a.textContent);", vec![])
        .await
        .expect("gids")
    {
        Value::Array(gids) => gids,
        other => panic!("{other}"),
    };
    assert!(gids.contains(&json!(HOSTILE_GID)), "the hostile gid is shown as text: {gids:?}");
    screenshot(&browser, "list").await;

    // Filter: status, then gid prefix.
    browser
        .find(Locator::Css("#f-status"))
        .await
        .expect("status")
        .select_by_value("succeed")
        .await
        .expect("select");
    click(&browser, "#f-apply").await;
    wait_js(&browser, "only succeeded ones", "document.querySelectorAll('tr.trans').length === 3").await;
    browser.find(Locator::Css("#f-status")).await.expect("status").select_by_value("").await.expect("select");
    browser.find(Locator::Css("#f-gid")).await.expect("gid").send_keys("stuck-").await.expect("type");
    click(&browser, "#f-apply").await;
    wait_js(&browser, "only the stuck one", "document.querySelectorAll('tr.trans').length === 1").await;

    // The stuck transaction: its failed attempts on the timeline.
    click(&browser, "a.gid").await;
    assert_eq!(text(&browser, "#gid").await, "stuck-order-1");
    assert_eq!(text(&browser, "#status").await, "submitted");
    wait_js(
        &browser,
        "a failed attempt",
        "document.querySelector('#timeline .result-error')?.textContent === 'ERROR'",
    )
    .await;
    let answer = text(&browser, "#timeline .attempt td.mono").await;
    assert!(answer.contains(HOSTILE_TEXT), "the branch's answer is shown as text: {answer}");
    assert_nothing_injected(&browser).await;
    assert!(text(&browser, ".payload").await.contains("\"goodsId\": 7"), "payload pretty-printed");
    // Tall enough for the timeline below the branches.
    browser.set_window_size(1280, 1500).await.expect("resize");
    screenshot(&browser, "transaction").await;
    browser.set_window_size(1280, 860).await.expect("resize");

    // Fix the branch, retry now, confirm: it finishes.
    fixed.store(true, Ordering::SeqCst);
    click(&browser, "#retry-now").await;
    click(&browser, "#confirm-ok").await;
    wait_js(
        &browser,
        "the stuck saga succeeds",
        "document.getElementById('status')?.textContent === 'succeed'",
    )
    .await;
    wait_js(
        &browser,
        "the successful attempt",
        "document.querySelector('#timeline .result-success') !== null",
    )
    .await;

    // Force stop the one that never succeeds.
    browser.goto(&format!("{base}/admin/#/t/never-order-1")).await.expect("open");
    wait_js(
        &browser,
        "the never-succeeding transaction's page",
        "document.getElementById('gid')?.textContent === 'never-order-1'",
    )
    .await;
    assert_eq!(text(&browser, "#status").await, "submitted");
    click(&browser, "#force-stop").await;
    click(&browser, "#confirm-ok").await;
    wait_js(&browser, "force stopped", "document.getElementById('status')?.textContent === 'failed'").await;
    assert!(
        browser.find(Locator::Css("#force-stop")).await.is_err(),
        "no action offered on a final transaction"
    );

    // The hostile transaction's own page.
    browser.goto(&format!("{base}/admin/#/t/{}", urlencode(HOSTILE_GID))).await.expect("open");
    let shown = format!("document.getElementById('gid')?.textContent === {}", json!(HOSTILE_GID));
    wait_js(&browser, "the hostile transaction's page", &shown).await;
    assert!(text(&browser, ".payload").await.contains(HOSTILE_TEXT));
    assert_nothing_injected(&browser).await;

    // Signing out forgets the token.
    click(&browser, "#logout").await;
    wait_js(&browser, "the login form again", "!document.getElementById('login').hidden").await;
    let stored = browser.execute("return sessionStorage.length;", vec![]).await.expect("storage");
    assert_eq!(stored, json!(0));
    browser.close().await.expect("close the browser");
    coordinator.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn console_api_and_headers() {
    let fixed = Arc::new(AtomicBool::new(false));
    let servers = branches(fixed).await;
    let coordinator = coordinator().await;
    let base = coordinator.http.clone();
    let http = reqwest::Client::new();

    // The pages are public, with a strict CSP; the API is not.
    let page = http.get(format!("{base}/admin/")).send().await.expect("page");
    assert_eq!(page.status().as_u16(), 200);
    let csp = page.headers()["content-security-policy"].to_str().expect("csp").to_string();
    for directive in
        ["default-src 'none'", "script-src 'self'", "frame-ancestors 'none'", "form-action 'none'"]
    {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let script = http.get(format!("{base}/admin/console.js")).send().await.expect("script");
    assert!(script.headers()["content-type"].to_str().expect("type").starts_with("text/javascript"));
    assert!(!script.text().await.expect("body").contains(".innerHTML"), "the script never writes innerHTML");
    let (code, body) = get(&http, &format!("{base}/api/admin/transactions")).await;
    assert_eq!(code, 401, "{body}");
    let (code, _) = post(&http, &format!("{base}/api/admin/forceStop"), &json!({"gid": "x"})).await;
    assert_eq!(code, 401);

    // Two transactions: one succeeds, one never does.
    let submit = format!("{base}/api/dtmsvr/submit");
    let (ok, undo) = (servers.http_url("ok"), servers.http_url("undo"));
    assert_eq!(authed_post(&http, &submit, &saga("api-ok", &ok, &undo, &json!({}))).await.0, 200);
    let never = saga("api-never", &servers.http_url("never"), &undo, &json!({}));
    assert_eq!(authed_post(&http, &submit, &never).await.0, 200);
    harness::wait_until("api-ok succeeds", Duration::from_secs(20), async || {
        let s = status(&http, &base, "api-ok").await;
        if s == "succeed" { Ok(()) } else { Err(s) }
    })
    .await;

    // Actions on a final transaction are refused with 409 JSON; unknown gids 404.
    for action in ["retry", "forceStop"] {
        let (code, body) =
            authed_post(&http, &format!("{base}/api/admin/{action}"), &json!({"gid": "api-ok"})).await;
        assert_eq!(code, 409, "{action}: {body}");
        assert!(body["message"].is_string(), "{body}");
        let (code, _) =
            authed_post(&http, &format!("{base}/api/admin/{action}"), &json!({"gid": "nope"})).await;
        assert_eq!(code, 404, "{action}");
    }
    // Force stop: failed, no compensation called, a second time refused.
    let (code, body) =
        authed_post(&http, &format!("{base}/api/admin/forceStop"), &json!({"gid": "api-never"})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(status(&http, &base, "api-never").await, "failed");
    assert!(servers.recorder.calls_of("api-never").iter().all(|c| c.path != "/undo"), "no compensation");
    assert_eq!(
        authed_post(&http, &format!("{base}/api/admin/forceStop"), &json!({"gid": "api-never"})).await.0,
        409
    );
    // dtm's own forceStop agrees (409 FAILURE for a final transaction).
    let (code, body) =
        authed_post(&http, &format!("{base}/api/dtmsvr/forceStop"), &json!({"gid": "api-ok"})).await;
    assert_eq!((code, body["dtm_result"].as_str()), (409, Some("FAILURE")));

    // Filters and counts.
    let (code, page) = authed_get(&http, &format!("{base}/api/admin/transactions?gidPrefix=api-n")).await;
    assert_eq!(code, 200);
    let gids: Vec<&str> =
        page["transactions"].as_array().expect("rows").iter().filter_map(|t| t["gid"].as_str()).collect();
    assert_eq!(gids, ["api-never"]);
    let (_, counts) = authed_get(&http, &format!("{base}/api/admin/counts")).await;
    assert_eq!(counts["counts"], json!({"succeed": 1, "failed": 1}));
    // dtm's `all` still answers in its own shape.
    let (code, all) = authed_get(&http, &format!("{base}/api/dtmsvr/all?limit=1")).await;
    assert_eq!(code, 200);
    assert_eq!(all["transactions"].as_array().map(Vec::len), Some(1));
    assert!(all["next_position"].as_str().is_some_and(|p| !p.is_empty()), "{all}");

    // `troubled` (the default): a saga that succeeded at once wrote no
    // attempt; one whose first step succeeded before its second failed
    // shows both calls of that pass, the held success first.
    let view = |gid: &'static str| {
        let (http, url) = (http.clone(), format!("{base}/api/admin/transaction?gid={gid}"));
        async move { authed_get(&http, &url).await.1 }
    };
    let clean = view("api-ok").await;
    assert_eq!(clean["recording"], "troubled", "{clean}");
    assert_eq!(clean["attempts"], json!([]), "a clean saga costs no attempt row: {clean}");
    let two_steps = json!({
        "gid": "api-half", "trans_type": "saga",
        "steps": [{"action": ok, "compensate": undo}, {"action": servers.http_url("never"), "compensate": undo}],
        "payloads": ["{}", "{}"],
    });
    assert_eq!(authed_post(&http, &submit, &two_steps).await.0, 200);
    let half =
        harness::wait_until("api-half's first pass is recorded", Duration::from_secs(20), async || {
            let body = view("api-half").await;
            if body["attempts"].as_array().map_or(0, Vec::len) >= 2 {
                Ok(body)
            } else {
                Err(body.to_string())
            }
        })
        .await;
    let calls: Vec<(&str, &str)> = half["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| (a["branch_id"].as_str().unwrap_or("?"), a["result"].as_str().unwrap_or("?")))
        .collect();
    assert_eq!(calls[..2], [("01", "success"), ("02", "error")], "{half}");
    coordinator.stop().await.expect("stop");
}
