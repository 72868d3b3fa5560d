//! Logging: `tracing` events to stdout, one line each.
//!
//! The level comes from the config (`Log.Level`), unless `RUST_LOG` is set:
//! then `RUST_LOG` wins, so an operator can turn on `debug` for one module
//! (`RUST_LOG=info,order_srv=debug`) without editing YAML. The service name
//! is a field of the root span, so every line says which process wrote it;
//! request handlers add the saga's `gid` to their spans.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::{LogConf, LogEncoding};

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `Log.Level` / `RUST_LOG` is not a valid filter.
    #[error("invalid log level {0:?}: {1}")]
    Level(String, String),
    /// A global subscriber is already installed (called twice).
    #[error("logging is already initialised: {0}")]
    AlreadyInitialised(String),
}

/// Installs the global subscriber with plain-text lines at `level`
/// (`debug`, `info`, `warn`, `error`; go-zero's `severe` means `error`).
pub fn init(service_name: &str, level: &str) -> Result<(), TelemetryError> {
    init_with(service_name, &LogConf { level: level.to_string(), ..LogConf::default() })
}

/// Installs the global subscriber as `log` says (level, plain or JSON).
///
/// Call once, early in `main`. Returns an error instead of panicking when a
/// subscriber already exists, so an embedding process (the one-process
/// launcher, a test) can ignore it.
pub fn init_with(service_name: &str, log: &LogConf) -> Result<(), TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => {
            EnvFilter::try_new(&env).map_err(|err| TelemetryError::Level(env.clone(), err.to_string()))?
        }
        _ => {
            let level = normalise_level(&log.level);
            EnvFilter::try_new(&level)
                .map_err(|err| TelemetryError::Level(log.level.clone(), err.to_string()))?
        }
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_span_events(FmtSpan::NONE);
    let installed = match log.encoding {
        LogEncoding::Plain => builder.try_init(),
        LogEncoding::Json => builder.json().with_current_span(true).flatten_event(true).try_init(),
    };
    installed.map_err(|err| TelemetryError::AlreadyInitialised(err.to_string()))?;
    tracing::info!(service = service_name, "logging initialised");
    Ok(())
}

/// Maps go-zero's level names onto tracing's.
fn normalise_level(level: &str) -> String {
    match level.trim().to_ascii_lowercase().as_str() {
        "severe" | "stat" => "error".to_string(),
        "" => "info".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_zero_level_names_map_to_tracing() {
        assert_eq!(normalise_level("severe"), "error");
        assert_eq!(normalise_level(" Info "), "info");
        assert_eq!(normalise_level(""), "info");
        assert!(EnvFilter::try_new(normalise_level("debug")).is_ok());
    }
}
