//! The `coordinator` binary: a dtm-compatible transaction coordinator.
//!
//! ```text
//! coordinator                           # defaults: SQLite ./coordinator.db, ports 36789/36790
//! coordinator -f etc/coordinator.yaml   # dtm's conf.yml keys (`-c` works too, like dtm)
//! STORE_DRIVER=mysql STORE_HOST=db … coordinator
//! ```
//!
//! Thin on purpose: parse arguments, load the configuration, start logging,
//! build the [`Coordinator`], and run it until SIGINT or SIGTERM. Everything
//! else lives in the library, where tests can reach it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use coordinator::config::Config;
use coordinator::server::Coordinator;

/// Command line, compatible with dtm's `-c <file>`.
#[derive(Debug, Parser)]
#[command(name = "coordinator", version, about = "A dtm-compatible saga coordinator")]
struct Args {
    /// YAML configuration file (dtm's key names). Without it: defaults and
    /// environment variables only.
    #[arg(short = 'f', long = "config", short_alias = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log at debug level (like dtm's `-d`), unless RUST_LOG says otherwise.
    #[arg(short = 'd', long)]
    debug: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            // Logging is not set up yet: the configuration says how.
            eprintln!("coordinator: {e}");
            return ExitCode::from(2);
        }
    };
    let level = if args.debug { "debug" } else { config.log_level.as_str() };
    let log = service_kit::LogConf {
        level: level.to_string(),
        encoding: config.log_encoding,
        ..service_kit::LogConf::default()
    };
    let telemetry = match service_kit::telemetry::init_traced("coordinator", &log, Some(&config.telemetry)) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("coordinator: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::debug!(?config, "configuration loaded");
    let coordinator = match Coordinator::build(config).await {
        Ok(coordinator) => coordinator.announce_ready(),
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            telemetry.shutdown().await;
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(http = %coordinator.http_addr(), grpc = %coordinator.grpc_addr(), "coordinator listening");
    let code = match coordinator.run_until_stopped(service_kit::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "coordinator failed");
            ExitCode::FAILURE
        }
    };
    // The spans of the passes that ran while draining go out last.
    telemetry.shutdown().await;
    code
}
