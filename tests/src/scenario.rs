//! The end-to-end scenarios, run against whichever platform a test starts
//! (embedded default, or the real engines).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::reference::{Reference, Sent};
use crate::Platform;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const USERS: usize = 40;

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn parse_rfc3339(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .expect("RFC 3339")
        .timestamp_millis()
}

/// A realistic mix: recent activity, late events, events outside every
/// window, a few in the near future, wishlist churn and searches.
pub fn generate(rng: &mut StdRng, count: usize, id_prefix: &str, base: i64) -> Vec<Sent> {
    let cities = ["Paris", "Rome", "Oslo", "Lima", "Kyiv"];
    (0..count)
        .map(|i| {
            let user = format!("u-{}", rng.random_range(0..USERS));
            let age = match rng.random_range(0..10) {
                0..=3 => rng.random_range(0..2 * HOUR),
                4..=6 => rng.random_range(0..2 * DAY),
                7 => rng.random_range(0..8 * DAY),
                8 => rng.random_range(8 * DAY..20 * DAY),
                _ => -rng.random_range(0..5 * 60_000),
            };
            let kind = [
                "view",
                "view",
                "view",
                "click",
                "search",
                "wishlist_add",
                "wishlist_remove",
            ][rng.random_range(0..7)];
            Sent {
                event_id: format!("{id_prefix}-{i}"),
                user_id: user,
                event_type: kind.into(),
                item_id: (kind != "search").then(|| format!("item-{}", rng.random_range(0..30))),
                query: (kind == "search").then(|| format!("query {}", rng.random_range(0..15))),
                time: base - age,
                city: rng
                    .random_bool(0.6)
                    .then(|| cities[rng.random_range(0..cities.len())].to_string()),
            }
        })
        .collect()
}

/// Posts `events` (with duplicates) in shuffled batches, mixing in invalid
/// events that must be rejected without affecting the valid ones.
pub async fn post_all(
    platform: &Platform,
    reference: &mut Reference,
    rng: &mut StdRng,
    events: Vec<Sent>,
) {
    let mut sends: Vec<Sent> = events.clone();
    for _ in 0..events.len() / 8 {
        sends.push(events[rng.random_range(0..events.len())].clone());
    }
    sends.shuffle(rng);
    for chunk in sends.chunks(200) {
        let mut body: Vec<Value> = chunk.iter().map(Sent::to_json).collect();
        let bad = rng.random_range(0..=body.len());
        body.insert(
            bad,
            json!({"event_id": "bad", "user_id": "u-0", "event_type": "purchase", "event_time": 0}),
        );
        let answer = platform.post_events(&body).await.expect("events accepted");
        assert_eq!(answer["accepted"], json!(chunk.len()), "{answer}");
        assert_eq!(answer["rejected"][0]["index"], json!(bad), "{answer}");
        assert!(
            answer["rejected"][0]["error"]
                .as_str()
                .unwrap_or("")
                .contains("purchase"),
            "{answer}"
        );
        for sent in chunk {
            reference.accept(sent.clone());
        }
    }
}

/// Every user's every signal, at now and at two hour boundaries, plus their
/// activity, equals the reference.
pub async fn assert_exact(platform: &Platform, reference: &Reference, stage: &str) {
    platform
        .wait_caught_up()
        .await
        .expect("speed layer catches up");
    let hour = now() - now().rem_euclid(HOUR);
    for user in reference.users() {
        let (status, body) = platform
            .get_json(&format!("/v1/users/{user}/signals"))
            .await
            .expect("signals");
        assert_eq!(status, 200, "{body}");
        let at = parse_rfc3339(body["at"].as_str().expect("at"));
        compare(&body, reference.signals(&user, at), &user, stage, "now");
        for at in [hour, hour - 5 * HOUR] {
            let (status, body) = platform
                .get_json(&format!("/v1/users/{user}/signals?at={at}"))
                .await
                .expect("signals");
            assert_eq!(status, 200, "{body}");
            compare(
                &body,
                reference.signals(&user, at),
                &user,
                stage,
                &at.to_string(),
            );
        }
        let until = now() + 10 * 60_000;
        let since = until - 3 * DAY;
        let path = format!(
            "/v1/users/{user}/activity?types=view,search&since={since}&until={until}&limit=25"
        );
        let (status, body) = platform.get_json(&path).await.expect("activity");
        assert_eq!(status, 200, "{body}");
        let ids: Vec<String> = body["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["event_id"].as_str().expect("id").to_owned())
            .collect();
        assert_eq!(
            ids,
            reference.activity(&user, &["view", "search"], since, until, 25),
            "{stage}: activity of {user}"
        );
    }
}

fn compare(body: &Value, expected: BTreeMap<String, Value>, user: &str, stage: &str, at: &str) {
    let actual: BTreeMap<String, Value> =
        serde_json::from_value(body["signals"].clone()).expect("signals object");
    for (name, value) in &expected {
        assert_eq!(
            actual.get(name),
            Some(value),
            "{stage}: {name} of {user} at {at}; freshness {}",
            body["freshness"]
        );
    }
    assert_eq!(
        actual.len(),
        expected.len(),
        "{stage}: signal names of {user}"
    );
}

/// Speed only, then batch, the handoff, retractions on both sides of the
/// batch's position, a clean stop and a restart: every answer exact.
pub async fn speed_batch_and_retractions_stay_exact(platform: &mut Platform) {
    let mut rng = StdRng::seed_from_u64(7);
    let mut reference = Reference::default();

    // Speed layer only.
    let first = generate(&mut rng, 3_000, "a", now());
    post_all(platform, &mut reference, &mut rng, first.clone()).await;
    assert_exact(platform, &reference, "speed only").await;

    // Batch, then the merge of batch and speed.
    let summary = platform.run_batch().await.expect("batch runs");
    assert_eq!(summary["version"], json!(1), "{summary}");
    assert!(
        summary["corrections"]["duplicates"].as_u64().unwrap_or(0) > 0,
        "{summary}"
    );
    assert_exact(platform, &reference, "after batch 1").await;

    // New events and re-sent old ones after the batch: the handoff.
    let second = generate(&mut rng, 1_000, "b", now());
    let mut resent: Vec<Sent> = first.choose_multiple(&mut rng, 200).cloned().collect();
    resent.extend(second);
    post_all(platform, &mut reference, &mut rng, resent).await;
    assert_exact(platform, &reference, "batch + speed").await;

    // Retract events on both sides of the batch's log position.
    let retracted: Vec<String> = reference
        .users()
        .iter()
        .take(20)
        .enumerate()
        .flat_map(|(i, user)| {
            reference
                .events_of(user)
                .iter()
                .skip(i % 3)
                .step_by(4)
                .map(|e| e.event_id.clone())
                .collect::<Vec<_>>()
        })
        .collect();
    platform
        .retract(&retracted)
        .await
        .expect("retraction accepted");
    for id in &retracted {
        reference.retract(id);
    }
    assert_exact(platform, &reference, "retracted, before batch").await;
    let summary = platform.run_batch().await.expect("batch runs");
    assert_eq!(summary["version"], json!(2), "{summary}");
    assert!(
        summary["corrections"]["retracted"].as_u64().unwrap_or(0) > 0,
        "{summary}"
    );
    assert_exact(platform, &reference, "retracted, after batch 2").await;

    // A clean stop and a restart keep every answer.
    assert!(platform.stop().expect("stops"), "exit status 0 on SIGTERM");
    platform.restart().await.expect("restarts");
    assert_exact(platform, &reference, "after restart").await;
}

/// SIGKILL mid-ingest, restart, client retries: nothing accepted is lost,
/// nothing counts twice.
pub async fn a_killed_process_loses_nothing_accepted_and_counts_nothing_twice(
    platform: &mut Platform,
) {
    let mut rng = StdRng::seed_from_u64(11);
    let events = generate(&mut rng, 6_000, "k", now());
    let mut reference = Reference::default();
    for e in &events {
        reference.accept(e.clone());
    }
    let chunks: Vec<Vec<Value>> = events
        .chunks(100)
        .map(|c| c.iter().map(Sent::to_json).collect())
        .collect();

    // Post, and SIGKILL the process once a third of the requests got through.
    let client = platform.http().clone();
    let url = platform.url("/v1/events");
    let acked = Arc::new(AtomicUsize::new(0));
    let counter = acked.clone();
    let total = chunks.len();
    let sender = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        for chunk in chunks {
            let result = client.post(&url).json(&chunk).send().await;
            let ok = matches!(&result, Ok(r) if r.status().is_success());
            if ok {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            outcomes.push((chunk, ok));
        }
        outcomes
    });
    while acked.load(Ordering::SeqCst) < total / 3 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    platform.kill();
    let outcomes = sender.await.expect("sender finishes");
    let acknowledged = outcomes.iter().filter(|(_, ok)| *ok).count();
    assert!(
        acknowledged > 0 && acknowledged < outcomes.len(),
        "the kill landed mid-stream ({acknowledged}/{})",
        outcomes.len()
    );

    // Restart and retry what was not acknowledged, as a client would: some
    // of it may be in the log already, and must not count twice.
    platform.restart().await.expect("restarts");
    let mut retried = outcomes
        .iter()
        .filter(|(_, ok)| !*ok)
        .map(|(c, _)| c.clone())
        .collect::<Vec<_>>();
    if let Some(first_acked) = outcomes.iter().find(|(_, ok)| *ok) {
        retried.push(first_acked.0.clone());
    }
    for chunk in retried {
        platform.post_events(&chunk).await.expect("retry accepted");
    }
    assert_exact(platform, &reference, "after kill and retry").await;
}
