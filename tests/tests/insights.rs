//! Sessions and segments on the whole platform (embedded default), driven
//! over HTTP and checked against the independent reference: a late event
//! joining two sessions, a scripted user whose segments change with events
//! and with time alone, a SIGKILL of the process between two transitions,
//! a batch run and a retraction. Every transition is published once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use signals_e2e::reference::{rfc3339, Reference, Sent};
use signals_e2e::Platform;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
const USER: &str = "u-insights";

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn sent(id: &str, kind: &str, time: i64) -> Sent {
    Sent {
        event_id: id.into(),
        user_id: USER.into(),
        event_type: kind.into(),
        item_id: (kind != "search").then(|| format!("item-{id}")),
        query: (kind == "search").then(|| format!("query {id}")),
        time,
        city: None,
    }
}

async fn post(platform: &Platform, reference: &mut Reference, events: Vec<Sent>) {
    let body: Vec<Value> = events.iter().map(Sent::to_json).collect();
    let answer = platform.post_events(&body).await.expect("accepted");
    assert_eq!(answer["accepted"], json!(events.len()), "{answer}");
    for e in events {
        reference.accept(e);
    }
}

/// The contract's default segments over the reference's signal values.
fn expected_segments(signals: &BTreeMap<String, Value>) -> Vec<String> {
    let n = |name: &str| signals[name].as_i64().expect("number");
    let mut segments = Vec::new();
    if n("views_24h") >= 10 {
        segments.push("active_browser".to_owned());
    }
    if n("sessions_7d") >= 3 {
        segments.push("engaged".to_owned());
    }
    if n("searches_24h") >= 3 {
        segments.push("searcher".to_owned());
    }
    segments
}

/// Sessions and segments of the user, now and at an hour boundary, equal
/// the reference's.
async fn assert_exact(platform: &Platform, reference: &Reference, stage: &str) {
    platform.wait_caught_up().await.expect("caught up");
    let hour = now() - now().rem_euclid(HOUR);
    for at in [None, Some(hour), Some(hour - 5 * HOUR)] {
        let query = at.map_or(String::new(), |t| format!("?at={t}"));
        let (status, signals) = platform
            .get_json(&format!(
                "/v1/users/{USER}/signals{}{}names=sessions_7d,session_minutes_7d,current_session,views_24h,searches_24h",
                if query.is_empty() { "?" } else { &query },
                if query.is_empty() { "" } else { "&" },
            ))
            .await
            .expect("signals");
        assert_eq!(status, 200, "{signals}");
        let at_ms = chrono::DateTime::parse_from_rfc3339(signals["at"].as_str().expect("at"))
            .expect("RFC 3339")
            .timestamp_millis();
        let expected = reference.signals(USER, at_ms);
        for name in [
            "sessions_7d",
            "session_minutes_7d",
            "current_session",
            "views_24h",
            "searches_24h",
        ] {
            assert_eq!(
                signals["signals"][name], expected[name],
                "{stage}: {name} at {at_ms}"
            );
        }
        let (status, segments) = platform
            .get_json(&format!("/v1/users/{USER}/segments?at={at_ms}"))
            .await
            .expect("segments");
        assert_eq!(status, 200, "{segments}");
        assert_eq!(
            segments["segments"],
            json!(expected_segments(&expected)),
            "{stage}: segments at {at_ms}"
        );
    }
}

async fn changes(platform: &Platform) -> Vec<Value> {
    let (status, body) = platform
        .get_json("/v1/segments/changes?limit=1000")
        .await
        .expect("changes");
    assert_eq!(status, 200, "{body}");
    body["changes"].as_array().expect("changes").clone()
}

async fn wait_for_changes(platform: &Platform, count: usize, what: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let feed = changes(platform).await;
        if feed.len() >= count {
            return feed;
        }
        assert!(Instant::now() < deadline, "{what} within 60 s: {feed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_segments_stay_exact_and_each_transition_is_published_once() {
    let mut platform = Platform::start().await.expect("platform starts");
    let mut reference = Reference::default();
    let start = now();

    // Two sessions 40 minutes apart, then a late event between them that
    // joins them into one; one more session a day earlier, and one at an
    // exact 30-minute gap that stays one session.
    post(
        &platform,
        &mut reference,
        vec![
            sent("a1", "view", start - 5 * HOUR),
            sent("a2", "click", start - 5 * HOUR + 40 * MINUTE),
            sent("b1", "view", start - 2 * DAY),
            sent("b2", "view", start - 2 * DAY + 30 * MINUTE),
        ],
    )
    .await;
    assert_exact(&platform, &reference, "two sessions apart").await;
    let (_, before) = platform
        .get_json(&format!("/v1/users/{USER}/signals?names=sessions_7d"))
        .await
        .expect("signals");
    assert_eq!(before["signals"]["sessions_7d"], json!(3));
    let feed = wait_for_changes(&platform, 1, "entering engaged").await;
    assert_eq!(
        (feed[0]["segment"].as_str(), feed[0]["change"].as_str()),
        (Some("engaged"), Some("entered"))
    );
    post(
        &platform,
        &mut reference,
        vec![sent("late", "search", start - 5 * HOUR + 20 * MINUTE)],
    )
    .await;
    assert_exact(&platform, &reference, "joined by a late event").await;
    let (_, after) = platform
        .get_json(&format!("/v1/users/{USER}/signals?names=sessions_7d"))
        .await
        .expect("signals");
    assert_eq!(
        after["signals"]["sessions_7d"],
        json!(2),
        "a late event joins two sessions"
    );
    let feed = wait_for_changes(&platform, 2, "leaving engaged").await;
    assert_eq!(
        (feed[1]["segment"].as_str(), feed[1]["change"].as_str()),
        (Some("engaged"), Some("left"))
    );

    // Ten views whose oldest passes 24 hours 15 s from now, three searches,
    // and a third session: the user enters all three segments.
    let oldest_view = now() - DAY + 15_000;
    let mut script: Vec<Sent> = (0..10)
        .map(|i| sent(&format!("v{i}"), "view", oldest_view + i * 10))
        .collect();
    for (i, ago) in [10, 5, 1].iter().enumerate() {
        script.push(sent(&format!("s{i}"), "search", now() - ago * MINUTE));
    }
    post(&platform, &mut reference, script).await;
    assert_exact(&platform, &reference, "in three segments").await;
    let feed = wait_for_changes(&platform, 5, "three entries").await;
    let entered: BTreeSet<&str> = feed[2..]
        .iter()
        .filter(|c| c["change"] == "entered")
        .map(|c| c["segment"].as_str().expect("segment"))
        .collect();
    assert_eq!(
        entered,
        BTreeSet::from(["active_browser", "engaged", "searcher"]),
        "{feed:?}"
    );

    // SIGKILL the process before time alone moves the user, restart.
    platform.kill();
    platform.restart().await.expect("restarts");
    let feed = wait_for_changes(&platform, 6, "leaving active_browser").await;
    let left = &feed[5];
    assert_eq!(
        (
            left["segment"].as_str(),
            left["change"].as_str(),
            left["user_id"].as_str()
        ),
        (Some("active_browser"), Some("left"), Some(USER)),
        "{feed:?}"
    );
    // With a1 the user has eleven views in 24 hours: the tenth-latest is
    // v1, and the user leaves the instant it is more than 24 hours old.
    assert_eq!(
        left["at"],
        json!(rfc3339(oldest_view + 10 + DAY + 1)),
        "the instant the tenth-latest view passed 24 h"
    );
    let (_, members) = platform
        .get_json("/v1/segments/searcher/users")
        .await
        .expect("members");
    assert_eq!(members["users"], json!([USER]), "{members}");
    let (_, members) = platform
        .get_json("/v1/segments/active_browser/users")
        .await
        .expect("members");
    assert_eq!(members["users"], json!([]), "{members}");

    // A batch run, then a retraction that breaks `engaged`.
    platform.run_batch().await.expect("batch runs");
    assert_exact(&platform, &reference, "after the batch").await;
    let retracted: Vec<String> = ["a1", "a2", "late", "b1", "b2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    platform.retract(&retracted).await.expect("retracted");
    for id in &retracted {
        reference.retract(id);
    }
    assert_exact(&platform, &reference, "retracted").await;
    let feed = wait_for_changes(&platform, 7, "leaving engaged").await;
    assert_eq!(
        (feed[6]["segment"].as_str(), feed[6]["change"].as_str()),
        (Some("engaged"), Some("left")),
        "{feed:?}"
    );

    // Nothing was published twice: per segment, entries alternate.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let feed = changes(&platform).await;
    assert_eq!(feed.len(), 7, "{feed:?}");
    let cursors: Vec<u64> = feed
        .iter()
        .map(|c| c["cursor"].as_u64().expect("cursor"))
        .collect();
    assert_eq!(cursors, (1..=7).collect::<Vec<u64>>());
    let mut state: BTreeMap<&str, &str> = BTreeMap::new();
    for change in &feed {
        let segment = change["segment"].as_str().expect("segment");
        let kind = change["change"].as_str().expect("change");
        assert_ne!(
            state.insert(segment, kind),
            Some(kind),
            "{segment} {kind} twice in a row: {feed:?}"
        );
    }
    assert!(platform.stop().expect("stops"), "exit status 0 on SIGTERM");
}
