//! `quickorder-bench`: how fast is a saga, and what does the coordinator cost?
//!
//! ```text
//! quickorder-bench compare --clients 16 --duration 20s   # every mode, side by side
//! quickorder-bench http --clients 64                     # the user's path alone
//! ```
//!
//! Run it from the release build, next to the service binaries it starts:
//! `cargo build --release --bins && target/release/quickorder-bench compare`.

use std::process::ExitCode;

use clap::Parser;

/// Load generator for the quick-order saga (see BENCHMARKS.md).
#[derive(Debug, Parser)]
#[command(name = "quickorder-bench", version, about)]
struct Cli {
    /// Log level of the bench itself (RUST_LOG wins when set).
    #[arg(long, default_value = "warn", env = "LOG_LEVEL")]
    log_level: String,
    /// What to measure, and how.
    #[command(flatten)]
    args: quickorder_bench::BenchArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = service_kit::telemetry::init("quickorder-bench", &cli.log_level) {
        eprintln!("quickorder-bench: {err}");
        return ExitCode::from(2);
    }
    match quickorder_bench::run(cli.args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("quickorder-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
