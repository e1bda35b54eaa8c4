//! The Kafka log against a real broker at `SIGNALS_TEST_KAFKA_BROKERS`
//! (`eval "$(infra/local/up kafka)"`, or a container when Docker is
//! reachable; see `tests/support`), each test on its own topics.
#![cfg(feature = "kafka")]

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use signals_log::kafka::{KafkaDeadLetters, KafkaLog, KafkaOptions};
use signals_log::{
    Append, DeadLetter, DeadLetterSink, EventLog, LogEntry, LogPosition, LogReader, Offset,
    Partition,
};

/// The broker, by the rules of `signals-test-support`; `None`: skip.
fn brokers() -> Option<String> {
    signals_test_support::kafka_brokers()
}

fn options(brokers: &str) -> KafkaOptions {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let topic = format!("signals-test-{}-{nanos}", std::process::id());
    KafkaOptions {
        brokers: brokers.to_owned(),
        dead_letter_topic: format!("{topic}.dlq"),
        topic,
        partitions: 3,
        ..KafkaOptions::default()
    }
}

fn append(key: &str, bytes: &[u8]) -> Append {
    Append {
        key: key.to_owned(),
        bytes: bytes.to_vec(),
    }
}

/// Reads until the reader's position reaches `end`.
async fn read_to(reader: &mut Box<dyn LogReader>, end: &LogPosition) -> Vec<LogEntry> {
    read_on_to(reader, &LogPosition::new(), end).await
}

/// Reads until `start` and what the reader has covered reach `end`. A group
/// member that resumes a partition its group had read to the end gets no
/// record of it, so its own position may never name that partition.
async fn read_on_to(
    reader: &mut Box<dyn LogReader>,
    start: &LogPosition,
    end: &LogPosition,
) -> Vec<LogEntry> {
    let covered = |reader: &dyn LogReader| {
        let mut covered = start.clone();
        for (partition, next) in reader.position().iter() {
            covered.advance(partition, next);
        }
        covered
    };
    // A group handing partitions to a new member may take a rebalance or
    // two on a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut entries = Vec::new();
    while !covered(reader.as_ref()).reaches(end) {
        assert!(
            Instant::now() < deadline,
            "reader stuck at {:?} (from {start:?}), end {end:?}",
            reader.position(),
        );
        entries.extend(
            reader
                .next_batch(100, Duration::from_millis(200))
                .await
                .expect("batch"),
        );
    }
    entries
}

/// Reads the log from its start to `end` and checks that each appended
/// record is at the partition and offset its append answered.
async fn read_back_where_told(
    log: &KafkaLog,
    end: &LogPosition,
    sent: &[((Partition, Offset), Append)],
) -> Vec<LogEntry> {
    let mut reader = log.read_from(&LogPosition::new()).await.expect("reader");
    let entries = read_to(&mut reader, end).await;
    for ((partition, offset), record) in sent {
        let found = entries
            .iter()
            .find(|e| e.partition == *partition && e.offset == *offset)
            .unwrap_or_else(|| panic!("{}: no record at {partition}/{offset}", record.key));
        assert_eq!(found.bytes, record.bytes, "at {partition}/{offset}");
    }
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_durable_ordered_per_key_and_replayable() {
    let Some(brokers) = brokers() else { return };
    let log = KafkaLog::connect(options(&brokers))
        .await
        .expect("connects");
    let mut sent = Vec::new();
    for round in 0..5 {
        let records: Vec<Append> = (0..20)
            .map(|i| {
                append(
                    &format!("user-{}", i % 4),
                    format!("{round}-{i}").as_bytes(),
                )
            })
            .collect();
        sent.extend(
            log.append(records.clone())
                .await
                .expect("appended")
                .into_iter()
                .zip(records),
        );
    }
    let end = log.end().await.expect("end");
    // Transaction markers take offsets too: the end is past the last record.
    assert!(end.total() >= 100, "{end:?}");

    let entries = read_back_where_told(&log, &end, &sent).await;
    assert_eq!(entries.len(), 100);
    // One key, one partition, in append order.
    for user in 0..4 {
        let key = format!("user-{user}");
        let partitions: std::collections::BTreeSet<u32> = sent
            .iter()
            .filter(|(_, r)| r.key == key)
            .map(|((p, _), _)| *p)
            .collect();
        assert_eq!(partitions.len(), 1, "{key} spread over {partitions:?}");
    }

    // Replay from the middle of one partition.
    let (partition, offset) = sent[50].0;
    let mut from = LogPosition::new();
    for p in 0..3 {
        from.set(p, if p == partition { offset } else { end.next(p) });
    }
    let mut replay = log.read_from(&from).await.expect("reader");
    let replayed = read_to(&mut replay, &end).await;
    assert_eq!(
        replayed.first().map(|e| (e.partition, e.offset)),
        Some((partition, offset))
    );
    assert!(replayed.iter().all(|e| e.partition == partition));
}

/// Appends that arrive while a transaction runs share the next one (group
/// commit), and each still learns where its own records are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_transactions_and_each_gets_its_positions() {
    let Some(brokers) = brokers() else { return };
    let log = std::sync::Arc::new(
        KafkaLog::connect(options(&brokers))
            .await
            .expect("connects"),
    );
    let requests = 40;
    let appends = (0..requests).map(|request| {
        let log = log.clone();
        async move {
            let records: Vec<Append> = (0..3)
                .map(|i| append(&format!("user-{i}"), format!("{request}-{i}").as_bytes()))
                .collect();
            let positions = log.append(records.clone()).await.expect("appended");
            assert_eq!(positions.len(), 3, "request {request}");
            positions.into_iter().zip(records).collect::<Vec<_>>()
        }
    });
    let sent: Vec<_> = futures::future::join_all(appends)
        .await
        .into_iter()
        .flatten()
        .collect();
    let end = log.end().await.expect("end");
    // Each transaction leaves a commit marker (an offset) in each partition
    // it wrote: one transaction per request would leave at least one per
    // request here.
    let markers = end.total() - sent.len() as u64;
    eprintln!("{markers} commit markers for {requests} concurrent appends");
    assert!(
        markers < requests as u64,
        "{markers} commit markers for {requests} requests"
    );

    let entries = read_back_where_told(&log, &end, &sent).await;
    assert_eq!(entries.len(), sent.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_resumes_from_its_last_commit() {
    let Some(brokers) = brokers() else { return };
    let options = options(&brokers);
    // A group of this run alone: no members or offsets of earlier runs.
    let group = format!("{}-group", options.topic);
    let log = KafkaLog::connect(options).await.expect("connects");
    let appended = log
        .append(
            (0..30)
                .map(|i| append(&format!("k{i}"), &[i as u8]))
                .collect(),
        )
        .await
        .expect("appended");
    let end = log.end().await.expect("end");

    let mut first = log
        .subscribe(&group, &LogPosition::new())
        .await
        .expect("member");
    // Read until one partition is read to its end (its last offset is the
    // transaction's commit marker): the second member then resumes it with
    // no record left to read there, which once left a test waiting. Told
    // by the records appended there, not by `end`: a commit returns before
    // the broker writes its markers, so `end` may not count them yet.
    let read_to_its_end = |seen: &[LogEntry]| {
        appended.iter().any(|&(partition, _)| {
            let count = |p| appended.iter().filter(|(q, _)| *q == p).count();
            seen.iter().filter(|e| e.partition == partition).count() == count(partition)
        })
    };
    let mut seen = Vec::new();
    // A group's first records may wait for a broker just started to load
    // its group state: once over 30 s, right after `infra/local/up`.
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen.len() < 10 || !read_to_its_end(&seen) {
        assert!(Instant::now() < deadline, "no records for the group");
        seen.extend(
            first
                .next_batch(5, Duration::from_millis(500))
                .await
                .expect("batch"),
        );
    }
    assert!(
        seen.len() < 30,
        "some records are left for the second member"
    );
    let committed = first.position();
    first.commit(&committed).await.expect("commit");
    drop(first);

    let mut second = log
        .subscribe(&group, &LogPosition::new())
        .await
        .expect("member");
    let rest = read_on_to(&mut second, &committed, &end).await;
    assert_eq!(
        seen.len() + rest.len(),
        30,
        "nothing skipped, nothing read twice after the commit"
    );
    for entry in &rest {
        assert!(
            !committed.covers(entry.partition, entry.offset),
            "{entry:?} was committed already"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_keep_the_bytes_and_say_why() {
    let Some(brokers) = brokers() else { return };
    let options = options(&brokers);
    let _log = KafkaLog::connect(options.clone())
        .await
        .expect("connects, creating topics");
    let sink = KafkaDeadLetters::connect(&options).expect("producer");
    let letter = DeadLetter {
        partition: 2,
        offset: 41,
        reason: "bad magic byte 0x07 (expected 0x00)".into(),
        bytes: vec![7, 1, 2, 3],
    };
    sink.send(vec![letter.clone()]).await.expect("sent");

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "dead-letter-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer
        .subscribe(&[&options.dead_letter_topic])
        .expect("subscribed");
    let deadline = Instant::now() + Duration::from_secs(30);
    let message = loop {
        assert!(Instant::now() < deadline, "no dead letter arrived");
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            break message.expect("message").detach();
        }
    };
    assert_eq!(message.payload(), Some(&letter.bytes[..]));
    let headers = message.headers().expect("headers");
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
    };
    assert_eq!(
        header("signals.reason").as_deref(),
        Some(letter.reason.as_str())
    );
    assert_eq!(header("signals.partition").as_deref(), Some("2"));
    assert_eq!(header("signals.offset").as_deref(), Some("41"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_caller_went_away_still_ends_its_transaction() {
    let Some(brokers) = brokers() else { return };
    let log = KafkaLog::connect(options(&brokers))
        .await
        .expect("connects");
    // Callers dropped mid-transaction, as axum drops the handler of a client
    // that hung up: each transaction still commits or aborts on its own task.
    for round in 0..10 {
        let records: Vec<Append> = (0..200)
            .map(|i| {
                append(
                    &format!("user-{i}"),
                    format!("dropped-{round}-{i}").as_bytes(),
                )
            })
            .collect();
        let _ = tokio::time::timeout(Duration::from_millis(1), log.append(records)).await;
    }
    // The producer is not left inside a transaction: the next append works,
    // and every record of a dropped call is either wholly there or absent.
    let positions = log
        .append(vec![append("user-1", b"after")])
        .await
        .expect("an append after dropped callers");
    assert_eq!(positions.len(), 1);
    let end = log.end().await.expect("end");
    let mut reader = log.read_from(&LogPosition::new()).await.expect("reader");
    let entries = read_to(&mut reader, &end).await;
    let mut per_round = std::collections::BTreeMap::<String, usize>::new();
    for entry in &entries {
        let text = String::from_utf8_lossy(&entry.bytes).into_owned();
        if let Some(rest) = text.strip_prefix("dropped-") {
            let round = rest.split('-').next().unwrap_or_default().to_owned();
            *per_round.entry(round).or_default() += 1;
        }
    }
    for (round, count) in per_round {
        assert_eq!(count, 200, "round {round}: all or nothing");
    }
    assert!(entries.iter().any(|e| e.bytes == b"after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_collector_fences_its_old_transaction_and_a_fenced_one_recovers() {
    let Some(brokers) = brokers() else { return };
    let options = KafkaOptions {
        transactional_id: signals_log::kafka::unique_transactional_id("signals-test-fence"),
        ..options(&brokers)
    };
    let old = KafkaLog::connect(options.clone()).await.expect("connects");
    old.append(vec![append("u", b"first")])
        .await
        .expect("appended");
    // The same collector starting again: same transactional id.
    let new = KafkaLog::connect(options.clone()).await.expect("connects");
    new.prepare_appends().await.expect("fences the old one");
    let fenced = old.append(vec![append("u", b"from the fenced one")]).await;
    assert!(fenced.is_err(), "the old producer is fenced");
    new.append(vec![append("u", b"second")])
        .await
        .expect("the new one appends");
    // A fenced producer is replaced by the next append (which fences the
    // other in turn): nothing stays broken until a restart.
    old.append(vec![append("u", b"third")])
        .await
        .expect("recovered");
    let end = old.end().await.expect("end");
    let mut reader = old.read_from(&LogPosition::new()).await.expect("reader");
    let bytes: Vec<Vec<u8>> = read_to(&mut reader, &end)
        .await
        .into_iter()
        .map(|e| e.bytes)
        .collect();
    assert_eq!(
        bytes,
        vec![b"first".to_vec(), b"second".to_vec(), b"third".to_vec()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_topics_carry_min_insync_replicas() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let Some(brokers) = brokers() else { return };
    // A value the broker's default (1) would not give: both topics are
    // made with it.
    let options = KafkaOptions {
        replication_factor: 1,
        min_insync_replicas: 2,
        timeout: Duration::from_secs(3),
        ..options(&brokers)
    };
    let _log = KafkaLog::connect(options.clone()).await.expect("connects");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("admin");
    for topic in [&options.topic, &options.dead_letter_topic] {
        let described = admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
            .await
            .expect("described");
        let resource = described.into_iter().next().expect("one").expect("found");
        let value = resource
            .get("min.insync.replicas")
            .and_then(|e| e.value.clone());
        assert_eq!(value.as_deref(), Some("2"), "{topic}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_starting_together_all_find_the_topic_one_of_them_made() {
    let Some(brokers) = brokers() else { return };
    // Collector, speed layer and api start at once; whichever finds the
    // topic missing for a moment (not created yet, or not yet in its
    // broker's metadata) waits for it instead of giving up. Here a process
    // that may not create topics starts a second before the one that does.
    let creator = options(&brokers);
    let waiter = KafkaOptions {
        create_topics: false,
        ..creator.clone()
    };
    let waiting = tokio::spawn(KafkaLog::connect(waiter));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let starts = (0..3).map(|_| KafkaLog::connect(creator.clone()));
    for started in futures::future::join_all(starts).await {
        let log = started.expect("every creating sibling connects");
        log.check().await.expect("and sees the topic");
    }
    let log = waiting
        .await
        .expect("joined")
        .expect("the waiting sibling connects once the topic exists");
    log.check().await.expect("and sees the topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_nobody_creates_is_a_precise_error() {
    let Some(brokers) = brokers() else { return };
    let options = KafkaOptions {
        create_topics: false,
        timeout: Duration::from_secs(2),
        ..options(&brokers)
    };
    let started = Instant::now();
    let error = match KafkaLog::connect(options.clone()).await {
        Ok(_) => panic!("a missing topic must not connect"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains(&options.topic) && error.contains("create_topics"),
        "{error}"
    );
    // Waited for the topic to show up, but not for ever.
    assert!(started.elapsed() < Duration::from_secs(30), "{error}");
}
