//! The coordinator's configuration schema: dtm's `conf.yml` keys, our
//! defaults, cross-field validation, and the values derived from it.
//! Loading it from defaults, environment and file is in `load.rs`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
pub use crate::attempts::AttemptsRecord;

/// Passwords and tokens: service-kit's, shared with the services' config
/// (`Debug` prints `"***"`).
pub use service_kit::config::Secret;

/// The whole coordinator configuration (top level of the YAML file).
///
/// All durations are whole seconds, as in dtm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
pub struct Config {
    /// Address both listeners bind to. `0.0.0.0` serves every interface;
    /// tests use `127.0.0.1`.
    pub listen_host: String,
    /// HTTP API port (dtm: 36789). 0 picks a free port (tests).
    pub http_port: u16,
    /// gRPC API port (dtm: 36790). 0 picks a free port (tests).
    pub grpc_port: u16,
    /// Where transactions are stored.
    pub store: StoreConfig,
    /// Base retry interval and recovery lease length (dtm default 10 s).
    pub retry_interval: u64,
    /// Upper bound of the doubling backoff after transient branch errors.
    /// dtm has no cap (an outage of a day leads to day-long waits); we cap.
    pub max_retry_interval: u64,
    /// Default timeout of prepared TCC/XA/msg transactions (dtm: 35 s).
    /// Sagas only time out when the request carries `timeout_to_fail`.
    pub timeout_to_fail: u64,
    /// Default timeout of one branch call (dtm: 3 s).
    pub request_timeout: u64,
    /// How long the recovery poller sleeps when nothing is due (dtm: 3 s).
    pub trans_cron_interval: u64,
    /// Self-registration in service discovery (go-zero etcd format).
    pub micro_service: MicroServiceConfig,
    /// dtm's `AlertRetryLimit` (default 3): the transient failure of a
    /// branch operation that brings its count to this raises one alert to
    /// `AlertWebHook` (`crate::alert` explains the count).
    pub alert_retry_limit: u32,
    /// dtm's `AlertWebHook`: an `http(s)://` URL that receives the retry
    /// alerts as JSON POSTs; empty (the default) switches alerts off.
    pub alert_web_hook: String,
    /// Ours: which branch calls (when, answer, latency) are recorded for
    /// the console's timeline, off the saga's path: `all`, `troubled` (the
    /// default: every call of a transaction that had any trouble) or `off`
    /// (`crate::attempts`).
    pub attempts_record: AttemptsRecord,
    /// Ours: the newest this many recorded calls of one transaction are kept.
    pub attempts_per_transaction: u32,
    /// Ours: recorded calls older than this many seconds are deleted.
    pub attempts_max_age: u64,
    /// Ours: the read-only admin endpoints of the branch services
    /// (`AdminListenOn`), as `name=http://host:port` separated by commas;
    /// the console's transaction page shows their rows for its gid. Empty
    /// (the default): not shown.
    pub service_admin_urls: String,
    /// `trace`, `debug`, `info`, `warn` or `error`; `RUST_LOG` wins when set.
    pub log_level: String,
    /// Ours: `plain` lines (the default) or `json`, one object per line with
    /// the `gid` and `trace_id` of the request it was written in lifted to
    /// the top level — the services' `Log.Encoding`, so that one log
    /// pipeline reads all four processes. dtm logs JSON (zap) always.
    pub log_encoding: service_kit::LogEncoding,
    /// When non-empty, every API call (HTTP and gRPC, except health checks,
    /// `/api/ping` and `/api/metrics`) must carry `Authorization: Bearer <token>`.
    /// dtm has no authentication at all; leave empty for dtm behaviour.
    pub auth_token: Secret,
    /// Largest accepted HTTP request body / gRPC message, in bytes.
    pub max_body_bytes: usize,
    /// Requests processed at once per listener; more are refused immediately
    /// (HTTP 503 / gRPC `RESOURCE_EXHAUSTED`) instead of queueing without bound.
    pub max_concurrent_requests: usize,
    /// Open client connections per listener; further connections wait in the
    /// kernel's accept queue until one closes.
    pub max_connections: usize,
    /// Upper bound on one API request, including `wait_result` submits.
    pub api_timeout: u64,
    /// go-zero's `Telemetry` block (the services use the same): OTLP span
    /// export, off while `Endpoint` is empty. Env: `TELEMETRY_ENDPOINT`,
    /// `TELEMETRY_NAME`, `TELEMETRY_SAMPLER`, `TELEMETRY_BATCHER`,
    /// `TELEMETRY_OTLP_HTTP_PATH`. dtm has no such key (it traces nothing).
    pub telemetry: service_kit::telemetry::TelemetryConf,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen_host: "0.0.0.0".into(),
            http_port: 36789,
            grpc_port: 36790,
            store: StoreConfig::default(),
            retry_interval: 10,
            max_retry_interval: 60,
            timeout_to_fail: 35,
            request_timeout: 3,
            trans_cron_interval: 3,
            micro_service: MicroServiceConfig::default(),
            alert_retry_limit: 3,
            alert_web_hook: String::new(),
            attempts_record: AttemptsRecord::Troubled,
            attempts_per_transaction: 100,
            attempts_max_age: 7 * 24 * 3600,
            service_admin_urls: String::new(),
            log_level: "info".into(),
            log_encoding: service_kit::LogEncoding::Plain,
            auth_token: Secret::default(),
            max_body_bytes: 4 * 1024 * 1024,
            max_concurrent_requests: 1024,
            max_connections: 10_000,
            api_timeout: 30,
            telemetry: service_kit::telemetry::TelemetryConf::default(),
        }
    }
}

/// Which database holds the transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreDriver {
    /// Embedded, single instance (our replacement for dtm's BoltDB default).
    Sqlite,
    /// MySQL or MariaDB; several coordinators may share it.
    Mysql,
    /// PostgreSQL; several coordinators may share it.
    Postgres,
}

impl StoreDriver {
    fn as_str(self) -> &'static str {
        match self {
            StoreDriver::Sqlite => "sqlite",
            StoreDriver::Mysql => "mysql",
            StoreDriver::Postgres => "postgres",
        }
    }
}

/// dtm's `Store` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite` (default), `mysql` or `postgres`.
    pub driver: StoreDriver,
    /// Database server host (mysql/postgres).
    pub host: String,
    /// Database server port (mysql/postgres). Required, as in dtm: no
    /// driver default is assumed.
    pub port: u16,
    /// Database user (mysql/postgres).
    pub user: String,
    /// Database password; redacted in every log line.
    pub password: Secret,
    /// Database name (mysql/postgres), or the SQLite file path.
    pub db: String,
    /// PostgreSQL schema (`search_path`), dtm default `public`.
    pub schema: String,
    /// Connection pool size.
    pub max_open_conns: u32,
    /// Connections kept open while idle.
    pub max_idle_conns: u32,
    /// Minutes after which a pooled connection is replaced.
    pub conn_max_life_time: u64,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            driver: StoreDriver::Sqlite,
            host: String::new(),
            port: 0,
            user: String::new(),
            password: Secret::default(),
            db: String::new(),
            schema: "public".into(),
            max_open_conns: 64,
            max_idle_conns: 16,
            conn_max_life_time: 5,
        }
    }
}

/// The largest `AttemptsMaxAge`: a year, in seconds.
pub const MAX_ATTEMPTS_AGE: u64 = 366 * 24 * 3600;

/// The largest `AlertRetryLimit`: beyond it a branch would be retried for
/// days (at the 60 s cap) before anyone hears of it.
pub const MAX_ALERT_RETRY_LIMIT: u32 = 10_000;

/// Default SQLite file when `Store.Db` is empty.
pub const DEFAULT_SQLITE_FILE: &str = "./coordinator.db";

impl StoreConfig {
    /// The sqlx connection URL. It contains the password: pass it to the
    /// store and never log it (log [`StoreConfig::describe`] instead).
    pub fn url(&self) -> Secret {
        let enc = |s: &str| percent_encoding::utf8_percent_encode(s, USERINFO).to_string();
        let credentials = if self.password.is_empty() {
            enc(&self.user)
        } else {
            format!("{}:{}", enc(&self.user), enc(self.password.expose()))
        };
        Secret::new(match self.driver {
            StoreDriver::Sqlite => {
                let path = if self.db.is_empty() { DEFAULT_SQLITE_FILE } else { &self.db };
                format!("sqlite://{path}?mode=rwc")
            }
            StoreDriver::Mysql => {
                format!("mysql://{credentials}@{}:{}/{}", self.host, self.port, self.database())
            }
            StoreDriver::Postgres => format!(
                "postgres://{credentials}@{}:{}/{}?options=-csearch_path%3D{}",
                self.host,
                self.port,
                self.database(),
                enc(&self.schema)
            ),
        })
    }

    /// A loggable description: driver, host, port, database — no password.
    pub fn describe(&self) -> String {
        match self.driver {
            StoreDriver::Sqlite => {
                format!("sqlite {}", if self.db.is_empty() { DEFAULT_SQLITE_FILE } else { &self.db })
            }
            driver => {
                format!("{} {}@{}:{}/{}", driver.as_str(), self.user, self.host, self.port, self.database())
            }
        }
    }

    /// dtm's default database name is `dtm`.
    fn database(&self) -> &str {
        if self.db.is_empty() { "dtm" } else { &self.db }
    }
}

/// Characters escaped in the user-info part of a DSN (`@`, `:`, `/`, …).
const USERINFO: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// dtm's `MicroService` block: how the coordinator announces itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
pub struct MicroServiceConfig {
    /// `default` (no registration) or `dtm-driver-gozero` (etcd, go-zero format).
    pub driver: String,
    /// `etcd://host1:2379,host2:2379/dtmservice`; empty = do not register.
    pub target: String,
    /// The address clients should dial, published verbatim (e.g. `dtm:36790`).
    #[serde(rename = "EndPoint")]
    pub end_point: String,
}

impl Default for MicroServiceConfig {
    fn default() -> MicroServiceConfig {
        MicroServiceConfig { driver: "default".into(), target: String::new(), end_point: String::new() }
    }
}

/// Name of dtm's go-zero discovery driver.
pub const GOZERO_DRIVER: &str = "dtm-driver-gozero";

/// A parsed `MicroService.Target`: where to register and under which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationTarget {
    /// etcd endpoints, `host:port`.
    pub hosts: Vec<String>,
    /// The service key (`dtmservice`); instances live under `<key>/<lease id>`.
    pub key: String,
    /// The address published as the value.
    pub end_point: String,
}

impl MicroServiceConfig {
    /// The registration to perform, if any (`None` for the `default` driver or
    /// an empty target — dtm's go-zero driver also does nothing then).
    pub fn registration(&self) -> Result<Option<RegistrationTarget>, ConfigError> {
        match self.driver.as_str() {
            "" | "default" => return Ok(None),
            GOZERO_DRIVER => {}
            other => {
                return Err(ConfigError::Invalid {
                    key: "MicroService.Driver",
                    message: format!("unsupported driver {other:?}; use \"default\" or \"{GOZERO_DRIVER}\""),
                });
            }
        }
        if self.target.is_empty() {
            return Ok(None);
        }
        let invalid = |message: String| ConfigError::Invalid { key: "MicroService.Target", message };
        // Parsed by hand: `url` refuses the comma-separated host list that
        // go-zero puts in the authority (`etcd://h1:2379,h2:2379/key`).
        let (scheme, rest) = self.target.split_once("://").unwrap_or(("", &self.target));
        if scheme != "etcd" && scheme != "discov" {
            return Err(invalid(format!(
                "{:?}: only etcd://host:port[,host:port]/key is supported (consul and nacos are not)",
                self.target
            )));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if path.contains('?') {
            return Err(invalid(format!(
                "{:?}: etcd user/password in the query are not supported",
                self.target
            )));
        }
        let key = path.trim_end_matches('/');
        let hosts: Vec<String> =
            authority.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_string).collect();
        if hosts.is_empty() || hosts.iter().any(|h| !h.contains(':')) {
            return Err(invalid(format!("{:?} must name etcd hosts as host:port", self.target)));
        }
        if key.is_empty() || key.contains('/') {
            return Err(invalid(format!("{:?}: the key must be exactly one path segment", self.target)));
        }
        if self.end_point.is_empty() || !self.end_point.contains(':') {
            return Err(ConfigError::Invalid {
                key: "MicroService.EndPoint",
                message: format!("{:?} must be the host:port clients dial, e.g. dtm:36790", self.end_point),
            });
        }
        Ok(Some(RegistrationTarget { hosts, key: key.to_string(), end_point: self.end_point.clone() }))
    }
}

impl Config {
    /// Checks cross-field rules with messages that name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| Err(ConfigError::Invalid { key, message: message.to_string() });
        // The server defaults obey the bounds a transaction's own options
        // obey (crate::model::bounds): beyond them the engine's time
        // arithmetic has nothing sensible to do (e.g. 3 × TimeoutToFail).
        use crate::model::bounds;
        for (key, value, max) in [
            ("RetryInterval", self.retry_interval, bounds::MAX_RETRY_INTERVAL),
            ("MaxRetryInterval", self.max_retry_interval, bounds::MAX_RETRY_INTERVAL),
            ("TimeoutToFail", self.timeout_to_fail, bounds::MAX_TIMEOUT_TO_FAIL),
            ("RequestTimeout", self.request_timeout, bounds::MAX_REQUEST_TIMEOUT),
            ("TransCronInterval", self.trans_cron_interval, bounds::MAX_REQUEST_TIMEOUT),
            ("ApiTimeout", self.api_timeout, bounds::MAX_REQUEST_TIMEOUT),
        ] {
            if value > max.as_secs() {
                return invalid(key, &format!("must be at most {} seconds", max.as_secs()));
            }
        }
        if let Err(service_kit::telemetry::TelemetryError::Invalid { key, message }) =
            self.telemetry.validate()
        {
            return Err(ConfigError::Invalid {
                key: if key == "Sampler" { "Telemetry.Sampler" } else { "Telemetry" },
                message,
            });
        }
        if self.retry_interval < 1 {
            return invalid(
                "RetryInterval",
                "must be at least 1 second (dtm requires 10; we allow less for tests)",
            );
        }
        if self.max_retry_interval < self.retry_interval {
            return invalid("MaxRetryInterval", "must be at least RetryInterval");
        }
        if self.timeout_to_fail < self.retry_interval {
            return invalid("TimeoutToFail", "must be at least RetryInterval (as in dtm)");
        }
        if self.request_timeout < 1 {
            return invalid("RequestTimeout", "must be at least 1 second");
        }
        if self.trans_cron_interval < 1 {
            return invalid("TransCronInterval", "must be at least 1 second");
        }
        if self.api_timeout < 1 {
            return invalid("ApiTimeout", "must be at least 1 second");
        }
        if self.listen_host.parse::<std::net::IpAddr>().is_err() {
            return invalid("ListenHost", "must be an IP address such as 0.0.0.0 or 127.0.0.1");
        }
        if self.max_body_bytes < 1024 {
            return invalid("MaxBodyBytes", "must be at least 1024");
        }
        if self.max_concurrent_requests == 0 {
            return invalid("MaxConcurrentRequests", "must be at least 1");
        }
        if self.max_connections == 0 {
            return invalid("MaxConnections", "must be at least 1");
        }
        if !["trace", "debug", "info", "warn", "error"]
            .contains(&self.log_level.to_ascii_lowercase().as_str())
        {
            return invalid("LogLevel", "must be one of trace, debug, info, warn, error");
        }
        let store = &self.store;
        if store.driver != StoreDriver::Sqlite {
            if store.host.is_empty() {
                return invalid("Store.Host", "is required for mysql and postgres");
            }
            if store.port == 0 {
                return invalid("Store.Port", "is required for mysql and postgres");
            }
            if store.user.is_empty() {
                return invalid("Store.User", "is required for mysql and postgres");
            }
        }
        if store.max_open_conns == 0 {
            return invalid("Store.MaxOpenConns", "must be at least 1");
        }
        if !(1..=MAX_ALERT_RETRY_LIMIT).contains(&self.alert_retry_limit) {
            return invalid("AlertRetryLimit", &format!("must be between 1 and {MAX_ALERT_RETRY_LIMIT}"));
        }
        self.alert_web_hook()?;
        if !(1..=10_000).contains(&self.attempts_per_transaction) {
            return invalid("AttemptsPerTransaction", "must be between 1 and 10000");
        }
        if !(60..=MAX_ATTEMPTS_AGE).contains(&self.attempts_max_age) {
            return invalid("AttemptsMaxAge", &format!("must be between 60 and {MAX_ATTEMPTS_AGE} seconds"));
        }
        self.service_admins()?;
        self.micro_service.registration()?;
        Ok(())
    }

    /// [`Config::service_admin_urls`] parsed: `(name, base URL)` pairs.
    pub fn service_admins(&self) -> Result<Vec<(String, url::Url)>, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { key: "ServiceAdminUrls", message };
        self.service_admin_urls
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                let (name, url) = item
                    .split_once('=')
                    .ok_or_else(|| invalid(format!("{item:?} must be name=http://host:port")))?;
                let url = url::Url::parse(url.trim()).map_err(|e| invalid(format!("{url:?}: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(invalid(format!("{url} must be an http:// or https:// URL")));
                }
                Ok((name.trim().to_string(), url))
            })
            .collect()
    }

    /// [`Config::alert_web_hook`] parsed; `None` when empty (alerts off).
    pub fn alert_web_hook(&self) -> Result<Option<url::Url>, ConfigError> {
        if self.alert_web_hook.is_empty() {
            return Ok(None);
        }
        let invalid = |message: String| ConfigError::Invalid { key: "AlertWebHook", message };
        let url = url::Url::parse(&self.alert_web_hook)
            .map_err(|e| invalid(format!("{:?} is not a URL: {e}", self.alert_web_hook)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!("{:?} must be an http:// or https:// URL", self.alert_web_hook)));
        }
        Ok(Some(url))
    }

    /// [`Config::retry_interval`] as a [`Duration`].
    pub fn retry_interval(&self) -> Duration {
        Duration::from_secs(self.retry_interval)
    }

    /// [`Config::api_timeout`] as a [`Duration`].
    pub fn api_timeout(&self) -> Duration {
        Duration::from_secs(self.api_timeout)
    }

    /// The bearer token, if authentication is on.
    pub fn auth_token(&self) -> Option<&Secret> {
        (!self.auth_token.is_empty()).then_some(&self.auth_token)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;
    use crate::config::env_var_name;

    fn file(text: &str) -> Option<(&'static Path, &str)> {
        Some((Path::new("coordinator.yaml"), text))
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn defaults_are_dtms_ports_and_an_embedded_sqlite_store() {
        let config = Config::from_sources(None, env(&[])).unwrap();
        assert_eq!(config.http_port, 36789);
        assert_eq!(config.grpc_port, 36790);
        assert_eq!(config.store.driver, StoreDriver::Sqlite);
        assert_eq!(config.store.url().expose(), "sqlite://./coordinator.db?mode=rwc");
        assert_eq!(config.micro_service.registration().unwrap(), None);
    }

    #[test]
    fn env_names_follow_dtms_upper_snake_rule() {
        assert_eq!(env_var_name(&["Store", "Driver"]), "STORE_DRIVER");
        assert_eq!(env_var_name(&["MicroService", "EndPoint"]), "MICRO_SERVICE_END_POINT");
        assert_eq!(env_var_name(&["HttpPort"]), "HTTP_PORT");
        assert_eq!(env_var_name(&["Store", "MaxOpenConns"]), "STORE_MAX_OPEN_CONNS");
    }

    #[test]
    fn every_key_can_come_from_the_environment() {
        let config = Config::from_sources(
            None,
            env(&[
                ("HTTP_PORT", "1234"),
                ("STORE_DRIVER", "mysql"),
                ("STORE_HOST", "db"),
                ("STORE_PORT", "3306"),
                ("STORE_USER", "root"),
                ("STORE_PASSWORD", "1234"),
                ("MICRO_SERVICE_DRIVER", "dtm-driver-gozero"),
                ("MICRO_SERVICE_TARGET", "etcd://e1:2379,e2:2379/dtmservice"),
                ("MICRO_SERVICE_END_POINT", "dtm:36790"),
                ("AUTH_TOKEN", "s3cret"),
                ("ALERT_RETRY_LIMIT", "5"),
                ("ALERT_WEB_HOOK", "http://alerts:9000/dtm"),
            ]),
        )
        .unwrap();
        assert_eq!(config.alert_retry_limit, 5);
        assert_eq!(config.alert_web_hook().unwrap().unwrap().as_str(), "http://alerts:9000/dtm");
        assert_eq!(config.http_port, 1234);
        assert_eq!(config.store.password.expose(), "1234");
        assert_eq!(config.store.url().expose(), "mysql://root:1234@db:3306/dtm");
        assert_eq!(config.auth_token().map(Secret::expose), Some("s3cret"));
        let registration = config.micro_service.registration().unwrap().unwrap();
        assert_eq!(registration.hosts, vec!["e1:2379", "e2:2379"]);
        assert_eq!(registration.key, "dtmservice");
        assert_eq!(registration.end_point, "dtm:36790");
    }

    #[test]
    fn the_telemetry_block_has_go_zeros_keys_and_dtm_style_env_names() {
        let config = Config::from_sources(None, env(&[])).unwrap();
        assert!(!config.telemetry.is_on(), "off by default");
        let config = Config::from_sources(
            None,
            env(&[
                ("TELEMETRY_ENDPOINT", "jaeger:4317"),
                ("TELEMETRY_SAMPLER", "0.25"),
                ("TELEMETRY_BATCHER", "otlphttp"),
                ("TELEMETRY_OTLP_HTTP_PATH", "/otlp"),
            ]),
        )
        .unwrap();
        assert!(config.telemetry.is_on());
        assert_eq!(config.telemetry.sampler, 0.25);
        assert_eq!(config.telemetry.batcher, service_kit::telemetry::Batcher::OtlpHttp);
        assert_eq!(config.telemetry.otlp_http_path, "/otlp");
        let yaml = "Telemetry:\n  Name: dtm\n  Endpoint: c:4317\n  OtlpHeaders: {k: v}\n";
        let config = Config::from_sources(file(yaml), env(&[])).unwrap();
        assert_eq!((config.telemetry.name.as_str(), config.telemetry.sampler), ("dtm", 1.0));
        assert_eq!(config.telemetry.otlp_headers.get("k").map(String::as_str), Some("v"));
        for (yaml, key) in [
            ("Telemetry:\n  Batcher: zipkin\n", "Telemetry.Batcher"),
            ("Telemetry:\n  Sampler: 2\n", "Telemetry.Sampler"),
        ] {
            let err = Config::from_sources(file(yaml), env(&[])).unwrap_err().to_string();
            assert!(err.contains(key), "{yaml}: {err}");
        }
    }

    #[test]
    fn the_file_wins_over_the_environment_like_dtm() {
        let config =
            Config::from_sources(file("HttpPort: 1\nRetryInterval: 2\n"), env(&[("HTTP_PORT", "5")]))
                .unwrap();
        assert_eq!(config.http_port, 1);
        assert_eq!(config.retry_interval, 2);
    }

    #[test]
    fn variables_are_expanded_in_values() {
        let yaml =
            "Store:\n  Driver: mysql\n  Host: ${DB_HOST}\n  Port: 3306\n  User: u\n  Password: \"p-${PW}\"\n";
        let config = Config::from_sources(file(yaml), env(&[("DB_HOST", "mysql"), ("PW", "x@y")])).unwrap();
        assert_eq!(config.store.host, "mysql");
        assert_eq!(config.store.password.expose(), "p-x@y");
        assert_eq!(config.store.url().expose(), "mysql://u:p-x%40y@mysql:3306/dtm");
        let err = Config::from_sources(file("Store:\n  Db: ${NOPE}\n"), env(&[])).unwrap_err();
        assert!(err.to_string().contains("NOPE"), "{err}");
    }

    #[test]
    fn mistakes_are_reported_with_the_key_name() {
        let cases = [
            ("Stroe: {}\n", "Stroe"),
            ("Store:\n  Driver: boltdb\n", "boltdb"),
            ("Store:\n  Driver: mysql\n  Port: 3306\n  User: u\n", "Store.Host"),
            ("RetryInterval: 0\n", "RetryInterval"),
            ("RetryInterval: 100000000000000\n", "RetryInterval: must be at most 86400"),
            ("MaxRetryInterval: 86401\n", "MaxRetryInterval"),
            ("TimeoutToFail: 18446744073709551615\n", "TimeoutToFail"),
            ("RequestTimeout: 3601\n", "RequestTimeout"),
            ("TransCronInterval: 3601\n", "TransCronInterval"),
            ("ApiTimeout: 3601\n", "ApiTimeout"),
            ("AlertRetryLimit: 0\n", "AlertRetryLimit"),
            ("AlertWebHook: ftp://x/y\n", "AlertWebHook"),
            ("AlertWebHook: not a url\n", "AlertWebHook"),
            ("HttpPort: lots\n", "HttpPort"),
            (
                "MicroService:\n  Driver: dtm-driver-gozero\n  Target: consul://c:8500/dtm\n",
                "MicroService.Target",
            ),
            (
                "MicroService:\n  Driver: dtm-driver-gozero\n  Target: etcd://e:2379/dtm\n",
                "MicroService.EndPoint",
            ),
        ];
        for (yaml, expected) in cases {
            let err = Config::from_sources(file(yaml), env(&[])).unwrap_err().to_string();
            assert!(err.contains(expected), "{yaml:?} gave {err:?}, expected mention of {expected:?}");
        }
        let err = Config::from_sources(None, env(&[("HTTP_PORT", "x")])).unwrap_err().to_string();
        assert!(err.contains("HTTP_PORT"), "{err}");
    }

    #[test]
    fn the_example_config_file_is_the_articles_coordinator() {
        // etc/coordinator.yaml with no environment: dtm's MySQL store in
        // database dtm as root:root, registered in etcd as dtmservice, which
        // is what etc/order-api.yaml dials: the four etc/ files work together.
        let text = include_str!("../../../../etc/coordinator.yaml");
        let config = Config::from_sources(file(text), env(&[])).unwrap();
        assert_eq!(config.store.driver, StoreDriver::Mysql);
        assert_eq!(config.store.url().expose(), "mysql://root:root@127.0.0.1:3306/dtm");
        let registration = config.micro_service.registration().unwrap().unwrap();
        assert_eq!(registration.hosts, ["127.0.0.1:2379"]);
        assert_eq!(registration.key, "dtmservice");
        assert_eq!(registration.end_point, "127.0.0.1:36790");
        // dtm's alert keys, with dtm's defaults: a limit of 3, no webhook.
        assert_eq!((config.alert_retry_limit, config.alert_web_hook().unwrap()), (3, None));
        let api = include_str!("../../../../etc/order-api.yaml");
        assert!(api.contains("${DTM_SERVER:-etcd://127.0.0.1:2379/dtmservice}"), "order-api dials it");
    }

    #[test]
    fn the_database_defaults_per_driver() {
        // The example file leaves Db empty so that switching the driver
        // never means a MySQL database called "./coordinator.db".
        let text = include_str!("../../../../etc/coordinator.yaml");
        let sqlite = Config::from_sources(file(text), env(&[("STORE_DRIVER", "sqlite")])).unwrap();
        assert_eq!(sqlite.store.url().expose(), "sqlite://./coordinator.db?mode=rwc");
        let postgres =
            Config::from_sources(file(text), env(&[("STORE_DRIVER", "postgres"), ("STORE_PORT", "5432")]))
                .unwrap();
        let url = postgres.store.url();
        assert!(url.expose().starts_with("postgres://root:root@127.0.0.1:5432/dtm?"), "{}", url.expose());
        // Without a file: the embedded SQLite store, as before.
        let builtin = Config::from_sources(None, env(&[])).unwrap();
        assert_eq!(builtin.store.url().expose(), "sqlite://./coordinator.db?mode=rwc");
        assert_eq!(builtin.micro_service.registration().unwrap(), None);
    }

    #[test]
    fn the_example_config_file_takes_the_compose_environment() {
        let text = include_str!("../../../../etc/coordinator.yaml");
        let config = Config::from_sources(
            file(text),
            env(&[
                ("STORE_DRIVER", "mysql"),
                ("STORE_HOST", "mysql"),
                ("STORE_PASSWORD", "secret"),
                ("STORE_DB", "dtm"),
                ("MICRO_SERVICE_DRIVER", GOZERO_DRIVER),
                ("MICRO_SERVICE_TARGET", "etcd://etcd:2379/dtmservice"),
                ("MICRO_SERVICE_END_POINT", "coordinator:36790"),
            ]),
        )
        .unwrap();
        assert_eq!(config.store.driver, StoreDriver::Mysql);
        assert_eq!(config.store.url().expose(), "mysql://root:secret@mysql:3306/dtm");
        let registration = config.micro_service.registration().unwrap().unwrap();
        assert_eq!(registration.hosts, ["etcd:2379"]);
        assert_eq!(registration.key, "dtmservice");
        assert_eq!(registration.end_point, "coordinator:36790");
    }

    #[test]
    fn passwords_never_appear_in_debug_output() {
        let yaml = "AuthToken: tok3n\nStore:\n  Driver: postgres\n  Host: h\n  Port: 5432\n  User: u\n  Password: hunter2\n";
        let config = Config::from_sources(file(yaml), env(&[])).unwrap();
        let debug = format!("{config:?} {}", config.store.describe());
        assert!(!debug.contains("hunter2") && !debug.contains("tok3n"), "{debug}");
        assert!(config.store.url().expose().contains("hunter2"));
    }
}
