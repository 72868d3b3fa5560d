//! `quickorder-chaos`: the real processes under seeded faults, then every
//! saga invariant checked; the exit status is non-zero on a violation.
//!
//! ```text
//! quickorder-chaos --duration 60s --seed 7
//! quickorder-chaos --workload fencing --clock-skew 30s
//! ```
//!
//! It starts the service binaries that sit next to it (or in `--bin-dir`):
//! `cargo build --bins && target/debug/quickorder-chaos`.

use std::process::ExitCode;

use clap::Parser;

/// Fault injection and invariant checking for the quick-order system.
#[derive(Debug, Parser)]
#[command(name = "quickorder-chaos", version, about)]
struct Cli {
    /// Log level of the chaos driver itself (RUST_LOG wins when set).
    #[arg(long, default_value = "warn", env = "LOG_LEVEL")]
    log_level: String,
    /// The run: length, seed, workload, faults.
    #[command(flatten)]
    args: quickorder_chaos::ChaosArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = service_kit::telemetry::init("quickorder-chaos", &cli.log_level) {
        eprintln!("quickorder-chaos: {err}");
        return ExitCode::from(2);
    }
    match quickorder_chaos::run(cli.args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("quickorder-chaos: {err}");
            ExitCode::FAILURE
        }
    }
}
