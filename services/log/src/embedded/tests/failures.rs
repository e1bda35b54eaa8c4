//! Injected write and fsync failures, and a crash in the middle of a write.

use super::super::faults::WriteFault;
use super::*;

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("segment").len()
}

/// A failed group leaves nothing behind: the file is back at its durable
/// size, a reader that already read to the end sees none of it, and the
/// next append gets the offsets the failed one would have had.
async fn a_failed_group_leaves_nothing(fail: impl Fn(&EmbeddedLog)) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EmbeddedLog::open(dir.path(), options(1, 1 << 20)).expect("opens");
    log.append(vec![append("k", b"before")])
        .await
        .expect("appended");
    let segment = segment_file(dir.path(), 0, 0);
    let durable = file_len(&segment);
    let mut reader = log.read_from(&LogPosition::new()).await.expect("reader");
    assert_eq!(
        reader
            .next_batch(10, Duration::ZERO)
            .await
            .expect("batch")
            .len(),
        1
    );

    fail(&log);
    let failed = vec![append("k", b"lost-1"), append("k", b"lost-2")];
    let error = log.append(failed).await.expect_err("the group fails");
    assert!(matches!(error, LogError::Unavailable(_)), "{error}");
    assert!(error.to_string().contains("injected"), "{error}");
    assert_eq!(
        file_len(&segment),
        durable,
        "truncated back to the durable size"
    );
    assert_eq!(log.end().await.expect("end").next(0), 1);

    let positions = log
        .append(vec![append("k", b"after")])
        .await
        .expect("appended");
    assert_eq!(positions, vec![(0, 1)], "the offset is handed out again");
    let batch = reader.next_batch(10, Duration::ZERO).await.expect("batch");
    assert_eq!(batch.len(), 1);
    assert_eq!(
        batch[0].bytes, b"after",
        "the reader never saw the failed bytes"
    );
    log.check().await.expect("still ready");
    drop(log);
    let log = EmbeddedLog::open(dir.path(), options(1, 1 << 20)).expect("reopens");
    let read: Vec<Vec<u8>> = read_all(&log, &LogPosition::new())
        .await
        .into_iter()
        .map(|e| e.bytes)
        .collect();
    assert_eq!(read, vec![b"before".to_vec(), b"after".to_vec()]);
}

#[tokio::test]
async fn a_failed_write_is_rolled_back() {
    a_failed_group_leaves_nothing(|log| log.shared.faults.fail_next_write(WriteFault::Fail)).await;
}

#[tokio::test]
async fn a_failed_fsync_is_rolled_back() {
    a_failed_group_leaves_nothing(|log| log.shared.faults.fail_next_sync()).await;
}

#[tokio::test]
async fn a_failure_in_one_partition_rolls_back_every_partition_of_the_group() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EmbeddedLog::open(dir.path(), options(3, 1 << 20)).expect("opens");
    let records: Vec<Append> = (0..30).map(|i| append(&format!("k{i}"), b"v")).collect();
    log.append(records.clone()).await.expect("appended");
    let sizes: Vec<u64> = (0..3)
        .map(|p| file_len(&segment_file(dir.path(), p, 0)))
        .collect();
    // Every partition is written, then the first fsync fails.
    log.shared.faults.fail_next_sync();
    log.append(records).await.expect_err("fails");
    for p in 0..3 {
        assert_eq!(
            file_len(&segment_file(dir.path(), p, 0)),
            sizes[p as usize],
            "partition {p}"
        );
    }
    assert_eq!(log.end().await.expect("end").total(), 30);
}

#[tokio::test]
async fn a_crash_in_the_middle_of_a_write_loses_only_the_unacknowledged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let records: Vec<Append> = (0..10u8).map(|i| append("k", &[i + 1; 50])).collect();
    let frame = 8 + 50;
    {
        let log = EmbeddedLog::open(dir.path(), options(1, 1 << 20)).expect("opens");
        log.append(records[..5].to_vec()).await.expect("appended");
        log.shared.faults.fail_next_write(WriteFault::Crash);
        let error = log
            .append(records[5..].to_vec())
            .await
            .expect_err("never answered");
        assert_eq!(
            error.to_string(),
            "event log unavailable: the embedded event log writer has stopped"
        );
    }
    let segment = segment_file(dir.path(), 0, 0);
    // Half of the second append's frames reached the disk: two whole
    // records and part of a third.
    assert_eq!(file_len(&segment), 5 * frame + 5 * frame / 2);
    let log = EmbeddedLog::open(dir.path(), options(1, 1 << 20)).expect("recovers");
    assert_eq!(
        file_len(&segment),
        7 * frame,
        "the torn record was cut, whole ones kept"
    );
    assert_eq!(log.end().await.expect("end").next(0), 7);
    // The caller never got an answer and retries: events are idempotent.
    let positions = log.append(records[5..].to_vec()).await.expect("appended");
    assert_eq!(positions.first(), Some(&(0, 7)));
    let read: Vec<Vec<u8>> = read_all(&log, &LogPosition::new())
        .await
        .into_iter()
        .map(|e| e.bytes)
        .collect();
    let mut expected: Vec<Vec<u8>> = records.iter().map(|r| r.bytes.clone()).collect();
    expected.splice(7..7, records[5..7].iter().map(|r| r.bytes.clone()));
    assert_eq!(read, expected);
}
