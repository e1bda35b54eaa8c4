//! Crash recovery: whatever a crash leaves at the end of the tail segment is
//! cut; acknowledged records always survive.

use std::io::Write;

use super::*;

/// Appends `words` one per call to a fresh single-partition log in `dir`.
async fn log_with(dir: &Path, words: &[&[u8]], segment_bytes: u64) {
    let log = EmbeddedLog::open(dir, options(1, segment_bytes)).expect("opens");
    for word in words {
        log.append(vec![append("k", word)]).await.expect("appended");
    }
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("segment");
    file.write_all(bytes).expect("write");
}

async fn payloads(log: &EmbeddedLog) -> Vec<Vec<u8>> {
    read_all(log, &LogPosition::new())
        .await
        .into_iter()
        .map(|e| e.bytes)
        .collect()
}

/// Reopens after `damage` and checks that exactly `kept` records survive and
/// that the next append gets the next offset.
async fn recovers(dir: &Path, damage: &[u8], kept: &[&[u8]]) {
    let segment = segment_file(dir, 0, 0);
    let acknowledged = std::fs::metadata(&segment).expect("segment").len();
    append_bytes(&segment, damage);
    let log = EmbeddedLog::open(dir, options(1, 1 << 20)).expect("recovers");
    assert_eq!(
        std::fs::metadata(&segment).expect("segment").len(),
        acknowledged,
        "the tail was cut"
    );
    assert_eq!(log.end().await.expect("end").next(0), kept.len() as u64);
    let positions = log
        .append(vec![append("k", b"after")])
        .await
        .expect("appended");
    assert_eq!(positions, vec![(0, kept.len() as u64)]);
    let mut expected: Vec<Vec<u8>> = kept.iter().map(|w| w.to_vec()).collect();
    expected.push(b"after".to_vec());
    assert_eq!(payloads(&log).await, expected);
}

#[tokio::test]
async fn a_torn_record_at_the_tail_is_cut() {
    let dir = tempfile::tempdir().expect("temp dir");
    log_with(dir.path(), &[b"one", b"two"], 1 << 20).await;
    // A crash mid-write: a header promising 100 bytes, then only 3.
    let mut torn = Vec::new();
    torn.extend_from_slice(&100u32.to_le_bytes());
    torn.extend_from_slice(&crc32fast::hash(&[7; 100]).to_le_bytes());
    torn.extend_from_slice(&[7; 3]);
    recovers(dir.path(), &torn, &[b"one", b"two"]).await;
}

#[tokio::test]
async fn a_torn_header_at_the_tail_is_cut() {
    let dir = tempfile::tempdir().expect("temp dir");
    log_with(dir.path(), &[b"one"], 1 << 20).await;
    recovers(dir.path(), &[5, 0, 0], &[b"one"]).await;
}

#[tokio::test]
async fn garbage_and_zeroes_at_the_tail_are_cut() {
    let dir = tempfile::tempdir().expect("temp dir");
    log_with(dir.path(), &[b"one", b"two"], 1 << 20).await;
    let garbage: Vec<u8> = (0..1000u32).map(|i| (i * 7919 % 251) as u8).collect();
    recovers(dir.path(), &garbage, &[b"one", b"two"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    log_with(dir.path(), &[b"one"], 1 << 20).await;
    recovers(dir.path(), &[0; 4096], &[b"one"]).await;
}

#[tokio::test]
async fn a_corrupt_record_in_the_tail_is_cut_with_everything_after_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    log_with(dir.path(), &[b"aaaa", b"bbbb", b"cccc", b"dddd"], 1 << 20).await;
    let segment = segment_file(dir.path(), 0, 0);
    let mut bytes = std::fs::read(&segment).expect("segment");
    // Flip a payload byte of the second record (each frame is 8 + 4 bytes).
    bytes[12 + 8 + 1] ^= 0xff;
    std::fs::write(&segment, bytes).expect("write");
    let log = EmbeddedLog::open(dir.path(), options(1, 1 << 20)).expect("recovers");
    assert_eq!(log.end().await.expect("end").next(0), 1);
    assert_eq!(std::fs::metadata(&segment).expect("segment").len(), 12);
    assert_eq!(payloads(&log).await, vec![b"aaaa".to_vec()]);
}

#[tokio::test]
async fn only_the_tail_segment_is_cut() {
    let dir = tempfile::tempdir().expect("temp dir");
    let words: Vec<&[u8]> = vec![b"0000", b"1111", b"2222", b"3333", b"4444"];
    // 12-byte frames, 24-byte segments: two records per segment.
    log_with(dir.path(), &words, 24).await;
    let tail = segment_file(dir.path(), 0, 4);
    append_bytes(&tail, &[9; 5]);
    let log = EmbeddedLog::open(dir.path(), options(1, 24)).expect("recovers");
    assert_eq!(log.end().await.expect("end").next(0), 5);
    assert_eq!(
        payloads(&log).await,
        words.iter().map(|w| w.to_vec()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_damaged_sealed_segment_is_reported_not_cut() {
    let dir = tempfile::tempdir().expect("temp dir");
    log_with(
        dir.path(),
        &[b"0000", b"1111", b"2222", b"3333", b"4444"],
        24,
    )
    .await;
    let sealed = segment_file(dir.path(), 0, 2);
    append_bytes(&sealed, &[9; 5]);
    let error = EmbeddedLog::open(dir.path(), options(1, 24))
        .err()
        .expect("refused");
    assert!(matches!(error, LogError::Corrupt(_)), "{error}");
    assert!(
        error.to_string().contains("00000000000000000002.log: the frame is cut short at byte 24 (offset 4) of a sealed segment"),
        "{error}"
    );
    assert_eq!(
        std::fs::metadata(&sealed).expect("segment").len(),
        29,
        "nothing cut"
    );
}

#[tokio::test]
async fn a_flipped_bit_in_a_sealed_segment_fails_the_read_that_meets_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    log_with(
        dir.path(),
        &[b"0000", b"1111", b"2222", b"3333", b"4444"],
        24,
    )
    .await;
    let sealed = segment_file(dir.path(), 0, 2);
    let mut bytes = std::fs::read(&sealed).expect("segment");
    bytes[12 + 8] ^= 1;
    std::fs::write(&sealed, bytes).expect("write");
    let log = EmbeddedLog::open(dir.path(), options(1, 24)).expect("opens");
    let mut reader = log.read_from(&LogPosition::new()).await.expect("reader");
    let mut read = Vec::new();
    let error = loop {
        match reader.next_batch(10, Duration::ZERO).await {
            Ok(batch) => read.extend(batch.into_iter().map(|e| e.offset)),
            Err(error) => break error,
        }
    };
    assert_eq!(
        read,
        vec![0, 1, 2],
        "records before the bad one are returned"
    );
    assert!(matches!(error, LogError::Corrupt(_)), "{error}");
    assert!(error.to_string().starts_with("event log corrupt: offset 3 of partition 0 (segment 00000000000000000002.log): the payload's CRC-32"), "{error}");
    assert_eq!(reader.position().next(0), 3);
}
