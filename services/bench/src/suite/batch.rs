//! Batch recompute: the real [`BatchLayer`] over a full log, in a child
//! process so that its peak memory (VmHWM) is the batch's alone, against a
//! raw scan of the same log.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use signals_batch::{BatchLayer, BatchOptions, Quiet};
use signals_core::LogPosition;

use crate::backends::{self, Place};
use crate::platform::Services;
use crate::workload::Shape;

/// Where the child finds the backends.
#[derive(Clone, Debug, clap::Args)]
pub struct ChildArgs {
    /// An embedded data dir.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// A topic/keyspace name on the real services.
    #[arg(long)]
    real: Option<String>,
    #[arg(long, default_value = "")]
    kafka: String,
    #[arg(long, default_value = "")]
    cql: String,
    #[arg(long, default_value = "")]
    redis: String,
}

/// What the child reports on its standard output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChildReport {
    pub events: u64,
    pub users: u64,
    pub seconds: f64,
    /// User + system CPU time of the run.
    pub cpu_seconds: f64,
    /// VmHWM before the run and at its end.
    pub baseline_bytes: u64,
    pub peak_bytes: u64,
}

/// The batch figures of one log.
#[derive(Clone, Debug)]
pub struct BatchFigures {
    pub report: ChildReport,
    pub raw_scan: Duration,
    pub records: u64,
}

impl BatchFigures {
    pub fn rate(&self) -> f64 {
        self.report.events as f64 / self.report.seconds
    }

    pub fn per_core(&self) -> f64 {
        self.report.events as f64 / self.report.cpu_seconds.max(1e-9)
    }

    pub fn scan_rate(&self) -> f64 {
        self.records as f64 / self.raw_scan.as_secs_f64()
    }
}

/// Fills a fresh log at `place`, runs the batch in a child, then scans the log raw.
pub async fn measure(place: &Place, shape: &Shape, events: u64) -> anyhow::Result<BatchFigures> {
    {
        let log = place.open_log().await?;
        backends::fill(&*log, shape, events).await?;
    }
    let report = run_child(place).await?;
    let log = place.open_log().await?;
    let end = log.end().await?;
    let raw_scan = match place {
        Place::Embedded(_) => {
            let started = Instant::now();
            let mut reader = log.read_from(&LogPosition::new()).await?;
            while !reader.position().reaches(&end) {
                reader.next_batch(50_000, Duration::ZERO).await?;
            }
            started.elapsed()
        }
        Place::Real { services, name } => {
            let (services, name) = (services.clone(), name.clone());
            tokio::task::spawn_blocking(move || {
                super::speed::raw_kafka_read(&services, &name, events)
            })
            .await??
            .0
        }
    };
    Ok(BatchFigures {
        report,
        raw_scan,
        records: events,
    })
}

async fn run_child(place: &Place) -> anyhow::Result<ChildReport> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("batch-child")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    match place {
        Place::Embedded(dir) => command.arg("--dir").arg(dir),
        Place::Real { services, name } => command
            .args(["--real", name, "--kafka", &services.kafka])
            .args(["--cql", &services.cql, "--redis", &services.redis]),
    };
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    if !output.status.success() {
        anyhow::bail!("the batch child failed with {}", output.status);
    }
    serde_json::from_slice(&output.stdout).context("the batch child's report")
}

/// The child: one batch run, its figures as JSON on standard output.
pub async fn child(args: &ChildArgs) -> anyhow::Result<()> {
    let place = match (&args.dir, &args.real) {
        (Some(dir), _) => Place::Embedded(dir.clone()),
        (None, Some(name)) => Place::Real {
            services: Services {
                kafka: args.kafka.clone(),
                cql: args.cql.clone(),
                redis: args.redis.clone(),
            },
            name: name.clone(),
        },
        (None, None) => anyhow::bail!("give --dir or --real"),
    };
    let backends = place.open().await?;
    let layer = BatchLayer::new(
        backends.log,
        backends.store,
        backends::default_definitions()?,
        BatchOptions::default(),
    );
    let baseline_bytes = peak_memory();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let summary = layer.run(signals_batch::Job::Run, false, &Quiet).await?;
    let report = ChildReport {
        events: summary.events,
        users: summary.users,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu_before,
        baseline_bytes,
        peak_bytes: peak_memory(),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// This process's VmHWM in bytes (0 where /proc is absent).
pub fn peak_memory() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// User + system CPU seconds of this process (clock ticks of 1/100 s).
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15; the rest starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}
