//! The deployment files, checked without a Docker engine or a cluster:
//! `docker-compose.yml`, `deploy/k8s/`, `deploy/mysql/init/` and the
//! `Dockerfile`.
//!
//! * The tools that understand the formats validate them:
//!   `docker-compose config -q` (Debian's `docker-compose`) and
//!   `kubernetes-validate --strict` against the Kubernetes 1.30 schemas
//!   (bundled with the tool, so offline).
//! * The topology is asserted against the code and the `etc/` files: every
//!   environment variable a deployment sets must be a `${VAR}` of the config
//!   file that process reads (a typo fails here, not silently at run time),
//!   ports and health-checked service names match what the servers serve,
//!   grace periods cover the shutdown sequence the code implements, and the
//!   database names exist in the MySQL init script.
//! * The Kubernetes ConfigMaps must carry the repository's `etc/`,
//!   `sql/mysql/` and `deploy/mysql/init/` files byte for byte. kustomize
//!   cannot generate them (it refuses files outside its folder), so
//!   `QUICKORDER_BLESS=1 cargo test -p quickorder --test deploy_files`
//!   rewrites `deploy/k8s/config.yaml` and `deploy/k8s/mysql-init.yaml`.
//! * The MySQL init scripts run against a throwaway MariaDB and must create
//!   every database and table the services use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

/// The Kubernetes version the manifests are validated against: the oldest
/// release still widely run that has every feature used (native gRPC probes
/// are GA since 1.27).
const KUBERNETES_VERSION: &str = "1.30.0";

/// The namespace of every manifest.
const NAMESPACE: &str = "quickorder";

/// Where the image (Dockerfile) and the deployments put `etc/`.
const CONFIG_DIR: &str = "/etc/quickorder";

/// The ConfigMap holding the `etc/` files.
const ETC_CONFIG_MAP: &str = "quickorder-etc";

/// Variables the processes read besides their config file's `${VAR}`s.
fn always_read() -> BTreeSet<&'static str> {
    // POD_IP: the address published in etcd; RUST_LOG overrides LogLevel.
    [discovery::address::POD_IP_ENV, "RUST_LOG"].into_iter().collect()
}

/// One process of the system, as both deployments run it.
struct App {
    /// Compose service and Kubernetes Deployment name (also the binary).
    name: &'static str,
    /// Its file in `etc/`.
    config: &'static str,
    /// The `${VAR}` holding its main listen address or port.
    port_var: &'static str,
    /// What its readiness check asks.
    health: Health,
}

/// How a process says it is ready.
enum Health {
    /// `grpc.health.v1` status of this service name.
    Grpc(&'static str),
    /// HTTP GET of this path answers 2xx.
    Http(&'static str),
}

fn apps() -> [App; 4] {
    [
        App {
            name: "coordinator",
            config: "coordinator.yaml",
            port_var: "GRPC_PORT",
            health: Health::Grpc(proto::dtmgimp::dtm_server::SERVICE_NAME),
        },
        App {
            name: "order-srv",
            config: "order-srv.yaml",
            port_var: "ORDER_SRV_LISTEN_ON",
            health: Health::Grpc(proto::pb::order_server::SERVICE_NAME),
        },
        App {
            name: "stock-srv",
            config: "stock-srv.yaml",
            port_var: "STOCK_SRV_LISTEN_ON",
            health: Health::Grpc(proto::pb::stock_server::SERVICE_NAME),
        },
        App {
            name: "order-api",
            config: "order-api.yaml",
            port_var: "ORDER_API_LISTEN_PORT",
            health: Health::Http("/healthz"),
        },
    ]
}

// ---------------------------------------------------------------------------
// Reading the files.

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// One YAML document, `<<` merge keys applied (as docker-compose does).
fn parse_yaml(text: &str, what: &str) -> Value {
    let mut value: Value = serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("{what}: {e}"));
    value.apply_merge().unwrap_or_else(|e| panic!("{what}: {e}"));
    value
}

/// Every non-empty document of a multi-document YAML file.
fn parse_documents(relative: &str) -> Vec<Value> {
    let text = read(relative);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{relative}: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The files of a repository folder, `(name, contents)`, sorted by name.
fn folder_files(relative: &str) -> Vec<(String, String)> {
    let dir = root().join(relative);
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .map(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).expect("UTF-8 file name").to_string();
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            (name, text)
        })
        .collect();
    files.sort();
    files
}

/// `NAME:-default` or `NAME-default` (see `service_kit::config::expand_env`)
/// as the name and its default.
fn split_default(inner: &str) -> (&str, Option<&str>) {
    inner.split_once(":-").or_else(|| inner.split_once('-')).map_or((inner, None), |(n, d)| (n, Some(d)))
}

/// The `${NAME}` / `${NAME:-default}` / `${NAME-default}` placeholders of a
/// config file.
fn placeholders(text: &str) -> BTreeMap<String, Option<String>> {
    let mut found = BTreeMap::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after.find('}').unwrap_or_else(|| panic!("unclosed ${{ in {after:.40}"));
        let inner = &after[..end];
        let (name, default) = split_default(inner);
        found.insert(name.to_string(), default.map(str::to_string));
        rest = &after[end + 1..];
    }
    found
}

/// A config file with every placeholder replaced by its default, parsed
/// (the shape the process sees when nothing is overridden).
fn config_with_defaults(file: &str) -> Value {
    let text = read(&format!("etc/{file}"));
    let mut expanded = String::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("${") {
        expanded.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').expect("closed placeholder");
        expanded.push_str(split_default(&after[..end]).1.unwrap_or(""));
        rest = &after[end + 1..];
    }
    expanded.push_str(rest);
    parse_yaml(&expanded, file)
}

/// The value a process uses for `${name}`: the environment's, else the default.
fn effective(
    env: &BTreeMap<String, String>,
    config: &BTreeMap<String, Option<String>>,
    name: &str,
) -> String {
    env.get(name)
        .cloned()
        .or_else(|| config.get(name).cloned().flatten())
        .unwrap_or_else(|| panic!("${{{name}}} has neither a value nor a default"))
}

/// The port of `host:port` or of a bare port.
fn port_of(address: &str) -> u16 {
    let port = address.rsplit_once(':').map_or(address, |(_, port)| port);
    port.parse().unwrap_or_else(|_| panic!("no port in {address:?}"))
}

/// The host of `host:port`, `scheme://host:port/...` or a Go DSN `user:pw@tcp(host:port)/db`.
fn host_of(address: &str) -> String {
    let address = match address.split_once("@tcp(") {
        Some((_, rest)) => rest.split(')').next().unwrap_or(""),
        None => address.split_once("://").map_or(address, |(_, rest)| rest),
    };
    let authority = address.split('/').next().unwrap_or("");
    authority.rsplit_once(':').map_or(authority, |(host, _)| host).to_string()
}

/// The database of a Go DSN `user:pw@tcp(host:port)/db?params`.
fn database_of_dsn(dsn: &str) -> String {
    let after = dsn.split_once(")/").unwrap_or_else(|| panic!("not a Go DSN: {dsn}")).1;
    after.split('?').next().unwrap_or("").to_string()
}

/// The DSN without its password, for comparing deployments.
fn without_password(dsn: &str) -> String {
    match (dsn.split_once(':'), dsn.split_once('@')) {
        (Some((user, _)), Some((_, rest))) => format!("{user}:***@{rest}"),
        _ => dsn.to_string(),
    }
}

/// How long the process needs between SIGTERM and exit, from the code and
/// the `etc/` files: what a grace period must cover.
fn shutdown_time(app: &str) -> Duration {
    match app {
        "order-srv" | "stock-srv" => {
            // Deregister, wait, drain (go-zero's WrapUpTime and WaitTime).
            let grpc = service_kit::GrpcSettings::default();
            grpc.deregister_grace + grpc.drain_timeout
        }
        "coordinator" => {
            // Drain running requests (each bounded by ApiTimeout), then the
            // engine finishes or releases its transactions.
            let api_timeout = config_with_defaults("coordinator.yaml")["ApiTimeout"]
                .as_u64()
                .expect("ApiTimeout in etc/coordinator.yaml");
            Duration::from_secs(api_timeout) + coordinator::EngineSettings::default().shutdown_timeout
        }
        "order-api" => {
            // Running requests finish; each is bounded by Timeout (ms).
            let timeout = config_with_defaults("order-api.yaml")["Timeout"]
                .as_u64()
                .expect("Timeout in etc/order-api.yaml");
            Duration::from_millis(timeout)
        }
        other => panic!("no shutdown time known for {other}"),
    }
}

/// `10s`, `1m30s`, `500ms` (docker-compose durations).
fn parse_compose_duration(text: &str) -> Duration {
    let mut total = Duration::ZERO;
    let mut number = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&next) = chars.peek() {
            if next.is_ascii_alphabetic() {
                unit.push(next);
                chars.next();
            } else {
                break;
            }
        }
        let value: f64 = number.parse().unwrap_or_else(|_| panic!("bad duration {text:?}"));
        number.clear();
        let seconds = match unit.as_str() {
            "h" => value * 3600.0,
            "m" => value * 60.0,
            "s" => value,
            "ms" => value / 1000.0,
            other => panic!("unknown unit {other:?} in {text:?}"),
        };
        total += Duration::from_secs_f64(seconds);
    }
    assert!(number.is_empty(), "duration {text:?} lacks a unit");
    total
}

/// The config file a command line reads with `-f`, as a file name in `etc/`.
fn config_file_of(command: &[String]) -> Option<String> {
    let index = command.iter().position(|arg| arg == "-f")?;
    let path = command.get(index + 1)?;
    let name = path.strip_prefix(&format!("{CONFIG_DIR}/"))?;
    Some(name.to_string())
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|seq| seq.iter().map(|v| scalar(v).unwrap_or_default()).collect())
        .unwrap_or_default()
}

/// A scalar as text (YAML numbers and booleans included).
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Runs a validation tool from the workspace root; a missing tool fails
/// with how to install it.
fn run_tool(program: &str, args: &[&str], install: &str) -> Output {
    Command::new(program).args(args).current_dir(root()).output().unwrap_or_else(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            panic!("`{program}` is not installed: {install}")
        }
        panic!("cannot run {program}: {e}")
    })
}

fn assert_no_problems(problems: &[String]) {
    assert!(problems.is_empty(), "{} problem(s):\n  - {}", problems.len(), problems.join("\n  - "));
}

// ---------------------------------------------------------------------------
// docker-compose.yml

/// A compose service's environment, whichever syntax it uses.
fn compose_env(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| (scalar(k).expect("variable name"), scalar(v).unwrap_or_default()))
            .collect(),
        Value::Sequence(list) => list
            .iter()
            .filter_map(|item| item.as_str())
            .map(|item| {
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn compose() -> Value {
    parse_yaml(&read("docker-compose.yml"), "docker-compose.yml")
}

#[test]
fn compose_file_passes_docker_compose_config() {
    let output = run_tool(
        "docker-compose",
        &["-f", "docker-compose.yml", "config", "-q"],
        "install docker-compose (apt-get install docker-compose)",
    );
    assert!(
        output.status.success(),
        "docker-compose config -q rejects docker-compose.yml:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

// One test of ~200 lines: a list of independent checks of docker-compose.yml,
// each a few lines under its own comment, that collect every problem before
// failing, so one run names all of them.
#[test]
fn compose_topology_matches_the_end_to_end_setup() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    let mut problems = Vec::new();

    let names: BTreeSet<String> = services.keys().filter_map(scalar).collect();
    let expected: BTreeSet<String> =
        ["etcd", "mysql", "coordinator", "order-srv", "stock-srv", "order-api"].map(String::from).into();
    // Beside the system, what watches it (nothing of the system depends on
    // them): Jaeger for traces, Prometheus and Grafana for metrics.
    let observability: BTreeSet<String> = ["jaeger", "prometheus", "grafana"].map(String::from).into();
    let all: BTreeSet<String> = expected.union(&observability).cloned().collect();
    assert_eq!(names, all, "compose services");

    // Every service is health-checked, so depends_on can wait for *ready*.
    for name in &names {
        let test = strings(&compose["services"][name.as_str()]["healthcheck"]["test"]);
        if test.is_empty() || test[0] == "NONE" {
            problems.push(format!("{name}: no healthcheck"));
        }
    }

    // Start order: infrastructure, then the servers, then the gateway.
    let expected_deps: [(&str, &[&str]); 7] = [
        ("etcd", &[]),
        ("mysql", &[]),
        // Spans wait in each exporter's queue while Jaeger starts: no one
        // waits for it.
        ("jaeger", &[]),
        ("coordinator", &["etcd", "mysql"]),
        ("order-srv", &["etcd", "mysql"]),
        ("stock-srv", &["etcd", "mysql"]),
        ("order-api", &["coordinator", "order-srv", "stock-srv"]),
    ];
    for (name, deps) in expected_deps {
        let depends_on = &compose["services"][name]["depends_on"];
        let actual: BTreeMap<String, String> = depends_on
            .as_mapping()
            .map(|map| {
                map.iter()
                    .map(|(k, v)| {
                        (scalar(k).unwrap_or_default(), scalar(&v["condition"]).unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let wanted: BTreeMap<String, String> =
            deps.iter().map(|d| (d.to_string(), "service_healthy".to_string())).collect();
        if actual != wanted {
            problems.push(format!("{name}: depends_on {actual:?}, expected {wanted:?}"));
        }
    }

    // One image, built once.
    let builders: Vec<String> =
        names.iter().filter(|n| !compose["services"][n.as_str()]["build"].is_null()).cloned().collect();
    if builders.len() != 1 {
        problems.push(format!("exactly one service should build the image, found {builders:?}"));
    }
    let build = &compose["services"][builders.first().map_or("", String::as_str)]["build"];
    let context = scalar(build).or_else(|| scalar(&build["context"])).unwrap_or_default();
    if context != "." {
        problems.push(format!("the image is built from {context:?}, expected the workspace root \".\""));
    }
    let image = scalar(&compose["services"][builders.first().map_or("", String::as_str)]["image"]);

    let mysql_env = compose_env(&compose["services"]["mysql"]);
    let mysql_password = mysql_env.get("MYSQL_ROOT_PASSWORD").cloned().unwrap_or_default();
    let created = databases_created_by_init_script();
    let coordinator_env = compose_env(&compose["services"]["coordinator"]);
    let coordinator_config = placeholders(&read("etc/coordinator.yaml"));

    for app in apps() {
        let service = &compose["services"][app.name];
        let env = compose_env(service);
        let config_text = read(&format!("etc/{}", app.config));
        let config = placeholders(&config_text);
        problems.extend(check_process(app.name, &strings(&service["command"]), &app, &env, &config));

        if scalar(&service["image"]) != image {
            problems
                .push(format!("{}: image {:?}, expected the shared {image:?}", app.name, service["image"]));
        }
        let mounts = strings(&service["volumes"]);
        if !mounts.iter().any(|m| m == &format!("./etc:{CONFIG_DIR}:ro")) {
            problems.push(format!("{}: etc/ is not mounted at {CONFIG_DIR} (read-only)", app.name));
        }

        // The health check probes what the process serves.
        let port = port_of(&effective(&env, &config, app.port_var));
        let test = strings(&service["healthcheck"]["test"]);
        let wanted = match app.health {
            Health::Grpc(name) => {
                vec!["CMD", "quickorder", "probe", "grpc", &format!("127.0.0.1:{port}"), name]
                    .into_iter()
                    .map(String::from)
                    .collect::<Vec<_>>()
            }
            Health::Http(path) => {
                ["CMD", "quickorder", "probe", "http", &format!("http://127.0.0.1:{port}{path}")]
                    .into_iter()
                    .map(String::from)
                    .collect()
            }
        };
        if test != wanted {
            problems.push(format!("{}: healthcheck {test:?}, expected {wanted:?}", app.name));
        }

        // Long enough for the shutdown sequence.
        let grace = scalar(&service["stop_grace_period"]).map(|d| parse_compose_duration(&d));
        let needed = shutdown_time(app.name);
        if grace.is_none_or(|g| g < needed) {
            problems.push(format!("{}: stop_grace_period {grace:?} < shutdown time {needed:?}", app.name));
        }

        // Every host named is a service of this file, every database exists.
        for (var, value) in &env {
            let hosts: Vec<String> = match var.as_str() {
                "ETCD_HOSTS" => value.split(',').map(host_of).collect(),
                "STORE_HOST" => vec![value.clone()],
                "DTM_SERVER"
                | "DTM_HTTP_SERVER"
                | "MICRO_SERVICE_TARGET"
                | "MICRO_SERVICE_END_POINT"
                | "OTEL_ENDPOINT" => {
                    vec![host_of(value)]
                }
                v if v.ends_with("_DSN") => vec![host_of(value)],
                _ => vec![],
            };
            for host in hosts {
                if !names.contains(&host) {
                    problems.push(format!("{}: {var} names host {host:?}, not a compose service", app.name));
                }
            }
            if var.ends_with("_DSN") {
                let db = database_of_dsn(value);
                if !created.contains(&db) {
                    problems.push(format!(
                        "{}: {var} uses database {db:?}, not created by the init script",
                        app.name
                    ));
                }
                if !value.starts_with(&format!("root:{mysql_password}@")) {
                    problems.push(format!("{}: {var} does not use mysql's MYSQL_ROOT_PASSWORD", app.name));
                }
            }
        }
    }

    // The coordinator: MySQL store in a database the init script creates,
    // registered as what order-api looks up, reachable at its EndPoint.
    let store_db = coordinator_env.get("STORE_DB").cloned().unwrap_or_default();
    if coordinator_env.get("STORE_DRIVER").map(String::as_str) != Some("mysql")
        || !created.contains(&store_db)
    {
        problems
            .push(format!("coordinator: store must be MySQL on a created database, got {coordinator_env:?}"));
    }
    if coordinator_env.get("STORE_PASSWORD") != Some(&mysql_password) {
        problems.push("coordinator: STORE_PASSWORD is not mysql's MYSQL_ROOT_PASSWORD".into());
    }
    if coordinator_env.get("MICRO_SERVICE_DRIVER").map(String::as_str) != Some("dtm-driver-gozero") {
        problems.push("coordinator: not registered in etcd (MICRO_SERVICE_DRIVER)".into());
    }
    let grpc_port = effective(&coordinator_env, &coordinator_config, "GRPC_PORT");
    let http_port = effective(&coordinator_env, &coordinator_config, "HTTP_PORT");
    if coordinator_env.get("MICRO_SERVICE_END_POINT") != Some(&format!("coordinator:{grpc_port}")) {
        problems.push(format!("coordinator: EndPoint should be coordinator:{grpc_port}"));
    }
    let target = coordinator_env.get("MICRO_SERVICE_TARGET").cloned().unwrap_or_default();
    if !target.ends_with("/dtmservice") {
        problems.push(format!("coordinator: registers as {target:?}, expected .../dtmservice"));
    }
    let api_env = compose_env(&compose["services"]["order-api"]);
    if api_env.get("DTM_SERVER") != Some(&target) {
        problems.push(format!(
            "order-api: DTM_SERVER {:?} is not where the coordinator registers ({target:?})",
            api_env.get("DTM_SERVER")
        ));
    }
    // With a token set, order-api must send what the coordinator expects.
    if api_env.get("DTM_TOKEN") != coordinator_env.get("AUTH_TOKEN") {
        problems.push(format!(
            "order-api: DTM_TOKEN {:?} is not the coordinator's AUTH_TOKEN {:?}",
            api_env.get("DTM_TOKEN"),
            coordinator_env.get("AUTH_TOKEN")
        ));
    }
    let status_api = format!("http://coordinator:{http_port}/api/dtmsvr");
    if api_env.get("DTM_HTTP_SERVER") != Some(&status_api) {
        problems.push(format!("order-api: DTM_HTTP_SERVER should be {status_api}"));
    }

    // Published ports: the gateway for users, the coordinator on loopback only.
    let api_port = effective(&api_env, &placeholders(&read("etc/order-api.yaml")), "ORDER_API_LISTEN_PORT");
    if !strings(&compose["services"]["order-api"]["ports"]).contains(&format!("{api_port}:{api_port}")) {
        problems.push(format!("order-api: port {api_port} is not published"));
    }
    for port in strings(&compose["services"]["coordinator"]["ports"]) {
        if !port.starts_with("127.0.0.1:") {
            problems.push(format!("coordinator: port {port} is published beyond loopback"));
        }
    }

    // MySQL: the init folder and the repository's schema files, mounted.
    let mysql_mounts = strings(&compose["services"]["mysql"]["volumes"]);
    for mount in ["./deploy/mysql/init:/docker-entrypoint-initdb.d:ro", "./sql/mysql:/sql/mysql:ro"] {
        if !mysql_mounts.iter().any(|m| m == mount) {
            problems.push(format!("mysql: missing volume {mount}"));
        }
    }
    assert_no_problems(&problems);
}

/// Checks one process's command line and environment against its config
/// file: `-f` names an existing `etc/` file, and every variable set is one
/// the file (or the process) reads.
fn check_process(
    where_: &str,
    command: &[String],
    app: &App,
    env: &BTreeMap<String, String>,
    config: &BTreeMap<String, Option<String>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if command.first().map(String::as_str) != Some(app.name) {
        problems.push(format!("{where_}: command {command:?} does not run {}", app.name));
    }
    match config_file_of(command) {
        Some(file) if file == app.config && root().join("etc").join(&file).is_file() => {}
        other => problems.push(format!("{where_}: -f {other:?}, expected {CONFIG_DIR}/{}", app.config)),
    }
    let always = always_read();
    // Kubernetes: variables only used to build others with $(NAME).
    let referenced: BTreeSet<String> = env
        .values()
        .flat_map(|v| v.split("$(").skip(1).filter_map(|s| s.split(')').next()).map(String::from))
        .collect();
    for name in env.keys() {
        if !config.contains_key(name) && !always.contains(name.as_str()) && !referenced.contains(name) {
            problems.push(format!("{where_}: sets {name}, which etc/{} has no ${{{name}}} for", app.config));
        }
    }
    problems
}

/// The databases `deploy/mysql/init/00-databases.sql` creates.
fn databases_created_by_init_script() -> BTreeSet<String> {
    read("deploy/mysql/init/00-databases.sql")
        .lines()
        .filter_map(|line| line.trim().strip_prefix("CREATE DATABASE IF NOT EXISTS `"))
        .filter_map(|rest| rest.split('`').next())
        .map(String::from)
        .collect()
}

/// `(database, file)` pairs `deploy/mysql/init/10-schemas.sh` applies.
fn schemas_applied_by_init_script() -> Vec<(String, String)> {
    read("deploy/mysql/init/10-schemas.sh")
        .lines()
        .filter_map(|line| line.trim().strip_prefix("quickorder_apply "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(db, file)| (db.to_string(), file.trim().to_string()))
        .collect()
}

#[test]
fn mysql_init_files_cover_every_schema_and_database() {
    let created = databases_created_by_init_script();
    let applied = schemas_applied_by_init_script();
    let mut problems = Vec::new();
    let files: BTreeSet<String> = folder_files("sql/mysql").into_iter().map(|(name, _)| name).collect();
    let applied_files: BTreeSet<String> = applied.iter().map(|(_, file)| file.clone()).collect();
    if files != applied_files {
        problems.push(format!("10-schemas.sh applies {applied_files:?}, sql/mysql has {files:?}"));
    }
    for (db, file) in &applied {
        if !created.contains(db) {
            problems.push(format!(
                "10-schemas.sh applies {file} to {db}, which 00-databases.sql does not create"
            ));
        }
    }
    let barrier = service_kit::db::BARRIER_SCHEMA;
    if !applied.contains(&(barrier.to_string(), "barrier.sql".to_string())) {
        problems.push(format!("barrier.sql must go into {barrier} (dtm's fixed barrier database)"));
    }
    // The names the etc/ defaults use (the Go demo's), so a local MySQL
    // prepared with these files works with the unmodified etc/ files.
    for (file, var) in [("order-srv.yaml", "ORDER_DSN"), ("stock-srv.yaml", "STOCK_DSN")] {
        let default = placeholders(&read(&format!("etc/{file}")))[var].clone().expect("DSN default");
        let db = database_of_dsn(&default);
        if !created.contains(&db) {
            problems.push(format!(
                "etc/{file} defaults to database {db}, which 00-databases.sql does not create"
            ));
        }
    }
    assert_no_problems(&problems);
}

/// The tables each `sql/mysql` file creates.
fn tables_in(sql: &str) -> BTreeSet<String> {
    sql.lines()
        .filter_map(|line| line.trim().strip_prefix("CREATE TABLE IF NOT EXISTS "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|name| name.trim_matches('`').to_string())
        .collect()
}

/// Runs the `mysql` client against a test server.
fn mysql_client(port: u16, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("mysql")
        .args(["--protocol=tcp", "-h", "127.0.0.1", "-P", &port.to_string(), "-uroot"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run the mysql client ({e}): install mariadb-client"));
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write to mysql");
    let output = child.wait_with_output().expect("mysql client");
    assert!(output.status.success(), "mysql {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn mysql_init_scripts_create_every_database_and_table() {
    let server = harness::MariaDb::start();
    let port = server.port();
    // What the image's entrypoint does, in name order: the .sql file, then
    // the shell script (here over TCP, as for a server prepared by hand).
    // Twice: the files must be safe to re-run on a prepared server.
    for _ in 0..2 {
        mysql_client(port, &[], &read("deploy/mysql/init/00-databases.sql"));
        let output = Command::new("sh")
            .arg(root().join("deploy/mysql/init/10-schemas.sh"))
            .env("MYSQL_HOST", "127.0.0.1")
            .env("MYSQL_TCP_PORT", port.to_string())
            .env("MYSQL_ROOT_PASSWORD", "")
            .env("QUICKORDER_SQL_DIR", root().join("sql/mysql"))
            .output()
            .expect("run sh");
        assert!(
            output.status.success(),
            "10-schemas.sh failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let mut expected: BTreeSet<(String, String)> = BTreeSet::new();
    for (db, file) in schemas_applied_by_init_script() {
        for table in tables_in(&read(&format!("sql/mysql/{file}"))) {
            expected.insert((db.clone(), table));
        }
    }
    assert!(expected.len() >= 4, "too few tables found in sql/mysql: {expected:?}");
    let databases: Vec<String> =
        databases_created_by_init_script().into_iter().map(|d| format!("'{d}'")).collect();
    let listing = mysql_client(
        port,
        &["-N", "-B"],
        &format!(
            "select table_schema, table_name from information_schema.tables where table_schema in ({})",
            databases.join(",")
        ),
    );
    let actual: BTreeSet<(String, String)> = listing
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(db, table)| (db.to_string(), table.to_string()))
        .collect();
    assert_eq!(actual, expected, "tables after the init scripts");

    // The stock seed ran once despite the second pass.
    let stock =
        mysql_client(port, &["-N", "-B"], "select num from `dtm-gozero-stock`.stock where goods_id = 1");
    assert_eq!(stock.trim(), "100", "goods 1 is seeded with 100 units, once");
}

#[test]
fn dockerfile_bakes_every_binary_and_the_config() {
    let dockerfile = read("Dockerfile");
    let mut problems = Vec::new();
    let mut binaries: BTreeSet<String> = apps().iter().map(|app| app.name.to_string()).collect();
    binaries.insert("quickorder".into()); // the health probes
    for binary in &binaries {
        if !dockerfile.contains(&format!("target/release/{binary}")) {
            problems.push(format!("the Dockerfile does not copy the {binary} binary"));
        }
    }
    if !dockerfile.contains(&format!("COPY etc/ {CONFIG_DIR}/")) {
        problems.push(format!("the Dockerfile does not bake etc/ into {CONFIG_DIR}/"));
    }
    // The runtime stage installs nothing but CA certificates.
    let runtime = dockerfile.rsplit_once("AS runtime").map_or("", |(_, stage)| stage);
    for line in runtime.lines().filter(|l| l.contains("apt-get install")) {
        let packages: Vec<&str> = line
            .split("apt-get install")
            .nth(1)
            .unwrap_or("")
            .split_whitespace()
            .take_while(|w| *w != "\\" && *w != "&&")
            .filter(|w| !w.starts_with('-'))
            .collect();
        if packages != ["ca-certificates"] {
            problems.push(format!("the runtime image installs {packages:?}, expected only ca-certificates"));
        }
    }
    let ignore = read(".dockerignore");
    if !ignore.lines().any(|l| l.trim_end_matches('/') == "target") {
        problems.push(".dockerignore must exclude target/ (gigabytes of build context)".into());
    }
    assert_no_problems(&problems);
}

// ---------------------------------------------------------------------------
// deploy/k8s

const K8S: &str = "deploy/k8s";

/// The manifest files (everything but kustomization.yaml), sorted.
fn manifest_files() -> Vec<String> {
    folder_files(K8S)
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect()
}

/// Every resource of every manifest, with its file name.
fn resources() -> Vec<(String, Value)> {
    manifest_files()
        .into_iter()
        .flat_map(|file| {
            parse_documents(&format!("{K8S}/{file}")).into_iter().map(move |doc| (file.clone(), doc))
        })
        .collect()
}

fn find<'a>(resources: &'a [(String, Value)], kind: &str, name: &str) -> Option<&'a Value> {
    resources
        .iter()
        .map(|(_, r)| r)
        .find(|r| r["kind"].as_str() == Some(kind) && r["metadata"]["name"].as_str() == Some(name))
}

#[test]
fn k8s_manifests_validate_against_the_kubernetes_schemas() {
    let files: Vec<String> = manifest_files().into_iter().map(|f| format!("{K8S}/{f}")).collect();
    assert!(!files.is_empty(), "no manifests in {K8S}");
    let mut args = vec!["--strict", "-k", KUBERNETES_VERSION];
    args.extend(files.iter().map(String::as_str));
    let output = run_tool("kubernetes-validate", &args, "pip install kubernetes-validate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "kubernetes-validate failed:\n{report}");
    // An unknown kind or apiVersion is only a WARN (exit 0): not good enough.
    let passed = stdout.lines().filter(|l| l.starts_with("INFO") && l.contains(" passed ")).count();
    let problems: Vec<&str> = stdout.lines().filter(|l| !l.starts_with("INFO")).collect();
    assert!(problems.is_empty(), "kubernetes-validate reported:\n{report}");
    assert_eq!(passed, resources().len(), "every resource validated:\n{report}");
}

#[test]
fn k8s_kustomization_lists_every_manifest_in_one_namespace() {
    let kustomization = parse_yaml(&read(&format!("{K8S}/kustomization.yaml")), "kustomization.yaml");
    let listed: BTreeSet<String> = strings(&kustomization["resources"]).into_iter().collect();
    let present: BTreeSet<String> = manifest_files().into_iter().collect();
    assert_eq!(listed, present, "kustomization.yaml resources vs the files in {K8S}");
    assert_eq!(kustomization["namespace"].as_str(), Some(NAMESPACE));

    let mut problems = Vec::new();
    for (file, resource) in resources() {
        let kind = resource["kind"].as_str().unwrap_or("?").to_string();
        let name = resource["metadata"]["name"].as_str().unwrap_or("?").to_string();
        let namespace = resource["metadata"]["namespace"].as_str();
        if kind == "Namespace" {
            if name != NAMESPACE {
                problems.push(format!("{file}: namespace {name}"));
            }
        } else if namespace != Some(NAMESPACE) {
            problems.push(format!("{file}: {kind}/{name} is in namespace {namespace:?}"));
        }
    }
    assert_no_problems(&problems);
}

/// A ConfigMap manifest carrying `files` verbatim, as `QUICKORDER_BLESS=1`
/// writes it.
fn render_config_map(name: &str, description: &str, source: &str, files: &[(String, String)]) -> String {
    let mut out = format!(
        "# {description}\n# GENERATED from {source} by `QUICKORDER_BLESS=1 cargo test -p quickorder \
         --test deploy_files`:\n# edit the files there, not here (the test fails when they differ).\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n  labels:\n    \
         app.kubernetes.io/part-of: {NAMESPACE}\ndata:\n"
    );
    for (key, text) in files {
        // A literal block keeps the text byte for byte: `|` for one final
        // newline, `|-` for none, `|+` for more.
        let chomp = if !text.ends_with('\n') {
            "-"
        } else if text.ends_with("\n\n") {
            "+"
        } else {
            ""
        };
        assert!(!text.starts_with([' ', '\n']), "{key}: leading blank, cannot be a literal block");
        out.push_str(&format!("  {key}: |{chomp}\n"));
        for line in text.lines() {
            if line.is_empty() {
                out.push('\n');
            } else {
                out.push_str(&format!("    {line}\n"));
            }
        }
        if text.ends_with("\n\n") {
            // `lines()` drops the last empty line; `|+` keeps it.
            out.push('\n');
        }
    }
    out
}

/// The generated ConfigMaps: `(file in deploy/k8s, its rendering)`.
fn generated_config_maps() -> Vec<(String, String)> {
    let etc = render_config_map(
        ETC_CONFIG_MAP,
        "The processes' configuration files, mounted at /etc/quickorder (the image bakes the same files).",
        "etc/",
        &folder_files("etc"),
    );
    let init = render_config_map(
        "mysql-init",
        "MySQL first-start scripts, mounted at /docker-entrypoint-initdb.d.",
        "deploy/mysql/init/",
        &folder_files("deploy/mysql/init"),
    );
    let schema = render_config_map(
        "mysql-schema",
        "The schema files 10-schemas.sh applies, mounted at /sql/mysql.",
        "sql/mysql/",
        &folder_files("sql/mysql"),
    );
    vec![("config.yaml".into(), etc), ("mysql-init.yaml".into(), format!("{init}---\n{schema}"))]
}

#[test]
fn k8s_config_maps_carry_the_repository_files() {
    if std::env::var_os("QUICKORDER_BLESS").is_some() {
        for (file, text) in generated_config_maps() {
            // Write-then-rename: the other tests of this run read the folder.
            let path = root().join(K8S).join(&file);
            let temp = path.with_extension("yaml.tmp");
            std::fs::write(&temp, text).expect("write the ConfigMap");
            std::fs::rename(&temp, &path).expect("replace the ConfigMap");
        }
    }
    let resources = resources();
    let mut problems = Vec::new();
    for (name, folder) in
        [(ETC_CONFIG_MAP, "etc"), ("mysql-init", "deploy/mysql/init"), ("mysql-schema", "sql/mysql")]
    {
        let Some(map) = find(&resources, "ConfigMap", name) else {
            problems.push(format!("no ConfigMap {name}"));
            continue;
        };
        let data: BTreeMap<String, String> = map["data"]
            .as_mapping()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (scalar(k).unwrap_or_default(), scalar(v).unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let files: BTreeMap<String, String> = folder_files(folder).into_iter().collect();
        if data.keys().ne(files.keys()) {
            problems.push(format!(
                "ConfigMap {name} has {:?}, {folder}/ has {:?}",
                data.keys(),
                files.keys()
            ));
        }
        for (file, text) in &files {
            if data.get(file) != Some(text) {
                problems.push(format!("ConfigMap {name}: {file} differs from {folder}/{file}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\nRegenerate with: QUICKORDER_BLESS=1 cargo test -p quickorder --test deploy_files",
        problems.join("\n")
    );
}

/// A container's environment: literal values, `$(REF)` for references to
/// other resources (`secret:name/key`, `field:status.podIP`).
fn k8s_env(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_sequence()
        .map(|list| {
            list.iter()
                .map(|item| {
                    let name = item["name"].as_str().unwrap_or("").to_string();
                    let from = &item["valueFrom"];
                    let value = if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
                        format!("field:{path}")
                    } else if let Some(secret) = from["secretKeyRef"]["name"].as_str() {
                        format!("secret:{secret}/{}", from["secretKeyRef"]["key"].as_str().unwrap_or(""))
                    } else {
                        scalar(&item["value"]).unwrap_or_default()
                    };
                    (name, value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `$(NAME)` references expanded the way the kubelet does.
fn expand_k8s(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = value.to_string();
    for (name, v) in env {
        out = out.replace(&format!("$({name})"), v);
    }
    out
}

/// The port number of a probe's `port` (a number or a container port name).
fn probe_port(container: &Value, port: &Value) -> Option<u16> {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).ok();
    }
    let name = port.as_str()?;
    container["ports"]
        .as_sequence()?
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64().and_then(|n| u16::try_from(n).ok()))
}

/// Seconds a `preStop` hook delays SIGTERM (`sleep N` exec or sleep action).
fn pre_stop_seconds(container: &Value) -> u64 {
    let hook = &container["lifecycle"]["preStop"];
    if let Some(seconds) = hook["sleep"]["seconds"].as_u64() {
        return seconds;
    }
    match strings(&hook["exec"]["command"]).as_slice() {
        [sleep, seconds] if sleep == "sleep" => seconds.parse().unwrap_or(0),
        _ => 0,
    }
}

// ~120 lines for the same reason as the compose check: independent checks of
// each Deployment that collect every problem before failing.
#[test]
fn k8s_deployments_have_probes_resources_pod_ip_and_grace_periods() {
    let resources = resources();
    let mut problems = Vec::new();
    let deployments: BTreeSet<String> = resources
        .iter()
        .filter(|(_, r)| r["kind"].as_str() == Some("Deployment"))
        .filter_map(|(_, r)| r["metadata"]["name"].as_str().map(String::from))
        .collect();
    let expected: BTreeSet<String> = apps().iter().map(|a| a.name.to_string()).collect();
    assert_eq!(deployments, expected, "Deployments");

    for app in apps() {
        let deployment = find(&resources, "Deployment", app.name).expect("deployment");
        let spec = &deployment["spec"]["template"]["spec"];
        let containers = spec["containers"].as_sequence().cloned().unwrap_or_default();
        let [container] = containers.as_slice() else {
            problems.push(format!("{}: expected one container", app.name));
            continue;
        };
        let where_ = format!("Deployment {}", app.name);
        let env = k8s_env(container);
        let config_text = read(&format!("etc/{}", app.config));
        let config = placeholders(&config_text);
        problems.extend(check_process(&where_, &strings(&container["command"]), &app, &env, &config));

        // The pod's own address for the etcd registration.
        if env.get(discovery::address::POD_IP_ENV).map(String::as_str) != Some("field:status.podIP") {
            problems.push(format!("{where_}: POD_IP must come from the downward API (status.podIP)"));
        }

        // etc/ mounted from the ConfigMap where -f looks.
        let mounted = container["volumeMounts"].as_sequence().into_iter().flatten().any(|mount| {
            mount["mountPath"].as_str() == Some(CONFIG_DIR)
                && spec["volumes"].as_sequence().into_iter().flatten().any(|volume| {
                    volume["name"] == mount["name"]
                        && volume["configMap"]["name"].as_str() == Some(ETC_CONFIG_MAP)
                })
        });
        if !mounted {
            problems.push(format!("{where_}: ConfigMap {ETC_CONFIG_MAP} is not mounted at {CONFIG_DIR}"));
        }

        // Probes that check what the process serves.
        let env_values: BTreeMap<String, String> =
            env.iter().map(|(k, v)| (k.clone(), expand_k8s(v, &env))).collect();
        let port = port_of(&effective(&env_values, &config, app.port_var));
        for probe in ["readinessProbe", "livenessProbe"] {
            if container[probe].is_null() {
                problems.push(format!("{where_}: no {probe}"));
            }
        }
        let readiness = &container["readinessProbe"];
        match app.health {
            Health::Grpc(service) => {
                if probe_port(container, &readiness["grpc"]["port"]) != Some(port)
                    || readiness["grpc"]["service"].as_str() != Some(service)
                {
                    problems.push(format!("{where_}: readinessProbe should be grpc {service} on {port}"));
                }
            }
            Health::Http(path) => {
                if probe_port(container, &readiness["httpGet"]["port"]) != Some(port)
                    || readiness["httpGet"]["path"].as_str() != Some(path)
                {
                    problems.push(format!("{where_}: readinessProbe should be GET {path} on {port}"));
                }
            }
        }
        let liveness = &container["livenessProbe"];
        let live_port = probe_port(container, &liveness["grpc"]["port"])
            .or_else(|| probe_port(container, &liveness["httpGet"]["port"]));
        let served: BTreeSet<u16> = if app.name == "coordinator" {
            let http = port_of(&effective(&env_values, &config, "HTTP_PORT"));
            if liveness["httpGet"]["path"].as_str() != Some("/api/ping") || live_port != Some(http) {
                problems.push(format!("{where_}: livenessProbe should be GET /api/ping on {http}"));
            }
            [port, http].into()
        } else {
            if live_port != Some(port) {
                problems.push(format!("{where_}: livenessProbe does not check port {port}"));
            }
            [port].into()
        };
        // go-zero's Prometheus block, when the environment turns it on:
        // its port is declared and announced for annotation-based scraping.
        let mut served = served;
        let metrics_on = env_values.get("PROMETHEUS_LISTEN_HOST").is_some_and(|host| !host.is_empty());
        if metrics_on {
            let metrics = port_of(&effective(&env_values, &config, "PROMETHEUS_LISTEN_PORT"));
            served.insert(metrics);
            let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
            let wanted = (Some("true"), Some(metrics.to_string()), Some("/metrics"));
            let found = (
                annotations["prometheus.io/scrape"].as_str(),
                annotations["prometheus.io/port"].as_str().map(String::from),
                annotations["prometheus.io/path"].as_str(),
            );
            if found != wanted {
                problems.push(format!("{where_}: prometheus.io annotations {found:?}, expected {wanted:?}"));
            }
        }
        let declared: BTreeSet<u16> = container["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|p| p["containerPort"].as_u64().and_then(|n| u16::try_from(n).ok()))
            .collect();
        if declared != served {
            problems.push(format!("{where_}: containerPorts {declared:?}, the process serves {served:?}"));
        }

        // Requests and limits for CPU and memory.
        for section in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                if scalar(&container["resources"][section][resource]).is_none() {
                    problems.push(format!("{where_}: no resources.{section}.{resource}"));
                }
            }
        }

        // Long enough for preStop and the shutdown sequence.
        let grace = spec["terminationGracePeriodSeconds"].as_u64();
        let needed = Duration::from_secs(pre_stop_seconds(container)) + shutdown_time(app.name);
        if grace.is_none_or(|g| Duration::from_secs(g) < needed) {
            problems.push(format!("{where_}: terminationGracePeriodSeconds {grace:?} < {needed:?}"));
        }

        // Every secret referenced exists with that key.
        for value in env.values() {
            if let Some(reference) = value.strip_prefix("secret:") {
                let (secret, key) = reference.split_once('/').unwrap_or((reference, ""));
                let exists = find(&resources, "Secret", secret)
                    .is_some_and(|s| !s["stringData"][key].is_null() || !s["data"][key].is_null());
                if !exists {
                    problems.push(format!("{where_}: secret {secret}/{key} does not exist"));
                }
            }
        }
    }
    assert_no_problems(&problems);
}

#[test]
fn k8s_infrastructure_and_services_match_what_the_processes_dial() {
    let resources = resources();
    let mut problems = Vec::new();

    // etcd and MySQL: StatefulSets behind headless Services of those names.
    for name in ["etcd", "mysql"] {
        match find(&resources, "StatefulSet", name) {
            Some(set) if set["spec"]["serviceName"].as_str() == Some(name) => {}
            _ => problems.push(format!("no StatefulSet {name} with serviceName {name}")),
        }
        if find(&resources, "Service", name).and_then(|s| s["spec"]["clusterIP"].as_str()) != Some("None") {
            problems.push(format!("Service {name} should be headless"));
        }
    }
    // MySQL runs the init scripts on the repository's schema files.
    if let Some(mysql) = find(&resources, "StatefulSet", "mysql") {
        let spec = &mysql["spec"]["template"]["spec"];
        for (path, config_map) in
            [("/docker-entrypoint-initdb.d", "mysql-init"), ("/sql/mysql", "mysql-schema")]
        {
            let mounted =
                spec["containers"][0]["volumeMounts"].as_sequence().into_iter().flatten().any(|m| {
                    m["mountPath"].as_str() == Some(path)
                        && spec["volumes"].as_sequence().into_iter().flatten().any(|v| {
                            v["name"] == m["name"] && v["configMap"]["name"].as_str() == Some(config_map)
                        })
                });
            if !mounted {
                problems.push(format!("mysql: ConfigMap {config_map} is not mounted at {path}"));
            }
        }
    }

    // Every host a process dials is a Service; every database is created.
    let created = databases_created_by_init_script();
    for app in apps() {
        let Some(deployment) = find(&resources, "Deployment", app.name) else {
            problems.push(format!("no Deployment {}", app.name));
            continue;
        };
        let env = k8s_env(&deployment["spec"]["template"]["spec"]["containers"][0]);
        for (var, value) in &env {
            let value = expand_k8s(value, &env);
            let hosts: Vec<String> = match var.as_str() {
                "ETCD_HOSTS" => value.split(',').map(host_of).collect(),
                "STORE_HOST" => vec![value.clone()],
                "DTM_SERVER" | "DTM_HTTP_SERVER" | "MICRO_SERVICE_TARGET" => vec![host_of(&value)],
                v if v.ends_with("_DSN") => vec![host_of(&value)],
                _ => vec![],
            };
            for host in hosts {
                if find(&resources, "Service", &host).is_none() {
                    problems.push(format!("{}: {var} dials {host:?}, which is no Service", app.name));
                }
            }
            if var.ends_with("_DSN") && !created.contains(&database_of_dsn(&value)) {
                problems.push(format!("{}: {var} uses a database the init script does not create", app.name));
            }
        }
        // The Service (if any) routes to the declared ports of these pods.
        if let Some(service) = find(&resources, "Service", app.name) {
            let selector = &service["spec"]["selector"];
            let labels = &deployment["spec"]["template"]["metadata"]["labels"];
            let selects = selector
                .as_mapping()
                .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v));
            if !selects {
                problems.push(format!("Service {} does not select the {} pods", app.name, app.name));
            }
        } else {
            problems.push(format!("no Service {}", app.name));
        }
    }

    // The coordinator registers its own pod address where order-api looks.
    let coordinator = find(&resources, "Deployment", "coordinator")
        .map(|d| k8s_env(&d["spec"]["template"]["spec"]["containers"][0]))
        .unwrap_or_default();
    let api = find(&resources, "Deployment", "order-api")
        .map(|d| k8s_env(&d["spec"]["template"]["spec"]["containers"][0]))
        .unwrap_or_default();
    if coordinator.get("MICRO_SERVICE_END_POINT").map(String::as_str) != Some("$(POD_IP):36790") {
        problems.push("coordinator: MICRO_SERVICE_END_POINT should be $(POD_IP):36790".into());
    }
    if api.get("DTM_SERVER") != coordinator.get("MICRO_SERVICE_TARGET") {
        problems.push("order-api: DTM_SERVER is not where the coordinator registers".into());
    }
    assert_no_problems(&problems);
}

#[test]
fn compose_and_k8s_run_the_same_configuration() {
    let compose = compose();
    let resources = resources();
    let mut problems = Vec::new();
    // Differ on purpose: the published address (service name vs pod IP),
    // secrets (interpolated vs secretKeyRef), and production settings.
    let differ: BTreeSet<&str> = [
        "POD_IP",
        "MICRO_SERVICE_END_POINT",
        "STORE_PASSWORD",
        "MYSQL_PASSWORD",
        "MODE",
        "LOG_ENCODING",
        "AUTH_TOKEN",
        "DTM_TOKEN",
        // Compose ships Jaeger; a cluster brings its own collector.
        "OTEL_ENDPOINT",
    ]
    .into();
    for app in apps() {
        let compose_env = compose_env(&compose["services"][app.name]);
        let Some(deployment) = find(&resources, "Deployment", app.name) else {
            problems.push(format!("no Deployment {}", app.name));
            continue;
        };
        let raw = k8s_env(&deployment["spec"]["template"]["spec"]["containers"][0]);
        let k8s_env: BTreeMap<String, String> =
            raw.iter().map(|(k, v)| (k.clone(), expand_k8s(v, &raw))).collect();
        let names: BTreeSet<&String> =
            compose_env.keys().chain(k8s_env.keys()).filter(|k| !differ.contains(k.as_str())).collect();
        for name in names {
            let (a, b) = (compose_env.get(name), k8s_env.get(name));
            let same = match (a, b) {
                (Some(a), Some(b)) if name.ends_with("_DSN") => without_password(a) == without_password(b),
                (a, b) => a == b,
            };
            if !same {
                problems.push(format!("{}: {name} is {a:?} in compose, {b:?} in k8s", app.name));
            }
        }
    }
    assert_no_problems(&problems);
}

// ---------------------------------------------------------------------------
// The image build, without an engine: what its steps read and run.

/// `cargo metadata` of the locked workspace, for the platform the tests
/// build for. Offline: the build has downloaded every package *of this
/// platform* already. Without `--filter-platform`, cargo would resolve the
/// packages of every platform (Windows, Android, …) and, on a fresh
/// machine whose cargo cache holds only what the build fetched, fail to
/// "download" them offline.
fn cargo_metadata() -> serde_json::Value {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc).arg("-vV").output().expect("run rustc -vV");
    let version = String::from_utf8_lossy(&version.stdout);
    let host = version
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc -vV names its host platform")
        .to_string();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline", "--filter-platform", &host])
        .current_dir(root())
        .output()
        .expect("run cargo metadata");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("cargo metadata JSON")
}

/// The folder of package `name` in the cargo registry (its Cargo.toml's parent).
fn package_dir(metadata: &serde_json::Value, name: &str) -> PathBuf {
    let package = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not in Cargo.lock"));
    Path::new(package["manifest_path"].as_str().expect("manifest_path")).parent().expect("dir").to_path_buf()
}

/// `1.89` / `1.89.0` as `(1, 89)`.
fn minor_version(text: &str) -> (u32, u32) {
    let mut parts =
        text.split('.').map(|p| p.parse::<u32>().unwrap_or_else(|_| panic!("bad version {text:?}")));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile_instructions() -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[test]
fn dockerfile_pins_a_rust_image_new_enough_for_the_lockfile() {
    let from = dockerfile_instructions()
        .into_iter()
        .find(|i| i.starts_with("FROM rust:"))
        .expect("a FROM rust:<version> stage");
    let tag = from.trim_start_matches("FROM rust:").split_whitespace().next().unwrap_or("").to_string();
    let version = tag.split('-').next().unwrap_or("");
    assert!(
        version.split('.').count() >= 2 && version.split('.').all(|p| p.parse::<u32>().is_ok()),
        "the Rust image is not pinned to a version: rust:{tag}"
    );
    let image = minor_version(version);
    let workspace: toml_like::Workspace = toml_like::read(&read("Cargo.toml"));
    assert!(
        image >= minor_version(&workspace.rust_version),
        "rust:{tag} is older than the workspace's rust-version {}",
        workspace.rust_version
    );
    // --locked builds take every dependency at its locked version, with its
    // own rust-version: the workspace's must not claim less.
    let metadata = cargo_metadata();
    let mut newest = ((0, 0), String::new());
    for package in metadata["packages"].as_array().expect("packages") {
        if let Some(v) = package["rust_version"].as_str() {
            let needed = minor_version(v);
            if needed > newest.0 {
                newest = (needed, format!("{} {}", package["name"], package["version"]));
            }
        }
    }
    assert!(image >= newest.0, "rust:{tag} cannot build {} (rust-version {:?})", newest.1, newest.0);
    assert!(
        minor_version(&workspace.rust_version) >= newest.0,
        "the workspace's rust-version {} is below what {} needs ({:?})",
        workspace.rust_version,
        newest.1,
        newest.0
    );
}

/// Just enough TOML for `[workspace.package] rust-version`.
mod toml_like {
    pub struct Workspace {
        pub rust_version: String,
    }

    pub fn read(text: &str) -> Workspace {
        let mut section = "";
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line;
            } else if section == "[workspace.package]"
                && let Some(value) = line.strip_prefix("rust-version")
            {
                let value = value.trim_start().trim_start_matches('=').trim().trim_matches('"');
                return Workspace { rust_version: value.to_string() };
            }
        }
        panic!("no rust-version in [workspace.package] of Cargo.toml")
    }
}

/// Runs protoc `program` (with `path` as PATH and the registry of
/// `cargo_home`) on etcd-client's protos, as its build script does.
fn compile_etcd_protos(program: &Path, path: &str, cargo_home: &Path, etcd_client: &Path) -> Output {
    let out = tempfile::tempdir().expect("temp dir");
    Command::new(program)
        .env_clear()
        .env("PATH", path)
        .env("HOME", cargo_home.parent().unwrap_or(cargo_home))
        .env("CARGO_HOME", cargo_home)
        // As etcd-client's build.rs: `proto` relative to the package.
        .args(["-I", "proto"])
        .arg("--include_imports")
        .arg("-o")
        .arg(out.path().join("etcd.pb"))
        .args([
            "proto/etcd/api/authpb/auth.proto",
            "proto/etcd/api/etcdserverpb/rpc.proto",
            "proto/etcd/api/mvccpb/kv.proto",
            "proto/etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
            "proto/etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
        ])
        .current_dir(etcd_client)
        .output()
        .expect("run protoc")
}

#[test]
fn dockerfile_protoc_compiles_etcd_client_protos_even_beside_a_protoc_without_includes() {
    // The image: which protoc the build steps get, and that it is in the
    // image before `cargo chef cook` runs etcd-client's build script.
    let steps = dockerfile_instructions();
    let protoc = steps
        .iter()
        .find_map(|i| i.strip_prefix("ENV PROTOC=").map(str::trim))
        .expect("the Dockerfile sets PROTOC for the build steps")
        .to_string();
    let cook = steps.iter().position(|i| i.contains("cargo chef cook")).expect("a cargo chef cook step");
    let copied = steps[..cook].iter().find_map(|i| {
        let words: Vec<&str> = i.split_whitespace().collect();
        (words.first() == Some(&"COPY") && words.len() == 3 && words[2] == protoc)
            .then(|| words[1].to_string())
    });
    let source =
        copied.unwrap_or_else(|| panic!("{protoc} is not copied into the image before cargo chef cook"));
    assert_eq!(source, "tools/protoc", "PROTOC should be the repository's tools/protoc");
    for step in &steps {
        if step.contains("protobuf-compiler") {
            assert!(step.contains("libprotobuf-dev"), "protobuf-compiler without its includes: {step}");
        }
    }

    let metadata = cargo_metadata();
    let etcd_client = package_dir(&metadata, "etcd-client");
    let vendored_dir = package_dir(&metadata, "protoc-bin-vendored-linux-x86_64");
    let vendored = vendored_dir.join("bin/protoc");
    // <CARGO_HOME>/registry/src/<index>/<package>
    let cargo_home = vendored_dir.ancestors().nth(4).expect("CARGO_HOME").to_path_buf();
    let script = root().join(&source);
    let system_path = "/usr/local/bin:/usr/bin:/bin";

    // A protoc on PATH without google/protobuf/*.proto: Debian's
    // protobuf-compiler without libprotobuf-dev. A copy of the vendored
    // binary is exactly that (protoc looks for includes beside itself).
    let bare = tempfile::tempdir().expect("temp dir");
    let bin = bare.path().join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    std::fs::copy(&vendored, bin.join("protoc")).expect("copy protoc");
    let direct = compile_etcd_protos(&bin.join("protoc"), system_path, &cargo_home, &etcd_client);
    assert!(
        !direct.status.success()
            && String::from_utf8_lossy(&direct.stderr)
                .contains("google/protobuf/descriptor.proto: File not found"),
        "the bare protoc should miss descriptor.proto (test premise): {}",
        String::from_utf8_lossy(&direct.stderr)
    );
    let output =
        compile_etcd_protos(&script, &format!("{}:{system_path}", bin.display()), &cargo_home, &etcd_client);
    assert!(
        output.status.success(),
        "tools/protoc beside a protoc without includes failed on etcd-client's protos:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // A protoc on PATH *with* its includes is the one used.
    let full = tempfile::tempdir().expect("temp dir");
    let marker = full.path().join("used");
    let wrapper = full.path().join("protoc");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\necho used >> '{}'\nexec '{}' \"$@\"\n", marker.display(), vendored.display()),
    )
    .expect("write wrapper");
    std::process::Command::new("chmod").arg("+x").arg(&wrapper).status().expect("chmod");
    let output = compile_etcd_protos(
        &script,
        &format!("{}:{system_path}", full.path().display()),
        &cargo_home,
        &etcd_client,
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let uses = std::fs::read_to_string(&marker).unwrap_or_default().lines().count();
    assert_eq!(uses, 2, "a complete system protoc is probed, then used");

    // And with no protoc on PATH at all (the rust image): the vendored one.
    let output = compile_etcd_protos(&script, system_path, &cargo_home, &etcd_client);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// Whether `.dockerignore` excludes `path` (relative, `/`-separated), as
/// Docker reads it: patterns match the path or one of its parent folders
/// (`*`, `?` within one segment), later `!` lines re-include.
fn docker_ignores(patterns: &[String], path: &str) -> bool {
    fn glob(pattern: &str, text: &str) -> bool {
        let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
        fn go(p: &[char], t: &[char]) -> bool {
            match (p.first(), t.first()) {
                (None, None) => true,
                (Some('*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
                (Some('?'), Some(_)) => go(&p[1..], &t[1..]),
                (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
                _ => false,
            }
        }
        go(&p, &t)
    }
    let segments: Vec<&str> = path.split('/').collect();
    let mut ignored = false;
    for raw in patterns {
        let (negated, pattern) = match raw.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, raw.as_str()),
        };
        let pattern = pattern.trim_start_matches('/').trim_end_matches('/');
        assert!(!pattern.contains("**"), ".dockerignore: `**` is not understood by this test: {raw}");
        let parts: Vec<&str> = pattern.split('/').collect();
        let matches = parts.len() <= segments.len() && parts.iter().zip(&segments).all(|(p, s)| glob(p, s));
        if matches {
            ignored = !negated;
        }
    }
    ignored
}

/// Every file of a repository folder, recursively, relative to the root.
fn files_under(relative: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root().join(relative)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root()).expect("inside the root");
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out
}

#[test]
fn dockerignore_keeps_everything_the_image_build_reads() {
    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    let mut needed: BTreeSet<String> =
        ["Cargo.toml", "Cargo.lock", ".cargo/config.toml", "tools/protoc"].map(String::from).into();
    // The sources and build scripts of every crate, and what they pull in
    // with include_str!/include_bytes! (etc/, sql/) or read (proto/).
    for file in files_under("crates") {
        if file.ends_with(".rs") {
            let text = read(&file);
            for macro_name in ["include_str!(\"", "include_bytes!(\""] {
                for piece in text.split(macro_name).skip(1) {
                    let target = piece.split('"').next().unwrap_or("");
                    let dir = Path::new(&file).parent().expect("parent");
                    let joined = root().join(dir).join(target);
                    if let Ok(resolved) = joined.canonicalize() {
                        let rel = resolved.strip_prefix(root()).expect("inside the root");
                        needed.insert(rel.to_string_lossy().into_owned());
                    } else {
                        panic!("{file}: include of {target} does not resolve");
                    }
                }
            }
        }
        needed.insert(file);
    }
    needed.extend(files_under("proto"));
    // What the Dockerfile copies by name.
    for step in dockerfile_instructions() {
        let words: Vec<&str> = step.split_whitespace().collect();
        if words.first() == Some(&"COPY") && !words.iter().any(|w| w.starts_with("--from")) {
            for source in &words[1..words.len() - 1] {
                if *source == "." {
                    continue;
                }
                let path = root().join(source);
                assert!(path.exists(), "the Dockerfile copies {source}, which does not exist");
                if path.is_dir() {
                    needed.extend(files_under(source.trim_end_matches('/')));
                } else {
                    needed.insert(source.to_string());
                }
            }
        }
    }
    let mut problems: Vec<String> = needed
        .iter()
        .filter(|path| docker_ignores(&patterns, path))
        .map(|path| format!(".dockerignore excludes {path}, which the image build reads"))
        .collect();
    for path in &needed {
        if !root().join(path).exists() {
            problems.push(format!("{path} is read by the build but missing"));
        }
    }
    // And it still keeps the heavy things out (the check above must not be
    // satisfied by an empty file).
    for heavy in ["target/release/coordinator", ".git/HEAD"] {
        if !docker_ignores(&patterns, heavy) {
            problems.push(format!(".dockerignore lets {heavy} into the build context"));
        }
    }
    assert_no_problems(&problems);
}

#[test]
fn scripts_and_files_read_in_containers_keep_lf_line_endings() {
    let listed =
        Command::new("git").args(["ls-files"]).current_dir(root()).output().expect("run git ls-files");
    assert!(listed.status.success(), "git ls-files: {}", String::from_utf8_lossy(&listed.stderr));
    let files: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|f| {
            [".sh", ".sql", ".yaml", ".yml"].iter().any(|ext| f.ends_with(ext))
                || ["tools/protoc", "Dockerfile", ".ci/run"].contains(f)
        })
        .map(String::from)
        .collect();
    assert!(files.iter().any(|f| f == "deploy/mysql/init/10-schemas.sh"), "{files:?}");
    let mut args = vec!["check-attr".to_string(), "eol".into(), "--".into()];
    args.extend(files.iter().cloned());
    let output = Command::new("git").args(&args).current_dir(root()).output().expect("run git check-attr");
    let report = String::from_utf8_lossy(&output.stdout);
    let problems: Vec<String> = report
        .lines()
        .filter(|line| !line.ends_with(": eol: lf"))
        .map(|line| format!("{line} (a Windows checkout would give it CRLF): add it to .gitattributes"))
        .collect();
    assert_eq!(report.lines().count(), files.len(), "{report}");
    assert_no_problems(&problems);
}

#[tokio::test(flavor = "multi_thread")]
async fn dockerfile_usage_example_is_reachable_through_its_published_port() {
    // `docker run --rm -p 8889:8889 quickorder:latest quickorder up …` in
    // the Dockerfile's header: what it runs must listen on every interface
    // (Docker forwards -p to the container's address, not its loopback),
    // on the container port it publishes.
    let text = read("Dockerfile");
    let line = text
        .lines()
        .find_map(|l| l.trim_start_matches('#').trim().strip_prefix("docker run "))
        .expect("a `docker run` example in the Dockerfile header");
    let words: Vec<&str> = line.split('#').next().unwrap_or("").split_whitespace().collect();
    let image = words.iter().position(|w| w.starts_with("quickorder:")).expect("the image in the example");
    let published = words
        .windows(2)
        .find(|w| w[0] == "-p")
        .map(|w| w[1].rsplit(':').next().unwrap_or("").parse::<u16>().expect("a container port"))
        .expect("a -p in the example");
    let command = &words[image + 1..];
    assert_eq!(command.first(), Some(&"quickorder"), "{line}");
    let args: Vec<String> = command[1..].iter().map(|w| w.to_string()).collect();
    assert!(!args.iter().any(|a| a.ends_with("-port")), "the example sets ports; adapt this test: {line}");
    // The port it listens on by default is the published one…
    let help = Command::new(env!("CARGO_BIN_EXE_quickorder"))
        .args(["up", "--help"])
        .output()
        .expect("quickorder up --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let default = help
        .split("--api-port")
        .nth(1)
        .and_then(|rest| rest.split("[default: ").nth(1))
        .and_then(|rest| rest.split(']').next())
        .and_then(|port| port.parse::<u16>().ok())
        .expect("--api-port's default in quickorder up --help");
    assert_eq!(default, published, "the example publishes {published}, order-api listens on {default}");

    // … and the example's own arguments make it listen beyond loopback
    // (here on port 0 instead of the default, which another test may hold).
    let _slot = harness::system_slot();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_quickorder"))
        .args(&args)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--api-port", "0", "--coordinator-http-port", "0", "--coordinator-grpc-port", "0"])
        .args(["--order-port", "0", "--stock-port", "0"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start quickorder up");
    let watch = harness::StdoutWatch::new(child.stdout.take().expect("piped"), "quickorder", child.id());
    let ready = watch.wait_ready(Duration::from_secs(60));
    let result = async {
        let ready = ready?;
        let api = ready.addr("api");
        if !api.ip().is_unspecified() {
            return Err(format!("`quickorder {}` listens on {api}: unreachable through -p", args.join(" ")));
        }
        let reply = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/order/quickCreate", api.port()))
            .json(&serde_json::json!({"userId": 1, "goodsId": 1, "num": 1}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = reply.status();
        let body = reply.text().await.unwrap_or_default();
        if status != 200 {
            return Err(format!("quickCreate answered {status}: {body}"));
        }
        Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    if let Err(err) = result {
        panic!("{err}\n{}", watch.finish());
    }
}

// ---------------------------------------------------------------------------
// Kubernetes: each container's environment as the kubelet builds it, and
// each process's configuration loaded from it.

/// The pod IP the downward API hands out in the renderings below.
const POD_IP: &str = "10.244.1.7";

/// The variables the kubelet derives from Services ("service links", on by
/// default): for every Service with a cluster IP in the pod's namespace
/// (headless ones have none), `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT`,
/// `<NAME>_SERVICE_PORT_<PORT NAME>`, `<NAME>_PORT=tcp://ip:port` and
/// `<NAME>_PORT_<port>_TCP{,_PROTO,_PORT,_ADDR}` (Kubernetes'
/// pkg/kubelet/envvars/envvars.go). `kubernetes` (the API server's Service)
/// is always there; the others only with `enableServiceLinks` true.
/// A Service's ports: `(port name, port)`.
type ServicePorts = Vec<(Option<String>, u64)>;

fn service_link_env(resources: &[(String, Value)], links: bool) -> BTreeMap<String, String> {
    let mut services: Vec<(String, ServicePorts)> =
        vec![("kubernetes".into(), vec![(Some("https".into()), 443)])];
    if links {
        for (_, r) in resources {
            if r["kind"].as_str() != Some("Service") || r["spec"]["clusterIP"].as_str() == Some("None") {
                continue;
            }
            let ports = r["spec"]["ports"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|p| (p["name"].as_str().map(String::from), p["port"].as_u64().unwrap_or(0)))
                .collect();
            services.push((r["metadata"]["name"].as_str().unwrap_or("").to_string(), ports));
        }
    }
    let mut env = BTreeMap::new();
    for (i, (name, ports)) in services.iter().enumerate() {
        let ip = format!("10.96.0.{}", i + 1);
        let prefix = name.to_ascii_uppercase().replace('-', "_");
        let Some((_, first)) = ports.first() else { continue };
        env.insert(format!("{prefix}_SERVICE_HOST"), ip.clone());
        env.insert(format!("{prefix}_SERVICE_PORT"), first.to_string());
        env.insert(format!("{prefix}_PORT"), format!("tcp://{ip}:{first}"));
        for (port_name, port) in ports {
            if let Some(port_name) = port_name {
                let suffix = port_name.to_ascii_uppercase().replace('-', "_");
                env.insert(format!("{prefix}_SERVICE_PORT_{suffix}"), port.to_string());
            }
            let base = format!("{prefix}_PORT_{port}_TCP");
            env.insert(base.clone(), format!("tcp://{ip}:{port}"));
            env.insert(format!("{base}_PROTO"), "tcp".into());
            env.insert(format!("{base}_PORT"), port.to_string());
            env.insert(format!("{base}_ADDR"), ip.clone());
        }
    }
    env
}

/// `$(NAME)` expanded from `known` as the kubelet does (unknown references
/// stay as written; `$$` escapes a `$`).
fn kubelet_expand(value: &str, known: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(v) = known.get(&inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The environment of a Deployment's (only) container, as the kubelet
/// builds it: service links (per the pod's `enableServiceLinks`, or
/// always with `force_links`), then the container's `env` in order, each
/// value expanded against what precedes it, the downward API and Secrets
/// resolved (`secret_values` replaces keys of the manifests' Secrets).
fn kubelet_env(
    resources: &[(String, Value)],
    app: &str,
    force_links: bool,
    secret_values: &BTreeMap<(String, String), String>,
) -> BTreeMap<String, String> {
    let deployment = find(resources, "Deployment", app).unwrap_or_else(|| panic!("no Deployment {app}"));
    let spec = &deployment["spec"]["template"]["spec"];
    let links = force_links || spec["enableServiceLinks"].as_bool() != Some(false);
    let services = service_link_env(resources, links);
    let mut defined: BTreeMap<String, String> = BTreeMap::new();
    for item in spec["containers"][0]["env"].as_sequence().into_iter().flatten() {
        let name = item["name"].as_str().expect("env name").to_string();
        let from = &item["valueFrom"];
        let value = if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
            match path {
                "status.podIP" => POD_IP.to_string(),
                "metadata.name" => format!("{app}-7d9f8c6b5-x2x4q"),
                other => panic!("{app}: fieldRef {other} not rendered by this test"),
            }
        } else if !from["secretKeyRef"].is_null() {
            let secret = from["secretKeyRef"]["name"].as_str().unwrap_or("").to_string();
            let key = from["secretKeyRef"]["key"].as_str().unwrap_or("").to_string();
            let optional = from["secretKeyRef"]["optional"].as_bool() == Some(true);
            let stored = find(resources, "Secret", &secret).map(|s| {
                assert!(s["data"].is_null(), "Secret {secret}: use stringData (this test reads no base64)");
                scalar(&s["stringData"][key.as_str()])
            });
            match secret_values.get(&(secret.clone(), key.clone())).cloned().or(stored.flatten()) {
                Some(value) => value,
                None if optional => continue,
                None => panic!("{app}: {name} needs Secret {secret}/{key}, which does not exist"),
            }
        } else {
            let mut known = services.clone();
            known.extend(defined.clone());
            kubelet_expand(&scalar(&item["value"]).unwrap_or_default(), &known)
        };
        defined.insert(name, value);
    }
    let mut env = services;
    env.extend(defined);
    env
}

/// What a loaded configuration says about the process, for comparison
/// with the manifests.
#[derive(Debug)]
struct Loaded {
    /// The ports it listens on.
    ports: BTreeSet<u16>,
    /// The coordinator's `AuthToken`, or order-api's `DtmToken`.
    token: String,
}

/// Loads `app`'s `etc/` file with `env` as its environment, through the
/// same code the binary runs.
fn load_config(app: &str, env: &BTreeMap<String, String>) -> Result<Loaded, String> {
    let file = format!("etc/{app}.yaml");
    let text = read(&file);
    let path = Path::new(&file);
    let lookup = |name: &str| env.get(name).cloned();
    match app {
        "coordinator" => {
            let config = coordinator::config::Config::from_sources(Some((path, &text)), lookup)
                .map_err(|e| e.to_string())?;
            Ok(Loaded {
                ports: [config.http_port, config.grpc_port].into(),
                token: config.auth_token.expose().to_string(),
            })
        }
        "order-api" => {
            let config: order_api::Config =
                service_kit::config::parse_yaml(path, &text, lookup).map_err(|e| e.to_string())?;
            let mut ports: BTreeSet<u16> = [config.port].into();
            ports.extend(metrics_port(config.prometheus.as_ref()));
            Ok(Loaded { ports, token: config.dtm_token.expose().to_string() })
        }
        "order-srv" | "stock-srv" => {
            let config: service_kit::RpcServerConf =
                service_kit::config::parse_yaml(path, &text, lookup).map_err(|e| e.to_string())?;
            let mut ports: BTreeSet<u16> = [port_of(&config.listen_on)].into();
            ports.extend(metrics_port(config.prometheus.as_ref()));
            Ok(Loaded { ports, token: String::new() })
        }
        other => panic!("unknown app {other}"),
    }
}

/// The port of the metrics listener a `Prometheus` block asks for, if any.
fn metrics_port(conf: Option<&service_kit::PrometheusConf>) -> Option<u16> {
    conf.and_then(|conf| conf.listen_on()).map(|addr| port_of(&addr))
}

#[test]
fn k8s_each_process_loads_its_config_from_the_environment_the_kubelet_gives_it() {
    let resources = resources();
    let token = ("quickorder-dtm".to_string(), "token".to_string());
    let mut problems = Vec::new();
    // As shipped; with service links forced on (a cluster or a later
    // manifest may turn them back on: the configs must not depend on them
    // being off); and with the coordinator's token set.
    for (force_links, secrets) in [
        (false, BTreeMap::new()),
        (true, BTreeMap::new()),
        (false, BTreeMap::from([(token.clone(), "k8s-s3cret".to_string())])),
        (true, BTreeMap::from([(token.clone(), "k8s-s3cret".to_string())])),
    ] {
        let case = format!(
            "service links {}, token {:?}",
            if force_links { "on" } else { "as shipped" },
            secrets.get(&token)
        );
        let mut tokens = BTreeMap::new();
        for app in apps() {
            let env = kubelet_env(&resources, app.name, force_links, &secrets);
            if force_links
                && !env.keys().any(|k| k.ends_with("_SERVICE_HOST") && k != "KUBERNETES_SERVICE_HOST")
            {
                problems.push(format!("{case}: no service links rendered (test premise)"));
            }
            let loaded = match load_config(app.name, &env) {
                Ok(loaded) => loaded,
                Err(err) => {
                    problems.push(format!("{case}: {} does not start: {err}", app.name));
                    continue;
                }
            };
            let deployment = find(&resources, "Deployment", app.name).expect("deployment");
            let declared: BTreeSet<u16> = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|p| p["containerPort"].as_u64().and_then(|n| u16::try_from(n).ok()))
                .collect();
            if loaded.ports != declared {
                problems.push(format!(
                    "{case}: {} listens on {:?}, its containerPorts are {declared:?}",
                    app.name, loaded.ports
                ));
            }
            tokens.insert(app.name, loaded.token);
        }
        if let (Some(auth), Some(sent)) = (tokens.get("coordinator"), tokens.get("order-api")) {
            if auth != sent {
                problems.push(format!(
                    "{case}: the coordinator expects token {auth:?}, order-api sends {sent:?}"
                ));
            }
            if secrets.contains_key(&token) && auth.is_empty() {
                problems.push(format!(
                    "{case}: the token in Secret quickorder-dtm does not reach the coordinator"
                ));
            }
        }
    }
    assert_no_problems(&problems);
}

#[test]
fn kubelet_rendering_catches_a_service_link_in_a_config_variable() {
    // The rendering above must be able to fail: a Port read from
    // ORDER_API_PORT, as etc/order-api.yaml once did, breaks with links on.
    let resources = resources();
    let env = kubelet_env(&resources, "order-api", true, &BTreeMap::new());
    let link = env.get("ORDER_API_PORT").cloned().unwrap_or_default();
    assert!(link.starts_with("tcp://10.96.0.") && link.ends_with(":8889"), "{env:?}");
    let text = read("etc/order-api.yaml").replace("ORDER_API_LISTEN_PORT", "ORDER_API_PORT");
    let lookup = |name: &str| env.get(name).cloned();
    let err =
        service_kit::config::parse_yaml::<order_api::Config>(Path::new("order-api.yaml"), &text, lookup)
            .expect_err("Port: tcp://… must not load");
    assert!(err.to_string().contains("Port"), "{err}");
}
