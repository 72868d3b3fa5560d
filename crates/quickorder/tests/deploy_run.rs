//! The deployment paths run for real, as far as a machine without a Docker
//! engine allows:
//!
//! * `docker-compose.yml`: the four binaries started with the commands and
//!   environment `docker-compose config` renders from the file (with a
//!   MariaDB root password and an `AUTH_TOKEN` set, as a user's `.env`
//!   would), the compose hostnames mapped to loopback and the containers'
//!   fixed ports to port 0, against a throwaway MariaDB prepared by the
//!   init scripts the MariaDB container runs, and a throwaway etcd. Each
//!   health check of the file must pass, then a quick order must succeed.
//!   Then the metrics: `deploy/prometheus/prometheus.yml` scrapes the ports
//!   and paths the compose services serve their metrics on (compose turns
//!   go-zero's `Prometheus` block on), and every metric a PromQL `expr` of
//!   the Grafana dashboard (`deploy/grafana/dashboards/quick-order.json`)
//!   names is exposed by the running processes after that order — so the
//!   dashboard cannot silently drift from the code.
//! * The README's "Running the services by hand" recipe, extracted from
//!   between its markers and run as a shell script.
//!
//! What stays unchecked (no engine, no cluster): that the images build and
//! pull, and the container networking itself. deploy_files.rs covers the
//! image's build steps and the Kubernetes environment without them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{Etcd, GuardedProcess, MariaDb, ReadyLine};
use serde_yaml_ng::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

fn strings(value: &Value) -> Vec<String> {
    value.as_sequence().map(|seq| seq.iter().map(scalar).collect()).unwrap_or_default()
}

/// Runs `mariadb` (the client) against `port` as root with `password`.
fn mariadb_client(port: u16, password: &str, sql: &str) {
    use std::io::Write;
    let mut child = Command::new("mariadb")
        .args(["--protocol=tcp", "-h", "127.0.0.1", "-P", &port.to_string(), "-uroot"])
        .env("MYSQL_PWD", password)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run the mariadb client ({e}): install mariadb-client"));
    child.stdin.take().expect("stdin").write_all(sql.as_bytes()).expect("write to mariadb");
    let output = child.wait_with_output().expect("mariadb client");
    assert!(
        output.status.success(),
        "mariadb failed on {sql:.80}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// How long one of our binaries may take to print its readiness line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

// One scenario of ~200 lines, told in the order compose runs it: the database
// initialised, each service started from its own command and environment
// once the ones it depends on are healthy, then the user's first order. Each
// step needs the processes and addresses the steps before it left.
#[tokio::test(flavor = "multi_thread")]
async fn compose_services_start_from_their_own_commands_and_environment_and_order() {
    let _slot = harness::system_slot();
    let binaries = harness::service_binaries();
    let (password, token) = ("compose-root-pw", "compose-token");

    // The file as docker-compose renders it, with the variables a user
    // would put in .env.
    let output = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config"])
        .current_dir(root())
        .env("MYSQL_ROOT_PASSWORD", password)
        .env("AUTH_TOKEN", token)
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker-compose ({e}): apt-get install docker-compose"));
    assert!(output.status.success(), "docker-compose config: {}", String::from_utf8_lossy(&output.stderr));
    let config: Value = serde_yaml_ng::from_slice(&output.stdout).expect("docker-compose config output");
    let services = &config["services"];

    // The mounts of a service: container path -> host path.
    let mounts = |service: &str| -> BTreeMap<String, PathBuf> {
        strings(&services[service]["volumes"])
            .iter()
            .filter_map(|v| {
                let parts: Vec<&str> = v.split(':').collect();
                (parts.len() >= 2 && parts[0].starts_with('/'))
                    .then(|| (parts[1].to_string(), PathBuf::from(parts[0])))
            })
            .collect()
    };

    // MariaDB as the mysql container runs it: root's password from the
    // environment, then the init folder in name order on the empty server.
    let mysql_env = env_of(&services["mysql"]);
    assert_eq!(mysql_env.get("MYSQL_ROOT_PASSWORD").map(String::as_str), Some(password));
    assert!(scalar(&services["mysql"]["image"]).starts_with("mariadb:"), "compose runs what the tests run");
    let mariadb = MariaDb::start();
    // (CURRENT_USER() would do, but MariaDB 10.11 stores an empty hash for it.)
    mariadb_client(mariadb.port(), "", &format!("ALTER USER root@'127.0.0.1' IDENTIFIED BY '{password}'"));
    let mysql_mounts = mounts("mysql");
    let init = mysql_mounts.get("/docker-entrypoint-initdb.d").expect("the init folder is mounted");
    let schema = mysql_mounts.get("/sql/mysql").expect("sql/mysql is mounted");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(init).expect("init folder").map(|e| e.expect("entry").path()).collect();
    files.sort();
    for file in files {
        match file.extension().and_then(|e| e.to_str()) {
            Some("sql") => mariadb_client(mariadb.port(), password, &std::fs::read_to_string(&file).unwrap()),
            Some("sh") => {
                let output = Command::new("sh")
                    .arg(&file)
                    .env("MYSQL_HOST", "127.0.0.1")
                    .env("MYSQL_TCP_PORT", mariadb.port().to_string())
                    .env("MYSQL_ROOT_PASSWORD", &mysql_env["MYSQL_ROOT_PASSWORD"])
                    .env("QUICKORDER_SQL_DIR", schema)
                    .output()
                    .expect("run sh");
                assert!(
                    output.status.success(),
                    "{}: {}",
                    file.display(),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            _ => {}
        }
    }
    let etcd = Etcd::start_private();
    let etcd_port: u16 = etcd.endpoints()[0].rsplit(':').next().unwrap().parse().unwrap();

    // Start order from depends_on; addresses learnt as processes come up.
    let order = ["coordinator", "order-srv", "stock-srv", "order-api"];
    for (i, name) in order.iter().enumerate() {
        let deps: Vec<String> = services[*name]["depends_on"]
            .as_mapping()
            .map(|m| m.keys().map(scalar).collect())
            .unwrap_or_default();
        for dep in deps {
            let started_before = order[..i].contains(&dep.as_str()) || dep == "mysql" || dep == "etcd";
            assert!(started_before, "{name} depends on {dep}, which this test starts later");
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    // host:port in the file -> where it is here.
    let mut addresses: BTreeMap<String, String> = BTreeMap::from([
        ("mysql:3306".to_string(), format!("127.0.0.1:{}", mariadb.port())),
        ("etcd:2379".to_string(), format!("127.0.0.1:{etcd_port}")),
        // Its own address: port 0 publishes the port it gets.
        ("coordinator:36790".to_string(), "127.0.0.1:0".to_string()),
        // Jaeger is not started here (e2e_traces.rs checks the export):
        // the services export to a free port and drop what they cannot send,
        // which must not disturb them.
        ("jaeger:4317".to_string(), format!("127.0.0.1:{}", harness::free_port())),
    ]);
    // A container's fixed port -> the port the process got (health checks).
    let mut ports: BTreeMap<String, u16> = BTreeMap::new();
    let mut running: Vec<(GuardedProcess, ReadyLine)> = Vec::new();
    for name in order {
        let service = &services[name];
        let mut env: BTreeMap<String, String> = env_of(service)
            .into_iter()
            .map(|(var, value)| {
                let mut value = value;
                for (from, to) in &addresses {
                    value = value.replace(from, to);
                }
                match (var.as_str(), value.as_str()) {
                    ("STORE_HOST", "mysql") => value = "127.0.0.1".into(),
                    ("STORE_PORT", _) => value = mariadb.port().to_string(),
                    _ => {}
                }
                (var, value)
            })
            .collect();
        for (var, value) in &env {
            for host in ["mysql", "etcd", "coordinator", "order-srv", "stock-srv", "jaeger"] {
                let named = value.match_indices(&format!("{host}:")).any(|(i, m)| {
                    let before = value[..i].chars().last();
                    let after = value[i + m.len()..].chars().next();
                    !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
                        && after.is_some_and(|c| c.is_ascii_digit())
                });
                let bare = var.ends_with("_HOST") && value == host;
                assert!(!named && !bare, "{name}: {var}={value} still names host {host}");
            }
        }
        // One machine, not one network namespace per container: loopback,
        // and port 0 instead of each container's fixed port.
        let listen: &[(&str, &str)] = match name {
            "coordinator" => &[("LISTEN_HOST", "127.0.0.1"), ("HTTP_PORT", "0"), ("GRPC_PORT", "0")],
            "order-srv" => &[("ORDER_SRV_LISTEN_ON", "127.0.0.1:0")],
            "stock-srv" => &[("STOCK_SRV_LISTEN_ON", "127.0.0.1:0")],
            _ => &[("ORDER_API_HOST", "127.0.0.1"), ("ORDER_API_LISTEN_PORT", "0")],
        };
        for (var, value) in listen {
            assert!(!env.contains_key(*var), "{name}: compose sets {var}; adapt this test");
            env.insert(var.to_string(), value.to_string());
        }
        // go-zero's Prometheus block, which compose turns on for the three
        // services: loopback and port 0 here as well.
        let metrics_on = env.get("PROMETHEUS_LISTEN_HOST").is_some_and(|host| !host.is_empty());
        assert_eq!(metrics_on, name != "coordinator", "{name}: PROMETHEUS_LISTEN_HOST in compose");
        if metrics_on {
            assert!(!env.contains_key("PROMETHEUS_LISTEN_PORT"), "{name}: compose sets the metrics port");
            env.insert("PROMETHEUS_LISTEN_HOST".into(), "127.0.0.1".into());
            env.insert("PROMETHEUS_LISTEN_PORT".into(), "0".into());
        }
        let command = strings(&service["command"]);
        let etc = mounts(name).get("/etc/quickorder").cloned().expect("etc/ mounted at /etc/quickorder");
        let mut argv: Vec<String> = vec!["-i".into()];
        argv.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        argv.push(binaries.join(&command[0]).display().to_string());
        argv.extend(command[1..].iter().map(|a| match a.strip_prefix("/etc/quickorder/") {
            Some(file) => etc.join(file).display().to_string(),
            None => a.clone(),
        }));
        let process = GuardedProcess::spawn("env", &argv, &dir.path().join(format!("{name}.log")), None);
        let ready = process.wait_ready(name, READY_TIMEOUT);
        match name {
            "coordinator" => {
                addresses.insert("coordinator:36789".into(), format!("127.0.0.1:{}", ready.port("http")));
                addresses.insert("coordinator:36790".into(), format!("127.0.0.1:{}", ready.port("grpc")));
                ports.insert("36789".into(), ready.port("http"));
                ports.insert("36790".into(), ready.port("grpc"));
            }
            "order-srv" => drop(ports.insert("9001".into(), ready.port("grpc"))),
            "stock-srv" => drop(ports.insert("9002".into(), ready.port("grpc"))),
            _ => drop(ports.insert("8889".into(), ready.port("http"))),
        }
        // Its health check, as compose runs it inside the container.
        let test = strings(&service["healthcheck"]["test"]);
        assert_eq!(test.first().map(String::as_str), Some("CMD"), "{name}: {test:?}");
        let args: Vec<String> = test[2..]
            .iter()
            .map(|arg| {
                let mut arg = arg.clone();
                for (fixed, got) in &ports {
                    arg = arg.replace(&format!("127.0.0.1:{fixed}"), &format!("127.0.0.1:{got}"));
                }
                arg
            })
            .collect();
        let probe =
            Command::new(env!("CARGO_BIN_EXE_quickorder")).args(&args).output().expect("quickorder probe");
        assert!(
            probe.status.success(),
            "{name}: health check {args:?} fails: {}{}\n{}",
            String::from_utf8_lossy(&probe.stdout),
            String::from_utf8_lossy(&probe.stderr),
            process.log_tail()
        );
        running.push((process, ready));
    }

    // The user's first order, through order-api -> etcd -> coordinator (with
    // the token compose gives both) -> order-srv, stock-srv.
    let api = format!("http://127.0.0.1:{}", ports["8889"]);
    let client = reqwest::Client::new();
    let reply = client
        .post(format!("{api}/order/quickCreate"))
        .json(&serde_json::json!({"userId": 1, "goodsId": 1, "num": 1}))
        .send()
        .await
        .expect("order-api answers");
    let status = reply.status();
    let body: serde_json::Value = reply.json().await.expect("JSON");
    let logs = || running.iter().map(|(p, _)| p.log_tail()).collect::<Vec<_>>().join("\n---\n");
    assert_eq!((status.as_u16(), body["status"].as_str()), (200, Some("succeed")), "{body}\n{}", logs());
    let gid = body["gid"].as_str().expect("gid");
    let state = client.get(format!("{api}/order/status/{gid}")).send().await.expect("status");
    assert_eq!(state.status(), 200, "GET /order/status through DTM_HTTP_SERVER with the token");

    // The token really is required: without it the coordinator refuses.
    let coordinator = format!("http://127.0.0.1:{}/api/dtmsvr/newGid", ports["36789"]);
    let refused = client.get(&coordinator).send().await.expect("coordinator answers");
    assert_eq!(refused.status(), 401, "AUTH_TOKEN reaches the coordinator");

    // A second order, more than in stock: a rollback, a null compensation.
    let reply = client
        .post(format!("{api}/order/quickCreate"))
        .json(&serde_json::json!({"userId": 1, "goodsId": 1, "num": 500}))
        .send()
        .await
        .expect("order-api answers");
    assert_eq!(reply.status(), 409, "{}", logs());
    let scraped = scrape_what_prometheus_scrapes(&running, ports["36789"]).await;
    check_the_two_orders_were_counted(&scraped);
    check_dashboard_against(&scraped);
}

/// The two orders, as each process counted them: order-api's answers and
/// submits, each branch's barrier outcomes (the rolled-back order: stock's
/// action failed, its compensation was a null compensation, order's
/// compensation applied).
fn check_the_two_orders_were_counted(scraped: &BTreeMap<String, String>) {
    let wanted: [(&str, &[&str]); 3] = [
        (
            "order-api",
            &[
                r#"http_server_requests_code_total{path="/order/quickCreate",code="200",method="POST"} 1"#,
                r#"http_server_requests_code_total{path="/order/quickCreate",code="409",method="POST"} 1"#,
                r#"http_server_requests_duration_ms_count{path="/order/quickCreate",method="POST"} 2"#,
                r#"http_server_requests_code_total{path="/order/status/{gid}",code="200",method="GET"} 1"#,
                r#"dtm_client_requests_total{call="submit",outcome="succeed"} 1"#,
                r#"dtm_client_requests_total{call="submit",outcome="failed"} 1"#,
            ],
        ),
        (
            "order-srv",
            &[
                r#"barrier_outcomes_total{op="action",outcome="applied"} 2"#,
                r#"barrier_outcomes_total{op="compensate",outcome="applied"} 1"#,
                r#"rpc_server_requests_code_total{method="/pb.order/create",code="0"} 2"#,
                r#"rpc_server_requests_code_total{method="/pb.order/createRollback",code="0"} 1"#,
            ],
        ),
        (
            "stock-srv",
            &[
                r#"barrier_outcomes_total{op="action",outcome="applied"} 1"#,
                r#"barrier_outcomes_total{op="action",outcome="failure"} 1"#,
                r#"barrier_outcomes_total{op="compensate",outcome="null_compensation"} 1"#,
                r#"rpc_server_requests_code_total{method="/pb.stock/deduct",code="10"} 1"#,
            ],
        ),
    ];
    for (job, lines) in wanted {
        let text = &scraped[job];
        let missing: Vec<&&str> = lines.iter().filter(|line| !text.lines().any(|l| l == **line)).collect();
        assert!(missing.is_empty(), "{job} did not count {missing:#?}:\n{text}");
    }
}

/// What `deploy/prometheus/prometheus.yml` scrapes, read from the running
/// processes: each job's target must be its compose service at the port
/// its metrics listen on in the container (the `etc/` file's default) or,
/// for the coordinator, dtm's `/api/metrics` on its HTTP port. Returns
/// each job's exposition.
async fn scrape_what_prometheus_scrapes(
    running: &[(GuardedProcess, ReadyLine)],
    coordinator_http: u16,
) -> BTreeMap<String, String> {
    let text =
        std::fs::read_to_string(root().join("deploy/prometheus/prometheus.yml")).expect("prometheus.yml");
    let config: Value = serde_yaml_ng::from_str(&text).expect("prometheus.yml is YAML");
    assert!(strings(&config["rule_files"]).contains(&"alerts.yml".to_string()), "alerts.yml is loaded");
    let mut scraped = BTreeMap::new();
    for job in config["scrape_configs"].as_sequence().expect("scrape_configs") {
        let name = scalar(&job["job_name"]);
        let path = Some(scalar(&job["metrics_path"])).filter(|p| !p.is_empty()).unwrap_or("/metrics".into());
        let targets: Vec<String> = job["static_configs"]
            .as_sequence()
            .into_iter()
            .flatten()
            .flat_map(|c| strings(&c["targets"]))
            .collect();
        let (wanted, local) = if name == "coordinator" {
            (("coordinator:36789".to_string(), "/api/metrics"), format!("127.0.0.1:{coordinator_http}"))
        } else {
            let etc = std::fs::read_to_string(root().join(format!("etc/{name}.yaml"))).expect("etc file");
            let port = etc
                .split("${PROMETHEUS_LISTEN_PORT:-")
                .nth(1)
                .and_then(|rest| rest.split('}').next())
                .unwrap_or_else(|| panic!("etc/{name}.yaml has no PROMETHEUS_LISTEN_PORT default"));
            let (_, ready) = running
                .iter()
                .find(|(_, ready)| ready.name == name)
                .unwrap_or_else(|| panic!("job {name} is no process of the compose file"));
            ((format!("{name}:{port}"), "/metrics"), ready.addr("metrics").to_string())
        };
        assert_eq!((targets, path.as_str()), (vec![wanted.0], wanted.1), "job {name}");
        let url = format!("http://{local}{path}");
        let response = reqwest::get(&url).await.unwrap_or_else(|e| panic!("scrape {url}: {e}"));
        assert_eq!(response.status(), 200, "scrape {url}");
        scraped.insert(name, response.text().await.expect("exposition"));
    }
    let jobs: BTreeSet<&str> = scraped.keys().map(String::as_str).collect();
    assert_eq!(jobs, ["coordinator", "order-api", "order-srv", "stock-srv"].into(), "one job per process");
    scraped
}

/// Every metric the dashboard's PromQL names is exposed (has a sample) in
/// what the processes answered after the orders.
fn check_dashboard_against(scraped: &BTreeMap<String, String>) {
    let path = root().join("deploy/grafana/dashboards/quick-order.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("dashboard JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has {} queries", exprs.len());
    let exposed: BTreeSet<&str> = scraped
        .values()
        .flat_map(|text| text.lines())
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let mut missing = BTreeMap::new();
    for expr in &exprs {
        let names = promql_metric_names(expr);
        assert!(!names.is_empty(), "no metric in {expr}");
        for name in names {
            if !exposed.contains(name.as_str()) {
                missing.entry(name).or_insert_with(|| expr.clone());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics nobody exposes: {missing:#?}\nexposed: {exposed:?}"
    );
}

/// Every `expr` string of a Grafana dashboard (panels, rows, nested).
fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| collect_exprs(item, out)),
        _ => {}
    }
}

/// The metric names of a PromQL expression: identifiers outside label
/// matchers `{…}`, ranges `[…]` and strings that are neither functions
/// (followed by `(`), aggregation operators or keywords, nor the label
/// lists of `by (…)`, `without (…)`, `on (…)`, `ignoring (…)`, `group_left (…)`.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: [&str; 20] = [
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "atan2",
    ];
    const LABEL_LISTS: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];
    // Outside braces, brackets and quotes only.
    let mut bare = String::new();
    let (mut nesting, mut quote, mut escaped) = (0usize, None::<char>, false);
    for c in expr.chars() {
        if let Some(q) = quote {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                _ if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '{' | '[' => nesting += 1,
            '}' | ']' => nesting = nesting.saturating_sub(1),
            _ if nesting == 0 => bare.push(c),
            _ => {}
        }
        if matches!(c, '{' | '}' | '[' | ']') {
            bare.push(' ');
        }
    }
    let chars: Vec<char> = bare.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() || c == '.' {
            // A number (0.95, 1e3): skip it whole.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let mut next = i;
        while next < chars.len() && chars[next].is_whitespace() {
            next += 1;
        }
        let call = chars.get(next) == Some(&'(');
        if LABEL_LISTS.contains(&word.as_str()) {
            if call {
                // Skip the label list up to its `)`.
                i = chars[next..].iter().position(|c| *c == ')').map_or(chars.len(), |p| next + p + 1);
            }
        } else if !call && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
            names.insert(word);
        }
    }
    names
}

#[test]
fn promql_metric_names_skip_functions_labels_and_ranges() {
    let names = |expr: &str| promql_metric_names(expr).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.95, sum by (le, job) (rate(a_bucket{job=~"x|y", m="/pb\\..*"}[$__rate_interval])))"#
        ),
        ["a_bucket"]
    );
    assert_eq!(
        names("sum(increase(b_total[15m])) > 0 and sum without (op) (c) == 0 or max(d{s=\"}\"}) offset 5m"),
        ["b_total", "c", "d"]
    );
    assert_eq!(names("max by (status) (e) / on (status) group_left f"), ["e", "f"]);
}

/// A compose service's environment (mapping or list syntax).
fn env_of(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(map) => map.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
        Value::Sequence(list) => list
            .iter()
            .map(scalar)
            .map(|item| {
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Kills a process group when dropped (the recipe's background servers).
struct ProcessGroup(i32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-self.0);
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
        std::thread::sleep(Duration::from_millis(500));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
    }
}

// ~120 lines: the README's recipe is one shell script, run as written from
// start to end; the test only moves its ports and checks what it left.
#[test]
fn readme_recipe_by_hand_runs_as_written() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let block = readme
        .split("<!-- by-hand:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- by-hand:end -->").next())
        .expect("README.md has the by-hand markers");
    let script = block
        .trim()
        .strip_prefix("```sh")
        .and_then(|rest| rest.strip_suffix("```"))
        .expect("a ```sh block between the markers");
    let _slot = harness::system_slot();
    let binaries = harness::service_binaries();
    let mariadb = MariaDb::start_like_debian();
    let etcd = Etcd::start_private();
    let etcd_port: u16 = etcd.endpoints()[0].rsplit(':').next().unwrap().parse().unwrap();

    // The article's fixed ports, moved to free ones (other tests run
    // alongside), in the recipe and in the etc/ files it reads.
    let mut ports: Vec<(String, String)> =
        vec![("3306".into(), mariadb.port().to_string()), ("2379".into(), etcd_port.to_string())];
    for fixed in ["36789", "36790", "9001", "9002", "8889"] {
        ports.push((fixed.into(), harness::free_port().to_string()));
    }
    let move_ports = |text: &str| {
        let mut text = text.to_string();
        for (fixed, free) in &ports {
            // host:port, and ${VAR:-port} defaults.
            text = text.replace(&format!(":{fixed}"), &format!(":{free}"));
            text = text.replace(&format!(":-{fixed}}}"), &format!(":-{free}}}"));
        }
        text
    };
    let work = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(work.path().join("etc")).expect("mkdir etc");
    for name in ["coordinator.yaml", "order-srv.yaml", "stock-srv.yaml", "order-api.yaml"] {
        let text = std::fs::read_to_string(root().join("etc").join(name)).expect("etc file");
        // 0.0.0.0 would register the machine's LAN address in etcd: keep
        // every call of the test on loopback.
        let text = move_ports(&text).replace("0.0.0.0", "127.0.0.1");
        for (fixed, _) in &ports {
            assert!(
                !text.contains(&format!(":{fixed}")) && !text.contains(&format!(":-{fixed}}}")),
                "{name} kept port {fixed}"
            );
        }
        std::fs::write(work.path().join("etc").join(name), text).expect("write etc copy");
    }
    std::fs::create_dir_all(work.path().join("target")).expect("mkdir target");
    std::os::unix::fs::symlink(&binaries, work.path().join("target/release")).expect("symlink binaries");

    // The recipe, minus what the test provides: the packages (the servers
    // are the throwaway ones) and the build (the binaries are built).
    let mut lines = Vec::new();
    for line in script.lines() {
        if line.starts_with("sudo apt-get ") || line.starts_with("cargo build") {
            continue;
        }
        let line = line.strip_prefix("sudo ").unwrap_or(line);
        // The client must reach the throwaway server's socket, and never the
        // machine's own server that an option file may name.
        let socket = format!("mariadb --no-defaults --socket={} ", mariadb.socket().display());
        let line = match line.strip_prefix("mariadb ") {
            Some(rest) => format!("{socket}{rest}"),
            None => line.to_string(),
        };
        lines.push(move_ports(&line));
    }
    assert!(
        lines.iter().any(|l| l.starts_with("mariadb --no-defaults")),
        "the recipe prepares MariaDB: {script}"
    );
    assert!(
        lines.iter().any(|l| l.contains("target/release/coordinator -f etc/coordinator.yaml")),
        "{script}"
    );
    let script = format!("set -e\n{}\n", lines.join("\n"));
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(&script)
        .current_dir(work.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command.spawn().expect("run bash");
    let _group = ProcessGroup(child.id() as i32);
    // The background servers inherit the pipes only through their log
    // redirections, so the output ends when the script does.
    let output = child.wait_with_output().expect("the recipe runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let logs: String = ["coordinator", "order-srv", "stock-srv", "order-api"]
        .iter()
        .map(|name| {
            let text =
                std::fs::read_to_string(work.path().join(format!("logs/{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
            format!("--- {name}\n{}", tail.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let report = format!("{stdout}\nstderr: {}\n{logs}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the recipe failed:\n{report}");
    assert!(stdout.contains(r#""status":"succeed""#), "the recipe's quick order did not succeed:\n{report}");
    let order_port = &ports.iter().find(|(fixed, _)| fixed == "9001").expect("9001").1;
    assert!(stdout.contains(&format!("127.0.0.1:{order_port}")), "etcdctl shows order.rpc:\n{report}");
    // Nothing in the recipe came from the environment: the etc/ defaults did it.
    for name in ["coordinator", "order-srv", "stock-srv", "order-api"] {
        let log = std::fs::read_to_string(work.path().join(format!("logs/{name}.log"))).unwrap_or_default();
        assert!(
            log.lines().any(|l| l.starts_with(&format!("ready {name} "))),
            "{name} never ready:\n{report}"
        );
    }
}
