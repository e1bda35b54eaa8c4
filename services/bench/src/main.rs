//! `signals-bench`: a load generator for any running Signals platform, and
//! the benchmark suite that measures every path beside the raw ceiling of
//! the same machine (see docs/BENCHMARKS.md).

mod backends;
mod bare;
mod http;
mod load;
mod platform;
mod report;
mod suite;
mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Skewed load against a running platform; prints what it achieved.
    Load(load::LoadArgs),
    /// Every figure beside its ceiling, as a table.
    Suite(suite::SuiteArgs),
    /// The bare axum handler the suite measures as the HTTP ceiling.
    #[command(hide = true)]
    BareServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        /// A file holding the answer body to serve.
        #[arg(long)]
        sample: PathBuf,
    },
    /// One batch run in a process of its own, so its peak memory is its own.
    #[command(hide = true)]
    BatchChild(suite::batch::ChildArgs),
}

// glibc's malloc and free were 15–25 % of every profile (ingest, speed,
// batch, serving): see docs/BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("signals-bench: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Load(args) => load::run(&args).await,
            Command::Suite(args) => suite::run(&args).await,
            Command::BareServer {
                listen,
                users,
                sample,
            } => bare::serve(listen, users, std::fs::read_to_string(sample)?).await,
            Command::BatchChild(args) => suite::batch::child(&args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("signals-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
