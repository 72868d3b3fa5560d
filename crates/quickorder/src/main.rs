//! `quickorder`: run, tour and probe the quick-order saga.
//!
//! (The load generator and the fault injector are their own binaries,
//! `quickorder-bench` and `quickorder-chaos`, so this one stays small.)
//!
//! ```text
//! quickorder up [--reset] [--mysql URL] [--etcd HOSTS]   # the system, embedded
//! quickorder demo                                        # the article's scenarios, live
//! quickorder probe grpc 127.0.0.1:9001                   # a health check
//! ```

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use quickorder::{demo, probe, up};

/// The quick-order saga of the go-zero + dtm article, in Rust.
#[derive(Debug, Parser)]
#[command(name = "quickorder", version, about)]
struct Cli {
    /// Log level of the embedded services (RUST_LOG wins when set).
    #[arg(long, global = true, default_value = "warn", env = "LOG_LEVEL")]
    log_level: String,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the coordinator, order-srv, stock-srv and order-api in this process.
    Up(up::UpArgs),
    /// Replay the article's scenarios on a fresh system and print the rows.
    Demo(demo::DemoArgs),
    /// Check the health of a gRPC or HTTP server (exit 0 when healthy).
    Probe(probe::ProbeArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Probe(_))
        && let Err(err) = service_kit::telemetry::init("quickorder", &cli.log_level)
    {
        eprintln!("quickorder: {err}");
        return ExitCode::from(2);
    }
    let outcome = match cli.command {
        Command::Up(args) => up::run(args, service_kit::shutdown::signal()).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Probe(args) => probe::run(args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("quickorder: {err:#}");
            ExitCode::FAILURE
        }
    }
}
