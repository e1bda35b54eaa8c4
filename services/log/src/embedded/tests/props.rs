//! Whatever is appended, in whatever batches, sizes and keys, across
//! segment rolls and reopenings, reads back in order per partition.

use proptest::prelude::*;

use super::*;

type Batches = Vec<Vec<(String, Vec<u8>)>>;

fn batches() -> impl Strategy<Value = Batches> {
    let record = ("[a-f]{1,3}", prop::collection::vec(any::<u8>(), 1..600));
    prop::collection::vec(prop::collection::vec(record, 1..10), 1..16)
}

async fn append_batches(
    log: &EmbeddedLog,
    batches: &[Vec<(String, Vec<u8>)>],
    expected: &mut BTreeMap<Partition, Vec<Vec<u8>>>,
) {
    for batch in batches {
        let records: Vec<Append> = batch.iter().map(|(k, b)| append(k, b)).collect();
        let positions = log.append(records).await.expect("appended");
        for ((p, offset), (key, bytes)) in positions.into_iter().zip(batch) {
            assert_eq!(p, partition_for(key, log.partitions()));
            let slot = expected.entry(p).or_default();
            assert_eq!(offset, slot.len() as u64, "dense offsets");
            slot.push(bytes.clone());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn whatever_is_appended_reads_back(
        batches in batches(),
        partitions in 1u32..4,
        segment_bytes in 64u64..4096,
        reopen_after in 0usize..16,
        max in 1usize..50,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let dir = tempfile::tempdir().expect("temp dir");
            let options = EmbeddedLogOptions { partitions, segment_bytes, fsync: FsyncPolicy::Never };
            let split = reopen_after.min(batches.len());
            let mut expected = BTreeMap::new();
            {
                let log = EmbeddedLog::open(dir.path(), options.clone()).expect("opens");
                append_batches(&log, &batches[..split], &mut expected).await;
            }
            let log = EmbeddedLog::open(dir.path(), options).expect("reopens");
            append_batches(&log, &batches[split..], &mut expected).await;

            let end = log.end().await.expect("end");
            let mut reader = log.read_from(&LogPosition::new()).await.expect("reader");
            let mut entries = Vec::new();
            while !reader.position().reaches(&end) {
                let batch = reader.next_batch(max, Duration::ZERO).await.expect("batch");
                assert!(!batch.is_empty() && batch.len() <= max);
                entries.extend(batch);
            }
            assert_eq!(by_partition(entries), expected);
        });
    }
}
