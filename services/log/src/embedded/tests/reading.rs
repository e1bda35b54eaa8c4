//! Readers: seeking, waiting, fairness, cancellation.

use std::time::Instant;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_reader_wakes_on_append() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(EmbeddedLog::open(dir.path(), options(2, 4096)).expect("opens"));
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
    let waited = started.elapsed();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].bytes, b"hello");
    assert!(
        waited < Duration::from_secs(2),
        "woke up {waited:?} into a 10 s wait"
    );

    let started = Instant::now();
    let empty = reader
        .next_batch(10, Duration::from_millis(100))
        .await
        .expect("batch");
    assert!(empty.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "waited the whole time"
    );
}

#[tokio::test]
async fn reads_start_at_any_offset() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Small segments, and records large enough to spread the sparse index.
    let log = EmbeddedLog::open(dir.path(), options(1, 64 * 1024)).expect("opens");
    let records: Vec<Append> = (0..3000u32)
        .map(|i| append("k", format!("{i:>300}").as_bytes()))
        .collect();
    for chunk in records.chunks(100) {
        log.append(chunk.to_vec()).await.expect("appended");
    }
    assert!(segment_files(dir.path(), 0).len() > 8);
    for start in [0u64, 1, 17, 255, 256, 257, 1000, 2047, 2999, 3000] {
        let from: LogPosition = [(0, start)].into_iter().collect();
        let mut reader = log.read_from(&from).await.expect("reader");
        let batch = reader.next_batch(3, Duration::ZERO).await.expect("batch");
        let expected: Vec<Offset> = (start..3000).take(3).collect();
        assert_eq!(
            batch.iter().map(|e| e.offset).collect::<Vec<_>>(),
            expected,
            "from {start}"
        );
        for entry in batch {
            assert_eq!(entry.bytes, records[entry.offset as usize].bytes);
        }
        assert_eq!(reader.position().next(0), (start + 3).min(3000));
    }
}

#[tokio::test]
async fn partitions_share_a_batch_fairly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EmbeddedLog::open(dir.path(), options(4, 1 << 20)).expect("opens");
    let records: Vec<Append> = (0..4000).map(|i| append(&format!("k{i}"), b"v")).collect();
    log.append(records).await.expect("appended");
    let mut reader = log.read_from(&LogPosition::new()).await.expect("reader");
    let batch = reader.next_batch(100, Duration::ZERO).await.expect("batch");
    assert_eq!(batch.len(), 100);
    for p in 0..4 {
        let share = batch.iter().filter(|e| e.partition == p).count();
        assert_eq!(share, 25, "partition {p}");
    }
}

#[tokio::test]
async fn a_cancelled_batch_is_returned_by_the_next_call() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EmbeddedLog::open(dir.path(), options(1, 4096)).expect("opens");
    let records: Vec<Append> = (0..50u8).map(|i| append("k", &[i + 1])).collect();
    log.append(records).await.expect("appended");
    let mut reader = log.read_from(&LogPosition::new()).await.expect("reader");
    // Polled once: the read starts on the blocking pool, then is dropped.
    let cancelled =
        tokio::time::timeout(Duration::ZERO, reader.next_batch(10, Duration::ZERO)).await;
    let mut entries = match cancelled {
        Ok(batch) => batch.expect("batch"),
        Err(_) => Vec::new(),
    };
    assert_eq!(reader.position().next(0), entries.len() as u64);
    while entries.len() < 50 {
        entries.extend(reader.next_batch(10, Duration::ZERO).await.expect("batch"));
    }
    let offsets: Vec<Offset> = entries.iter().map(|e| e.offset).collect();
    assert_eq!(
        offsets,
        (0..50).collect::<Vec<_>>(),
        "nothing lost, nothing repeated"
    );
}

#[tokio::test]
async fn recycled_entries_hold_only_the_records_read_next() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EmbeddedLog::open(dir.path(), options(1, 1 << 20)).expect("opens");
    // Long records first, then short ones: a recycled buffer that kept a
    // long record's bytes must come back holding a short one exactly.
    let payloads: Vec<Vec<u8>> = (0..60u8)
        .map(|i| vec![i + 1; if i < 30 { 300 } else { 1 + i as usize % 3 }])
        .collect();
    log.append(payloads.iter().map(|p| append("k", p)).collect())
        .await
        .expect("appended");
    let mut reader = log.read_from(&LogPosition::new()).await.expect("reader");
    let mut read = Vec::new();
    while read.len() < payloads.len() {
        let batch = reader.next_batch(10, Duration::ZERO).await.expect("batch");
        read.extend(batch.iter().map(|e| e.bytes.clone()));
        reader.recycle(batch);
    }
    assert_eq!(read, payloads);
}

#[tokio::test]
async fn a_reader_of_a_closed_log_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EmbeddedLog::open(dir.path(), options(1, 4096)).expect("opens");
    log.append(vec![append("k", b"kept")])
        .await
        .expect("appended");
    let mut reader = log.read_from(&LogPosition::new()).await.expect("reader");
    log.close().await.expect("closes");
    let entries = reader
        .next_batch(10, Duration::ZERO)
        .await
        .expect("what is there");
    assert_eq!(entries.len(), 1);
    let error = reader
        .next_batch(10, Duration::from_secs(5))
        .await
        .expect_err("closed");
    assert_eq!(
        error.to_string(),
        "event log unavailable: the embedded event log was closed"
    );
}

#[tokio::test]
async fn subscribe_resumes_at_the_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EmbeddedLog::open(dir.path(), options(2, 4096)).expect("opens");
    let expected = append_each(&log, &numbered(40, 5)).await;
    let checkpoint: LogPosition = (0..2).map(|p| (p, expected[&p].len() as u64 / 2)).collect();
    let mut reader = log
        .subscribe("speed", &checkpoint)
        .await
        .expect("subscribed");
    let end = log.end().await.expect("end");
    let mut entries = Vec::new();
    while !reader.position().reaches(&end) {
        entries.extend(
            reader
                .next_batch(1000, Duration::ZERO)
                .await
                .expect("batch"),
        );
    }
    let read = by_partition(entries);
    for p in 0..2 {
        let half = expected[&p].len() / 2;
        assert_eq!(read[&p], expected[&p][half..], "partition {p}");
    }
}
