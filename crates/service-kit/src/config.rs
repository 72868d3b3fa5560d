//! go-zero style configuration: one YAML file per process, PascalCase keys,
//! `${VAR}` placeholders filled from the environment.
//!
//! ```yaml
//! Name: order.rpc
//! ListenOn: 0.0.0.0:9001
//! Etcd:
//!   Hosts:
//!     - ${ETCD_HOST:-127.0.0.1:2379}
//!   Key: order.rpc
//! DB:
//!   DataSource: ${ORDER_DSN:-root:root@tcp(127.0.0.1:3306)/dtm_gozero_order?charset=utf8mb4}
//! ```
//!
//! * [`load_yaml`] reads the file, expands placeholders ([`expand_env`]) and
//!   parses it. YAML goes through `serde_yaml_ng`, the maintained fork of the
//!   deprecated `serde_yaml`.
//! * Config structs are declared with
//!   `#[serde(rename_all = "PascalCase", deny_unknown_fields)]`: a typo
//!   (`Host:` for `Hosts:`) or a missing required key stops the process at
//!   start-up with an error naming the file and the key, instead of running
//!   with a silently wrong setting. go-zero does the same (fields are required
//!   unless tagged `optional`).
//! * The blocks that several processes share live here: [`LogConf`],
//!   [`Mode`], [`DbConf`], [`PrometheusConf`] and [`RpcServerConf`]
//!   (go-zero's `zrpc.RpcServerConf` plus the `DB` block both demo
//!   services add).

use std::path::{Path, PathBuf};
use std::time::Duration;

use discovery::EtcdConf;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::datasource::DataSource;

/// Why a configuration file could not be turned into a config struct.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, permissions, not UTF-8).
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file we tried to read.
        path: PathBuf,
        /// The I/O cause.
        source: std::io::Error,
    },
    /// A `${VAR}` placeholder names a variable that is not set and has no
    /// `:-default`.
    #[error(
        "config file {path}, line {line}: environment variable {var} is not set (use ${{{var}:-default}} for a default)"
    )]
    MissingVar {
        /// The file with the placeholder.
        path: PathBuf,
        /// 1-based line of the placeholder.
        line: usize,
        /// The variable's name.
        var: String,
    },
    /// A `${` that does not form a valid placeholder.
    #[error("config file {path}, line {line}: malformed placeholder: {reason}")]
    BadPlaceholder {
        /// The file with the placeholder.
        path: PathBuf,
        /// 1-based line of the placeholder.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The YAML is invalid or does not fit the config struct. The message
    /// names the key (`DB: missing field `DataSource``, `unknown field
    /// `Host``) and the position.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file that failed to parse.
        path: PathBuf,
        /// serde_yaml_ng's message: key path, problem, line and column.
        message: String,
    },
    /// The YAML parsed, but a value is not acceptable (e.g. a bad DSN).
    #[error("config file {path}: {key}: {message}")]
    Invalid {
        /// The file with the bad value.
        path: PathBuf,
        /// The key, as written in the YAML (`DB.DataSource`).
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads `path`, expands `${VAR}` / `${VAR:-default}` from the process
/// environment, and parses the result as YAML into `T`.
pub fn load_yaml<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T, ConfigError> {
    let path = path.as_ref();
    let raw = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse_yaml(path, &raw, |name| std::env::var(name).ok())
}

/// [`load_yaml`] on a string, with a custom variable lookup (tests, embedded
/// defaults). `path` is only used in error messages.
pub fn parse_yaml<T: DeserializeOwned>(
    path: &Path,
    raw: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<T, ConfigError> {
    let expanded = expand_env(path, raw, lookup)?;
    serde_yaml_ng::from_str(&expanded)
        .map_err(|err| ConfigError::Parse { path: path.to_path_buf(), message: err.to_string() })
}

/// Replaces every `${VAR}`, `${VAR:-default}` and `${VAR-default}` in `raw`
/// with the variable's value. As in a shell, `:-default` applies when the
/// variable is unset *or empty*, `-default` only when it is unset (so
/// `${STORE_PASSWORD-root}` lets an empty password through).
///
/// The substitution is textual, before YAML parsing, like go-zero's
/// `conf.UseEnv()` (which runs `os.ExpandEnv` on the file): `Port: ${PORT}`
/// becomes a number. Quote the placeholder (`"${DSN}"`) when a value may
/// contain YAML syntax such as `: ` or ` #`. Placeholders inside `#`
/// comments are left alone, so a commented-out line never fails the load.
pub fn expand_env(
    path: &Path,
    raw: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(raw.len());
    for (index, line) in raw.split_inclusive('\n').enumerate() {
        let (code, comment) = split_comment(line);
        expand_line(code, &mut out, &lookup).map_err(|err| match err {
            LineError::Missing(var) => {
                ConfigError::MissingVar { path: path.to_path_buf(), line: index + 1, var }
            }
            LineError::Malformed(reason) => {
                ConfigError::BadPlaceholder { path: path.to_path_buf(), line: index + 1, reason }
            }
        })?;
        out.push_str(comment);
    }
    Ok(out)
}

/// What can go wrong in one line; [`expand_env`] adds the file and line.
enum LineError {
    Missing(String),
    Malformed(String),
}

fn expand_line(
    code: &str,
    out: &mut String,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(), LineError> {
    let mut rest = code;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| LineError::Malformed(format!("no closing '}}' after {:?}", &rest[start..])))?;
        let body = &after[..end];
        // `:-` replaces an unset or empty variable, `-` only an unset one
        // (as in a shell): an empty password is a value, not a gap.
        let (name, default, empty_is_unset) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default), true),
            None => match body.split_once('-') {
                Some((name, default)) => (name, Some(default), false),
                None => (body, None, false),
            },
        };
        if !is_var_name(name) {
            return Err(LineError::Malformed(format!("{:?} is not a variable name", name)));
        }
        let value = lookup(name).filter(|v| !(empty_is_unset && v.is_empty()));
        match (value, default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => return Err(LineError::Missing(name.to_string())),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(())
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Splits a line into its YAML content and its `#` comment. A `#` starts a
/// comment at the beginning of the line or after whitespace, outside quotes.
fn split_comment(line: &str) -> (&str, &str) {
    let mut quote: Option<char> = None;
    let mut previous_is_space = true;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && previous_is_space => return line.split_at(i),
            None => {}
        }
        previous_is_space = c.is_whitespace();
    }
    (line, "")
}

/// go-zero's `service.ServiceConf.Mode`. It decides developer conveniences:
/// in `dev` and `test` the gRPC servers also offer reflection (as the demo's
/// `main` does for `grpcurl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Development.
    Dev,
    /// Test environment.
    Test,
    /// Regression test.
    Rt,
    /// Pre-release.
    Pre,
    /// Production (go-zero's default).
    #[default]
    Pro,
}

impl Mode {
    /// Whether gRPC reflection is served (go-zero's demo: dev and test).
    pub fn serves_reflection(self) -> bool {
        matches!(self, Mode::Dev | Mode::Test)
    }
}

/// Log line format (go-zero's `Log.Encoding`; the coordinator's `LogEncoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogEncoding {
    /// Human-readable lines (our default: this is a teaching repository).
    #[default]
    Plain,
    /// One JSON object per line (go-zero's default; what log shippers want).
    Json,
}

fn default_level() -> String {
    "info".to_string()
}

/// go-zero's `logx.LogConf`, the part that applies to a process writing to
/// stdout (containers collect stdout; there is no file mode).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LogConf {
    /// Name put on every log line; defaults to the config's `Name`.
    #[serde(default)]
    pub service_name: Option<String>,
    /// `debug`, `info`, `warn`, `error` (go-zero's `severe` means `error`).
    /// `RUST_LOG`, when set, overrides it.
    #[serde(default = "default_level")]
    pub level: String,
    /// `plain` or `json`.
    #[serde(default)]
    pub encoding: LogEncoding,
}

impl Default for LogConf {
    fn default() -> LogConf {
        LogConf { service_name: None, level: default_level(), encoding: LogEncoding::default() }
    }
}

/// A value that must never reach a log: a token or password. `Debug`
/// prints `"***"` (or `""` when empty), so a config printed with `{:?}`
/// shows whether one is set but never what; [`Secret::expose`] gives the
/// value. The services' config and the coordinator's share this one type.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that needs it (a DSN, a comparison).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// No value configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

fn default_max_open_conns() -> u32 {
    64
}

/// The `DB` block of the demo services (`internal/config/config.go`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DbConf {
    /// The business database, either a sqlx URL (`mysql://…`,
    /// `postgres://…`, `sqlite://…`) or go-zero's Go DSN
    /// (`user:pass@tcp(host:port)/db?charset=utf8mb4&parseTime=true`).
    pub data_source: DataSource,
    /// Pool size; go-zero's sqlx pool uses 64.
    #[serde(default = "default_max_open_conns")]
    pub max_open_conns: u32,
}

fn default_prometheus_port() -> u16 {
    9101
}

fn default_prometheus_path() -> String {
    "/metrics".to_string()
}

/// go-zero's `Prometheus` block (`core/prometheus/config.go`): where the
/// metrics of [`crate::metrics`] are served, on a listener of their own
/// (go-zero's `prometheus.StartAgent`), apart from the service's ports.
///
/// Absent, or present with an empty `Host` (go-zero's rule, so that
/// `Host: "${PROMETHEUS_LISTEN_HOST:-}"` is off until the variable is
/// set): no listener. The counters are kept either way; they cost a few
/// atomic additions per call.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct PrometheusConf {
    /// Interface to listen on (`0.0.0.0`); empty: no listener.
    #[serde(default)]
    pub host: String,
    /// Port (go-zero's default 9101; 0 picks a free port, which the
    /// [readiness line](crate::ready) reports as `metrics=`).
    #[serde(default = "default_prometheus_port")]
    pub port: u16,
    /// The scrape path (go-zero's default `/metrics`).
    #[serde(default = "default_prometheus_path")]
    pub path: String,
}

impl PrometheusConf {
    /// `Host:Port` when a listener is wanted (`Host` not empty).
    pub fn listen_on(&self) -> Option<String> {
        let host = self.host.trim();
        (!host.is_empty()).then(|| format!("{host}:{}", self.port))
    }
}

fn default_rpc_timeout_ms() -> u64 {
    2000
}

fn default_max_msg_size() -> usize {
    4 * 1024 * 1024
}

/// go-zero's `zrpc.RpcServerConf` as the demo's `order-srv` and `stock-srv`
/// use it, plus their `DB` block. Both services have exactly this shape,
/// so it lives here once.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct RpcServerConf {
    /// Service name (`order.rpc`): log field and default log service name.
    pub name: String,
    /// Address to listen on, `0.0.0.0:9001`. Port 0 picks a free port.
    pub listen_on: String,
    /// Where to register in etcd; absent means "no registration" (callers
    /// use `Endpoints`).
    #[serde(default)]
    pub etcd: Option<EtcdConf>,
    /// The business database.
    #[serde(rename = "DB")]
    pub db: DbConf,
    /// Logging.
    #[serde(default)]
    pub log: LogConf,
    /// `dev|test|rt|pre|pro`.
    #[serde(default)]
    pub mode: Mode,
    /// Server-side deadline per call in milliseconds (go-zero: 2000).
    #[serde(default = "default_rpc_timeout_ms")]
    pub timeout: u64,
    /// Largest accepted request message in bytes (gRPC's usual 4 MiB).
    #[serde(default = "default_max_msg_size")]
    pub max_msg_size: usize,
    /// Where to serve the dtm-style HTTP flavour of the branches
    /// (`0.0.0.0:9011`); absent or empty: gRPC only. dtm reaches HTTP
    /// branches by URL (`http://host:9011/api/order/create`), not through etcd.
    #[serde(default)]
    pub http_listen_on: Option<String>,
    /// go-zero's `Telemetry` block: OTLP span export, off when absent or
    /// its `Endpoint` is empty (see [`crate::telemetry`]).
    #[serde(default)]
    pub telemetry: Option<crate::telemetry::TelemetryConf>,
    /// go-zero's `Prometheus` block: the metrics listener; absent: none.
    #[serde(default)]
    pub prometheus: Option<PrometheusConf>,
    /// Where to serve the read-only admin endpoint (`127.0.0.1:9021`):
    /// one gid's barrier and business rows, for the coordinator's console
    /// ([`crate::admin`]). Absent or empty (the shipped files): off.
    #[serde(default)]
    pub admin_listen_on: Option<String>,
}

impl RpcServerConf {
    /// The server-side deadline as a [`Duration`].
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.timeout)
    }

    /// How long a call may wait for a database connection: three quarters
    /// of the call deadline, so a dead database answers a clean retryable
    /// `Unavailable` before the deadline cuts the call off.
    pub fn db_acquire_timeout(&self) -> Duration {
        self.call_timeout() * 3 / 4
    }

    /// `HttpListenOn`, if set and not empty.
    pub fn http_listen_on(&self) -> Option<&str> {
        self.http_listen_on.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }

    /// `AdminListenOn`, if set and not empty.
    pub fn admin_listen_on(&self) -> Option<&str> {
        self.admin_listen_on.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }

    /// The name logs should carry.
    pub fn log_service_name(&self) -> &str {
        self.log.service_name.as_deref().unwrap_or(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    fn expand(raw: &str, pairs: &[(&str, &str)]) -> Result<String, ConfigError> {
        expand_env(Path::new("test.yaml"), raw, env(pairs))
    }

    #[test]
    fn placeholders_take_values_then_defaults() {
        let raw = "A: ${X}\nB: ${Y:-fallback}\nC: ${Z:-d}-${X}\n";
        let out = expand(raw, &[("X", "1"), ("Z", "")]).unwrap();
        assert_eq!(out, "A: 1\nB: fallback\nC: d-1\n");
    }

    #[test]
    fn a_dash_default_lets_an_empty_value_through() {
        let raw = "A: '${P-root}'\nB: '${Q-root}'\nC: '${P:-root}'\nD: '${E}'\n";
        let out = expand(raw, &[("P", ""), ("E", "")]).unwrap();
        assert_eq!(out, "A: ''\nB: 'root'\nC: 'root'\nD: ''\n");
    }

    #[test]
    fn missing_variable_is_named_with_its_line() {
        let err = expand("A: 1\nB: ${NOPE}\n", &[]).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ConfigError::MissingVar { line: 2, ref var, .. } if var == "NOPE"), "{text}");
        assert!(text.contains("NOPE") && text.contains("test.yaml"), "{text}");
    }

    #[test]
    fn comments_are_not_expanded() {
        let out = expand("A: x # was ${OLD}\n# B: ${GONE}\nC: \"a # ${X}\"\n", &[("X", "y")]).unwrap();
        assert_eq!(out, "A: x # was ${OLD}\n# B: ${GONE}\nC: \"a # y\"\n");
    }

    #[test]
    fn malformed_placeholders_are_errors() {
        assert!(matches!(expand("A: ${X\n", &[]), Err(ConfigError::BadPlaceholder { .. })));
        assert!(matches!(expand("A: ${1X}\n", &[]), Err(ConfigError::BadPlaceholder { .. })));
    }

    const SRV: &str = "Name: order.rpc\nListenOn: 0.0.0.0:${PORT:-9001}\nEtcd:\n  Hosts: [127.0.0.1:2379]\n  Key: order.rpc\nDB:\n  DataSource: ${DSN}\nMode: dev\n";

    #[test]
    fn rpc_server_conf_parses_the_demo_shape() {
        let conf: RpcServerConf =
            parse_yaml(Path::new("order.yaml"), SRV, env(&[("DSN", "root:pw@tcp(db:3306)/o")])).unwrap();
        assert_eq!(conf.listen_on, "0.0.0.0:9001");
        assert_eq!(conf.etcd.as_ref().map(|e| e.key.as_str()), Some("order.rpc"));
        assert_eq!(conf.mode, Mode::Dev);
        assert_eq!(conf.timeout, 2000);
        assert_eq!(conf.db.data_source.redacted(), "mysql://root:***@db:3306/o");
        assert_eq!(conf.http_listen_on(), None, "HTTP branches are off by default");
        let with_http = format!("{SRV}HttpListenOn: 127.0.0.1:9011\n");
        let conf: RpcServerConf =
            parse_yaml(Path::new("order.yaml"), &with_http, env(&[("DSN", "root:pw@tcp(db:3306)/o")]))
                .unwrap();
        assert_eq!(conf.http_listen_on(), Some("127.0.0.1:9011"));
        let empty = format!("{SRV}HttpListenOn: \"\"\n");
        let conf: RpcServerConf =
            parse_yaml(Path::new("order.yaml"), &empty, env(&[("DSN", "root:pw@tcp(db:3306)/o")])).unwrap();
        assert_eq!(conf.http_listen_on(), None, "empty means off (a `${{VAR:-}}` placeholder)");
    }

    #[test]
    fn the_prometheus_block_is_optional_and_off_without_a_host() {
        let dsn = || env(&[("DSN", "root:pw@tcp(db:3306)/o")]);
        let conf: RpcServerConf = parse_yaml(Path::new("order.yaml"), SRV, dsn()).unwrap();
        assert_eq!(conf.prometheus, None);
        let on = format!("{SRV}Prometheus:\n  Host: 127.0.0.1\n  Port: 0\n");
        let conf: RpcServerConf = parse_yaml(Path::new("order.yaml"), &on, dsn()).unwrap();
        let prometheus = conf.prometheus.expect("block");
        assert_eq!(
            (prometheus.listen_on().as_deref(), prometheus.path.as_str()),
            (Some("127.0.0.1:0"), "/metrics")
        );
        let off = format!("{SRV}Prometheus:\n  Host: \"${{PROMETHEUS_LISTEN_HOST:-}}\"\n");
        let conf: RpcServerConf = parse_yaml(Path::new("order.yaml"), &off, dsn()).unwrap();
        let prometheus = conf.prometheus.expect("block");
        assert_eq!(
            (prometheus.listen_on(), prometheus.port),
            (None, 9101),
            "go-zero: an empty Host serves nothing"
        );
        let typo = format!("{SRV}Prometheus:\n  Hots: 127.0.0.1\n");
        let err = parse_yaml::<RpcServerConf>(Path::new("order.yaml"), &typo, dsn()).unwrap_err().to_string();
        assert!(err.contains("Hots"), "{err}");
    }

    #[test]
    fn unknown_and_missing_keys_name_the_key() {
        let typo = SRV.replace("  Hosts:", "  Host:");
        let err =
            parse_yaml::<RpcServerConf>(Path::new("order.yaml"), &typo, env(&[("DSN", "sqlite::memory:")]))
                .unwrap_err()
                .to_string();
        assert!(err.contains("order.yaml") && err.contains("Host"), "{err}");

        let missing = SRV.replace("  DataSource: ${DSN}\n", "  MaxOpenConns: 3\n");
        let err =
            parse_yaml::<RpcServerConf>(Path::new("order.yaml"), &missing, env(&[])).unwrap_err().to_string();
        assert!(err.contains("DataSource"), "{err}");
    }
}
