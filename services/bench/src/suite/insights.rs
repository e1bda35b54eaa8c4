//! The insights worker (embedded): how many log events per second it turns
//! into current segment membership, and how long a transition takes to be
//! published (durable in the feed, readable on `/v1/segments/changes`)
//! after the event that causes it, or after the instant at which time
//! alone causes it (a timer).
//!
//! * **Throughput**: the speed layer first applies a full log of skewed
//!   events; then the real [`InsightsWorker`] (the options `signals up`
//!   runs it with) starts from nothing and is timed until its durable
//!   progress reaches the log's end. Ceiling, in the same run: the same
//!   passes (the log in the worker's batch size, each pass's touched
//!   users) evaluated in memory: each user's history held decoded, merged
//!   and walked through the default segment rules exactly as the worker
//!   does, with no log read, no store read and no store write. That is
//!   what the worker's own computation costs; the gap is its I/O (reading
//!   every touched user's history per pass dominates, the one write per
//!   pass is small). The store's raw write rate would not be a ceiling:
//!   the worker writes a few membership rows per pass, not per event.
//! * **Event → published**: with the speed layer and the worker running
//!   (the platform's poll waits), a fresh user's tenth view is appended;
//!   the delay runs from just before the append to the first read of the
//!   feed that holds the user's `entered active_browser`. Its floor, in
//!   the same probes: the delay until the speed layer has durably applied
//!   the views (the worker waits for that before it evaluates).
//! * **Timer → published**: users whose oldest of ten views leaves the
//!   24-hour window at their due instant T; the delay runs from T to the
//!   first read of the feed holding the user's `left active_browser`
//!   (whose `at` must be T exactly). Once with every user due at the same
//!   instant (a burst: one pass fires them all), once with the users due
//!   at instants spread over seconds (each timer on its own).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signals_core::{Definitions, LogPosition, Segments, SignalDefinition, UserView};
use signals_insights::{InsightsOptions, InsightsWorker};
use signals_log::embedded::{EmbeddedLog, EmbeddedLogOptions, FsyncPolicy};
use signals_log::{Append, DeadLetterFile, EventLog};
use signals_schemas::{Event, EventType, Millis, RecordBody};
use signals_speed::{SpeedLayer, SpeedOptions};
use signals_store::embedded::EmbeddedStore;
use signals_store::insights::Change;
use signals_store::{InsightsStore, SignalStore, StoreReads, UserHistory};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backends;
use crate::workload::{self, Shape};

const DAY: Millis = 86_400_000;

/// What one insights measurement found.
pub struct InsightsFigures {
    pub events: u64,
    pub users: usize,
    /// The worker from an empty membership to the log's end.
    pub ours: Duration,
    /// The same passes evaluated in memory.
    pub ceiling: Duration,
    /// Event appended → applied by the speed layer / transition in the
    /// feed, ms, sorted.
    pub event_delays: EventDelays,
    /// Due instant → transition in the feed, ms, sorted: all due at once,
    /// and due at instants spread out.
    pub timer_delays: Vec<f64>,
    pub spread_timer_delays: Vec<f64>,
}

impl InsightsFigures {
    pub fn ours_rate(&self) -> f64 {
        self.events as f64 / self.ours.as_secs_f64()
    }

    pub fn ceiling_rate(&self) -> f64 {
        self.events as f64 / self.ceiling.as_secs_f64()
    }
}

/// The `q` quantile of `sorted` (nearest rank; NaN when empty).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The figures over `events` skewed events of `shape` in a fresh embedded
/// log and store under `dir`, with `probes` event probes, and timers
/// `at_once` then `spread` out.
pub async fn measure(
    dir: &std::path::Path,
    shape: &Shape,
    events: u64,
    probes: usize,
    at_once: Timers,
    spread: Timers,
) -> anyhow::Result<InsightsFigures> {
    let log = Arc::new(EmbeddedLog::open(
        &dir.join("log"),
        EmbeddedLogOptions {
            // Appends are not what these figures time.
            fsync: FsyncPolicy::Never,
            ..EmbeddedLogOptions::default()
        },
    )?);
    let store = Arc::new(EmbeddedStore::open(&dir.join("store.redb"))?);
    let definitions = backends::default_definitions()?;
    let segments = Arc::new(backends::default_segments(&definitions)?);
    let worker = InsightsWorker {
        log: log.clone(),
        store: store.clone(),
        insights: store.clone(),
        definitions: definitions.clone(),
        segments: segments.clone(),
        sink: None,
        // As `signals up` runs it.
        options: InsightsOptions::default(),
    };

    backends::fill(&*log, shape, events).await?;
    let end = log.end().await?;
    let speed_stop = CancellationToken::new();
    let speed = run_speed_layer(log.clone(), store.clone(), dir, speed_stop.clone());
    let patience = Patience::new(format!("the speed layer applied {events} events"));
    while !store.speed_progress().await?.position.reaches(&end) {
        patience.pause().await?;
    }

    // Throughput: the worker alone over the applied log.
    let worker_stop = CancellationToken::new();
    let started = Instant::now();
    let running = spawn_worker(&worker, worker_stop.clone());
    let patience = Patience::new("the insights worker reached the log's end");
    while !store.insights_progress().await?.position.reaches(&end) {
        patience.pause().await?;
    }
    let ours = started.elapsed();
    let (ceiling, users) = evaluate_in_memory(
        &*log,
        &*store,
        &definitions,
        &segments,
        &end,
        worker.options.max_batch,
    )
    .await?;

    // Both delays with both layers running live.
    let event_delays = event_probes(&*log, &store, probes).await?;
    let timer_delays = timer_probes(&*log, &*store, at_once).await?;
    let spread_timer_delays = timer_probes(&*log, &*store, spread).await?;

    worker_stop.cancel();
    speed_stop.cancel();
    running.await??;
    speed.await??;
    Ok(InsightsFigures {
        events,
        users,
        ours,
        ceiling,
        event_delays,
        timer_delays,
        spread_timer_delays,
    })
}

fn run_speed_layer(
    log: Arc<EmbeddedLog>,
    store: Arc<EmbeddedStore>,
    dir: &std::path::Path,
    stop: CancellationToken,
) -> JoinHandle<Result<(), signals_speed::SpeedError>> {
    let layer = SpeedLayer {
        log,
        store,
        dead_letters: Arc::new(DeadLetterFile::new(&dir.join("dead-letters.ndjson"))),
        options: SpeedOptions {
            group: format!("bench-speed-{}", workload::now_millis()),
            // `[speed]` of the default configuration, as `signals up` runs it.
            max_batch: 20_000,
            poll_wait: Duration::from_millis(20),
            ..SpeedOptions::default()
        },
    };
    tokio::spawn(async move { layer.run(stop).await })
}

fn spawn_worker(
    worker: &InsightsWorker,
    stop: CancellationToken,
) -> JoinHandle<Result<(), signals_insights::InsightsError>> {
    let worker = worker.clone();
    tokio::spawn(async move { worker.run(stop).await })
}

/// Polling for something that must happen, for at most ten minutes.
struct Patience {
    what: String,
    until: Instant,
}

impl Patience {
    fn new(what: impl Into<String>) -> Patience {
        Patience {
            what: what.into(),
            until: Instant::now() + Duration::from_secs(600),
        }
    }

    /// A millisecond's pause before the next look.
    async fn pause(&self) -> anyhow::Result<()> {
        if Instant::now() > self.until {
            anyhow::bail!("gave up waiting: {}", self.what);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(())
    }
}

/// Times the worker's evaluations alone over the same passes: the log up
/// to `end` in batches of `batch` records, each batch's users evaluated
/// from histories read (and kept) beforehand. Returns the time and the
/// number of users.
async fn evaluate_in_memory(
    log: &dyn EventLog,
    store: &dyn SignalStore,
    definitions: &Definitions,
    segments: &Segments,
    end: &LogPosition,
    batch: usize,
) -> anyhow::Result<(Duration, usize)> {
    let mut passes: Vec<BTreeSet<String>> = Vec::new();
    let mut reader = log.read_from(&LogPosition::new()).await?;
    while !reader.position().reaches(end) {
        let mut touched = BTreeSet::new();
        for entry in reader.next_batch(batch, Duration::ZERO).await? {
            if let Ok(record) = signals_schemas::avro::decode(&entry.bytes) {
                if let RecordBody::Event(event) = record.body {
                    touched.insert(event.user_id.to_string());
                }
            }
        }
        passes.push(touched);
    }
    let mut histories: HashMap<String, UserHistory> = HashMap::new();
    for user in passes.iter().flatten() {
        if !histories.contains_key(user) {
            histories.insert(user.clone(), store.user_history(user).await?);
        }
    }
    let rules: Vec<&SignalDefinition> = segments
        .signals()
        .into_iter()
        .filter_map(|name| definitions.get(name))
        .collect();
    // What the worker keeps per user: segments, evaluated at, due.
    let mut members: HashMap<&str, (Vec<String>, Millis, Option<Millis>)> = HashMap::new();
    let now = workload::now_millis();
    let started = Instant::now();
    for pass in &passes {
        for user in pass {
            let Some(history) = histories.get(user) else {
                continue;
            };
            let view = UserView::merge(history.record.clone(), history.speed.iter().cloned());
            let (before, floor, due) =
                members
                    .get(user.as_str())
                    .cloned()
                    .unwrap_or((Vec::new(), Millis::MIN, None));
            let due = due.filter(|d| *d > floor);
            let walk = segments.walk(&view, &rules, &before, due, now.max(floor), 10_000);
            members.insert(user, (walk.segments, walk.at, walk.next_due));
        }
    }
    Ok((started.elapsed(), histories.len()))
}

fn view(user: &str, n: usize, time: Millis) -> Append {
    let event = Event {
        event_id: format!("{user}-v{n}").into(),
        user_id: user.into(),
        event_type: EventType::View,
        item_id: Some("listing-1".into()),
        query: None,
        event_time: time,
        attributes: Default::default(),
    };
    Append {
        key: user.to_owned(),
        bytes: signals_schemas::avro::encode(&workload::record(event, time)),
    }
}

/// The feed's last cursor now.
async fn feed_end(store: &dyn InsightsStore) -> anyhow::Result<u64> {
    Ok(store
        .insights_progress()
        .await?
        .next_cursor
        .saturating_sub(1))
}

/// Per probe, ms from the append to the speed layer's durable apply of it
/// (what the worker waits for: the floor of its delay) and to the feed
/// holding the transition.
#[derive(Default)]
pub struct EventDelays {
    pub applied: Vec<f64>,
    pub published: Vec<f64>,
}

/// One fresh user at a time reaches ten views; the delays until the speed
/// layer applied them and until the feed has the user's `entered`. Sorted.
async fn event_probes(
    log: &dyn EventLog,
    store: &EmbeddedStore,
    probes: usize,
) -> anyhow::Result<EventDelays> {
    let run = workload::now_millis();
    let mut delays = EventDelays::default();
    for probe in 0..probes {
        let user = format!("probe-{run}-{probe}");
        let mut from = feed_end(store).await?;
        let t = workload::now_millis();
        let views = (0..10)
            .map(|i| view(&user, i, t - 1_000 + i as Millis))
            .collect();
        let sent = Instant::now();
        log.append(views).await?;
        let end = log.end().await?;
        let mut applied = None;
        let patience = Patience::new("a probe's transition in the feed");
        'seen: loop {
            if applied.is_none() && store.speed_progress().await?.position.reaches(&end) {
                applied = Some(sent.elapsed());
            }
            for entry in store.segment_changes(from, 1_000).await? {
                from = entry.cursor;
                let t = &entry.transition;
                if t.user_id == user && t.change == Change::Entered {
                    break 'seen;
                }
            }
            patience.pause().await?;
        }
        let published = sent.elapsed();
        // The worker waits for the speed layer, so it has applied them.
        let applied = applied.unwrap_or(published);
        delays.applied.push(applied.as_secs_f64() * 1e3);
        delays.published.push(published.as_secs_f64() * 1e3);
    }
    delays.applied.sort_by(f64::total_cmp);
    delays.published.sort_by(f64::total_cmp);
    Ok(delays)
}

/// How the timers of [`timer_probes`] fall due.
#[derive(Clone, Copy, Debug)]
pub struct Timers {
    pub users: usize,
    /// Distinct due instants, `spacing` apart (1: all due at once).
    pub instants: usize,
    pub spacing: Millis,
}

/// `timers.users` users with ten views whose oldest leaves the 24-hour
/// window at their due instant; ms from that instant until the feed has
/// each one's `left active_browser`. Sorted.
async fn timer_probes(
    log: &dyn EventLog,
    store: &dyn InsightsStore,
    timers: Timers,
) -> anyhow::Result<Vec<f64>> {
    let users = timers.users;
    let run = workload::now_millis();
    // Far enough ahead that every user has entered before the first.
    let first = run + 10_000 + users as Millis * 5;
    let due = |u: usize| first + (u % timers.instants.max(1)) as Millis * timers.spacing;
    let names: Vec<String> = (0..users).map(|u| format!("timer-{run}-{u}")).collect();
    let leaves: HashMap<&str, Millis> = names
        .iter()
        .enumerate()
        .map(|(u, name)| (name.as_str(), due(u)))
        .collect();
    let after = feed_end(store).await?;
    for chunk in names.chunks(500) {
        let appends = chunk
            .iter()
            .flat_map(|u| {
                let oldest = leaves[u.as_str()] - DAY - 1;
                (0..10).map(move |i| view(u, i, oldest + i as Millis))
            })
            .collect();
        log.append(appends).await?;
    }
    // Every user enters before the first instant; then each leaves at its.
    let prefix = format!("timer-{run}-");
    let mut from = after;
    let mut entered = 0;
    let patience = Patience::new("the timer users entering");
    while entered < users {
        if workload::now_millis() >= first {
            anyhow::bail!("only {entered} of {users} timer users entered before their timer was due; make the lead longer");
        }
        for entry in store.segment_changes(from, 10_000).await? {
            from = entry.cursor;
            let t = entry.transition;
            if t.user_id.starts_with(&prefix)
                && t.segment == "active_browser"
                && t.change == Change::Entered
            {
                entered += 1;
            }
        }
        patience.pause().await?;
    }
    let mut left: HashMap<String, f64> = HashMap::new();
    let patience = Patience::new("the timer users leaving");
    while left.len() < users {
        for entry in store.segment_changes(from, 10_000).await? {
            from = entry.cursor;
            let t = entry.transition;
            if !t.user_id.starts_with(&prefix)
                || t.segment != "active_browser"
                || t.change != Change::Left
            {
                continue;
            }
            let Some(&leave) = leaves.get(t.user_id.as_str()) else {
                continue;
            };
            if t.at != leave {
                anyhow::bail!(
                    "{} left at {}, not at the due instant {leave}",
                    t.user_id,
                    t.at
                );
            }
            let seen = (workload::now_millis() - leave) as f64;
            left.entry(t.user_id).or_insert(seen);
        }
        patience.pause().await?;
    }
    let mut delays: Vec<f64> = left.into_values().collect();
    delays.sort_by(f64::total_cmp);
    Ok(delays)
}
