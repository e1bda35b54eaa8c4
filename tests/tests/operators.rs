//! The operators' batch CLI on real data sizes, and user deletion and the
//! bot rule through a running platform.
//!
//! * A million events written straight into the embedded log; `signals
//!   batch run`; a `signals batch backfill` SIGKILLed while writing and run
//!   again (it resumes and publishes the next version, once); `signals batch
//!   verify --all` finds no drift; a deliberately corrupted store entry is
//!   found by verify (exit 3); `signals batch delete-user` erases the user.
//! * A user deleted while their events keep arriving stays deleted, through
//!   the speed layer, a batch run and a restart.
//! * The bot rule drops over-limit minutes at the batch run and says so.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use signals_core::{SpeedEntry, UserView};
use signals_e2e::{binary, Platform, Shape};
use signals_log::embedded::{EmbeddedLog, EmbeddedLogOptions};
use signals_log::{Append, EventLog};
use signals_schemas::{Event, EventType, LogRecord, RecordBody, Retraction};
use signals_store::embedded::EmbeddedStore;
use signals_store::{PositionedEntry, ServingStore, SpeedProgress, SpeedStore, SpeedWrite};

const EVENTS: usize = 1_000_000;
const USERS: usize = 20_000;
const DAY: i64 = 86_400_000;

fn append(body: RecordBody, accepted_at: i64) -> Append {
    Append::record(&LogRecord { accepted_at, body })
}

fn view(id: &str, user: &str, item: &str, time: i64) -> Event {
    Event {
        event_id: id.into(),
        user_id: user.into(),
        event_type: EventType::View,
        item_id: Some(item.into()),
        query: None,
        event_time: time,
        attributes: Default::default(),
    }
}

/// Writes `EVENTS` events of `USERS` skewed users over the last 20 days,
/// with ~1% duplicates and some retractions, into the log under `data`.
async fn fill_log(data: &Path, now: i64) {
    let log = EmbeddedLog::open(&data.join("log"), EmbeddedLogOptions::default()).expect("log");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut written = 0;
    while written < EVENTS {
        let mut chunk = Vec::with_capacity(10_000);
        for _ in 0..10_000 {
            let r: f64 = rng.random();
            let user = format!("user-{}", (r * r * USERS as f64) as usize);
            let kind: u32 = rng.random_range(0..100);
            let time = now - rng.random_range(1_000..20 * DAY);
            let item = format!("item-{}", rng.random_range(0..5_000));
            let mut event = view(&format!("e-{written}"), &user, &item, time);
            match kind {
                0..60 => {}
                60..80 => event.event_type = EventType::Click,
                80..90 => {
                    event.event_type = EventType::Search;
                    event.item_id = None;
                    event.query = Some(signals_schemas::format_smolstr!(
                        "q{}",
                        rng.random_range(0..300)
                    ));
                }
                90..97 => event.event_type = EventType::WishlistAdd,
                _ => event.event_type = EventType::WishlistRemove,
            }
            if kind.is_multiple_of(3) {
                event
                    .attributes
                    .insert("city", format!("city-{}", kind % 7));
            }
            if rng.random_range(0..100) == 0 {
                chunk.push(append(RecordBody::Event(event.clone()), now));
            }
            chunk.push(append(RecordBody::Event(event), now));
            written += 1;
        }
        let retracted = (0..10)
            .map(|_| format!("e-{}", rng.random_range(0..written)))
            .collect();
        chunk.push(append(
            RecordBody::Retraction(Retraction {
                event_ids: retracted,
                reason: "test".into(),
            }),
            now,
        ));
        log.append(chunk).await.expect("appended");
    }
}

fn signals(data: &Path, args: &[&str], settings: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary());
    command.args(args).arg("--data-dir").arg(data);
    for (key, _) in std::env::vars() {
        if key.starts_with("SIGNALS_") {
            command.env_remove(key);
        }
    }
    command.env("SIGNALS_TELEMETRY__LOG_LEVEL", "info");
    for (key, value) in settings {
        command.env(key, value);
    }
    command
}

fn run_json(data: &Path, args: &[&str]) -> (Option<i32>, Value) {
    let Output {
        status,
        stdout,
        stderr,
    } = signals(data, args, &[]).output().expect("signals runs");
    let body = serde_json::from_slice(&stdout).unwrap_or_else(|e| {
        panic!(
            "signals {args:?} ({status}) printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )
    });
    (status.code(), body)
}

fn date(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .expect("time")
        .format("%Y-%m-%d")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_resumes_after_sigkill_verify_finds_corruption_and_delete_user_erases() {
    let temp = tempfile::tempdir().expect("temp dir");
    let data = temp.path().join("data");
    let now = chrono::Utc::now().timestamp_millis();
    fill_log(&data, now).await;

    let (code, first) = run_json(&data, &["batch", "run", "--json"]);
    assert_eq!(code, Some(0), "{first}");
    assert_eq!(first["version"], 1);
    assert!(first["records_read"].as_u64().expect("count") > EVENTS as u64);
    assert!(first["corrections"]["duplicates"].as_u64().expect("count") > 5_000);
    assert!(first["corrections"]["retracted"].as_u64().expect("count") > 0);

    // A backfill killed while it writes, in chunks of 200 users.
    let (from, to) = (date(now - 10 * DAY), date(now - 5 * DAY));
    let backfill = ["batch", "backfill", "--from", &from, "--to", &to, "--json"];
    let mut child = signals(&data, &backfill, &[("SIGNALS_BATCH__WRITE_CHUNK", "200")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("backfill starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut saw_writing = false;
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("a log line");
        if line.contains("batch progress") && line.contains("writing") {
            saw_writing = true;
            break;
        }
    }
    assert!(saw_writing, "the backfill never reported writing");
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

    let (code, resumed) = run_json(&data, &backfill);
    assert_eq!(code, Some(0), "{resumed}");
    assert_eq!(
        resumed["version"], 2,
        "the same version, resumed: {resumed}"
    );
    assert!(resumed["resumed_after"].is_string(), "{resumed}");
    assert_eq!(resumed["published"], true);
    assert_eq!(resumed["position"], first["position"]);
    assert_eq!(resumed["users"], first["users"], "{resumed}");
    assert_eq!(resumed["events"], first["events"], "{resumed}");
    assert_eq!(resumed["changed_users"], 0, "nothing changed in the log");

    // Serving (version 2) against a fresh recompute of every user.
    let (code, report) = run_json(&data, &["batch", "verify", "--all", "--json"]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["published_version"], 2, "one version per run");
    assert!(report["users_compared"].as_u64().expect("count") > USERS as u64 / 2);
    assert_eq!(report["max_mismatch_rate"], 0.0, "{report}");

    // Corrupt one user's store entry: a speed entry whose event is not the
    // one the log holds at its position.
    {
        let log = EmbeddedLog::open(&data.join("log"), EmbeddedLogOptions::default()).expect("log");
        let real = view("e-corrupt", "user-7", "item-real", now - 1_000);
        let positions = log
            .append(vec![append(RecordBody::Event(real.clone()), now)])
            .await
            .expect("appended");
        let (partition, offset) = positions[0];
        let store = EmbeddedStore::open(&data.join("store").join("signals.redb")).expect("store");
        let mut bogus = real;
        bogus.item_id = Some("item-bogus".into());
        store
            .apply_speed(
                SpeedWrite {
                    entries: vec![PositionedEntry {
                        user_id: "user-7".into(),
                        partition,
                        offset,
                        entry: SpeedEntry::Event(bogus),
                    }],
                    index: Vec::new(),
                    progress: SpeedProgress {
                        position: [(partition, offset + 1)].into_iter().collect(),
                        last_accepted_at: Some(now),
                    },
                }
                .into(),
            )
            .await
            .expect("written");
    }
    let (code, report) = run_json(&data, &["batch", "verify", "--user", "user-7", "--json"]);
    assert_eq!(code, Some(3), "drift above the threshold exits 3: {report}");
    let recent = report["signals"]
        .as_array()
        .expect("signals")
        .iter()
        .find(|s| s["name"] == "recent_views")
        .expect("recent_views");
    assert_eq!(recent["mismatches"], 1, "{report}");
    assert_eq!(recent["examples"][0]["user_id"], "user-7");
    assert_eq!(recent["examples"][0]["actual"][0], "item-bogus");
    assert_eq!(recent["examples"][0]["expected"][0], "item-real");

    // Deleting the user erases them, corrupted entry included.
    let (code, receipt) = run_json(&data, &["batch", "delete-user", "user-7", "--json"]);
    assert_eq!(code, Some(0), "{receipt}");
    assert_eq!(receipt["user_id"], "user-7");
    let (code, report) = run_json(&data, &["batch", "verify", "--user", "user-7", "--json"]);
    assert_eq!(code, Some(0), "{report}");
    let store = EmbeddedStore::open(&data.join("store").join("signals.redb")).expect("store");
    let history = store.user_history("user-7").await.expect("history");
    let record = history.record.expect("an erased record");
    assert!(record.deleted && record.events.is_empty() && record.base.is_empty());
    assert_eq!(history.speed, vec![SpeedEntry::Deleted]);
    assert!(UserView::merge(Some(record), history.speed).is_empty());
}

/// The answer of a user the platform never heard of.
async fn unknown(platform: &Platform) -> Value {
    let (_, body) = platform
        .get_json("/v1/users/never-seen/signals")
        .await
        .expect("signals");
    body["signals"].clone()
}

async fn signals_of(platform: &Platform, user: &str) -> Value {
    let (status, body) = platform
        .get_json(&format!("/v1/users/{user}/signals"))
        .await
        .expect("signals");
    assert_eq!(status, 200, "{body}");
    body["signals"].clone()
}

fn events_of(user: &str, prefix: &str, n: usize, now: i64) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"event_id": format!("{prefix}-{i}"), "user_id": user, "event_type": "view",
                   "item_id": format!("item-{i}"), "event_time": now - 60_000 - i as i64 * 1_000,
                   "attributes": {"city": "Paris"}})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_user_stays_deleted_while_their_events_keep_coming() {
    let mut platform = Platform::start().await.expect("platform");
    let now = chrono::Utc::now().timestamp_millis();
    platform
        .post_events(&events_of("gone", "a", 5, now))
        .await
        .expect("posted");
    platform
        .post_events(&events_of("kept", "k", 3, now))
        .await
        .expect("posted");
    platform.wait_caught_up().await.expect("caught up");
    platform.run_batch().await.expect("batch 1");
    assert_eq!(signals_of(&platform, "gone").await["views_24h"], 5);

    let response = platform
        .http()
        .delete(platform.url("/v1/admin/users/gone"))
        .json(&json!({"reason": "asked to be forgotten"}))
        .send()
        .await
        .expect("deleted");
    assert_eq!(response.status(), 200);
    let blank = unknown(&platform).await;
    assert_eq!(signals_of(&platform, "gone").await, blank);

    // Their events keep coming: new ids, and re-sent old ones.
    let mut later = events_of("gone", "b", 4, now);
    later.extend(events_of("gone", "a", 2, now));
    platform.post_events(&later).await.expect("posted");
    platform.wait_caught_up().await.expect("caught up");
    assert_eq!(signals_of(&platform, "gone").await, blank);
    let (_, activity) = platform
        .get_json("/v1/users/gone/activity")
        .await
        .expect("activity");
    assert_eq!(activity["events"], json!([]), "{activity}");

    let summary = platform.run_batch().await.expect("batch 2");
    assert_eq!(summary["corrections"]["deleted_users"], 1, "{summary}");
    assert_eq!(signals_of(&platform, "gone").await, blank);

    platform.kill();
    platform.restart().await.expect("restarted");
    platform
        .post_events(&events_of("gone", "c", 3, now))
        .await
        .expect("posted");
    platform.wait_caught_up().await.expect("caught up");
    assert_eq!(signals_of(&platform, "gone").await, blank);
    assert_eq!(signals_of(&platform, "kept").await["views_24h"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bot_rule_drops_over_limit_minutes_at_the_batch_run() {
    let settings = vec![(
        "SIGNALS_BATCH__BOT_MAX_EVENTS_PER_MINUTE".to_owned(),
        "5".to_owned(),
    )];
    let platform = Platform::start_with(Shape::Up, settings)
        .await
        .expect("platform");
    // Within one minute: 12 events of a bot, 3 of a person.
    let minute = (chrono::Utc::now().timestamp_millis() / 60_000 - 5) * 60_000;
    let burst = |user: &str, n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| {
                json!({"event_id": format!("{user}-{i}"), "user_id": user, "event_type": "view",
                       "item_id": "item", "event_time": minute + i as i64 * 1_000})
            })
            .collect()
    };
    platform
        .post_events(&burst("bot", 12))
        .await
        .expect("posted");
    platform
        .post_events(&burst("person", 3))
        .await
        .expect("posted");
    platform.wait_caught_up().await.expect("caught up");
    // The speed layer counts everything until the batch corrects it.
    assert_eq!(signals_of(&platform, "bot").await["views_1h"], 12);

    let summary = platform.run_batch().await.expect("batch");
    assert_eq!(summary["corrections"]["bot_events"], 12, "{summary}");
    assert_eq!(summary["corrections"]["bot_users"], 1, "{summary}");
    assert_eq!(signals_of(&platform, "bot").await["views_1h"], 0);
    assert_eq!(signals_of(&platform, "person").await["views_1h"], 3);
}

/// The operators' commands beside `signals serve` and `signals speed` on
/// Kafka, Cassandra and Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_real_engines_backfill_verify_and_delete_user_work_beside_serving() {
    let Some(settings) = signals_e2e::real_engines("operators") else {
        return;
    };
    let platform = Platform::start_with(Shape::Split { speed_processes: 1 }, settings)
        .await
        .expect("platform starts");
    let now = chrono::Utc::now().timestamp_millis();
    for user in ["ann", "bob", "cid"] {
        platform
            .post_events(&events_of(user, &format!("{user}-a"), 6, now))
            .await
            .expect("posted");
    }
    platform.wait_caught_up().await.expect("caught up");
    let (code, run) = platform.cli_json(&["batch", "run"]).expect("batch run");
    assert_eq!(code, Some(0), "{run}");
    assert_eq!(run["users"], 3);

    let (code, report) = platform
        .cli_json(&["batch", "verify", "--all"])
        .expect("verify");
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["users_compared"], 3);
    assert_eq!(report["max_mismatch_rate"], 0.0, "{report}");

    let (from, to) = (date(now - DAY), date(now + DAY));
    let (code, backfill) = platform
        .cli_json(&["batch", "backfill", "--from", &from, "--to", &to])
        .expect("backfill");
    assert_eq!(code, Some(0), "{backfill}");
    assert_eq!(backfill["version"], 2);
    assert_eq!(backfill["changed_users"], 0, "{backfill}");

    // Bob's record is in the Redis cache when he is deleted.
    assert_eq!(signals_of(&platform, "bob").await["views_24h"], 6);
    let (code, receipt) = platform
        .cli_json(&["batch", "delete-user", "bob"])
        .expect("delete-user");
    assert_eq!(code, Some(0), "{receipt}");
    let blank = unknown(&platform).await;
    assert_eq!(signals_of(&platform, "bob").await, blank);

    platform
        .post_events(&events_of("bob", "bob-b", 4, now))
        .await
        .expect("posted");
    platform.wait_caught_up().await.expect("caught up");
    assert_eq!(signals_of(&platform, "bob").await, blank);
    let (code, report) = platform
        .cli_json(&["batch", "verify", "--all"])
        .expect("verify");
    assert_eq!(code, Some(0), "{report}");

    let (code, run) = platform.cli_json(&["batch", "run"]).expect("batch run");
    assert_eq!(code, Some(0), "{run}");
    assert_eq!(run["version"], 3);
    assert_eq!(run["corrections"]["deleted_users"], 1, "{run}");
    assert_eq!(signals_of(&platform, "bob").await, blank);
    assert_eq!(signals_of(&platform, "ann").await["views_24h"], 6);
}

/// One recompute split over two workers by log partition (the topic has
/// six): the first share does not publish, the second does, and the
/// version equals an unsplit run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_real_engines_a_run_split_by_partitions_publishes_once_with_the_last_share() {
    let Some(settings) = signals_e2e::real_engines("partitions") else {
        return;
    };
    let platform = Platform::start_with(Shape::Split { speed_processes: 1 }, settings)
        .await
        .expect("platform starts");
    let now = chrono::Utc::now().timestamp_millis();
    let mut events = Vec::new();
    for user in 0..40 {
        events.extend(events_of(
            &format!("user-{user}"),
            &format!("e{user}"),
            3,
            now,
        ));
    }
    platform.post_events(&events).await.expect("posted");
    platform.wait_caught_up().await.expect("caught up");

    let (code, first) = platform
        .cli_json(&["batch", "run", "--partitions", "0-2"])
        .expect("first share");
    assert_eq!(code, Some(0), "{first}");
    assert_eq!(first["published"], false, "{first}");
    assert_eq!(first["waiting_for"], json!([3, 4, 5]), "{first}");
    let (_, status) = platform.get_json("/v1/admin/batch").await.expect("status");
    assert_eq!(status["published"], Value::Null, "nothing published yet");

    let (code, last) = platform
        .cli_json(&["batch", "run", "--partitions", "3-5"])
        .expect("last share");
    assert_eq!(code, Some(0), "{last}");
    assert_eq!(last["published"], true, "{last}");
    assert_eq!(last["version"], 1);
    assert_eq!(
        last["position"], first["position"],
        "one position for all shares"
    );
    let shares = first["users"].as_u64().expect("n") + last["users"].as_u64().expect("n");
    assert_eq!(shares, 40);

    let (code, report) = platform
        .cli_json(&["batch", "verify", "--all"])
        .expect("verify");
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["users_compared"], 40);
    assert_eq!(report["published_version"], 1);

    let (code, whole) = platform.cli_json(&["batch", "run"]).expect("unsplit run");
    assert_eq!(code, Some(0), "{whole}");
    assert_eq!(whole["version"], 2);
    assert_eq!(whole["users"], 40);
    assert_eq!(whole["events"], 120);
}
