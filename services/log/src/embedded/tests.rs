use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use proptest::prelude::*;

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

async fn read_all(log: &EmbeddedLog, from: &LogPosition) -> Vec<LogEntry> {
    let end = log.end().await.expect("end");
    let mut reader = log.read_from(from).await.expect("reader");
    let mut entries = Vec::new();
    while !reader.position().reaches(&end) {
        entries.extend(
            reader
                .next_batch(7, Duration::from_millis(10))
                .await
                .expect("batch"),
        );
    }
    entries
}

#[tokio::test]
async fn appends_read_back_in_order_across_partitions_and_segments() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EmbeddedLog::open(dir.path(), options(3, 100)).expect("opens");
    let mut expected: BTreeMap<Partition, Vec<Vec<u8>>> = BTreeMap::new();
    for i in 0..60u32 {
        let key = format!("user-{}", i % 7);
        let bytes = format!("record {i}").into_bytes();
        let positions = log
            .append(vec![append(&key, &bytes)])
            .await
            .expect("appended");
        let (partition, offset) = positions[0];
        let slot = expected.entry(partition).or_default();
        assert_eq!(offset, slot.len() as u64, "dense offsets");
        slot.push(bytes);
    }
    let entries = read_all(&log, &LogPosition::new()).await;
    let mut actual: BTreeMap<Partition, Vec<Vec<u8>>> = BTreeMap::new();
    for entry in entries {
        let slot = actual.entry(entry.partition).or_default();
        assert_eq!(entry.offset, slot.len() as u64);
        slot.push(entry.bytes);
    }
    assert_eq!(actual, expected);
    let segments = std::fs::read_dir(dir.path().join("partition-0"))
        .expect("dir")
        .count();
    assert!(segments > 1, "small segments rolled over ({segments})");
}

#[tokio::test]
async fn reopening_keeps_everything_and_continues_offsets() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let log = EmbeddedLog::open(dir.path(), options(1, 64)).expect("opens");
        for i in 0..10 {
            log.append(vec![append("k", &[i])]).await.expect("appended");
        }
    }
    let log = EmbeddedLog::open(dir.path(), options(1, 64)).expect("reopens");
    assert_eq!(log.end().await.expect("end").next(0), 10);
    assert_eq!(
        log.append(vec![append("k", b"x")]).await.expect("appended"),
        vec![(0, 10)]
    );
    let from: LogPosition = [(0, 4)].into_iter().collect();
    let entries = read_all(&log, &from).await;
    assert_eq!(entries.len(), 7);
    assert_eq!(entries[0].bytes, vec![4]);
    assert_eq!(entries[6].bytes, b"x".to_vec());
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_acknowledged_records_survive() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let log = EmbeddedLog::open(dir.path(), options(1, 1 << 20)).expect("opens");
        log.append(vec![append("k", b"one"), append("k", b"two")])
            .await
            .expect("appended");
    }
    let segment = dir
        .path()
        .join("partition-0")
        .join(format!("{:020}.log", 0));
    // A crash mid-write: a header promising 100 bytes, then only 3.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .expect("segment");
    file.write_all(&100u32.to_le_bytes()).expect("write");
    file.write_all(&0u32.to_le_bytes()).expect("write");
    file.write_all(b"abc").expect("write");
    drop(file);
    let log = EmbeddedLog::open(dir.path(), options(1, 1 << 20)).expect("recovers");
    assert_eq!(log.end().await.expect("end").next(0), 2);
    assert_eq!(
        log.append(vec![append("k", b"three")])
            .await
            .expect("appended"),
        vec![(0, 2)]
    );
    let bytes: Vec<Vec<u8>> = read_all(&log, &LogPosition::new())
        .await
        .into_iter()
        .map(|e| e.bytes)
        .collect();
    assert_eq!(
        bytes,
        vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );
}

#[tokio::test]
async fn a_corrupt_record_in_the_tail_is_cut_with_everything_after_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let log = EmbeddedLog::open(dir.path(), options(1, 1 << 20)).expect("opens");
        for word in [b"aaaa", b"bbbb", b"cccc"] {
            log.append(vec![append("k", word)]).await.expect("appended");
        }
    }
    let segment = dir
        .path()
        .join("partition-0")
        .join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&segment).expect("segment");
    // Flip a payload byte of the second record (each frame is 8 + 4 bytes).
    bytes[12 + 8] ^= 0xff;
    std::fs::write(&segment, bytes).expect("write");
    let log = EmbeddedLog::open(dir.path(), options(1, 1 << 20)).expect("recovers");
    assert_eq!(log.end().await.expect("end").next(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_distinct_dense_offsets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(EmbeddedLog::open(dir.path(), options(2, 4096)).expect("opens"));
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut positions = Vec::new();
                for i in 0..20 {
                    let records = vec![
                        append(&format!("k{t}"), format!("{t}-{i}-a").as_bytes()),
                        append("shared", format!("{t}-{i}-b").as_bytes()),
                    ];
                    positions.extend(log.append(records).await.expect("appended"));
                }
                positions
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    all.sort_unstable();
    let before = all.len();
    all.dedup();
    assert_eq!(all.len(), before, "no offset handed out twice");
    let end = log.end().await.expect("end");
    assert_eq!(end.total(), 640);
    for p in 0..2 {
        let count = all.iter().filter(|(q, _)| *q == p).count() as u64;
        assert_eq!(end.next(p), count, "dense in partition {p}");
    }
    assert_eq!(read_all(&log, &LogPosition::new()).await.len(), 640);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_reader_wakes_on_append() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(EmbeddedLog::open(dir.path(), options(1, 4096)).expect("opens"));
    let mut reader = log.read_from(&LogPosition::new()).await.expect("reader");
    let writer = log.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer
            .append(vec![append("k", b"hello")])
            .await
            .expect("appended");
    });
    let started = Instant::now();
    let entries = reader
        .next_batch(10, Duration::from_secs(10))
        .await
        .expect("batch");
    assert_eq!(entries.len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "woke up early: {:?}",
        started.elapsed()
    );
    let empty = reader
        .next_batch(10, Duration::from_millis(20))
        .await
        .expect("batch");
    assert!(empty.is_empty());
}

#[tokio::test]
async fn retention_deletes_old_segments_and_refuses_reads_below_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EmbeddedLog::open(dir.path(), options(1, 40)).expect("opens");
    for i in 0..20u8 {
        log.append(vec![append("k", &[i; 10])])
            .await
            .expect("appended");
    }
    let removed = log
        .delete_before(&[(0, 10)].into_iter().collect())
        .expect("deleted");
    assert!(removed > 0);
    let earliest = log.earliest().next(0);
    assert!(earliest > 0 && earliest <= 10, "earliest {earliest}");
    let from: LogPosition = [(0, earliest)].into_iter().collect();
    assert_eq!(read_all(&log, &from).await.len() as u64, 20 - earliest);
    let mut reader = log.read_from(&LogPosition::new()).await.expect("reader");
    let error = reader
        .next_batch(5, Duration::from_millis(10))
        .await
        .expect_err("deleted");
    assert_eq!(
        error.to_string(),
        format!("invalid log request: offset 0 of partition 0 was deleted by retention; earliest is {earliest}")
    );
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
            "invalid log request: the log in {} has 2 partitions; it cannot be opened with 3 (the count is fixed at creation)",
            dir.path().display()
        )
    );
}

#[tokio::test]
async fn oversized_records_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EmbeddedLog::open(dir.path(), options(1, 4096)).expect("opens");
    let big = vec![0u8; MAX_RECORD_BYTES + 1];
    assert!(matches!(
        log.append(vec![append("k", &big)]).await,
        Err(LogError::Invalid(_))
    ));
    assert_eq!(log.end().await.expect("end").next(0), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn whatever_is_appended_reads_back(batches in prop::collection::vec(prop::collection::vec(("[a-d]", prop::collection::vec(any::<u8>(), 0..300)), 1..8), 1..12), segment in 64u64..2048) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let dir = tempfile::tempdir().expect("temp dir");
            let log = EmbeddedLog::open(dir.path(), options(2, segment)).expect("opens");
            let mut expected: BTreeMap<Partition, Vec<Vec<u8>>> = BTreeMap::new();
            for batch in &batches {
                let records: Vec<Append> = batch.iter().map(|(k, b)| append(k, b)).collect();
                for ((p, _), (_, bytes)) in log.append(records).await.expect("appended").into_iter().zip(batch) {
                    expected.entry(p).or_default().push(bytes.clone());
                }
            }
            let mut actual: BTreeMap<Partition, Vec<Vec<u8>>> = BTreeMap::new();
            for entry in read_all(&log, &LogPosition::new()).await {
                actual.entry(entry.partition).or_default().push(entry.bytes);
            }
            assert_eq!(actual, expected);
        });
    }
}
