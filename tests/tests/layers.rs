//! The layers wired by hand on embedded backends, for random event streams:
//! whatever the split between batch and speed, serving equals the
//! independent reference, including lifetime signals over history older
//! than the batch's horizon.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use signals_batch::{BatchLayer, BatchOptions, Quiet};
use signals_core::{Definitions, SignalSpec, UserView};
use signals_e2e::reference::{Reference, Sent};
use signals_log::embedded::{EmbeddedLog, EmbeddedLogOptions, FsyncPolicy};
use signals_log::{Append, DeadLetterFile, EventLog};
use signals_schemas::{Event, EventType, LogRecord, RecordBody, Retraction};
use signals_speed::{SpeedLayer, SpeedOptions};
use signals_store::embedded::EmbeddedStore;
use signals_store::{ServingStore, StoreReads};
use tokio_util::sync::CancellationToken;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

fn default_definitions() -> Definitions {
    #[derive(serde::Deserialize)]
    struct File {
        signals: Vec<SignalSpec>,
    }
    let text = include_str!("../../services/signals/config/default.toml");
    let file: File = toml::from_str(text).expect("default config parses");
    Definitions::compile(&file.signals).expect("default definitions compile")
}

#[derive(Clone, Debug)]
enum Step {
    Event(Sent),
    Retract(Vec<String>),
}

fn to_event(sent: &Sent) -> Event {
    Event {
        event_id: sent.event_id.as_str().into(),
        user_id: sent.user_id.as_str().into(),
        event_type: EventType::parse(&sent.event_type).expect("known type"),
        item_id: sent.item_id.as_deref().map(Into::into),
        query: sent.query.as_deref().map(Into::into),
        event_time: sent.time,
        attributes: sent
            .city
            .iter()
            .map(|c| ("city".to_owned(), c.clone()))
            .collect(),
    }
}

fn arb_sent(now: i64) -> impl Strategy<Value = Sent> {
    let kinds = ["view", "click", "search", "wishlist_add", "wishlist_remove"];
    (
        0usize..5,
        0u8..4,
        0u8..6,
        0u8..3,
        prop::option::of(0u8..3),
        prop_oneof![0i64..2 * DAY, 0i64..9 * DAY, 40 * DAY..60 * DAY],
        0u16..40,
    )
        .prop_map(move |(kind, user, item, query, city, age, id)| {
            let kind = kinds[kind];
            Sent {
                // Ids repeat within a user (one partition), as retries do.
                event_id: format!("u{user}-e{id}"),
                user_id: format!("u{user}"),
                event_type: kind.to_owned(),
                item_id: (kind != "search").then(|| format!("i{item}")),
                query: (kind == "search").then(|| format!("q{query}")),
                time: now - age,
                city: city.map(|c| format!("c{c}")),
            }
        })
}

fn arb_steps(now: i64) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            9 => arb_sent(now).prop_map(Step::Event),
            1 => prop::collection::vec((0u8..4, 0u16..40), 1..4)
                .prop_map(|ids| Step::Retract(ids.into_iter().map(|(u, i)| format!("u{u}-e{i}")).collect())),
        ],
        1..60,
    )
}

async fn append(log: &EmbeddedLog, steps: &[Step]) {
    // Stamped as the collector does: the deduplication window and the
    // index's expiry count from acceptance times (ADR 006).
    let accepted_at = chrono::Utc::now().timestamp_millis();
    let records: Vec<Append> = steps
        .iter()
        .map(|step| {
            let record = LogRecord {
                accepted_at,
                body: match step {
                    Step::Event(sent) => RecordBody::Event(to_event(sent)),
                    Step::Retract(ids) => RecordBody::Retraction(Retraction {
                        event_ids: ids.clone(),
                        reason: String::new(),
                    }),
                },
            };
            Append::record(&record)
        })
        .collect();
    if !records.is_empty() {
        log.append(records).await.expect("appended");
    }
}

/// Runs the speed layer until it has applied the whole log.
async fn catch_up(speed: &Arc<SpeedLayer>, log: &EmbeddedLog, store: &EmbeddedStore) {
    let stop = CancellationToken::new();
    let task = {
        let speed = speed.clone();
        let stop = stop.clone();
        tokio::spawn(async move { speed.run(stop).await })
    };
    let end = log.end().await.expect("end");
    while !store
        .speed_progress()
        .await
        .expect("progress")
        .position
        .reaches(&end)
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.cancel();
    task.await.expect("joined").expect("speed layer ran");
}

/// Steps are generated with times relative to 0; they happen relative to now.
async fn scenario(mut steps: Vec<Step>, first_split: usize, second_split: usize) {
    let now = chrono::Utc::now().timestamp_millis();
    for step in &mut steps {
        if let Step::Event(sent) = step {
            sent.time += now;
        }
    }
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
    let definitions = Arc::new(default_definitions());
    let speed = Arc::new(SpeedLayer {
        log: log.clone(),
        store: store.clone(),
        dead_letters: Arc::new(DeadLetterFile::new(&dir.path().join("dead.ndjson"))),
        options: SpeedOptions {
            max_batch: 7,
            poll_wait: Duration::from_millis(5),
            ..SpeedOptions::default()
        },
    });
    let batch = BatchLayer::new(
        log.clone(),
        store.clone(),
        definitions.clone(),
        BatchOptions::default(),
    );

    let (a, rest) = steps.split_at(first_split.min(steps.len()));
    let (b, c) = rest.split_at(second_split.min(rest.len()));
    append(&log, a).await;
    catch_up(&speed, &log, &store).await;
    batch
        .run(signals_batch::Job::Run, false, &Quiet)
        .await
        .expect("batch 1");
    append(&log, b).await;
    catch_up(&speed, &log, &store).await;
    batch
        .run(signals_batch::Job::Run, false, &Quiet)
        .await
        .expect("batch 2");
    append(&log, c).await;
    catch_up(&speed, &log, &store).await;

    let mut reference = Reference::default();
    for step in &steps {
        match step {
            Step::Event(sent) => reference.accept(sent.clone()),
            Step::Retract(ids) => ids.iter().for_each(|id| reference.retract(id)),
        }
    }
    // Retracting an event that the last batch folded into lifetime state
    // takes effect at the next batch run (the contract allows that much).
    let horizon = now - 37 * DAY;
    let folded: std::collections::HashSet<&str> = b
        .iter()
        .chain(a)
        .filter_map(|step| match step {
            Step::Event(sent) if sent.time < horizon => Some(sent.event_id.as_str()),
            _ => None,
        })
        .collect();
    let waiting: std::collections::HashSet<String> = c
        .iter()
        .filter_map(|step| match step {
            Step::Retract(ids) => Some(ids),
            _ => None,
        })
        .flatten()
        .filter(|id| folded.contains(id.as_str()))
        .filter_map(|id| id.split('-').next().map(str::to_owned))
        .collect();
    assert_serving_equals(&store, &definitions, &reference, now, &waiting).await;
    batch
        .run(signals_batch::Job::Run, false, &Quiet)
        .await
        .expect("batch 3");
    assert_serving_equals(&store, &definitions, &reference, now, &Default::default()).await;
}

/// Every user but `skip` answers as the reference, at now and at two hour boundaries.
async fn assert_serving_equals(
    store: &EmbeddedStore,
    definitions: &Definitions,
    reference: &Reference,
    now: i64,
    skip: &std::collections::HashSet<String>,
) {
    let all: Vec<_> = definitions.iter().collect();
    let hour = now - now.rem_euclid(HOUR);
    for user in reference.users().into_iter().filter(|u| !skip.contains(u)) {
        let history = store.user_history(&user).await.expect("history");
        let view = UserView::merge(history.record, history.speed);
        for at in [now, hour, hour - 29 * DAY] {
            let (values, stale) = view.evaluate(&all, at);
            assert!(stale.is_empty());
            let actual: std::collections::BTreeMap<String, serde_json::Value> =
                all.iter().map(|d| d.name.clone()).zip(values).collect();
            assert_eq!(actual, reference.signals(&user, at), "user {user} at {at}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn batch_plus_speed_equals_the_reference(steps in arb_steps(0), first in 0usize..60, second in 0usize..60) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        runtime.block_on(scenario(steps, first, second));
    }
}

/// A user heavy enough for serving to read their record through tiles
/// (ADR 007: records of 1,024 events and more): 3,000 events over 60 days
/// with copies and retractions on both sides of the batch runs, checked
/// like the random streams above (through tiles once the last batch run
/// has taken the retractions in; plainly while one hides a record's event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heavy_user_read_through_tiles_equals_the_reference() {
    let kinds = [
        "view",
        "view",
        "view",
        "click",
        "search",
        "wishlist_add",
        "wishlist_remove",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut steps = Vec::new();
    for i in 0..3_000u64 {
        let r = next();
        let kind = kinds[(r % kinds.len() as u64) as usize];
        let age = if r % 5 == 0 {
            (r >> 8) as i64 % (60 * DAY)
        } else {
            (r >> 8) as i64 % (7 * DAY)
        };
        // One id in twenty is a copy of an earlier one.
        let id = if i > 0 && r % 20 == 1 {
            (r >> 40) % i
        } else {
            i
        };
        steps.push(Step::Event(Sent {
            event_id: format!("heavy-e{id}"),
            user_id: "heavy".to_owned(),
            event_type: kind.to_owned(),
            item_id: (kind != "search").then(|| format!("i{}", (r >> 16) % 40)),
            query: (kind == "search").then(|| format!("q{}", (r >> 24) % 12)),
            time: -age,
            city: (r % 3 != 0).then(|| format!("c{}", (r >> 32) % 5)),
        }));
        if i % 400 == 399 {
            steps.push(Step::Retract(vec![
                format!("heavy-e{}", (r >> 20) % i),
                format!("heavy-e{}", (r >> 30) % i),
            ]));
        }
    }
    scenario(steps, 1_800, 900).await;
}
