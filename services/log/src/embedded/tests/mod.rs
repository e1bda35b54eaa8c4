//! Tests of the embedded log through its public API, plus fault injection.

mod failures;
mod props;
mod reading;
mod recovery;
mod throughput;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::LogEntry;

fn options(partitions: u32, segment_bytes: u64) -> EmbeddedLogOptions {
    EmbeddedLogOptions {
        partitions,
        segment_bytes,
        fsync: FsyncPolicy::Always,
    }
}

fn append(key: &str, bytes: &[u8]) -> Append {
    Append {
        key: key.to_owned(),
        bytes: bytes.to_vec(),
    }
}

fn segment_file(dir: &Path, partition: Partition, base: Offset) -> PathBuf {
    dir.join(format!("partition-{partition}"))
        .join(format!("{base:020}.log"))
}

fn segment_files(dir: &Path, partition: Partition) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(format!("partition-{partition}")))
        .expect("partition dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}

/// Reads everything from `from` to the current end.
async fn read_all(log: &EmbeddedLog, from: &LogPosition) -> Vec<LogEntry> {
    let end = log.end().await.expect("end");
    let mut reader = log.read_from(from).await.expect("reader");
    let mut entries = Vec::new();
    while !reader.position().reaches(&end) {
        let batch = reader
            .next_batch(7, Duration::from_secs(5))
            .await
            .expect("batch");
        assert!(!batch.is_empty(), "stuck at {:?}", reader.position());
        entries.extend(batch);
    }
    entries
}

/// Payloads by partition, checking offsets are dense from the first one.
fn by_partition(entries: Vec<LogEntry>) -> BTreeMap<Partition, Vec<Vec<u8>>> {
    let mut out: BTreeMap<Partition, Vec<Vec<u8>>> = BTreeMap::new();
    let mut next: BTreeMap<Partition, Offset> = BTreeMap::new();
    for entry in entries {
        let expected = next.entry(entry.partition).or_insert(entry.offset);
        assert_eq!(
            entry.offset, *expected,
            "offsets in order in partition {}",
            entry.partition
        );
        *expected += 1;
        out.entry(entry.partition).or_default().push(entry.bytes);
    }
    out
}

/// Appends one record per call and returns what each partition holds.
async fn append_each(
    log: &EmbeddedLog,
    records: &[(String, Vec<u8>)],
) -> BTreeMap<Partition, Vec<Vec<u8>>> {
    let mut expected: BTreeMap<Partition, Vec<Vec<u8>>> = BTreeMap::new();
    for (key, bytes) in records {
        let positions = log
            .append(vec![append(key, bytes)])
            .await
            .expect("appended");
        let (partition, offset) = positions[0];
        let slot = expected.entry(partition).or_default();
        assert_eq!(offset, slot.len() as u64, "dense offsets");
        slot.push(bytes.clone());
    }
    expected
}

fn numbered(count: u32, keys: u32) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| {
            (
                format!("user-{}", i % keys),
                format!("record {i}").into_bytes(),
            )
        })
        .collect()
}

#[tokio::test]
async fn appends_read_back_in_order_across_partitions_and_segments() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EmbeddedLog::open(dir.path(), options(3, 100)).expect("opens");
    let expected = append_each(&log, &numbered(60, 7)).await;
    assert_eq!(expected.len(), 3, "keys spread over every partition");
    assert_eq!(
        by_partition(read_all(&log, &LogPosition::new()).await),
        expected
    );
    for p in 0..3 {
        let segments = segment_files(dir.path(), p).len();
        assert!(
            segments > 1,
            "partition {p} rolled over ({segments} segments)"
        );
    }
}

#[tokio::test]
async fn one_append_spreads_over_partitions_with_dense_offsets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EmbeddedLog::open(dir.path(), options(4, 1 << 20)).expect("opens");
    let records: Vec<Append> = (0..100).map(|i| append(&format!("k{i}"), b"x")).collect();
    let positions = log.append(records.clone()).await.expect("appended");
    let again = log.append(records).await.expect("appended");
    let end = log.end().await.expect("end");
    assert_eq!(end.total(), 200);
    for ((p, first), (q, second)) in positions.iter().zip(&again) {
        assert_eq!(p, q, "one key, one partition");
        assert_eq!(
            *second,
            first + end.next(*p) / 2,
            "the second append follows the first"
        );
    }
}

#[tokio::test]
async fn reopening_keeps_everything_and_continues_offsets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let records = numbered(50, 3);
    let expected = {
        let log = EmbeddedLog::open(dir.path(), options(2, 64)).expect("opens");
        append_each(&log, &records).await
    };
    let log = EmbeddedLog::open(dir.path(), options(2, 64)).expect("reopens");
    assert_eq!(
        by_partition(read_all(&log, &LogPosition::new()).await),
        expected
    );
    let positions = log
        .append(vec![append("user-0", b"after")])
        .await
        .expect("appended");
    let (p, offset) = positions[0];
    assert_eq!(
        offset,
        expected[&p].len() as u64,
        "offsets continue after reopening"
    );
}

#[tokio::test]
async fn close_drains_and_releases_the_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EmbeddedLog::open(dir.path(), options(1, 4096)).expect("opens");
    log.append(vec![append("k", b"one")])
        .await
        .expect("appended");
    let error = EmbeddedLog::open(dir.path(), options(1, 4096))
        .err()
        .expect("a second open is refused");
    assert!(matches!(error, LogError::Unavailable(_)), "{error}");
    assert!(
        error
            .to_string()
            .contains("is in use by another process or another open log"),
        "{error}"
    );
    log.close().await.expect("closes");
    let log = EmbeddedLog::open(dir.path(), options(1, 4096)).expect("reopens after close");
    assert_eq!(log.end().await.expect("end").next(0), 1);
    log.check().await.expect("ready");
}

#[tokio::test]
async fn the_partition_count_is_fixed_at_creation() {
    let dir = tempfile::tempdir().expect("temp dir");
    drop(EmbeddedLog::open(dir.path(), options(2, 4096)).expect("opens"));
    let error = EmbeddedLog::open(dir.path(), options(3, 4096))
        .err()
        .expect("refused");
    assert_eq!(
        error.to_string(),
        format!(
            "invalid log request: the event log in {} was created with 2 partitions and cannot be opened with 3: the count is fixed at creation",
            dir.path().display()
        )
    );
    let error = EmbeddedLog::open(&dir.path().join("new"), options(0, 4096))
        .err()
        .expect("refused");
    assert!(matches!(error, LogError::Invalid(_)), "{error}");
}

#[tokio::test]
async fn empty_and_oversized_records_are_refused_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EmbeddedLog::open(dir.path(), options(1, 4096)).expect("opens");
    let big = vec![0u8; MAX_RECORD_BYTES + 1];
    let error = log
        .append(vec![append("k", b"fine"), append("k", &big)])
        .await
        .expect_err("too big");
    assert_eq!(
        error.to_string(),
        format!(
            "invalid log request: record 1 has {} bytes; the limit is {MAX_RECORD_BYTES}",
            MAX_RECORD_BYTES + 1
        )
    );
    let error = log.append(vec![append("k", b"")]).await.expect_err("empty");
    assert_eq!(error.to_string(), "invalid log request: record 0 is empty");
    assert_eq!(
        log.end().await.expect("end").next(0),
        0,
        "nothing of either was kept"
    );
    let largest = vec![1u8; MAX_RECORD_BYTES];
    assert_eq!(
        log.append(vec![append("k", &largest)])
            .await
            .expect("at the limit"),
        vec![(0, 0)]
    );
    assert_eq!(
        read_all(&log, &LogPosition::new()).await[0].bytes.len(),
        MAX_RECORD_BYTES
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_distinct_dense_offsets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(EmbeddedLog::open(dir.path(), options(2, 4096)).expect("opens"));
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut appended = Vec::new();
                for i in 0..20 {
                    let records = vec![
                        append(&format!("k{t}"), format!("{t}-{i}-a").as_bytes()),
                        append("shared", format!("{t}-{i}-b").as_bytes()),
                    ];
                    let positions = log.append(records.clone()).await.expect("appended");
                    appended.extend(
                        positions
                            .into_iter()
                            .zip(records.into_iter().map(|r| r.bytes)),
                    );
                }
                appended
            })
        })
        .collect();
    let mut appended = BTreeMap::new();
    for task in tasks {
        for (position, bytes) in task.await.expect("task") {
            assert!(
                appended.insert(position, bytes).is_none(),
                "{position:?} handed out twice"
            );
        }
    }
    let end = log.end().await.expect("end");
    assert_eq!(end.total(), 640);
    for p in 0..2 {
        let count = appended.keys().filter(|(q, _)| *q == p).count() as u64;
        assert_eq!(end.next(p), count, "dense in partition {p}");
    }
    for entry in read_all(&log, &LogPosition::new()).await {
        assert_eq!(
            appended.get(&(entry.partition, entry.offset)),
            Some(&entry.bytes)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(EmbeddedLog::open(dir.path(), options(1, 1 << 20)).expect("opens"));
    // The first fsync is slow, so every other append queues behind it.
    log.shared.faults.slow_next_sync(Duration::from_millis(300));
    let first = {
        let log = log.clone();
        tokio::spawn(async move { log.append(vec![append("k", b"first")]).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let rest: Vec<_> = (0..50)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move {
                log.append(vec![append("k", format!("r{i}").as_bytes())])
                    .await
            })
        })
        .collect();
    first.await.expect("task").expect("appended");
    for task in rest {
        task.await.expect("task").expect("appended");
    }
    let syncs = log.shared.faults.syncs();
    assert!(syncs <= 3, "51 appends took {syncs} fsyncs");
    assert_eq!(log.end().await.expect("end").next(0), 51);
}

#[tokio::test]
async fn retention_deletes_old_segments_and_refuses_reads_below_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EmbeddedLog::open(dir.path(), options(2, 40)).expect("opens");
    let mut reader = log.read_from(&LogPosition::new()).await.expect("reader");
    for i in 0..20u8 {
        log.append(vec![append("k", &[i + 1; 32])])
            .await
            .expect("appended");
    }
    let p = partition_for("k", 2);
    let removed = log
        .delete_before(&[(p, 10)].into_iter().collect())
        .expect("deleted");
    assert!(removed > 0);
    let earliest = log.earliest();
    let first = earliest.next(p);
    assert_eq!(first, 10, "one record per segment here");
    assert_eq!(
        earliest.next(1 - p),
        0,
        "the other partition kept its only segment"
    );
    assert_eq!(segment_files(dir.path(), p).len(), 10);
    let entries = read_all(&log, &earliest).await;
    assert_eq!(entries.first().map(|e| e.offset), Some(first));
    assert_eq!(entries.len() as u64, 20 - first);

    let expected = format!(
        "invalid log request: offset 0 of partition {p} was deleted by retention; earliest is {first}"
    );
    let error = log
        .read_from(&LogPosition::new())
        .await
        .err()
        .expect("refused");
    assert_eq!(error.to_string(), expected);
    let error = reader
        .next_batch(5, Duration::ZERO)
        .await
        .expect_err("deleted under the reader");
    assert_eq!(error.to_string(), expected);

    // Everything but the active segment can go; the active one stays.
    log.delete_before(&[(p, 1000)].into_iter().collect())
        .expect("deleted");
    assert_eq!(segment_files(dir.path(), p).len(), 1);
    drop(log);
    let log = EmbeddedLog::open(dir.path(), options(2, 40)).expect("reopens");
    assert_eq!(log.earliest().next(p), 19);
    assert_eq!(log.end().await.expect("end").next(p), 20);
}

#[tokio::test]
async fn reads_from_unknown_partitions_or_past_the_end_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EmbeddedLog::open(dir.path(), options(2, 4096)).expect("opens");
    let error = log
        .read_from(&[(2, 0)].into_iter().collect())
        .await
        .err()
        .expect("refused");
    assert_eq!(
        error.to_string(),
        "invalid log request: partition 2 does not exist: the log has 2 partitions"
    );
    let error = log
        .read_from(&[(1, 5)].into_iter().collect())
        .await
        .err()
        .expect("refused");
    assert_eq!(
        error.to_string(),
        "invalid log request: offset 5 of partition 1 is past the end of the log (0)"
    );
}

#[tokio::test]
async fn check_fails_once_the_writer_is_gone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut log = EmbeddedLog::open(dir.path(), options(1, 4096)).expect("opens");
    log.check().await.expect("ready");
    log.requests = None;
    let error = log.check().await.expect_err("writer gone");
    assert_eq!(
        error.to_string(),
        "event log unavailable: the embedded event log writer has stopped"
    );
    let error = log
        .append(vec![append("k", b"x")])
        .await
        .expect_err("writer gone");
    assert!(error.is_retryable());
}
