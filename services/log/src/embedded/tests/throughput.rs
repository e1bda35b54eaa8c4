//! Figures, not assertions: run in release mode with
//! `cargo test --release -p signals-log -- --ignored --nocapture throughput`.

use std::time::Instant;

use super::*;

const RECORD: usize = 200;

fn batch(n: usize, seed: usize) -> Vec<Append> {
    (0..n)
        .map(|i| {
            append(
                &format!("user-{}", (seed + i) % 1000),
                &[(i % 251) as u8 + 1; RECORD],
            )
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run in release mode"]
async fn throughput_append_then_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = EmbeddedLogOptions {
        partitions: 4,
        fsync: FsyncPolicy::Never,
        ..EmbeddedLogOptions::default()
    };
    let log = EmbeddedLog::open(dir.path(), options).expect("opens");
    let appends = 1000;
    let mut latencies = Vec::with_capacity(appends);
    let started = Instant::now();
    for i in 0..appends {
        let records = batch(1000, i);
        let t = Instant::now();
        log.append(records).await.expect("appended");
        latencies.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "append, fsync=Never, 1000 x {RECORD} B per append: median {:?}, p99 {:?}; {:.0} records/s",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        (appends * 1000) as f64 / elapsed.as_secs_f64()
    );

    let end = log.end().await.expect("end");
    for max in [1000, 10_000, 1000, 100] {
        let mut reader = log.read_from(&LogPosition::new()).await.expect("reader");
        let started = Instant::now();
        let mut count = 0usize;
        while !reader.position().reaches(&end) {
            count += reader
                .next_batch(max, Duration::ZERO)
                .await
                .expect("batch")
                .len();
        }
        let elapsed = started.elapsed();
        println!(
            "read, next_batch({max}): {count} records of {RECORD} B in {elapsed:?}: {:.0} records/s",
            count as f64 / elapsed.as_secs_f64()
        );
    }
    let from: LogPosition = (0..4).map(|p| (p, end.next(p) / 2)).collect();
    let started = Instant::now();
    let mut reader = log.read_from(&from).await.expect("reader");
    reader.next_batch(1, Duration::ZERO).await.expect("batch");
    println!(
        "seek to the middle of 1M records and read one: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run in release mode"]
async fn throughput_group_commit_with_fsync() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(EmbeddedLog::open(dir.path(), options(1, 128 << 20)).expect("opens"));
    let mut latencies = Vec::new();
    for i in 0..100 {
        let t = Instant::now();
        log.append(batch(1, i)).await.expect("appended");
        latencies.push(t.elapsed());
    }
    latencies.sort();
    println!(
        "append, fsync=Always, one appender, 1 record: median {:?}, p99 {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );

    for tasks in [1usize, 16, 64, 256] {
        let per_task = 4000 / tasks;
        let syncs_before = log.shared.faults.syncs();
        let started = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let log = log.clone();
                tokio::spawn(async move {
                    for i in 0..per_task {
                        log.append(batch(1, t * per_task + i))
                            .await
                            .expect("appended");
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.expect("task");
        }
        let elapsed = started.elapsed();
        let appends = tasks * per_task;
        let syncs = log.shared.faults.syncs() - syncs_before;
        println!(
            "append, fsync=Always, {tasks} concurrent appenders of 1 record: {:.0} appends/s, {syncs} fsyncs for {appends} appends",
            appends as f64 / elapsed.as_secs_f64()
        );
    }
}
