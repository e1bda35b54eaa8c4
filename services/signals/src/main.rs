//! `signals`: the whole platform in one binary.

mod backends;
mod batch_cli;
mod config;
mod http_server;
mod operations;
mod readiness;
mod run;
mod supervise;
mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// How long a stopping process waits for blocking calls still running once
/// its own work has stopped.
const LEFTOVER_BLOCKING_CALLS_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "signals",
    version,
    about = "Per-user signals from raw events: speed layer, batch layer and serving API"
)]
struct Cli {
    /// A TOML configuration file layered over the built-in defaults.
    #[arg(long, global = true, env = "SIGNALS_CONFIG")]
    config: Option<PathBuf>,
    /// Where embedded backends keep their files (overrides `data_dir`).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole platform in one process: collector, speed layer, serving API and scheduled batch.
    Up {
        /// Address to serve on (overrides `server.listen`).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// The serving API and collector alone.
    Serve {
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// The speed layer alone.
    Speed,
    /// The insights worker alone: segment membership and its change feed.
    Insights,
    /// Apply the CQL schema to ScyllaDB/Cassandra (idempotent).
    Migrate,
    /// The batch layer.
    Batch {
        #[command(subcommand)]
        command: batch_cli::BatchCommand,
    },
}

// glibc's malloc and free were 15–25 % of every profile (ingest, speed,
// batch, serving): see docs/BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("signals: {error:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    telemetry::init_logs(&config.telemetry);
    http_server::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("signals: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up { listen } => run::up(config, listen).await,
            Command::Serve { listen } => run::serve(config, listen).await,
            Command::Speed => run::speed(config).await,
            Command::Insights => run::insights_command(config).await,
            Command::Migrate => {
                backends::scylla_store(&config.store.scylla)
                    .await?
                    .migrate()
                    .await?;
                println!(
                    "schema applied to keyspace {} at {}",
                    config.store.scylla.keyspace, config.store.scylla.nodes
                );
                Ok(ExitCode::SUCCESS)
            }
            Command::Batch { command } => batch_cli::run(config, command).await,
        }
    });
    // Our own work has stopped by now. What may be left are blocking calls
    // into a client library that never return (librdkafka cannot always
    // close a consumer the speed layer replaced): they must not keep a
    // process that was asked to stop alive.
    runtime.shutdown_timeout(LEFTOVER_BLOCKING_CALLS_TIMEOUT);
    match result {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("signals: {error:#}");
            ExitCode::FAILURE
        }
    }
}
