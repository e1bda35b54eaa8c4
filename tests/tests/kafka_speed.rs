//! The speed layer on a real Kafka topic written by outside producers: a
//! poison record lands in the dead-letter topic with its bytes (read back
//! with rdkafka and with kcat, headers included), and records written by
//! Python's fastavro (schema ids 1 and 2) are understood.

use std::sync::Arc;
use std::time::{Duration, Instant};

use signals_core::{Definitions, SignalSpec, UserView};
use signals_log::kafka::{KafkaDeadLetters, KafkaLog, KafkaOptions};
use signals_log::{Append, EventLog, LogPosition};
use signals_speed::{SpeedLayer, SpeedOptions};
use signals_store::embedded::EmbeddedStore;
use signals_store::{ServingStore, StoreReads};
use tokio_util::sync::CancellationToken;

fn brokers() -> Option<String> {
    signals_test_support::kafka_brokers()
}

/// The records `schemas/examples/fastavro_producer.py` wrote.
fn fastavro_records() -> Vec<Vec<u8>> {
    include_str!("../../schemas/testdata/fastavro.hex")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            (0..line.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&line[i..i + 2], 16).expect("hex"))
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_dead_letters_and_outside_avro_is_understood() {
    let Some(brokers) = brokers() else { return };
    let unique = format!(
        "signals-speed-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    );
    let options = KafkaOptions {
        brokers: brokers.clone(),
        topic: unique.clone(),
        dead_letter_topic: format!("{unique}.dlq"),
        partitions: 2,
        ..KafkaOptions::default()
    };
    let log = Arc::new(KafkaLog::connect(options.clone()).await.expect("kafka"));
    let poison = vec![0x07, 0xde, 0xad];
    let mut appends: Vec<Append> = fastavro_records()
        .into_iter()
        .map(|bytes| Append {
            key: "u-42".into(),
            bytes,
        })
        .collect();
    appends.insert(
        1,
        Append {
            key: "u-42".into(),
            bytes: poison.clone(),
        },
    );
    log.append(appends).await.expect("appended");

    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).expect("store"));
    let speed = Arc::new(SpeedLayer {
        log: log.clone(),
        store: store.clone(),
        dead_letters: Arc::new(KafkaDeadLetters::connect(&options).expect("dead letters")),
        options: SpeedOptions {
            group: unique.clone(),
            poll_wait: Duration::from_millis(50),
            ..SpeedOptions::default()
        },
    });
    let stop = CancellationToken::new();
    let task = {
        let (speed, stop) = (speed.clone(), stop.clone());
        tokio::spawn(async move { speed.run(stop).await })
    };
    let end = log.end().await.expect("end");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !store
        .speed_progress()
        .await
        .expect("progress")
        .position
        .reaches(&end)
    {
        assert!(Instant::now() < deadline, "speed layer did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    task.await.expect("joined").expect("speed layer ran");

    // u-42 viewed, searched, had the view retracted, then was deleted;
    // u-7's event was written with schema id 1.
    let specs: Vec<SignalSpec> = serde_json::from_value(serde_json::json!([
        {"name": "recent_views", "events": ["view", "click"], "aggregation": "last_distinct", "field": "item_id", "limit": 5}
    ]))
    .expect("spec");
    let definitions = Definitions::compile(&specs).expect("valid");
    let all: Vec<_> = definitions.iter().collect();
    // The fastavro records are dated 2026-11-23T10:00Z; look an hour later.
    let at = 1_795_431_600_000;
    let views = |history: signals_store::UserHistory| {
        UserView::merge(history.record, history.speed)
            .evaluate(&all, at)
            .0
    };
    assert_eq!(
        views(store.user_history("u-7").await.expect("history")),
        vec![serde_json::json!(["listing-3"])]
    );
    assert_eq!(
        views(store.user_history("u-42").await.expect("history")),
        vec![serde_json::json!([])]
    );

    // The poison is in the dead-letter topic, byte for byte.
    let dead = KafkaLog::connect(KafkaOptions {
        topic: options.dead_letter_topic.clone(),
        dead_letter_topic: format!("{unique}.dlq.unused"),
        ..options.clone()
    })
    .await
    .expect("dead-letter topic");
    let end = dead.end().await.expect("end");
    let mut reader = dead.read_from(&LogPosition::new()).await.expect("reader");
    let mut letters = Vec::new();
    while !reader.position().reaches(&end) {
        assert!(Instant::now() < deadline, "dead letters not readable");
        letters.extend(
            reader
                .next_batch(10, Duration::from_millis(200))
                .await
                .expect("batch"),
        );
    }
    assert_eq!(
        letters.iter().map(|l| l.bytes.clone()).collect::<Vec<_>>(),
        vec![poison.clone()]
    );

    // Where the poison sat in the event topic.
    let end = log.end().await.expect("end");
    let mut reader = log.read_from(&LogPosition::new()).await.expect("reader");
    let mut source = None;
    while !reader.position().reaches(&end) {
        assert!(Instant::now() < deadline, "event topic not readable");
        for entry in reader
            .next_batch(10, Duration::from_millis(200))
            .await
            .expect("batch")
        {
            if entry.bytes == poison {
                source = Some((entry.partition, entry.offset));
            }
        }
    }
    let (partition, offset) = source.expect("the poison is in the event topic");

    // kcat, as an operator would read it (README): headers and bytes.
    let letter = kcat_one(&brokers, &options.dead_letter_topic);
    assert_eq!(letter.bytes, poison, "the original bytes");
    let headers = letter.headers;
    let (rest, header_offset) = headers
        .rsplit_once(",signals.offset=")
        .unwrap_or_else(|| panic!("no signals.offset header in {headers:?}"));
    let (rest, header_partition) = rest
        .rsplit_once(",signals.partition=")
        .unwrap_or_else(|| panic!("no signals.partition header in {headers:?}"));
    let reason = rest
        .strip_prefix("signals.reason=")
        .unwrap_or_else(|| panic!("no signals.reason header first in {headers:?}"));
    assert!(!reason.trim().is_empty(), "{headers:?}");
    assert_eq!(header_partition, partition.to_string(), "{headers:?}");
    assert_eq!(header_offset, offset.to_string(), "{headers:?}");
}

/// One record of `topic` as `kcat -C` prints it.
struct KcatRecord {
    headers: String,
    bytes: Vec<u8>,
}

/// Reads the single record of `topic` with kcat (installed by
/// `infra/local/up`; Debian package `kcat`).
fn kcat_one(brokers: &str, topic: &str) -> KcatRecord {
    let output = std::process::Command::new("kcat")
        .args(["-C", "-b", brokers, "-t", topic, "-o", "beginning", "-e", "-q"])
        .args(["-f", "headers=%h\nlength=%S\n%s\n"])
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run kcat ({error}): `infra/local/up kafka` installs it (apt-get install kcat)"
            )
        });
    assert!(
        output.status.success(),
        "kcat failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out = output.stdout;
    let mut lines = Vec::new();
    let mut at = 0;
    for _ in 0..2 {
        let newline = out[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| at + i)
            .unwrap_or_else(|| panic!("kcat printed {:?}", String::from_utf8_lossy(&out)));
        lines.push(String::from_utf8_lossy(&out[at..newline]).into_owned());
        at = newline + 1;
    }
    let field = |line: &str, name: &str| -> String {
        line.strip_prefix(name)
            .unwrap_or_else(|| panic!("expected {name} in {line:?}"))
            .to_owned()
    };
    let length: usize = field(&lines[1], "length=").parse().expect("a length");
    let bytes = out[at..at + length].to_vec();
    assert_eq!(
        &out[at + length..],
        b"\n",
        "one record only: {:?}",
        String::from_utf8_lossy(&out)
    );
    KcatRecord {
        headers: field(&lines[0], "headers="),
        bytes,
    }
}
