//! The insights worker as a process of its own on the real engines from
//! `infra/local/up` (`signals serve`, `signals speed` and `signals
//! insights` on Kafka + Cassandra + Redis), SIGKILLed again and again while
//! events stream in: every transition is published exactly once, both on
//! `/v1/segments/changes` and on the Kafka topic of the feed, including a
//! transition that time alone caused while the worker was dead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;
use signals_e2e::reference::Sent;
use signals_e2e::{binary, real_engines, Platform, Shape};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const USER: &str = "u-scripted";
/// A user whose time-caused transition falls while the worker is dead.
const TIMED: &str = "u-timed";
/// Rounds of events each background user gets: 12 views and 3 searches
/// in all, so that it enters `active_browser` and `searcher` on its last.
const ROUNDS_PER_USER: usize = 3;

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn event(user: &str, id: &str, kind: &str, time: i64) -> Value {
    Sent {
        event_id: id.into(),
        user_id: user.into(),
        event_type: kind.into(),
        item_id: (kind != "search").then(|| format!("item-{id}")),
        query: (kind == "search").then(|| format!("query {id}")),
        time,
        city: None,
    }
    .to_json()
}

async fn post(platform: &Platform, events: &[Value]) {
    let answer = platform.post_events(events).await.expect("accepted");
    assert_eq!(answer["accepted"], events.len(), "{answer}");
}

/// `signals insights` with the platform's settings, SIGKILLed on drop.
struct Worker {
    settings: Vec<(String, String)>,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Worker {
    fn start(settings: &[(String, String)], dir: &Path) -> Worker {
        let mut worker = Worker {
            settings: settings.to_vec(),
            data_dir: dir.join("insights-data"),
            log: dir.join("insights.log"),
            child: None,
        };
        worker.spawn();
        worker
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("worker log");
        let mut command = Command::new(binary());
        command
            .arg("insights")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (key, _) in std::env::vars() {
            if key.starts_with("SIGNALS_") && !key.starts_with("SIGNALS_TEST_") {
                command.env_remove(key);
            }
        }
        command.envs(self.settings.iter().map(|(k, v)| (k, v)));
        self.child = Some(command.spawn().expect("signals insights starts"));
    }

    /// SIGKILL: no chance to finish a pass, a commit or a Kafka transaction.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Panics with the worker's log if it exited by itself.
    fn assert_running(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("signals insights exited with {status}:\n{log}");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The feed as `/v1/segments/changes` serves it, and its freshness.
async fn feed(platform: &Platform) -> (Vec<Value>, Value) {
    let mut changes = Vec::new();
    let mut after = 0;
    loop {
        let (status, body) = platform
            .get_json(&format!("/v1/segments/changes?after={after}&limit=1000"))
            .await
            .expect("changes");
        assert_eq!(status, 200, "{body}");
        let page = body["changes"].as_array().expect("changes").clone();
        if page.is_empty() {
            return (changes, body["freshness"].clone());
        }
        after = page
            .last()
            .and_then(|c| c["cursor"].as_u64())
            .expect("cursor");
        changes.extend(page);
    }
}

/// Waits until `done` holds for the feed (a liveness bound, not a timing).
async fn wait_for_feed(
    platform: &Platform,
    worker: &mut Worker,
    what: &str,
    done: impl Fn(&[Value], &Value) -> bool,
) -> Vec<Value> {
    // A restarted group member may first wait out the killed one's session.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        worker.assert_running();
        let (changes, freshness) = feed(platform).await;
        if done(&changes, &freshness) {
            return changes;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within 180 s: {freshness} {changes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn has(changes: &[Value], user: &str, segment: &str, change: &str) -> bool {
    changes
        .iter()
        .any(|c| c["user_id"] == user && c["segment"] == segment && c["change"] == change)
}

/// (cursor, user, segment, change, at) of each feed entry.
type Entry = (u64, String, String, String, i64);

fn entry_of_route(change: &Value) -> Entry {
    let at = chrono::DateTime::parse_from_rfc3339(change["at"].as_str().expect("at"))
        .expect("RFC 3339")
        .timestamp_millis();
    (
        change["cursor"].as_u64().expect("cursor"),
        change["user_id"].as_str().expect("user").to_owned(),
        change["segment"].as_str().expect("segment").to_owned(),
        change["change"].as_str().expect("change").to_owned(),
        at,
    )
}

/// Every committed record of the feed's topic, from its beginning, once
/// `count` are there (read_committed, as a subscriber reads it).
fn topic_entries(brokers: &str, topic: &str, count: usize) -> Vec<Entry> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-check"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(20))
        .expect("topic metadata");
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    assert!(partitions > 0, "the feed's topic {topic} exists");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assigned");
    let mut entries = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Read past `count` for a few seconds more: a duplicate would show.
    let mut settle: Option<Instant> = None;
    while settle.is_none_or(|until| Instant::now() < until) {
        assert!(
            Instant::now() < deadline,
            "{count} records on {topic} within 60 s: {entries:?}"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.expect("record");
            let change =
                signals_schemas::segment_change::decode(message.payload().expect("a value"))
                    .expect("a segment change");
            assert_eq!(
                message.key(),
                Some(change.user_id.as_bytes()),
                "keyed by user id"
            );
            entries.push((
                change.cursor,
                change.user_id,
                change.segment,
                if change.entered { "entered" } else { "left" }.to_owned(),
                change.at,
            ));
        }
        if settle.is_none() && entries.len() >= count {
            settle = Some(Instant::now() + Duration::from_secs(3));
        }
    }
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_insights_process_publishes_each_transition_once_on_the_route_and_the_topic() {
    let Some(mut settings) = real_engines("insights") else {
        return;
    };
    let setting = |key: &str| {
        settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .expect("setting")
    };
    let brokers = setting("SIGNALS_LOG__KAFKA__BROKERS");
    let topic = format!("{}.segments", setting("SIGNALS_LOG__KAFKA__TOPIC"));
    settings.push(("SIGNALS_LOG__KAFKA__SEGMENTS_TOPIC".into(), topic.clone()));
    settings.push(("SIGNALS_BATCH__SCHEDULE".into(), "off".into()));
    let platform = Arc::new(
        Platform::start_with(Shape::Split { speed_processes: 1 }, settings.clone())
            .await
            .expect("serve and speed start"),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let mut worker = Worker::start(&settings, dir.path());

    // The scripted user: ten views whose oldest leaves the 24-hour window
    // about 40 s from now, three sessions this week.
    let start = now();
    let oldest_view = start - DAY + 40_000;
    let leaves_at = oldest_view + DAY + 1;
    let mut script: Vec<Value> = (0..10)
        .map(|i| event(USER, &format!("v{i}"), "view", oldest_view + i * 10))
        .collect();
    for (i, ago) in [3 * DAY, 2 * DAY, 36 * HOUR].iter().enumerate() {
        script.push(event(USER, &format!("d{i}"), "click", start - ago));
    }
    post(&platform, &script).await;

    // Background users streaming views and searches until told to stop,
    // one after another: a new user enters active_browser and searcher
    // every few rounds, so transitions keep coming while the worker dies.
    let streaming = Arc::new(AtomicBool::new(true));
    let load = {
        let (platform, streaming) = (platform.clone(), streaming.clone());
        tokio::spawn(async move {
            let mut round = 0;
            while streaming.load(Ordering::SeqCst) {
                let user = format!("u-bg-{}", round / ROUNDS_PER_USER);
                let t = now();
                let mut events: Vec<Value> = (0..4)
                    .map(|i| event(&user, &format!("bg{round}-v{i}"), "view", t - i))
                    .collect();
                events.push(event(&user, &format!("bg{round}-s"), "search", t));
                post(&platform, &events).await;
                round += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            round
        })
    };

    wait_for_feed(
        &platform,
        &mut worker,
        "the scripted user entering",
        |c, _| has(c, USER, "active_browser", "entered") && has(c, USER, "engaged", "entered"),
    )
    .await;

    // SIGKILL mid-stream; the scripted user searches while it is dead.
    worker.kill();
    let searches: Vec<Value> = (0..3)
        .map(|i| event(USER, &format!("s{i}"), "search", now() - 1_000 + i))
        .collect();
    post(&platform, &searches).await;
    worker.spawn();
    // Twice more, each time once the restarted worker has published
    // something new (so it was mid-pass somewhere in the stream).
    for kill in 0..2 {
        let (published, _) = feed(&platform).await;
        let seen = published.len();
        wait_for_feed(
            &platform,
            &mut worker,
            "progress after a restart",
            |c, _| c.len() > seen,
        )
        .await;
        worker.kill();
        tokio::time::sleep(Duration::from_millis(300 * (kill + 1))).await;
        worker.spawn();
    }
    // Once more across a timer, with the restarted worker at work: TIMED
    // enters, the worker dies, TIMED's oldest view leaves the window, and
    // only then a worker starts again.
    let (published, _) = feed(&platform).await;
    let seen = published.len();
    wait_for_feed(
        &platform,
        &mut worker,
        "progress after a restart",
        |c, _| c.len() > seen,
    )
    .await;
    let timed_leaves_at = now() + 15_000;
    let views: Vec<Value> = (0..10)
        .map(|i| {
            let time = timed_leaves_at - DAY - 1 + i;
            event(TIMED, &format!("t{i}"), "view", time)
        })
        .collect();
    post(&platform, &views).await;
    wait_for_feed(&platform, &mut worker, "the timed user entering", |c, _| {
        has(c, TIMED, "active_browser", "entered")
    })
    .await;
    worker.kill();
    assert!(
        now() < timed_leaves_at,
        "the worker was killed before the timer was due (the machine was too slow for this test's 15 s)"
    );
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(timed_leaves_at + 500 - now()).unwrap_or(0),
    ))
    .await;
    let (dead, _) = feed(&platform).await;
    assert!(!has(&dead, TIMED, "active_browser", "left"), "{dead:?}");
    worker.spawn();
    streaming.store(false, Ordering::SeqCst);
    let rounds = load.await.expect("load task");
    // The last user may have had too few rounds to enter anything.
    let background_users = rounds / ROUNDS_PER_USER;

    // Caught up with the whole log, and past the instant the oldest view
    // left the window (time alone; possibly while the worker was dead).
    let changes = wait_for_feed(&platform, &mut worker, "the worker caught up", |c, f| {
        f["worker_lag_records"] == 0
            && has(c, USER, "active_browser", "left")
            && has(c, TIMED, "active_browser", "left")
    })
    .await;
    let route: Vec<Entry> = changes.iter().map(entry_of_route).collect();

    // Cursors 1, 2, 3, … without gaps; each transition once.
    let cursors: Vec<u64> = route.iter().map(|e| e.0).collect();
    assert_eq!(cursors, (1..=route.len() as u64).collect::<Vec<_>>());
    let mut per_user: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for (_, user, segment, change, _) in &route {
        per_user
            .entry(user.as_str())
            .or_default()
            .push((segment.as_str(), change.as_str()));
    }
    let mut scripted = per_user
        .remove(USER)
        .expect("the scripted user's transitions");
    scripted.sort_unstable();
    assert_eq!(
        scripted,
        [
            ("active_browser", "entered"),
            ("active_browser", "left"),
            ("engaged", "entered"),
            ("searcher", "entered"),
        ],
        "{route:?}"
    );
    let left = route
        .iter()
        .find(|e| e.1 == USER && e.3 == "left")
        .expect("left");
    assert_eq!(
        left.4, leaves_at,
        "left at the instant the oldest view left the window"
    );
    let timed = per_user
        .remove(TIMED)
        .expect("the timed user's transitions");
    assert_eq!(
        timed,
        [("active_browser", "entered"), ("active_browser", "left")],
        "{route:?}"
    );
    let timed_left = route
        .iter()
        .find(|e| e.1 == TIMED && e.3 == "left")
        .expect("left");
    assert_eq!(
        timed_left.4, timed_leaves_at,
        "left at its timer's instant, though no worker ran then"
    );
    assert_eq!(per_user.len(), background_users, "{per_user:?}");
    for (user, mut transitions) in per_user {
        transitions.sort_unstable();
        assert_eq!(
            transitions,
            [("active_browser", "entered"), ("searcher", "entered")],
            "{user}"
        );
    }

    // Five worker processes got as far as producing: the first and four
    // restarts (each logs this once).
    let log = std::fs::read_to_string(&worker.log).unwrap_or_default();
    assert_eq!(
        log.matches("segment feed producer ready").count(),
        5,
        "{log}"
    );
    eprintln!(
        "{} transitions of {} users over {rounds} rounds of background events, 4 SIGKILLs",
        route.len(),
        background_users + 2
    );

    // The topic holds the same entries, each once, in cursor order.
    let brokers_topic = (brokers.clone(), topic.clone(), route.len());
    let on_topic = tokio::task::spawn_blocking(move || {
        topic_entries(&brokers_topic.0, &brokers_topic.1, brokers_topic.2)
    })
    .await
    .expect("topic read");
    assert_eq!(on_topic, route);
}
