//! Collector ingest: JSON batches accepted durably by the running platform
//! over HTTP, against appending the same records (Avro bytes) to the raw
//! log in process, with the same batch size and concurrency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use signals_log::embedded::{EmbeddedLog, EmbeddedLogOptions};
use signals_log::{Append, EventLog};

use crate::backends::Place;
use crate::http::{self, Call, Outcome, Pace};
use crate::platform::{self, Platform, Stack};
use crate::workload::{self, Shape, Workload};

pub const BATCH: usize = 1_000;
pub const CONNECTIONS: usize = 8;

/// The ingest figures.
pub struct IngestFigures {
    pub ours: Outcome,
    /// Records per second appended raw.
    pub ceiling: f64,
}

/// Pre-made request bodies (so the load generator spends little CPU) and
/// the same events as log appends.
struct Pool {
    bodies: Vec<Bytes>,
    appends: Vec<Vec<Append>>,
}

fn pool(shape: &Shape, batches: usize) -> anyhow::Result<Pool> {
    let mut workload = Workload::new(shape)?;
    let now = workload::now_millis();
    let mut pool = Pool {
        bodies: Vec::with_capacity(batches),
        appends: Vec::with_capacity(batches),
    };
    for _ in 0..batches {
        let events: Vec<_> = (0..BATCH).map(|_| workload.event(now)).collect();
        pool.bodies.push(Bytes::from(workload::json_batch(&events)));
        pool.appends.push(
            events
                .into_iter()
                .map(|e| Append {
                    key: e.user_id.to_string(),
                    bytes: signals_schemas::avro::encode(&workload::record(e, now)),
                })
                .collect(),
        );
    }
    Ok(pool)
}

pub async fn measure(
    stack: Stack,
    services: &platform::Services,
    shape: &Shape,
    duration: Duration,
) -> anyhow::Result<IngestFigures> {
    let pool = pool(shape, 200)?;
    let ours = {
        let platform = Platform::start(stack, services, &[]).await?;
        let bodies = pool.bodies.clone();
        let make =
            move |n: u64| Call::post_json("/v1/events", bodies[n as usize % bodies.len()].clone());
        http::drive(
            platform.address,
            CONNECTIONS,
            Pace::Closed,
            duration,
            make,
            http::tally_events,
        )
        .await?
    };
    let dir = tempfile::tempdir()?;
    let log: Arc<dyn EventLog> = match stack {
        // The platform's default: fsync before acknowledging.
        Stack::Embedded => Arc::new(EmbeddedLog::open(
            dir.path(),
            EmbeddedLogOptions::default(),
        )?),
        Stack::Real => {
            Place::Real {
                services: services.clone(),
                name: platform::unique_name("ingest"),
            }
            .open_log()
            .await?
        }
    };
    let ceiling = raw_append(log, Arc::new(pool.appends), duration).await?;
    Ok(IngestFigures { ours, ceiling })
}

/// `CONNECTIONS` appenders, each appending a batch as soon as the last is durable.
async fn raw_append(
    log: Arc<dyn EventLog>,
    batches: Arc<Vec<Vec<Append>>>,
    duration: Duration,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..CONNECTIONS {
        let (log, batches) = (log.clone(), batches.clone());
        tasks.spawn(async move {
            let mut records = 0u64;
            let mut n = worker;
            while started.elapsed() < duration {
                let batch = batches[n % batches.len()].clone();
                records += batch.len() as u64;
                log.append(batch).await?;
                n += CONNECTIONS;
            }
            anyhow::Ok(records)
        });
    }
    let mut records = 0;
    while let Some(done) = tasks.join_next().await {
        records += done??;
    }
    Ok(records as f64 / started.elapsed().as_secs_f64())
}
