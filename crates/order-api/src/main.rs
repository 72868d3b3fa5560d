//! `order-api -f etc/order-api.yaml`: load the config, start logging, build
//! the service, serve until SIGINT/SIGTERM; once serving, print the
//! readiness line harnesses wait for (`service_kit::ready`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use service_kit::{shutdown, telemetry};

/// The HTTP gateway of the quick-order saga.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The config file (go-zero's `-f`).
    #[arg(short = 'f', long = "config", default_value = "etc/order-api.yaml")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "order-api stopped");
            eprintln!("order-api: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let config: order_api::Config = service_kit::load_yaml(&args.config)?;
    let name = config.log.service_name.as_deref().unwrap_or(&config.name);
    let telemetry = telemetry::init_traced(name, &config.log, config.telemetry.as_ref())?;
    let served = async {
        let server = order_api::build(config).await?.announce_ready("order-api");
        server.run_until_stopped(shutdown::signal()).await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    }
    .await;
    // After the drain: the last requests' spans are exported too.
    telemetry.shutdown().await;
    served
}
