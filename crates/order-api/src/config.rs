//! `etc/order-api.yaml` (go-zero's `order-api/internal/config/config.go`:
//! `rest.RestConf` plus the two `zrpc.RpcClientConf`s), with what the Go demo
//! hard-coded made configurable: the coordinator's address (`DtmServer`,
//! `var dtmServer = "etcd://localhost:2379/dtmservice"` in the demo), how
//! long to wait for a saga's outcome, and the largest order.

use std::time::Duration;

use discovery::RpcClientConf;
use serde::Deserialize;
use service_kit::{LogConf, Mode, PrometheusConf};

fn default_host() -> String {
    "0.0.0.0".to_string()
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_bytes() -> usize {
    1024 * 1024
}
fn default_max_num() -> i64 {
    1000
}
fn default_max_conns() -> usize {
    10_000
}
fn default_dtm_timeout_ms() -> u64 {
    3000
}
fn default_submit_wait_ms() -> u64 {
    3000
}

/// How `quickCreate` runs its two steps (`TransMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransMode {
    /// A saga submitted to the coordinator, which calls the branches (the article's).
    #[default]
    Saga,
    /// dtm's workflow mode: order-api calls the branches itself, each
    /// step recorded by the coordinator, which resumes an interrupted
    /// order through order-api's callback (`crate::workflow`).
    Workflow,
}

/// The whole file. Unknown keys are errors (a typo must not silently fall
/// back to a default).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Config {
    /// Service name for logs (`order-api`).
    pub name: String,
    /// Interface to listen on (go-zero `Host`, default `0.0.0.0`).
    #[serde(default = "default_host")]
    pub host: String,
    /// HTTP port (8889 in the demo; 0 picks a free port).
    pub port: u16,
    /// Logging.
    #[serde(default)]
    pub log: LogConf,
    /// go-zero's `Telemetry` block: OTLP span export, off when absent or
    /// its `Endpoint` is empty (`service_kit::telemetry`).
    #[serde(default)]
    pub telemetry: Option<service_kit::telemetry::TelemetryConf>,
    /// `dev|test|rt|pre|pro`.
    #[serde(default)]
    pub mode: Mode,
    /// Deadline of a whole HTTP request in milliseconds; past it the client
    /// gets 503 (go-zero's `Timeout`; ours defaults to 10 s because a request
    /// may wait `SubmitWait` for the saga).
    #[serde(default = "default_timeout_ms")]
    pub timeout: u64,
    /// Largest request body in bytes; larger bodies get 413 (go-zero's
    /// `MaxBytes`, 1 MiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Largest `num` one quick order may ask for.
    #[serde(default = "default_max_num")]
    pub max_num: i64,
    /// Open connections at most (go-zero's `MaxConns`, 10000); further
    /// clients wait in the kernel's accept queue.
    #[serde(default = "default_max_conns")]
    pub max_conns: usize,
    /// The coordinator's gRPC address: `etcd://127.0.0.1:2379/dtmservice`
    /// (found in etcd, as the demo does) or `127.0.0.1:36790`.
    pub dtm_server: String,
    /// The coordinator's HTTP API (`http://127.0.0.1:36789/api/dtmsvr`),
    /// used by `GET /order/status/{gid}`: dtm has no gRPC query. Absent:
    /// the status route answers 503.
    #[serde(default)]
    pub dtm_http_server: Option<String>,
    /// The coordinator's `AuthToken`, sent as `Authorization: Bearer …`;
    /// empty: none (dtm has no authentication). Never logged.
    #[serde(default)]
    pub dtm_token: service_kit::config::Secret,
    /// Deadline of one call to the coordinator (new gid, query) in ms.
    #[serde(default = "default_dtm_timeout_ms")]
    pub dtm_timeout: u64,
    /// How long `quickCreate` waits for the saga's outcome (ms). Sagas still
    /// running after it are answered 202 `submitted`; the coordinator
    /// finishes them anyway.
    #[serde(default = "default_submit_wait_ms")]
    pub submit_wait: u64,
    /// How the coordinator reaches order-srv (`Etcd`, `Endpoints` or `Target`).
    pub order_rpc_conf: RpcClientConf,
    /// How the coordinator reaches stock-srv.
    pub stock_rpc_conf: RpcClientConf,
    /// Optional: order-srv's HTTP branches (`http://127.0.0.1:9011/api/order`,
    /// served when order-srv has `HttpListenOn`). When set, the saga's order
    /// step uses `<this>/create` and `<this>/createRollback` with a JSON
    /// body instead of the gRPC methods from `OrderRpcConf`.
    #[serde(default)]
    pub order_http_url: Option<String>,
    /// Optional: stock-srv's HTTP branches (`http://127.0.0.1:9012/api/stock`):
    /// `<this>/deduct`, `<this>/deductRollback`.
    #[serde(default)]
    pub stock_http_url: Option<String>,
    /// `saga` (default) or `workflow`: how `quickCreate` runs.
    #[serde(default)]
    pub trans_mode: TransMode,
    /// Where the coordinator calls back to resume an interrupted workflow
    /// (`TransMode: workflow`). Absent: `http://<Host>:<bound port>/api/workflow/resume`,
    /// with `127.0.0.1` for a `Host` of `0.0.0.0` (a coordinator on this machine).
    #[serde(default)]
    pub workflow_callback_url: Option<String>,
    /// go-zero's `Prometheus` block: the metrics listener (`Host`, `Port`,
    /// `Path`); absent or with an empty `Host`: none.
    #[serde(default)]
    pub prometheus: Option<PrometheusConf>,
}

impl Config {
    /// Checks what serde cannot: sane durations, a usable `MaxNum`, buildable
    /// targets. Returns the problem as `(key, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.max_num < 1 {
            return Err(("MaxNum".into(), format!("must be at least 1, got {}", self.max_num)));
        }
        if self.submit_wait == 0 || self.submit_wait >= self.timeout {
            return Err((
                "SubmitWait".into(),
                format!("must be positive and below Timeout ({} ms), got {}", self.timeout, self.submit_wait),
            ));
        }
        if self.max_conns == 0 {
            return Err(("MaxConns".into(), "must be at least 1".into()));
        }
        if self.dtm_timeout == 0 {
            return Err(("DtmTimeout".into(), "must be positive".into()));
        }
        for (key, url) in [
            ("OrderHttpUrl", &self.order_http_url),
            ("StockHttpUrl", &self.stock_http_url),
            ("WorkflowCallbackUrl", &self.workflow_callback_url),
        ] {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err((key.into(), format!("must be an http:// or https:// URL, got {url:?}")));
            }
        }
        for (key, conf) in [("OrderRpcConf", &self.order_rpc_conf), ("StockRpcConf", &self.stock_rpc_conf)] {
            conf.build_target().map_err(|err| (key.to_string(), err.to_string()))?;
        }
        Ok(())
    }

    /// `Timeout` as a [`Duration`].
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.timeout)
    }

    /// `DtmTimeout` as a [`Duration`].
    pub fn dtm_call_timeout(&self) -> Duration {
        Duration::from_millis(self.dtm_timeout)
    }

    /// `SubmitWait` as a [`Duration`].
    pub fn submit_wait(&self) -> Duration {
        Duration::from_millis(self.submit_wait)
    }
}

/// The prefix of a service's saga branch URLs, from its `RpcClientConf`:
///
/// * `Etcd {Hosts, Key}` → `etcd://h1:2379,h2:2379/order.rpc` (go-zero's
///   `BuildTarget()` up to v1.10.1, the only form dtm's driver splits);
/// * one `Endpoints` entry → `127.0.0.1:9001` (dtm's scheme-less form);
/// * several → `direct:///h1:9001,h2:9001`;
/// * `Target` → as written.
///
/// Appending `/pb.order/create` gives the branch URL.
pub fn branch_base(conf: &RpcClientConf) -> Result<String, discovery::DiscoveryError> {
    match conf.endpoints.as_slice() {
        [single] => Ok(single.clone()),
        _ => conf.build_target(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const DEMO: &str = "Name: order-api\nHost: 0.0.0.0\nPort: 8889\nDtmServer: etcd://127.0.0.1:2379/dtmservice\n\
        OrderRpcConf:\n  Etcd:\n    Hosts: [127.0.0.1:2379]\n    Key: order.rpc\n\
        StockRpcConf:\n  Endpoints: [127.0.0.1:9002]\n";

    fn parse(yaml: &str) -> Result<Config, service_kit::ConfigError> {
        service_kit::config::parse_yaml(Path::new("order-api.yaml"), yaml, |_| None)
    }

    #[test]
    fn the_demo_shape_parses_with_defaults() {
        let config = parse(DEMO).unwrap();
        assert_eq!(config.port, 8889);
        assert_eq!(config.max_num, 1000);
        assert!(config.validate().is_ok());
        assert_eq!(branch_base(&config.order_rpc_conf).unwrap(), "etcd://127.0.0.1:2379/order.rpc");
        assert_eq!(branch_base(&config.stock_rpc_conf).unwrap(), "127.0.0.1:9002");
    }

    #[test]
    fn http_branch_urls_are_optional_and_checked() {
        let config = parse(DEMO).unwrap();
        assert_eq!((config.order_http_url.as_deref(), config.stock_http_url.as_deref()), (None, None));
        let config = parse(&format!(
            "{DEMO}OrderHttpUrl: http://127.0.0.1:9011/api/order\nStockHttpUrl: 127.0.0.1:9012\n"
        ))
        .unwrap();
        assert_eq!(config.validate().unwrap_err().0, "StockHttpUrl");
    }

    #[test]
    fn the_saga_is_the_default_and_workflow_the_switch() {
        assert_eq!(parse(DEMO).unwrap().trans_mode, TransMode::Saga);
        let config = parse(&format!("{DEMO}TransMode: workflow\n")).unwrap();
        assert_eq!(config.trans_mode, TransMode::Workflow);
        assert!(parse(&format!("{DEMO}TransMode: xa\n")).is_err());
        let config = parse(&format!("{DEMO}WorkflowCallbackUrl: localhost:1/x\n")).unwrap();
        assert_eq!(config.validate().unwrap_err().0, "WorkflowCallbackUrl");
    }

    #[test]
    fn several_endpoints_use_the_direct_scheme() {
        let conf = RpcClientConf::from_endpoints(vec!["a:1".into(), "b:2".into()]);
        assert_eq!(branch_base(&conf).unwrap(), "direct:///a:1,b:2");
    }

    #[test]
    fn bad_values_name_their_key() {
        let config = parse(&format!("{DEMO}SubmitWait: 20000\n")).unwrap();
        assert_eq!(config.validate().unwrap_err().0, "SubmitWait");
        let config = parse(&format!("{DEMO}MaxNum: 0\n")).unwrap();
        assert_eq!(config.validate().unwrap_err().0, "MaxNum");
        let err = parse(&format!("{DEMO}DtmSever: x\n")).unwrap_err().to_string();
        assert!(err.contains("DtmSever"), "{err}");
    }
}
