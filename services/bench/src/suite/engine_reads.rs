//! The real stack's read ceiling: what Redis and Cassandra/ScyllaDB answer
//! for the reads one signals answer needs (the user's cached record, one
//! Redis GET; the user's speed entries, one single-partition CQL SELECT),
//! with nothing of ours in between. Serving on the real stack cannot be
//! faster than this, whatever it does with the bytes.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use redis::AsyncCommands;

use crate::platform::Services;
use crate::{backends, http};

/// Reads in flight, as many as the HTTP driver's connections.
const IN_FLIGHT: usize = 32;
/// Speed entries per user in the raw table (a short tail, as after a batch).
const ROWS_PER_USER: i64 = 2;

/// Answers' worth of raw reads per second, and their latency.
pub struct EngineReads {
    pub reads: u64,
    pub elapsed: Duration,
    /// µs per answer's pair of reads.
    pub latency: Histogram<u64>,
}

impl EngineReads {
    pub fn rate(&self) -> f64 {
        self.reads as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// The mean size of the batch records the platform cached in Redis (a
/// sample of up to 200), or `fallback` if it cached none.
pub async fn cached_record_bytes(services: &Services, fallback: usize) -> anyhow::Result<usize> {
    let mut redis = redis::Client::open(services.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let keys: Vec<String> = {
        let mut keys = Vec::new();
        let mut iter: redis::AsyncIter<String> = redis.scan_match("*:record:*").await?;
        while let Some(key) = iter.next_item().await {
            keys.push(key?);
            if keys.len() == 200 {
                break;
            }
        }
        keys
    };
    let mut total = 0usize;
    for key in &keys {
        let len: usize = redis.strlen(key).await?;
        total += len;
    }
    Ok(if keys.is_empty() {
        fallback
    } else {
        total / keys.len()
    })
}

/// Loads `users` users (a `record_bytes` value in Redis, two speed rows in
/// a keyspace of the bench's own), then reads uniformly drawn users for
/// `duration`, [`IN_FLIGHT`] at a time. Removes what it wrote.
pub async fn measure(
    services: &Services,
    name: &str,
    users: u64,
    record_bytes: usize,
    duration: Duration,
) -> anyhow::Result<EngineReads> {
    let keyspace = format!("{}_reads", backends::keyspace(name));
    let (session, insert) = super::speed::raw_speed_table(services, &keyspace).await?;
    let select = session
        .prepare(format!(
            "SELECT partition, offset, value FROM {keyspace}.speed WHERE user = ?"
        ))
        .await?;
    let redis = redis::Client::open(services.redis.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let record = vec![7u8; record_bytes];
    let entry = vec![7u8; 200];
    let key = |user: u64| format!("signals-bench:{name}:reads:{user}");

    // What was written is removed whether the measurement succeeded or not.
    let measured = async {
        futures::stream::iter((0..users).map(Ok::<_, anyhow::Error>))
            .try_for_each_concurrent(256, |user| {
                let (session, insert, record, entry) = (&session, &insert, &record, &entry);
                let mut redis = redis.clone();
                let key = key(user);
                async move {
                    let _: () = redis.set(&key, record.as_slice()).await?;
                    for offset in 0..ROWS_PER_USER {
                        session
                            .execute_unpaged(insert, (user.to_string(), 0i64, offset, entry))
                            .await?;
                    }
                    Ok(())
                }
            })
            .await?;

        let started = Instant::now();
        let deadline = started + duration;
        let tasks = (0..IN_FLIGHT as u64).map(|task| {
            let (session, select) = (&session, &select);
            let mut redis = redis.clone();
            let key = &key;
            async move {
                let mut latency = http::histogram();
                let mut reads = 0u64;
                let mut n = task;
                while Instant::now() < deadline {
                    // A multiplicative hash spreads the tasks over the users.
                    let user = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) % users;
                    n += IN_FLIGHT as u64;
                    let began = Instant::now();
                    let _: Vec<u8> = redis.get(key(user)).await?;
                    let rows = session
                        .execute_unpaged(select, (user.to_string(),))
                        .await?
                        .into_rows_result()?;
                    anyhow::ensure!(
                        rows.rows_num() as i64 == ROWS_PER_USER,
                        "user {user}: {} rows",
                        rows.rows_num()
                    );
                    latency.saturating_record(began.elapsed().as_micros() as u64);
                    reads += 1;
                }
                Ok::<_, anyhow::Error>((reads, latency))
            }
        });
        let results: Vec<(u64, Histogram<u64>)> = futures::stream::iter(tasks)
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await?;
        let elapsed = started.elapsed();

        let mut outcome = EngineReads {
            reads: 0,
            elapsed,
            latency: http::histogram(),
        };
        for (reads, latency) in results {
            outcome.reads += reads;
            outcome.latency.add(latency)?;
        }
        Ok::<_, anyhow::Error>(outcome)
    }
    .await;
    let _ = session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), &[])
        .await;
    let mut redis = redis;
    for user in 0..users {
        let _: Result<(), _> = redis.del(key(user)).await;
    }
    measured
}
