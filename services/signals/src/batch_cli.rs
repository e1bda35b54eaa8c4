//! `signals batch ...`: the operators' commands.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use signals_batch::{
    Backfill, BatchSummary, Job, Phase, Progress, Running, Sample, VerifyReport, VerifyRequest,
};
use signals_schemas::rules::format_time;
use signals_schemas::Millis;
use tracing::info;

use crate::backends::Backends;
use crate::config::Config;

#[derive(Subcommand)]
pub enum BatchCommand {
    /// Recompute every signal from the event log up to its current end and publish a new version.
    Run {
        /// Recompute and report what would change, but publish nothing.
        #[arg(long, conflicts_with = "partitions")]
        dry_run: bool,
        /// Recompute only the users of these log partitions (e.g. `0-5,9`),
        /// as one of several workers splitting the run: every worker runs
        /// the same command with its own partitions, and the one finishing
        /// the last share publishes the version.
        #[arg(long)]
        partitions: Option<String>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recompute part of the published version (a range of event times, or
    /// signals) from the log it covers, and publish it as a new version.
    Backfill {
        /// Start of the range of event times (inclusive): a date (UTC
        /// midnight), an RFC 3339 time or epoch milliseconds.
        #[arg(long, requires = "to")]
        from: Option<String>,
        /// End of the range (exclusive).
        #[arg(long, requires = "from")]
        to: Option<String>,
        /// Recompute this signal's pre-aggregated state (repeatable).
        #[arg(long = "signal")]
        signals: Vec<String>,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Compare what serving answers now with a fresh recompute; exit 3 when
    /// a signal's mismatch rate is above the threshold.
    Verify {
        /// Compare this fraction of the users (stable sample by id).
        #[arg(long, default_value_t = 0.1, conflicts_with_all = ["all", "users"])]
        sample: f64,
        /// Compare every user.
        #[arg(long)]
        all: bool,
        /// Compare these users (repeatable).
        #[arg(long = "user")]
        users: Vec<String>,
        /// When windows end (default: now).
        #[arg(long)]
        at: Option<String>,
        /// Highest tolerated mismatch rate per signal (0 tolerates none).
        #[arg(long, default_value_t = 0.0)]
        threshold: f64,
        /// Example mismatches shown per signal.
        #[arg(long, default_value_t = 3)]
        examples: usize,
        #[arg(long)]
        json: bool,
    },
    /// Remove a user from every layer, permanently.
    DeleteUser {
        user_id: String,
        /// Why (kept in the log's deletion record).
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        json: bool,
    },
}

/// The exit code of a verify run that found drift above the threshold.
const DRIFT: u8 = 3;

pub async fn run(config: Config, command: BatchCommand) -> anyhow::Result<ExitCode> {
    let definitions = Arc::new(config.definitions()?);
    let backends = Backends::open(&config).await?;
    let batch = crate::run::batch_layer(&config, &backends, definitions);
    match command {
        BatchCommand::Run {
            dry_run,
            partitions,
            json,
        } => {
            let progress = Report::new();
            let summary = match partitions {
                Some(partitions) => {
                    let partitions = parse_partitions(&partitions)
                        .map_err(|e| anyhow::anyhow!("--partitions: {e}"))?;
                    batch
                        .run_partitions(Job::Run, partitions, &progress)
                        .await?
                }
                None => batch.run(Job::Run, dry_run, &progress).await?,
            };
            progress.finish();
            print_summary(&summary, json)?;
        }
        BatchCommand::Backfill {
            from,
            to,
            signals,
            dry_run,
            json,
        } => {
            let range = match (from, to) {
                (Some(from), Some(to)) => Some((
                    parse_time(&from).context("--from")?,
                    parse_time(&to).context("--to")?,
                )),
                _ => None,
            };
            let progress = Report::new();
            let job = Job::Backfill(Backfill { range, signals });
            let summary = batch.run(job, dry_run, &progress).await?;
            progress.finish();
            print_summary(&summary, json)?;
        }
        BatchCommand::Verify {
            sample,
            all,
            users,
            at,
            threshold,
            examples,
            json,
        } => {
            let sample = if all {
                Sample::All
            } else if !users.is_empty() {
                Sample::Users(users)
            } else if sample > 0.0 && sample <= 1.0 {
                Sample::Fraction(sample)
            } else {
                bail!("--sample must be in (0, 1], got {sample}");
            };
            let at = at.map(|t| parse_time(&t).context("--at")).transpose()?;
            let progress = Report::new();
            let report = batch
                .verify(
                    VerifyRequest {
                        sample,
                        at,
                        examples,
                    },
                    &progress,
                )
                .await?;
            progress.finish();
            print_report(&report, json)?;
            if report.max_mismatch_rate > threshold {
                eprintln!(
                    "signals: drift above the threshold: {:.4}% > {:.4}%",
                    report.max_mismatch_rate * 100.0,
                    threshold * 100.0
                );
                return Ok(ExitCode::from(DRIFT));
            }
        }
        BatchCommand::DeleteUser {
            user_id,
            reason,
            json,
        } => {
            let receipt = crate::operations::delete_user(
                &batch,
                backends.serving.as_ref(),
                &user_id,
                &reason,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&receipt)?);
            } else {
                println!(
                    "user {:?} deleted: deletion recorded in the log at partition {} offset {}, store and cache erased",
                    receipt.user_id, receipt.partition, receipt.offset
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Partitions as `0-5,9`.
fn parse_partitions(text: &str) -> Result<Vec<u32>, String> {
    let mut partitions = Vec::new();
    for piece in text.split(',').map(str::trim) {
        let number = |s: &str| {
            s.trim()
                .parse::<u32>()
                .map_err(|_| format!("`{s}` in `{text}` is not a partition number"))
        };
        match piece.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (number(from)?, number(to)?);
                if from > to {
                    return Err(format!("`{piece}` is an empty range"));
                }
                partitions.extend(from..=to);
            }
            None => partitions.push(number(piece)?),
        }
    }
    Ok(partitions)
}

/// A date (`2026-11-20`, UTC midnight), an RFC 3339 time or epoch milliseconds.
fn parse_time(text: &str) -> anyhow::Result<Millis> {
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        if let Some(midnight) = date.and_hms_opt(0, 0, 0) {
            return Ok(midnight.and_utc().timestamp_millis());
        }
    }
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.timestamp_millis());
    }
    text.parse::<Millis>().map_err(|_| {
        anyhow::anyhow!(
            "`{text}` is not a date (YYYY-MM-DD), an RFC 3339 time or epoch milliseconds"
        )
    })
}

fn print_summary(summary: &BatchSummary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(summary)?);
        return Ok(());
    }
    let kind = match &summary.job {
        Job::Run => "batch".to_owned(),
        Job::Backfill(backfill) => {
            let mut parts = Vec::new();
            if let Some((from, to)) = backfill.range {
                parts.push(format!("{} .. {}", format_time(from), format_time(to)));
            }
            if !backfill.signals.is_empty() {
                parts.push(format!("signals {}", backfill.signals.join(", ")));
            }
            format!("backfill ({})", parts.join("; "))
        }
    };
    let verb = if summary.published {
        "published".to_owned()
    } else if !summary.waiting_for.is_empty() {
        format!(
            "share done; publishes when partitions {:?} are done",
            summary.waiting_for
        )
    } else {
        "computed (dry run, not published)".to_owned()
    };
    println!("{kind} version {} {verb}", summary.version);
    println!(
        "  log position covered  {}",
        serde_json::to_string(&summary.position)?
    );
    if let Some(after) = &summary.resumed_after {
        println!("  resumed after user    {after:?}");
    }
    println!("  records read          {}", summary.records_read);
    println!("  undecodable records   {}", summary.undecodable);
    println!("  users                 {}", summary.users);
    println!("  events kept           {}", summary.events);
    println!("  records written       {}", summary.records_written);
    if let Some(changed) = summary.changed_users {
        println!("  users changed         {changed}");
    }
    let c = &summary.corrections;
    println!("  duplicates dropped    {}", c.duplicates);
    println!("  retracted events      {}", c.retracted);
    println!(
        "  deleted users         {} ({} events)",
        c.deleted_users, c.deleted_user_events
    );
    println!(
        "  bot traffic           {} users ({} events)",
        c.bot_users, c.bot_events
    );
    println!(
        "  duration              {:.1}s",
        summary.duration_ms as f64 / 1000.0
    );
    Ok(())
}

fn print_report(report: &VerifyReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!(
        "verify at {} over log position {} (published version {})",
        format_time(report.at),
        serde_json::to_string(&report.position)?,
        report
            .published_version
            .map_or("none".to_owned(), |v| v.to_string())
    );
    println!(
        "  users compared {}, missing {}, extra {}, unreadable {}",
        report.users_compared, report.missing_users, report.extra_users, report.unreadable_users
    );
    for problem in &report.user_examples {
        println!("    {:?}: {}", problem.user_id, problem.problem);
    }
    println!(
        "  {:<20} {:>10} {:>10} {:>8}",
        "signal", "mismatches", "rate", "stale"
    );
    for drift in &report.signals {
        println!(
            "  {:<20} {:>10} {:>9.4}% {:>8}",
            drift.name,
            drift.mismatches,
            drift.mismatch_rate * 100.0,
            drift.stale
        );
        for example in &drift.examples {
            println!(
                "    {:?}: expected {} got {}",
                example.user_id, example.expected, example.actual
            );
        }
    }
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
            Phase::Comparing => "comparing",
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
        // A line when a phase begins, then every few seconds.
        let new_phase = self.phase.lock().is_ok_and(|mut phase| {
            let new = phase.as_ref() != Some(&running.phase);
            *phase = Some(running.phase.clone());
            new
        });
        if let Ok(mut last) = self.last_line.lock() {
            if new_phase || last.elapsed() >= Duration::from_secs(5) {
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
