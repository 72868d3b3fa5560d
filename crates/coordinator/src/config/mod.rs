//! The coordinator's configuration: dtm's key names, our defaults, strict validation.
//!
//! A dtm `conf.yml` is valid here as long as it only uses keys we implement:
//!
//! ```yaml
//! HttpPort: 36789
//! GrpcPort: 36790
//! Store:
//!   Driver: mysql
//!   Host: localhost
//!   Port: 3306
//!   User: root
//!   Password: ${MYSQL_PASSWORD}
//!   Db: dtm
//! MicroService:
//!   Driver: dtm-driver-gozero
//!   Target: etcd://localhost:2379/dtmservice
//!   EndPoint: localhost:36790
//! ```
//!
//! Where the values come from, lowest priority first (dtm's order):
//!
//! 1. built-in defaults ([`Config::default`]);
//! 2. environment variables named after the YAML path in UPPER_SNAKE case —
//!    `Store.Driver` → `STORE_DRIVER`, `MicroService.EndPoint` →
//!    `MICRO_SERVICE_END_POINT`, `HttpPort` → `HTTP_PORT`. The mapping is
//!    derived from the structure itself ([`env_var_name`]), so a key added to
//!    [`Config`] is automatically overridable;
//! 3. the YAML file given with `-f`/`-c`: a key present in the file wins over
//!    the environment, exactly as in dtm (`loadFromEnv` runs first, then the
//!    file is unmarshalled on top).
//!
//! The file may contain `${VAR}` and `${VAR:-default}` placeholders,
//! expanded from the environment before parsing, exactly as in every other
//! service of this workspace (`service_kit::config::expand_env`; quote a
//! placeholder whose value may contain YAML syntax).
//! Unknown keys are errors: a typo such as `Stroe:` must not silently mean
//! "use the defaults".
//!
//! Where we deliberately differ from dtm:
//!
//! * the embedded default store is SQLite (`./coordinator.db`), not BoltDB;
//! * `RetryInterval` may be as small as 1 s (dtm requires ≥ 10) so that tests
//!   and demos do not wait; production should keep dtm's 10;
//! * `MaxRetryInterval` caps the exponential backoff (dtm doubles forever);
//! * `ListenHost`, `AuthToken`, `MaxBodyBytes`, `MaxConcurrentRequests`,
//!   `MaxConnections`, `ApiTimeout` are our additions, and so is go-zero's
//!   `Telemetry` block (OTLP span export, `crate::trace`);
//! * `AlertRetryLimit` / `AlertWebHook` are dtm's keys, but an alert is sent
//!   once per branch operation that reaches the limit (dtm: at every retry
//!   past it), delivered at least once from a durable outbox (`crate::alert`).
//!
//! The module is in two parts: `schema.rs` is the configuration itself
//! (dtm's keys, our defaults, validation, and what is derived from it: the
//! store URL, the registration target); `load.rs` builds it from its sources
//! (defaults, environment, file) by layering YAML trees. The tests, in
//! `schema.rs`, load the schema from its sources end to end.

mod load;
mod schema;

pub use load::env_var_name;
pub use schema::{
    AttemptsRecord, Config, DEFAULT_SQLITE_FILE, GOZERO_DRIVER, MAX_ALERT_RETRY_LIMIT, MicroServiceConfig,
    RegistrationTarget, Secret, StoreConfig, StoreDriver,
};

/// Everything that can be wrong with a configuration. Each message names the
/// key (in dtm's spelling) so the operator knows which line to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given on the command line.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML (or a value from the environment) does not fit the schema:
    /// wrong type, unknown key, …
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A `${VAR}` placeholder names an unset variable or is malformed
    /// (the message gives file and line).
    #[error(transparent)]
    Placeholder(#[from] service_kit::ConfigError),
    /// A value parsed but is not acceptable.
    #[error("invalid {key}: {message}")]
    Invalid {
        /// Dotted key path in dtm's spelling, e.g. `Store.Host`.
        key: &'static str,
        /// What is wrong and, where possible, what would be right.
        message: String,
    },
}
