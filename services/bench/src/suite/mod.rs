//! `signals-bench suite`: every figure of docs/BENCHMARKS.md beside the raw
//! ceiling of the same machine, measured in the same run.

pub mod batch;
mod engine_reads;
mod freshness;
mod heavy;
mod ingest;
mod insights;
mod scale;
mod serving;
pub mod speed;
mod storage;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::backends::Place;
use crate::http;
use crate::platform::{self, Services, Stack};
use crate::report::{self, Figure, Row};
use crate::workload::Shape;

/// One part of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Speed,
    Ingest,
    Freshness,
    Serving,
    /// One user with a large history over HTTP, against a light one.
    Heavy,
    Batch,
    Scale,
    Insights,
    /// Bytes stored per user per day, a typical and a heavy user.
    Storage,
}

#[derive(Clone, Debug, clap::Args)]
pub struct SuiteArgs {
    /// Small sizes and short runs: a couple of minutes in all.
    #[arg(long)]
    pub quick: bool,
    #[arg(long, value_enum, default_value = "embedded")]
    pub stack: Stack,
    /// Also write the table, with the machine's description, to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Only these sections (comma-separated); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Section>,
    /// Zipf exponent of user and item popularity.
    #[arg(long, default_value_t = 0.9)]
    pub skew: f64,
    /// Scale points as USERS:EVENTS (comma-separated), instead of the defaults.
    #[arg(long, value_delimiter = ',', value_parser = parse_point)]
    pub scale_at: Vec<(u64, u64)>,
    /// Records per speed-layer store write (the layer's `speed.max_batch`).
    #[arg(long, default_value_t = 20_000)]
    pub speed_batch: usize,
    /// Events of the batch section's log, instead of the size's default
    /// (e.g. 50000000 for the largest point of the scale curve).
    #[arg(long)]
    pub batch_events: Option<u64>,
    /// Events of the heavy user in the heavy section, instead of the size's
    /// default (1000000 is the "heavy user").
    #[arg(long)]
    pub heavy_events: Option<u64>,
}

/// How big each figure's run is.
struct Sizes {
    users: u64,
    items: u64,
    speed_events: u64,
    batch_events: u64,
    serve_events: u64,
    heavy_events: u64,
    duration: Duration,
    freshness: Duration,
    /// Events sent one at a time, each after a quiet second.
    quiet_probes: u64,
    /// (users, events) points of the scale curve.
    scale: Vec<(u64, u64)>,
    /// Events the insights worker turns into membership; event probes;
    /// users whose timers are due at once.
    insights_events: u64,
    insights_probes: usize,
    timer_users: usize,
}

impl Sizes {
    fn of(args: &SuiteArgs) -> Sizes {
        let real = args.stack == Stack::Real;
        if args.quick {
            Sizes {
                users: 10_000,
                items: 20_000,
                speed_events: if real { 100_000 } else { 300_000 },
                batch_events: if real { 200_000 } else { 1_000_000 },
                serve_events: 100_000,
                heavy_events: 200_000,
                duration: Duration::from_secs(5),
                freshness: Duration::from_secs(10),
                quiet_probes: 10,
                scale: vec![(10_000, 300_000), (100_000, 300_000), (100_000, 1_000_000)],
                insights_events: 200_000,
                insights_probes: 100,
                timer_users: 2_000,
            }
        } else {
            Sizes {
                users: 100_000,
                items: 100_000,
                speed_events: if real { 500_000 } else { 2_000_000 },
                batch_events: if real { 1_000_000 } else { 5_000_000 },
                serve_events: 1_000_000,
                heavy_events: 1_000_000,
                duration: Duration::from_secs(15),
                freshness: Duration::from_secs(30),
                quiet_probes: 30,
                scale: vec![
                    (10_000, 1_000_000),
                    (100_000, 1_000_000),
                    (1_000_000, 1_000_000),
                    (100_000, 5_000_000),
                    // The speed layer takes minutes per 10M events here;
                    // the batch alone goes further: `--only batch
                    // --batch-events 50000000`.
                    (100_000, 10_000_000),
                ],
                insights_events: 1_000_000,
                insights_probes: 500,
                timer_users: 10_000,
            }
        }
    }

    fn shape(&self, args: &SuiteArgs, users: u64) -> Shape {
        Shape {
            users,
            items: self.items,
            skew: args.skew,
            seed: 42,
        }
    }
}

pub async fn run(args: &SuiteArgs) -> anyhow::Result<()> {
    let sizes = Sizes::of(args);
    let services = Services::from_env();
    let shape = sizes.shape(args, sizes.users);
    let wanted = |s: Section| args.only.is_empty() || args.only.contains(&s);
    let stack = args.stack;
    let mut rows = Vec::new();
    let real_place = |what: &str| Place::Real {
        services: services.clone(),
        name: platform::unique_name(what),
    };

    if wanted(Section::Speed) {
        let dir = tempfile::tempdir()?;
        let place = match stack {
            Stack::Embedded => Place::Embedded(dir.path().to_owned()),
            Stack::Real => real_place("speed"),
        };
        let f = speed::measure(&place, &shape, sizes.speed_events, args.speed_batch).await?;
        let target = match stack {
            Stack::Embedded => "≥ 400k/s, ≥ 0.7×",
            Stack::Real => "≥ 150k/s, ≥ 0.7×",
        };
        rows.push(
            Row::new(
                format!(
                    "speed layer, log → store ({} events, {} per write)",
                    f.events, args.speed_batch
                ),
                Figure::per_sec(f.ours_rate()),
                target,
            )
            .against(Figure::per_sec(f.ceiling_rate())),
        );
        rows.push(Row::new(
            "  raw ceiling parts: log read alone",
            Figure::per_sec(f.events as f64 / f.raw_read.as_secs_f64()),
            "",
        ));
        rows.push(Row::new(
            "  raw ceiling parts: store write alone",
            Figure::per_sec(f.events as f64 / f.raw_write.as_secs_f64()),
            "",
        ));
        progress(&rows);
    }

    if wanted(Section::Ingest) {
        let f = ingest::measure(stack, &services, &shape, sizes.duration).await?;
        rows.push(
            Row::new(
                format!(
                    "collector ingest, JSON × {} per POST, accepted durably",
                    ingest::BATCH
                ),
                Figure::per_sec(f.ours.accepted_rate()),
                "",
            )
            .against(Figure::per_sec(f.ceiling)),
        );
        rows.push(Row::new(
            "  collector POST p99",
            Figure::ms(f.ours.ms(0.99)),
            "",
        ));
        progress(&rows);
    }

    if wanted(Section::Freshness) {
        let h = freshness::measure(stack, &services, &shape, 10_000.0, sizes.freshness).await?;
        let target = match stack {
            Stack::Embedded => "p99 ≤ 20 ms",
            Stack::Real => "p99 ≤ 100 ms",
        };
        let ms = |q: f64| Figure::ms(h.value_at_quantile(q) as f64 / 1000.0);
        rows.push(Row::new(
            format!("freshness p50 @ 10k events/s ({} probes)", h.len()),
            ms(0.5),
            "",
        ));
        rows.push(Row::new("freshness p99 @ 10k events/s", ms(0.99), target));
        rows.push(Row::new(
            "freshness max @ 10k events/s",
            Figure::ms(h.max() as f64 / 1000.0),
            "",
        ));
        progress(&rows);
        let quiet = Duration::from_secs(1);
        let h = freshness::measure_after_quiet(stack, &services, sizes.quiet_probes, quiet).await?;
        let ms = |q: f64| Figure::ms(h.value_at_quantile(q) as f64 / 1000.0);
        rows.push(Row::new(
            format!("freshness after a quiet second: p50 ({} probes)", h.len()),
            ms(0.5),
            "",
        ));
        rows.push(Row::new(
            "freshness after a quiet second: max",
            Figure::ms(h.max() as f64 / 1000.0),
            "",
        ));
        progress(&rows);
    }

    if wanted(Section::Heavy) {
        let heavy_events = args.heavy_events.unwrap_or(sizes.heavy_events);
        let f = heavy::measure(
            stack,
            &services,
            &shape,
            sizes.serve_events,
            heavy_events,
            sizes.duration,
        )
        .await?;
        let ms = |o: &http::Outcome, q: f64| Figure::ms(o.ms(q));
        let users = format!(
            "a user with {}k events in 7 days ({} B answers; light {} B)",
            f.events / 1000,
            f.answer_bytes.0,
            f.answer_bytes.1
        );
        rows.push(
            Row::new(
                format!("{users}, at = now: heavy rate (ceiling: bare handler, same bytes)"),
                Figure::per_sec(f.heavy_now.rate()),
                "",
            )
            .against(Figure::per_sec(f.bare_heavy.rate())),
        );
        rows.push(
            Row::new(
                "  heavy p99 (ceiling: bare handler, same bytes)",
                ms(&f.heavy_now, 0.99),
                "≤ 5 ms",
            )
            .against(ms(&f.bare_heavy, 0.99)),
        );
        for (kind, heavy, light) in [
            ("at = now", &f.heavy_now, &f.light_now),
            (
                "at = an hour of the last 7 days",
                &f.heavy_hours,
                &f.light_hours,
            ),
        ] {
            rows.push(
                Row::new(
                    format!("{users}, {kind}: p50 (ceiling: a light user's)"),
                    ms(heavy, 0.5),
                    "within 2× a light user's",
                )
                .against(ms(light, 0.5)),
            );
            rows.push(
                Row::new(
                    format!(
                        "  p99 ({:.1}k/s; light {:.1}k/s)",
                        heavy.rate() / 1e3,
                        light.rate() / 1e3
                    ),
                    ms(heavy, 0.99),
                    "≤ 5 ms",
                )
                .against(ms(light, 0.99)),
            );
        }
        for (when, (heavy, light)) in [
            ("after the batch published", f.first_reads),
            (
                "after the next batch, the previous version held",
                f.next_first_reads,
            ),
        ] {
            rows.push(
                Row::new(
                    format!("{users}: first read {when} (ceiling: a light user's)"),
                    Figure::ms(heavy.as_secs_f64() * 1e3),
                    "",
                )
                .against(Figure::ms(light.as_secs_f64() * 1e3)),
            );
        }
        rows.push(
            Row::new(
                format!(
                    "{users}: another user's reads at {:.0}/s beside the first read after the batch, p99 (ceiling: paced, none beside)",
                    heavy::PACED_RATE
                ),
                ms(&f.beside_first_read, 0.99),
                "",
            )
            .against(ms(&f.light_hours_paced, 0.99)),
        );
        rows.push(
            Row::new("  slowest", ms(&f.beside_first_read, 1.0), "")
                .against(ms(&f.light_hours_paced, 1.0)),
        );
        let paced = format!(
            "{users}, at = an hour of the last 7 days, {:.0} reads/s",
            heavy::PACED_RATE
        );
        rows.push(
            Row::new(
                format!("{paced}: p50 (ceiling: a light user's)"),
                ms(&f.heavy_hours_paced, 0.5),
                "within 2× a light user's",
            )
            .against(ms(&f.light_hours_paced, 0.5)),
        );
        rows.push(
            Row::new("  p99", ms(&f.heavy_hours_paced, 0.99), "≤ 5 ms")
                .against(ms(&f.light_hours_paced, 0.99)),
        );
        rows.push(
            Row::new(
                format!(
                    "{paced}, one of the record's events retracted: p50 (ceiling: none retracted)"
                ),
                ms(&f.heavy_hours_retracted, 0.5),
                "",
            )
            .against(ms(&f.heavy_hours_paced, 0.5)),
        );
        rows.push(
            Row::new(
                format!("  p99 ({:.0} reads/s)", f.heavy_hours_retracted.rate()),
                ms(&f.heavy_hours_retracted, 0.99),
                "≤ 5 ms",
            )
            .against(ms(&f.heavy_hours_paced, 0.99)),
        );
        progress(&rows);
    }

    if wanted(Section::Serving) {
        let f =
            serving::measure(stack, &services, &shape, sizes.serve_events, sizes.duration).await?;
        let (o, b) = (&f.ours, &f.bare);
        let ms = |o: &http::Outcome, q: f64| Figure::ms(o.ms(q));
        rows.push(
            Row::new(
                format!(
                    "serving warm single-user, uniform users, saturation ({} B answers)",
                    f.answer_bytes
                ),
                Figure::per_sec(o.warm.rate()),
                "≥ 35k/s, ≥ 0.5×",
            )
            .against(Figure::per_sec(b.warm.rate())),
        );
        rows.push(
            Row::new("  warm p50 at saturation", ms(&o.warm, 0.5), "").against(ms(&b.warm, 0.5)),
        );
        rows.push(
            Row::new("  warm p99 at saturation", ms(&o.warm, 0.99), "").against(ms(&b.warm, 0.99)),
        );
        let fixed = format!("@ {}k/s", serving::FIXED_RATE / 1000.0);
        rows.push(
            Row::new(
                format!(
                    "serving warm p50 {fixed}, uniform users (achieved {:.0}/s)",
                    o.warm_fixed.rate()
                ),
                ms(&o.warm_fixed, 0.5),
                "",
            )
            .against(ms(&b.warm_fixed, 0.5)),
        );
        rows.push(
            Row::new(
                format!("serving warm p99 {fixed}, uniform users"),
                ms(&o.warm_fixed, 0.99),
                "p99 ≤ 2 ms",
            )
            .against(ms(&b.warm_fixed, 0.99)),
        );
        rows.push(
            Row::new(
                "serving warm single-user, Zipf users, saturation",
                Figure::per_sec(o.warm_zipf.rate()),
                "",
            )
            .against(Figure::per_sec(b.warm_zipf.rate())),
        );
        rows.push(
            Row::new(
                "  Zipf p50 at saturation",
                ms(&o.warm_zipf, 0.5),
                format!("p99 {:.2} ms", o.warm_zipf.ms(0.99)),
            )
            .against(ms(&b.warm_zipf, 0.5)),
        );
        if let Some(cold) = &o.cold {
            rows.push(
                Row::new(
                    "serving cold single-user (after restart), saturation",
                    Figure::per_sec(cold.rate()),
                    "",
                )
                .against(Figure::per_sec(b.warm.rate())),
            );
            rows.push(Row::new(
                "  cold p50",
                ms(cold, 0.5),
                format!("p99 {:.2} ms", cold.ms(0.99)),
            ));
        }
        rows.push(
            Row::new(
                "serving multi-get, 100 uniform users per request",
                Figure::per_sec(o.multi.rate()),
                "",
            )
            .against(Figure::per_sec(b.multi.rate())),
        );
        rows.push(
            Row::new(
                "  multi-get p50",
                ms(&o.multi, 0.5),
                format!("p99 {:.2} ms", o.multi.ms(0.99)),
            )
            .against(ms(&b.multi, 0.5)),
        );
        if stack == Stack::Real {
            let raw = engine_reads::measure(
                &services,
                &platform::unique_name("reads"),
                shape.users,
                engine_reads::cached_record_bytes(&services, 1024).await?,
                sizes.duration,
            )
            .await?;
            rows.push(
                Row::new(
                    "serving warm single-user against the engines' raw reads (Redis GET + CQL partition read per answer, 32 in flight)",
                    Figure::per_sec(o.warm.rate()),
                    "",
                )
                .against(Figure::per_sec(raw.rate())),
            );
            rows.push(
                Row::new(
                    "  serving warm p50 against the raw engine reads' p50",
                    ms(&o.warm, 0.5),
                    format!("raw p99 {:.2} ms", raw.ms(0.99)),
                )
                .against(Figure::ms(raw.ms(0.5))),
            );
        }
        progress(&rows);
    }
    if wanted(Section::Batch) {
        let dir = tempfile::tempdir()?;
        let place = match stack {
            Stack::Embedded => Place::Embedded(dir.path().to_owned()),
            Stack::Real => real_place("batch"),
        };
        let events = args.batch_events.unwrap_or(sizes.batch_events);
        let f = batch::measure(&place, &shape, events).await?;
        rows.push(
            Row::new(
                format!(
                    "batch recompute ({} events, {} users)",
                    f.report.events, f.report.users
                ),
                Figure::per_sec(f.rate()),
                "≥ 0.5×",
            )
            .against(Figure::per_sec(f.scan_rate())),
        );
        rows.push(Row::new(
            "  batch per CPU-second",
            Figure::per_sec(f.per_core()),
            "≥ 1M/s per core",
        ));
        rows.push(Row::new(
            "  batch peak memory (VmHWM)",
            Figure::mib(f.report.peak_bytes),
            format!("before the run {}", Figure::mib(f.report.baseline_bytes)),
        ));
        progress(&rows);
    }

    if wanted(Section::Storage) {
        // SCALING.md's A4: 173 events per user per day, 37 days retained;
        // issue 12's heavy user: 1M events in 7 days, one day of them.
        for (who, per_day, days) in [("typical", 173, 37), ("heavy", 1_000_000 / 7, 1)] {
            let s = storage::measure(&shape, per_day, days)?;
            rows.push(
                Row::new(
                    format!(
                        "stored per user per day, {who} user ({per_day} events/day; ceiling: the log's Avro bytes)"
                    ),
                    Figure::bytes(s.record_per_day),
                    "",
                )
                .against(Figure::bytes(s.log_per_day)),
            );
            rows.push(Row::new(
                "  per event",
                Figure::bytes(s.record_per_event()),
                "",
            ));
        }
        progress(&rows);
    }

    if wanted(Section::Insights) && stack == Stack::Embedded {
        let dir = tempfile::tempdir()?;
        let at_once = insights::Timers {
            users: sizes.timer_users,
            instants: 1,
            spacing: 0,
        };
        // 100 instants 50 ms apart: each timer on its own, the worker
        // otherwise idle.
        let spread = insights::Timers {
            users: 500,
            instants: 100,
            spacing: 50,
        };
        let f = insights::measure(
            dir.path(),
            &shape,
            sizes.insights_events,
            sizes.insights_probes,
            at_once,
            spread,
        )
        .await?;
        rows.push(
            Row::new(
                format!(
                    "insights worker, log → segment membership ({} events, {} users; speed layer caught up; ceiling: the same passes' rule evaluations in memory)",
                    f.events, f.users
                ),
                Figure::per_sec(f.ours_rate()),
                "",
            )
            .against(Figure::per_sec(f.ceiling_rate())),
        );
        let q = insights::quantile;
        let (applied, published) = (&f.event_delays.applied, &f.event_delays.published);
        rows.push(
            Row::new(
                format!(
                    "insights event → published transition p50 ({} probes; ceiling: → applied by the speed layer)",
                    published.len()
                ),
                Figure::ms(q(published, 0.5)),
                "",
            )
            .against(Figure::ms(q(applied, 0.5))),
        );
        rows.push(
            Row::new(
                "insights event → published transition p99",
                Figure::ms(q(published, 0.99)),
                "≤ 60 s (contract)",
            )
            .against(Figure::ms(q(applied, 0.99))),
        );
        rows.push(Row::new(
            format!(
                "insights timer (due instant) → published transition p50 ({} users due at once)",
                f.timer_delays.len()
            ),
            Figure::ms(q(&f.timer_delays, 0.5)),
            "",
        ));
        rows.push(Row::new(
            "insights timer → published transition p99 (due at once)",
            Figure::ms(q(&f.timer_delays, 0.99)),
            "≤ 60 s (contract)",
        ));
        let spread = &f.spread_timer_delays;
        rows.push(Row::new(
            format!(
                "insights timer → published transition p50 ({} users due at 100 instants 50 ms apart)",
                spread.len()
            ),
            Figure::ms(q(spread, 0.5)),
            "",
        ));
        rows.push(Row::new(
            "insights timer → published transition p99 (spread out)",
            Figure::ms(q(spread, 0.99)),
            "≤ 60 s (contract)",
        ));
        progress(&rows);
    }

    if wanted(Section::Scale) && stack == Stack::Embedded {
        let points = if args.scale_at.is_empty() {
            &sizes.scale
        } else {
            &args.scale_at
        };
        for (users, events) in points {
            let p = scale::measure(&sizes.shape(args, *users), *events, args.speed_batch).await?;
            let at = format!("{}k users, {}k events", p.users / 1000, p.events / 1000);
            rows.push(
                Row::new(
                    format!("scale {at}: speed"),
                    Figure::per_sec(p.speed.ours_rate()),
                    "",
                )
                .against(Figure::per_sec(p.speed.ceiling_rate())),
            );
            rows.push(
                Row::new(
                    format!("scale {at}: batch"),
                    Figure::per_sec(p.batch.rate()),
                    "",
                )
                .against(Figure::per_sec(p.batch.scan_rate())),
            );
            rows.push(Row::new(
                format!("scale {at}: batch peak memory"),
                Figure::mib(p.batch.report.peak_bytes),
                "",
            ));
            rows.push(Row::new(
                format!("scale {at}: read p50 in process"),
                Figure::ms(p.read.value_at_quantile(0.5) as f64 / 1000.0),
                format!(
                    "p99 {:.2} ms",
                    p.read.value_at_quantile(0.99) as f64 / 1000.0
                ),
            ));
            progress(&rows);
        }
    }

    println!("{}", report::text(&rows));
    if let Some(path) = &args.markdown {
        std::fs::write(path, markdown(args, &rows))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `USERS:EVENTS` → (users, events).
fn parse_point(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("{text:?}: expected USERS:EVENTS, e.g. 1000000:1000000");
    let (users, events) = text.split_once(':').ok_or_else(bad)?;
    Ok((
        users.parse().map_err(|_| bad())?,
        events.parse().map_err(|_| bad())?,
    ))
}

fn progress(rows: &[Row]) {
    eprintln!("{}", report::text(rows));
}

/// The table with what it was measured on.
fn markdown(args: &SuiteArgs, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Measured {} with `signals-bench suite{}{}` ({:?} stack).\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        if args.quick { " --quick" } else { "" },
        match args.stack {
            Stack::Embedded => "",
            Stack::Real => " --stack real",
        },
        args.stack
    );
    let _ = writeln!(out, "Machine: {}\n", machine());
    out.push_str(&report::markdown(rows));
    out
}

/// CPU model, cores and memory of this machine.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0.0, |kib| kib as f64 / 1024.0 / 1024.0);
    format!("{model}, {cores} cores, {memory:.0} GiB")
}
