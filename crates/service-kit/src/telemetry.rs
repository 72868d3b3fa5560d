//! Logging and tracing: `tracing` events to stdout, one line each, and —
//! when the config has a `Telemetry` block with an `Endpoint` — spans
//! exported over OTLP (OpenTelemetry's protocol) to a collector or Jaeger.
//!
//! The level comes from the config (`Log.Level`), unless `RUST_LOG` is set:
//! then `RUST_LOG` wins, so an operator can turn on `debug` for one module
//! (`RUST_LOG=info,order_srv=debug`) without editing YAML. The service name
//! is a field of the root span, so every line says which process wrote it;
//! request handlers add the saga's `gid` and the `trace_id` to their spans,
//! and in JSON mode both are lifted to the top level of every line written
//! inside the request (see [`LiftedJson`]).
//!
//! The `Telemetry` block is go-zero's (`core/trace/config.go`):
//!
//! ```yaml
//! Telemetry:
//!   Name: order.rpc                 # service.name of the spans (default: the service's Name)
//!   Endpoint: 127.0.0.1:4317        # empty or absent: tracing off
//!   Sampler: 1.0                    # fraction of new traces kept (parent-based)
//!   Batcher: otlpgrpc               # or otlphttp (go-zero's other batchers are refused)
//!   OtlpHeaders: {x-api-key: "…"}   # sent with every export
//!   OtlpHttpPath: /v1/traces        # otlphttp only
//! ```
//!
//! Off means off: no OpenTelemetry layer, no exporter, no background
//! thread; the `trace` module then only passes an incoming `traceparent`
//! along unchanged. On, spans go through the SDK's batch processor (its own
//! thread, bounded queue: a slow collector drops spans, never slows a
//! request), and [`Telemetry::shutdown`] flushes what is queued on the way
//! out (the SIGTERM path of every binary).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConf, LogEncoding};

/// Why logging or tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `Log.Level` / `RUST_LOG` is not a valid filter.
    #[error("invalid log level {0:?}: {1}")]
    Level(String, String),
    /// A global subscriber is already installed (called twice).
    #[error("logging is already initialised: {0}")]
    AlreadyInitialised(String),
    /// A `Telemetry` key has a value we cannot use; names the key.
    #[error("invalid Telemetry.{key}: {message}")]
    Invalid {
        /// The key in go-zero's spelling (`Sampler`, `Endpoint`, …).
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// go-zero's `trace.Config` batchers that we implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Batcher {
    /// OTLP over gRPC (go-zero's default; the collector's port 4317).
    #[default]
    OtlpGrpc,
    /// OTLP over HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    OtlpHttp,
}

impl Batcher {
    /// The name in the YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Batcher::OtlpGrpc => "otlpgrpc",
            Batcher::OtlpHttp => "otlphttp",
        }
    }
}

impl Serialize for Batcher {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Batcher {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Batcher, D::Error> {
        let name = String::deserialize(deserializer)?;
        match name.trim().to_ascii_lowercase().as_str() {
            "" | "otlpgrpc" => Ok(Batcher::OtlpGrpc),
            "otlphttp" => Ok(Batcher::OtlpHttp),
            _ => Err(serde::de::Error::custom(format!(
                "Telemetry.Batcher must be otlpgrpc or otlphttp, got {name:?} \
                 (go-zero's zipkin and file batchers are not supported)"
            ))),
        }
    }
}

fn default_sampler() -> f64 {
    1.0
}

/// go-zero's `Telemetry` block (`core/trace/config.go`), the keys that
/// apply to OTLP export. Shared by the services' YAML and the
/// coordinator's (where every key also has an environment variable:
/// `TELEMETRY_ENDPOINT`, `TELEMETRY_SAMPLER`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
pub struct TelemetryConf {
    /// `service.name` of the exported spans; empty: the service's own name.
    pub name: String,
    /// Collector address: `host:port` (go-zero's form) or a URL
    /// (`http://jaeger:4317`). Empty: tracing off.
    pub endpoint: String,
    /// Fraction of new traces sampled, 0.0 to 1.0 (go-zero: 1.0). A call
    /// that arrives with a `traceparent` follows the caller's decision.
    #[serde(default = "default_sampler")]
    pub sampler: f64,
    /// `otlpgrpc` (default) or `otlphttp`.
    pub batcher: Batcher,
    /// Headers sent with every export (an API key for a hosted backend).
    pub otlp_headers: BTreeMap<String, String>,
    /// URL path of `otlphttp` exports (default `/v1/traces`).
    pub otlp_http_path: String,
}

impl Default for TelemetryConf {
    fn default() -> TelemetryConf {
        TelemetryConf {
            name: String::new(),
            endpoint: String::new(),
            sampler: default_sampler(),
            batcher: Batcher::default(),
            otlp_headers: BTreeMap::new(),
            otlp_http_path: String::new(),
        }
    }
}

impl TelemetryConf {
    /// Whether spans are exported (an `Endpoint` is set).
    pub fn is_on(&self) -> bool {
        !self.endpoint.trim().is_empty()
    }

    /// Checks the values that serde cannot (the sampler's range).
    pub fn validate(&self) -> Result<(), TelemetryError> {
        if !(0.0..=1.0).contains(&self.sampler) {
            return Err(TelemetryError::Invalid {
                key: "Sampler",
                message: format!("must be between 0.0 and 1.0, got {}", self.sampler),
            });
        }
        Ok(())
    }

    /// The export URL: go-zero's `host:port` gets `http://` (go-zero
    /// exports without TLS too: `WithInsecure`); `otlphttp` adds the path.
    fn export_url(&self) -> String {
        let endpoint = self.endpoint.trim().trim_end_matches('/');
        let base = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
        match self.batcher {
            Batcher::OtlpGrpc => base,
            Batcher::OtlpHttp => {
                let path = self.otlp_http_path.trim();
                let path = if path.is_empty() { "/v1/traces" } else { path };
                let slash = if path.starts_with('/') { "" } else { "/" };
                format!("{base}{slash}{path}")
            }
        }
    }
}

/// What [`init_traced`] installed; keep it until the process ends and call
/// [`Telemetry::shutdown`] after the servers stopped, so the last spans
/// (the requests drained during shutdown) are exported.
#[derive(Debug, Default)]
#[must_use = "call shutdown() on the way out, or the last spans are lost"]
pub struct Telemetry {
    /// The SDK's provider: owns the batch processor and its exporter.
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes queued spans and stops the exporter (at most 5 s: a
    /// collector that is down must not hold the process). Blocking work
    /// (the batch processor joins its thread) runs off the async workers.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else { return };
        let flushed = tokio::task::spawn_blocking(move || {
            let _ = provider.force_flush();
            provider.shutdown_with_timeout(Duration::from_secs(5))
        })
        .await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("telemetry: flushing spans at shutdown failed: {err}"),
            Err(err) => eprintln!("telemetry: flushing spans at shutdown failed: {err}"),
        }
    }
}

/// Installs the global subscriber with plain-text lines at `level`
/// (`debug`, `info`, `warn`, `error`; go-zero's `severe` means `error`).
pub fn init(service_name: &str, level: &str) -> Result<(), TelemetryError> {
    init_with(service_name, &LogConf { level: level.to_string(), ..LogConf::default() })
}

/// Installs the global subscriber as `log` says (level, plain or JSON),
/// without span export.
///
/// Call once, early in `main`. Returns an error instead of panicking when a
/// subscriber already exists, so an embedding process (the one-process
/// launcher, a test) can ignore it.
pub fn init_with(service_name: &str, log: &LogConf) -> Result<(), TelemetryError> {
    // No provider was built, so there is nothing to flush.
    let _none = init_traced(service_name, log, None)?;
    Ok(())
}

/// Installs the global subscriber as `log` says and, when `telemetry` has
/// an `Endpoint`, the OpenTelemetry layer exporting spans over OTLP with
/// `service.name` = `Telemetry.Name` or `service_name`.
pub fn init_traced(
    service_name: &str,
    log: &LogConf,
    telemetry: Option<&TelemetryConf>,
) -> Result<Telemetry, TelemetryError> {
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
    let telemetry = telemetry.filter(|t| t.is_on());
    let provider = match telemetry {
        Some(conf) => Some(provider(service_name, conf)?),
        None => None,
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service_name.to_string())));
    let (plain, json) = match log.encoding {
        LogEncoding::Plain => (Some(tracing_subscriber::fmt::layer()), None),
        LogEncoding::Json => {
            (None, Some(tracing_subscriber::fmt::layer().json().event_format(LiftedJson::default())))
        }
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(plain)
        .with(json)
        .with(otel)
        .try_init()
        .map_err(|err| TelemetryError::AlreadyInitialised(err.to_string()))?;
    if provider.is_some() {
        crate::trace::set_enabled();
    }
    match telemetry {
        Some(conf) => tracing::info!(
            service = service_name, endpoint = %conf.endpoint, batcher = conf.batcher.as_str(),
            sampler = conf.sampler, "logging initialised; exporting spans over OTLP"
        ),
        None => tracing::info!(service = service_name, "logging initialised"),
    }
    Ok(Telemetry { provider })
}

/// The SDK provider: resource `service.name`, parent-based ratio sampler
/// (go-zero's `sdktrace.ParentBased(sdktrace.TraceIDRatioBased(Sampler))`),
/// batch processor over the configured exporter.
fn provider(service_name: &str, conf: &TelemetryConf) -> Result<SdkTracerProvider, TelemetryError> {
    conf.validate()?;
    let url = conf.export_url();
    let invalid = |err: opentelemetry_otlp::ExporterBuildError| TelemetryError::Invalid {
        key: "Endpoint",
        message: format!("{url:?}: {err}"),
    };
    let exporter = match conf.batcher {
        Batcher::OtlpGrpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (name, value) in &conf.otlp_headers {
                let key = tonic::metadata::AsciiMetadataKey::from_bytes(name.as_bytes());
                let value = tonic::metadata::AsciiMetadataValue::try_from(value.as_str());
                match (key, value) {
                    (Ok(key), Ok(value)) => {
                        metadata.insert(key, value);
                    }
                    _ => {
                        return Err(TelemetryError::Invalid {
                            key: "OtlpHeaders",
                            message: format!("{name:?} is not a valid ASCII header"),
                        });
                    }
                }
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(url.clone())
                .with_metadata(metadata)
                .build()
                .map_err(invalid)?
        }
        Batcher::OtlpHttp => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url.clone())
            .with_headers(conf.otlp_headers.clone().into_iter().collect())
            .build()
            .map_err(invalid)?,
    };
    let name = if conf.name.trim().is_empty() { service_name } else { conf.name.trim() };
    Ok(SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(name.to_string()).build())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(conf.sampler))))
        .with_batch_exporter(exporter)
        .build())
}

/// Maps go-zero's level names onto tracing's.
fn normalise_level(level: &str) -> String {
    match level.trim().to_ascii_lowercase().as_str() {
        "severe" | "stat" => "error".to_string(),
        "" => "info".to_string(),
        other => other.to_string(),
    }
}

/// The span fields every JSON line carries at its top level when a span in
/// scope has them: what a log search filters on.
const LIFTED_FIELDS: [&str; 2] = ["gid", "trace_id"];

/// tracing-subscriber's JSON lines (event fields flattened, the spans in
/// scope listed under `spans`), with [`LIFTED_FIELDS`] copied from the
/// innermost span that has them to the top level, so that
/// `{"level":"INFO","message":"order created","gid":"…","trace_id":"…",…}`
/// can be filtered without knowing which span recorded what. Only in JSON
/// mode; costs one re-parse per line.
pub struct LiftedJson {
    /// The stock JSON format that writes the line first.
    inner: Format<Json>,
}

impl Default for LiftedJson {
    fn default() -> LiftedJson {
        LiftedJson {
            inner: tracing_subscriber::fmt::format().json().flatten_event(true).with_span_list(true),
        }
    }
}

impl<S> FormatEvent<S, JsonFields> for LiftedJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        let Ok(serde_json::Value::Object(mut object)) = serde_json::from_str(&line) else {
            return writer.write_str(&line);
        };
        let lifted: Vec<(&str, serde_json::Value)> = match object.get("spans") {
            Some(serde_json::Value::Array(spans)) => LIFTED_FIELDS
                .iter()
                .filter(|key| !object.contains_key(**key))
                .filter_map(|key| {
                    spans.iter().rev().find_map(|span| span.get(*key)).map(|v| (*key, v.clone()))
                })
                .collect(),
            _ => Vec::new(),
        };
        if lifted.is_empty() {
            return writer.write_str(&line);
        }
        for (key, value) in lifted {
            object.insert(key.to_string(), value);
        }
        writeln!(writer, "{}", serde_json::Value::Object(object))
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

    #[test]
    fn the_telemetry_block_reads_go_zero_keys_and_refuses_other_batchers() {
        let conf: TelemetryConf = serde_yaml_ng::from_str(
            "Name: order.rpc\nEndpoint: jaeger:4318\nSampler: 0.5\nBatcher: otlphttp\n\
             OtlpHeaders: {x-key: v}\nOtlpHttpPath: /otlp/v1/traces\n",
        )
        .unwrap();
        assert!(conf.is_on());
        assert_eq!(conf.batcher, Batcher::OtlpHttp);
        assert_eq!(conf.export_url(), "http://jaeger:4318/otlp/v1/traces");
        let default: TelemetryConf = serde_yaml_ng::from_str("Endpoint: ''").unwrap();
        assert!(!default.is_on());
        assert_eq!((default.sampler, default.batcher), (1.0, Batcher::OtlpGrpc));
        let err = serde_yaml_ng::from_str::<TelemetryConf>("Batcher: jaeger").unwrap_err().to_string();
        assert!(err.contains("Telemetry.Batcher") && err.contains("jaeger"), "{err}");
        let bad = TelemetryConf { sampler: 1.5, ..TelemetryConf::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("Telemetry.Sampler"));
    }
}
