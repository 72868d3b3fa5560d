//! `quickorder probe`: one health check, for container healthchecks.
//!
//! The runtime image has no `grpc_health_probe`; this is the same check
//! (`grpc.health.v1.Health/Check`, `SERVING` or bust) plus an HTTP variant,
//! so docker-compose can wait for a service to be *ready*, not merely
//! started:
//!
//! ```text
//! quickorder probe grpc 127.0.0.1:9001            # overall server health
//! quickorder probe grpc 127.0.0.1:9001 pb.order   # one service
//! quickorder probe http http://127.0.0.1:8889/healthz
//! ```

use std::time::Duration;

use anyhow::{Context, bail};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// `quickorder probe` options.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// What to check.
    #[command(subcommand)]
    pub target: ProbeTarget,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 3000, global = true)]
    pub timeout_ms: u64,
}

/// The kinds of health check.
#[derive(Debug, clap::Subcommand)]
pub enum ProbeTarget {
    /// `grpc.health.v1.Health/Check` against `host:port`.
    Grpc {
        /// `host:port` of the gRPC server.
        addr: String,
        /// A service name (`pb.order`); empty means the whole server.
        #[arg(default_value = "")]
        service: String,
    },
    /// GET the URL; any 2xx is healthy.
    Http {
        /// The URL, e.g. `http://127.0.0.1:8889/healthz`.
        url: String,
    },
}

/// Runs the check; `Ok` means healthy.
pub async fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let check = async {
        match args.target {
            ProbeTarget::Grpc { addr, service } => grpc(&addr, service, timeout).await,
            ProbeTarget::Http { url } => http(&url, timeout).await,
        }
    };
    tokio::time::timeout(timeout, check).await.context("no answer before the timeout")?
}

async fn grpc(addr: &str, service: String, timeout: Duration) -> anyhow::Result<()> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let channel = tonic::transport::Endpoint::from_shared(uri)
        .with_context(|| format!("bad address {addr}"))?
        .connect_timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest { service: service.clone() })
        .await
        .with_context(|| format!("health check of {addr} {service:?}"))?;
    match response.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => bail!("{addr} {service:?} is {}", other.as_str_name()),
    }
}

async fn http(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let response = reqwest::Client::builder()
        .timeout(timeout)
        .build()?
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if response.status().is_success() { Ok(()) } else { bail!("GET {url}: {}", response.status()) }
}
