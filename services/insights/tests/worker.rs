//! The worker on embedded backends with the speed layer running beside it:
//! a scripted user's transitions, including one that time alone causes,
//! each published exactly once across a worker killed mid-run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use signals_core::{Definitions, SegmentSpec, Segments, SignalSpec};
use signals_insights::{InsightsOptions, InsightsWorker};
use signals_log::embedded::{EmbeddedLog, EmbeddedLogOptions, FsyncPolicy};
use signals_log::{Append, DeadLetterFile, EventLog};
use signals_schemas::{Event, EventType, LogRecord, Millis, RecordBody};
use signals_speed::{SpeedLayer, SpeedOptions};
use signals_store::embedded::EmbeddedStore;
use signals_store::insights::{Change, FeedEntry};
use signals_store::InsightsStore;
use tokio_util::sync::CancellationToken;

const HOUR: Millis = 3_600_000;
const DAY: Millis = 24 * HOUR;

fn defaults() -> (Definitions, Segments) {
    #[derive(serde::Deserialize)]
    struct File {
        signals: Vec<SignalSpec>,
        segments: Vec<SegmentSpec>,
    }
    let text = include_str!("../../signals/config/default.toml");
    let file: File = toml::from_str(text).expect("default config parses");
    let definitions = Definitions::compile(&file.signals).expect("definitions");
    let segments = Segments::compile(&file.segments, &definitions).expect("segments");
    (definitions, segments)
}

fn event(id: &str, kind: EventType, time: Millis) -> Append {
    Append::record(&LogRecord {
        accepted_at: time,
        body: RecordBody::Event(Event {
            event_id: id.into(),
            user_id: "u-1".into(),
            event_type: kind,
            item_id: (kind != EventType::Search).then(|| "item".into()),
            query: (kind == EventType::Search).then(|| "lofts".into()),
            event_time: time,
            attributes: Default::default(),
        }),
    })
}

fn now() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .expect("clock after 1970")
}

async fn feed(store: &EmbeddedStore) -> Vec<FeedEntry> {
    store.segment_changes(0, 1_000).await.expect("feed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_user_enters_and_leaves_once_across_a_killed_worker() {
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
    let (definitions, segments) = defaults();
    let stop = CancellationToken::new();
    let speed = SpeedLayer {
        log: log.clone(),
        store: store.clone(),
        dead_letters: Arc::new(DeadLetterFile::new(&dir.path().join("dead.ndjson"))),
        options: SpeedOptions {
            poll_wait: Duration::from_millis(10),
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
            poll_wait: Duration::from_millis(50),
            ..InsightsOptions::default()
        },
    };

    // Ten views whose oldest passes 24 hours 4 seconds from now; three
    // searches; sessions three days, two days and 36 hours ago.
    let start = now();
    let oldest_view = start - DAY + 4_000;
    let mut script: Vec<Append> = (0..10)
        .map(|i| event(&format!("v{i}"), EventType::View, oldest_view + i * 10))
        .collect();
    for (i, ago) in [10, 5, 1].iter().enumerate() {
        script.push(event(
            &format!("s{i}"),
            EventType::Search,
            start - ago * 60_000,
        ));
    }
    for (i, ago) in [3 * DAY, 2 * DAY, 36 * HOUR].iter().enumerate() {
        script.push(event(&format!("d{i}"), EventType::Click, start - ago));
    }
    let first = {
        let worker = worker.clone();
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(stop).await })
    };
    log.append(script).await.expect("appended");

    // Entered all three, once each.
    let deadline = Instant::now() + Duration::from_secs(20);
    while feed(&store).await.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "entered within 20 s: {:?}",
            feed(&store).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Kill the worker mid-run (its future is dropped wherever it is) and
    // start another on the same store: it resumes from durable progress.
    first.abort();
    let _ = first.await;
    let second = {
        let worker = worker.clone();
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(stop).await })
    };

    // Time alone: the oldest view leaves the 24-hour window.
    let deadline = Instant::now() + Duration::from_secs(20);
    while feed(&store).await.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "left within 20 s: {:?}",
            feed(&store).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing more comes, however long the worker runs on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let entries = feed(&store).await;
    let summary: Vec<(&str, Change)> = entries
        .iter()
        .map(|e| (e.transition.segment.as_str(), e.transition.change))
        .collect();
    let mut entered: Vec<&str> = summary[..3].iter().map(|(s, _)| *s).collect();
    entered.sort();
    assert_eq!(
        entered,
        ["active_browser", "engaged", "searcher"],
        "{entries:?}"
    );
    assert!(summary[..3].iter().all(|(_, c)| *c == Change::Entered));
    assert_eq!(summary[3], ("active_browser", Change::Left), "{entries:?}");
    assert_eq!(entries.len(), 4, "{entries:?}");
    assert_eq!(
        entries[3].transition.at,
        oldest_view + DAY + 1,
        "left at the instant the oldest view left the window"
    );
    assert!(entries[..3].iter().all(|e| e.transition.at >= start));
    assert_eq!(
        entries.iter().map(|e| e.cursor).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert!(store
        .segment_members("active_browser", None, 10)
        .await
        .expect("members")
        .is_empty());
    assert_eq!(
        store
            .segment_members("searcher", None, 10)
            .await
            .expect("members"),
        vec!["u-1"]
    );

    stop.cancel();
    second
        .await
        .expect("joined")
        .expect("worker stopped cleanly");
    speed_task
        .await
        .expect("joined")
        .expect("speed stopped cleanly");
}

#[tokio::test]
async fn segments_reading_undefined_signals_are_a_configuration_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(
        EmbeddedLog::open(&dir.path().join("log"), EmbeddedLogOptions::default()).expect("log"),
    );
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).expect("store"));
    let (definitions, segments) = defaults();
    // Every default signal but the one `engaged` reads.
    let kept: Vec<SignalSpec> = {
        #[derive(serde::Deserialize)]
        struct File {
            signals: Vec<SignalSpec>,
        }
        let file: File = toml::from_str(include_str!("../../signals/config/default.toml"))
            .expect("default config parses");
        file.signals
            .into_iter()
            .filter(|s| s.name != "sessions_7d")
            .collect()
    };
    assert!(definitions.get("sessions_7d").is_some());
    let worker = InsightsWorker {
        log,
        store: store.clone(),
        insights: store,
        definitions: Arc::new(Definitions::compile(&kept).expect("definitions")),
        segments: Arc::new(segments),
        sink: None,
        options: InsightsOptions::default(),
    };
    let error = worker
        .run(CancellationToken::new())
        .await
        .expect_err("refused");
    assert!(error.is_configuration(), "{error}");
    assert!(!error.is_transient());
    assert_eq!(
        error.to_string(),
        "configuration: the segment rules read signals that have no definition: sessions_7d"
    );
}
