//! This machine's figures for the insights worker on embedded backends
//! (ignored: run with `cargo test --release -p signals-insights --test
//! figures -- --ignored --nocapture`). Prints, asserts nothing timed:
//! * throughput: users whose segments change, events per second through
//!   the speed layer and the worker together;
//! * delay from an event's append to its transition in the feed, and from
//!   a timer's due instant to its transition in the feed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use signals_core::{Definitions, SegmentSpec, Segments, SignalSpec};
use signals_insights::{InsightsOptions, InsightsWorker};
use signals_log::embedded::{EmbeddedLog, EmbeddedLogOptions, FsyncPolicy};
use signals_log::{Append, DeadLetterFile, EventLog};
use signals_schemas::{Event, EventType, LogRecord, Millis, RecordBody};
use signals_speed::{SpeedLayer, SpeedOptions};
use signals_store::embedded::EmbeddedStore;
use signals_store::InsightsStore;
use tokio_util::sync::CancellationToken;

const DAY: Millis = 86_400_000;

fn now() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .expect("clock")
}

fn view(user: &str, id: usize, time: Millis) -> Append {
    Append::record(&LogRecord {
        accepted_at: time,
        body: RecordBody::Event(Event {
            event_id: format!("{user}-{id}"),
            user_id: user.into(),
            event_type: EventType::View,
            item_id: Some("item".into()),
            query: None,
            event_time: time,
            attributes: Default::default(),
        }),
    })
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints this machine's figures"]
async fn insights_worker_figures() {
    #[derive(serde::Deserialize)]
    struct File {
        signals: Vec<SignalSpec>,
        segments: Vec<SegmentSpec>,
    }
    let file: File =
        toml::from_str(include_str!("../../signals/config/default.toml")).expect("default config");
    let definitions = Definitions::compile(&file.signals).expect("definitions");
    let segments = Segments::compile(&file.segments, &definitions).expect("segments");
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(
        EmbeddedLog::open(
            &dir.path().join("log"),
            EmbeddedLogOptions {
                partitions: 2,
                fsync: FsyncPolicy::Never,
                ..EmbeddedLogOptions::default()
            },
        )
        .expect("log"),
    );
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).expect("store"));
    let stop = CancellationToken::new();
    let speed = SpeedLayer {
        log: log.clone(),
        store: store.clone(),
        dead_letters: Arc::new(DeadLetterFile::new(&dir.path().join("dead.ndjson"))),
        options: SpeedOptions {
            poll_wait: Duration::from_millis(5),
            ..SpeedOptions::default()
        },
    };
    let speed_stop = stop.clone();
    let speed_task = tokio::spawn(async move { speed.run(speed_stop).await });
    let worker = InsightsWorker {
        log: log.clone(),
        store: store.clone(),
        insights: store.clone(),
        definitions: Arc::new(definitions),
        segments: Arc::new(segments),
        sink: None,
        options: InsightsOptions {
            poll_wait: Duration::from_millis(20),
            ..InsightsOptions::default()
        },
    };
    let worker_stop = stop.clone();
    let worker_task = tokio::spawn(async move { worker.run(worker_stop).await });

    // Throughput: USERS users with 10 views each (each enters
    // active_browser), views timed to leave the window 30 s after start.
    const USERS: usize = 2_000;
    let start = now();
    let oldest = start - DAY + 30_000;
    let began = Instant::now();
    for chunk in (0..USERS).collect::<Vec<_>>().chunks(200) {
        let appends = chunk
            .iter()
            .flat_map(|u| (0..10).map(move |i| view(&format!("u{u}"), i, oldest + i as i64)))
            .collect();
        log.append(appends).await.expect("appended");
    }
    let entered_at = loop {
        let progress = store.insights_progress().await.expect("progress");
        if progress.next_cursor > USERS as u64 {
            break began.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let events = USERS * 10;
    println!(
        "insights worker (embedded, with the speed layer): {USERS} users entering, {events} events in {:.2?}: {:.0} users/s, {:.0} events/s",
        entered_at,
        USERS as f64 / entered_at.as_secs_f64(),
        events as f64 / entered_at.as_secs_f64()
    );

    // Event → transition delay: one user at a time reaching ten views.
    let mut delays = Vec::new();
    for probe in 0..50 {
        let user = format!("probe{probe}");
        let t = now();
        let cursor = store
            .insights_progress()
            .await
            .expect("progress")
            .next_cursor;
        let sent = Instant::now();
        log.append(
            (0..10)
                .map(|i| view(&user, i, t - 1_000 + i as i64))
                .collect(),
        )
        .await
        .expect("appended");
        loop {
            let feed = store
                .segment_changes(cursor.saturating_sub(1), 100)
                .await
                .expect("feed");
            if feed.iter().any(|e| e.transition.user_id == user) {
                delays.push(sent.elapsed().as_millis() as i64);
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    delays.sort_unstable();
    println!(
        "event → transition in the feed: p50 {} ms, p99 {} ms, max {} ms",
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays[delays.len() - 1]
    );

    // Timer → transition: the USERS users leave when their oldest view
    // passes 24 hours; the delay is from that instant to the feed.
    let leave = oldest + DAY + 1;
    tokio::time::sleep(Duration::from_millis((leave - now()).max(0) as u64)).await;
    let mut seen = std::collections::HashMap::new();
    let mut after = 0;
    while seen.len() < USERS {
        for entry in store.segment_changes(after, 1_000).await.expect("feed") {
            after = entry.cursor;
            let t = entry.transition;
            if t.segment == "active_browser" && t.change == signals_store::insights::Change::Left {
                seen.entry(t.user_id).or_insert_with(|| now() - leave);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut timer_delays: Vec<i64> = seen.into_values().collect();
    timer_delays.sort_unstable();
    println!(
        "timer (due instant) → transition in the feed, {USERS} users due at once: p50 {} ms, p99 {} ms, max {} ms",
        percentile(&timer_delays, 0.5),
        percentile(&timer_delays, 0.99),
        timer_delays[timer_delays.len() - 1]
    );
    stop.cancel();
    worker_task.await.expect("joined").expect("worker");
    speed_task.await.expect("joined").expect("speed");
}
