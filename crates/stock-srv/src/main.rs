//! `stock-srv -f etc/stock-srv.yaml`: load the config, start logging, build
//! the service, serve until SIGINT/SIGTERM; once serving (and registered),
//! print the readiness line harnesses wait for (`service_kit::ready`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use service_kit::{StartError, shutdown, telemetry};

/// The stock service of the quick-order saga (gRPC `pb.stock`).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The config file (go-zero's `-f`).
    #[arg(short = 'f', long = "config", default_value = "etc/stock-srv.yaml")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "stock-srv stopped");
            eprintln!("stock-srv: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), StartError> {
    let config: stock_srv::Config = service_kit::load_yaml(&args.config)?;
    let telemetry =
        telemetry::init_traced(config.log_service_name(), &config.log, config.telemetry.as_ref())?;
    let served = async {
        let server = stock_srv::build(&config).await?.announce_ready("stock-srv");
        server.run_until_stopped(shutdown::signal()).await?;
        Ok::<(), StartError>(())
    }
    .await;
    // After the drain: the last requests' spans are exported too.
    telemetry.shutdown().await;
    served
}
