//! Speed layer throughput: the real [`SpeedLayer`] from a full log into the
//! store, against the raw ceiling of the same machine: reading the same
//! records from the log without decoding, plus writing equivalent rows
//! (the same keys and value sizes as the store's layout) straight into the
//! store engine, with nothing of ours in between.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::TryStreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, TopicPartitionList};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use signals_core::{LogPosition, SpeedEntry};
use signals_log::LogEntry;
use signals_schemas::RecordBody;
use signals_speed::{SpeedLayer, SpeedOptions};
use tokio_util::sync::CancellationToken;

use crate::backends::{self, Backends, Place};
use crate::platform::Services;
use crate::workload::Shape;

/// What one speed measurement found.
#[derive(Clone, Debug)]
pub struct SpeedFigures {
    pub events: u64,
    pub ours: Duration,
    pub raw_read: Duration,
    pub raw_write: Duration,
}

impl SpeedFigures {
    pub fn ours_rate(&self) -> f64 {
        self.events as f64 / self.ours.as_secs_f64()
    }

    /// Reading and writing one after the other, as the layer does.
    pub fn ceiling_rate(&self) -> f64 {
        self.events as f64 / (self.raw_read + self.raw_write).as_secs_f64()
    }
}

/// Fills a fresh log at `place` with `events` events and times the speed
/// layer, then the raw ceiling, over them.
pub async fn measure(
    place: &Place,
    shape: &Shape,
    events: u64,
    batch: usize,
) -> anyhow::Result<SpeedFigures> {
    let backends = place.open().await?;
    backends::fill(&*backends.log, shape, events).await?;
    let end = backends.log.end().await?;
    let ours = run_speed_layer(&backends, &end, batch).await?;
    let (raw_read, entries) = raw_read(place, &backends, &end, events).await?;
    drop(backends);
    let raw_write = match place {
        Place::Embedded(dir) => raw_write_redb(&dir.join("raw.redb"), &entries, batch)?,
        Place::Real { services, name } => raw_write_cql(services, name, &entries, batch).await?,
    };
    Ok(SpeedFigures {
        events,
        ours,
        raw_read,
        raw_write,
    })
}

/// The speed layer from the start of the log until its progress reaches `end`.
async fn run_speed_layer(
    backends: &Backends,
    end: &LogPosition,
    batch: usize,
) -> anyhow::Result<Duration> {
    let layer = SpeedLayer {
        log: backends.log.clone(),
        store: backends.store.clone(),
        dead_letters: backends.dead_letters.clone(),
        options: SpeedOptions {
            group: format!("bench-speed-{}", crate::workload::now_millis()),
            max_batch: batch,
            poll_wait: Duration::from_millis(20),
            ..SpeedOptions::default()
        },
    };
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let running = {
        let shutdown = shutdown.clone();
        async move { layer.run(shutdown).await }
    };
    let running = tokio::spawn(running);
    loop {
        let progress = backends.store.speed_progress().await?;
        if progress.position.reaches(end) {
            break;
        }
        if running.is_finished() {
            anyhow::bail!("the speed layer stopped before reaching the log's end");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    running.await??;
    Ok(elapsed)
}

/// One speed entry as the store engine would hold it: key parts and value bytes.
pub struct RawEntry {
    user: String,
    partition: u32,
    offset: u64,
    value: Vec<u8>,
    event_id: String,
}

/// Times reading every record of the log with nothing but the log's own
/// reader (embedded) or a bare librdkafka consumer (Kafka); returns the
/// entries to write, built outside the timing.
async fn raw_read(
    place: &Place,
    backends: &Backends,
    end: &LogPosition,
    events: u64,
) -> anyhow::Result<(Duration, Vec<RawEntry>)> {
    let records = match place {
        Place::Embedded(_) => {
            let started = Instant::now();
            let mut reader = backends.log.read_from(&LogPosition::new()).await?;
            let mut records = Vec::with_capacity(events as usize);
            while !reader.position().reaches(end) {
                records.extend(reader.next_batch(5_000, Duration::ZERO).await?);
            }
            (started.elapsed(), records)
        }
        Place::Real { services, name } => {
            let services = services.clone();
            let name = name.clone();
            tokio::task::spawn_blocking(move || raw_kafka_read(&services, &name, events)).await??
        }
    };
    let (elapsed, records) = records;
    Ok((elapsed, entries_of(records)))
}

pub(super) fn raw_kafka_read(
    services: &Services,
    name: &str,
    events: u64,
) -> anyhow::Result<(Duration, Vec<LogEntry>)> {
    let topic = format!("{name}.events");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &services.kafka)
        .set("group.id", format!("{name}-raw"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .context("the topic has no metadata")?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        assignment.add_partition_offset(&topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(300);
    let mut records = Vec::with_capacity(events as usize);
    while (records.len() as u64) < events && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message?;
            records.push(LogEntry {
                partition: message.partition() as u32,
                offset: message.offset() as u64,
                bytes: message.payload().unwrap_or_default().to_vec(),
            });
        }
    }
    Ok((started.elapsed(), records))
}

fn entries_of(records: Vec<LogEntry>) -> Vec<RawEntry> {
    records
        .into_iter()
        .filter_map(|r| {
            let RecordBody::Event(event) = signals_schemas::avro::decode(&r.bytes).ok()?.body
            else {
                return None;
            };
            Some(RawEntry {
                user: event.user_id.to_string(),
                partition: r.partition,
                offset: r.offset,
                event_id: event.event_id.to_string(),
                value: postcard::to_stdvec(&SpeedEntry::Event(event)).ok()?,
            })
        })
        .collect()
}

/// The entries of one write as the stores keep them: each user's entries
/// of one log partition in offset order, in runs of at most `max`, each
/// with its last entry and its entries' bytes, in (user, partition, offset)
/// order.
fn runs(write: &[RawEntry], max: usize) -> Vec<(&RawEntry, Vec<u8>)> {
    let mut sorted: Vec<&RawEntry> = write.iter().collect();
    sorted.sort_unstable_by(|a, b| {
        (&a.user, a.partition, a.offset).cmp(&(&b.user, b.partition, b.offset))
    });
    sorted
        .chunk_by(|a, b| a.user == b.user && a.partition == b.partition)
        .flat_map(|same| same.chunks(max))
        .map(|run| {
            let value = run.iter().flat_map(|e| e.value.iter().copied()).collect();
            (run[run.len() - 1], value)
        })
        .collect()
}

const SPEED: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("speed");
const INDEX: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("index_log");

/// The rows the embedded store writes for the same entries, in redb
/// transactions of `batch`, keys sorted (redb's fastest insert order), each
/// committed durably like the speed layer's writes: per write, one row per
/// (user, partition) holding its entries' bytes, and the event ids with
/// their users in up to 256 rows keyed by the write's number (ADR 010).
fn raw_write_redb(
    path: &std::path::Path,
    entries: &[RawEntry],
    batch: usize,
) -> anyhow::Result<Duration> {
    let db = redb::Database::create(path)?;
    let started = Instant::now();
    for (write, chunk) in entries.chunks(batch.max(1)).enumerate() {
        let rows: Vec<(Vec<u8>, Vec<u8>)> = runs(chunk, usize::MAX)
            .into_iter()
            .map(|(last, value)| {
                let mut key = Vec::with_capacity(last.user.len() + 13);
                key.extend_from_slice(last.user.as_bytes());
                key.push(0);
                key.extend_from_slice(&last.partition.to_be_bytes());
                key.extend_from_slice(&last.offset.to_be_bytes());
                (key, value)
            })
            .collect();
        let buckets = chunk.len().div_ceil(128).next_power_of_two().min(256);
        let mut ids: Vec<Vec<u8>> = vec![Vec::new(); buckets];
        for e in chunk {
            let bucket = signals_core::fnv1a64(e.event_id.as_bytes()) as usize % buckets;
            ids[bucket].extend_from_slice(e.event_id.as_bytes());
            ids[bucket].extend_from_slice(e.user.as_bytes());
        }
        let tx = db.begin_write()?;
        {
            let mut speed = tx.open_table(SPEED)?;
            for (key, value) in &rows {
                speed.insert(key.as_slice(), value.as_slice())?;
            }
            let mut index = tx.open_table(INDEX)?;
            for (bucket, value) in ids.iter().enumerate() {
                let mut key = (write as u64).to_be_bytes().to_vec();
                key.push(bucket as u8);
                index.insert(key.as_slice(), value.as_slice())?;
            }
        }
        tx.commit()?;
    }
    Ok(started.elapsed())
}

/// A session, and in `keyspace` (created for the bench alone) a `speed`
/// table shaped like the store's, with its prepared insert of (user,
/// partition, offset, value).
pub(super) async fn raw_speed_table(
    services: &Services,
    keyspace: &str,
) -> anyhow::Result<(Session, PreparedStatement)> {
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(&services.cql)
        .build()
        .await?;
    for statement in [
        format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
        format!("CREATE TABLE IF NOT EXISTS {keyspace}.speed (user text, partition bigint, offset bigint, value blob, PRIMARY KEY ((user), partition, offset))"),
    ] {
        session.query_unpaged(statement, &[]).await?;
    }
    session.await_schema_agreement().await?;
    let insert = session
        .prepare(format!(
            "INSERT INTO {keyspace}.speed (user, partition, offset, value) VALUES (?, ?, ?, ?)"
        ))
        .await?;
    Ok((session, insert))
}

/// The rows the CQL store writes for the same entries, in writes of
/// `batch` entries: per write, each user's entries of one log partition in
/// runs of up to 64, keyed by the last, each user's runs as
/// single-partition unlogged batches of up to 32 rows, then the event ids
/// one row each, grouped into such batches by index bucket (FNV-1a-64 mod
/// 1,024, ADR 006), 256 requests in flight. The store's own index reads are
/// not part of the ceiling.
async fn raw_write_cql(
    services: &Services,
    name: &str,
    entries: &[RawEntry],
    batch: usize,
) -> anyhow::Result<Duration> {
    const ROWS_PER_BATCH: usize = 32;
    const ENTRIES_PER_ROW: usize = 64;
    let keyspace = format!("{}_raw", backends::keyspace(name));
    let (session, insert_entry) = raw_speed_table(services, &keyspace).await?;
    session
        .query_unpaged(
            format!("CREATE TABLE IF NOT EXISTS {keyspace}.event_index (bucket int, event_id text, value blob, PRIMARY KEY ((bucket), event_id))"),
            &[],
        )
        .await?;
    session.await_schema_agreement().await?;
    let insert_index = session
        .prepare(format!(
            "INSERT INTO {keyspace}.event_index (bucket, event_id, value) VALUES (?, ?, ?)"
        ))
        .await?;
    let started = Instant::now();
    for write in entries.chunks(batch.max(1)) {
        let runs = runs(write, ENTRIES_PER_ROW);
        let mut by_bucket: std::collections::HashMap<i32, Vec<&RawEntry>> = Default::default();
        for e in write {
            let bucket = (signals_core::fnv1a64(e.event_id.as_bytes()) % 1024) as i32;
            by_bucket.entry(bucket).or_default().push(e);
        }
        let entry_batches = runs
            .chunk_by(|(a, _), (b, _)| a.user == b.user)
            .flat_map(|rows| rows.chunks(ROWS_PER_BATCH))
            .map(|rows| {
                let values: Vec<_> = rows
                    .iter()
                    .map(|(last, value)| {
                        (
                            &last.user,
                            i64::from(last.partition),
                            last.offset as i64,
                            value,
                        )
                    })
                    .collect();
                (&insert_entry, values)
            });
        run_batches(&session, entry_batches).await?;
        let insert_index = &insert_index;
        let index_batches = by_bucket.iter().flat_map(|(bucket, rows)| {
            rows.chunks(ROWS_PER_BATCH).map(move |rows| {
                let values: Vec<_> = rows
                    .iter()
                    .map(|e| (*bucket, &e.event_id, e.user.as_bytes()))
                    .collect();
                (insert_index, values)
            })
        });
        run_batches(&session, index_batches).await?;
    }
    let elapsed = started.elapsed();
    let _ = session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), &[])
        .await;
    Ok(elapsed)
}

/// Each of `batches` (a statement and its rows' values, one partition) as
/// one unlogged batch, 256 at a time.
async fn run_batches<V: scylla::serialize::row::SerializeRow>(
    session: &Session,
    batches: impl Iterator<Item = (&PreparedStatement, Vec<V>)>,
) -> anyhow::Result<()> {
    futures::stream::iter(batches.map(Ok::<_, anyhow::Error>))
        .try_for_each_concurrent(256, |(statement, values)| async move {
            let mut batch =
                scylla::statement::batch::Batch::new(scylla::statement::batch::BatchType::Unlogged);
            for _ in &values {
                batch.append_statement(statement.clone());
            }
            session.batch(&batch, values).await?;
            Ok(())
        })
        .await
}
