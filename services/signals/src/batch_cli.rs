//! `signals batch ...`: the operators' commands.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use signals_batch::{BatchSummary, Phase, Progress, Running};
use tracing::info;

use crate::backends::Backends;
use crate::config::Config;

#[derive(Subcommand)]
pub enum BatchCommand {
    /// Recompute every signal from the event log up to its current end and publish a new version.
    Run {
        /// Recompute and report, but publish nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(config: Config, command: BatchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BatchCommand::Run { dry_run, json } => {
            let definitions = Arc::new(config.definitions()?);
            let backends = Backends::open(&config).await?;
            let batch = crate::run::batch_layer(&config, &backends, definitions);
            let progress = Report::new();
            let summary = batch.run(dry_run, &progress).await?;
            progress.finish();
            print_summary(&summary, json)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_summary(summary: &BatchSummary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(summary)?);
        return Ok(());
    }
    let verb = if summary.published {
        "published"
    } else {
        "computed (dry run, not published)"
    };
    println!("batch version {} {verb}", summary.version);
    println!(
        "  log position covered  {}",
        serde_json::to_string(&summary.position)?
    );
    println!("  records read          {}", summary.records_read);
    println!("  undecodable records   {}", summary.undecodable);
    println!("  users                 {}", summary.users);
    println!("  events kept           {}", summary.events);
    println!("  duplicates dropped    {}", summary.corrections.duplicates);
    println!("  retracted events      {}", summary.corrections.retracted);
    println!(
        "  deleted users' events {}",
        summary.corrections.deleted_user_events
    );
    println!(
        "  duration              {:.1}s",
        summary.duration_ms as f64 / 1000.0
    );
    Ok(())
}

/// A progress bar on a terminal, a log line every few seconds otherwise.
struct Report {
    bar: Option<ProgressBar>,
    phase: Mutex<Option<Phase>>,
    last_line: Mutex<Instant>,
}

impl Report {
    fn new() -> Report {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:>10} [{bar:40}] {human_pos}/{human_len} {per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        Report {
            bar,
            phase: Mutex::new(None),
            last_line: Mutex::new(Instant::now()),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Report {
    fn update(&self, running: &Running) {
        let label = match running.phase {
            Phase::Reading => "reading",
            Phase::Writing => "writing",
            Phase::Publishing => "publishing",
        };
        if let Some(bar) = &self.bar {
            if let Ok(mut phase) = self.phase.lock() {
                if phase.as_ref() != Some(&running.phase) {
                    bar.reset();
                    *phase = Some(running.phase.clone());
                }
            }
            bar.set_message(label);
            bar.set_length(running.total);
            bar.set_position(running.done);
            return;
        }
        if let Ok(mut last) = self.last_line.lock() {
            if last.elapsed() >= Duration::from_secs(5) {
                *last = Instant::now();
                info!(
                    phase = label,
                    done = running.done,
                    total = running.total,
                    version = running.version,
                    "batch progress"
                );
            }
        }
    }
}
