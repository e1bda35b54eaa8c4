//! The library backends, opened in process for figures that drive the
//! layers directly (speed, batch): embedded files or the real services.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use signals_core::{Definitions, SegmentSpec, Segments, SignalSpec};
use signals_log::embedded::{EmbeddedLog, EmbeddedLogOptions, FsyncPolicy};
use signals_log::kafka::{KafkaDeadLetters, KafkaLog, KafkaOptions};
use signals_log::{Append, DeadLetterFile, DeadLetterSink, EventLog};
use signals_store::embedded::EmbeddedStore;
use signals_store::scylla::{ScyllaOptions, ScyllaStore};
use signals_store::SignalStore;

use crate::platform::Services;
use crate::workload::{self, Shape, Workload};

/// Where a set of backends lives.
#[derive(Clone, Debug)]
pub enum Place {
    /// `dir/log` and `dir/store.redb`.
    Embedded(PathBuf),
    /// A topic and keyspace named `name` on the real services.
    Real { services: Services, name: String },
}

/// A log, a store and a dead-letter sink.
pub struct Backends {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn SignalStore>,
    pub dead_letters: Arc<dyn DeadLetterSink>,
}

impl Place {
    pub fn kafka_options(services: &Services, name: &str) -> KafkaOptions {
        KafkaOptions {
            brokers: services.kafka.clone(),
            topic: format!("{name}.events"),
            dead_letter_topic: format!("{name}.dlq"),
            ..KafkaOptions::default()
        }
    }

    /// Only the log (filling it, scanning it).
    pub async fn open_log(&self) -> anyhow::Result<Arc<dyn EventLog>> {
        Ok(match self {
            Place::Embedded(dir) => {
                let options = EmbeddedLogOptions {
                    // Appends are not what these figures time.
                    fsync: FsyncPolicy::Never,
                    ..EmbeddedLogOptions::default()
                };
                Arc::new(EmbeddedLog::open(&dir.join("log"), options)?)
            }
            Place::Real { services, name } => {
                Arc::new(KafkaLog::connect(Place::kafka_options(services, name)).await?)
            }
        })
    }

    pub async fn open(&self) -> anyhow::Result<Backends> {
        let log = self.open_log().await?;
        Ok(match self {
            Place::Embedded(dir) => Backends {
                log,
                store: Arc::new(EmbeddedStore::open(&dir.join("store.redb"))?),
                dead_letters: Arc::new(DeadLetterFile::new(&dir.join("dead-letters.ndjson"))),
            },
            Place::Real { services, name } => {
                let scylla = ScyllaStore::connect(ScyllaOptions {
                    nodes: vec![services.cql.clone()],
                    keyspace: keyspace(name),
                    ..ScyllaOptions::default()
                })
                .await
                .context("cannot connect to Cassandra/ScyllaDB")?;
                scylla.migrate().await?;
                // The speed and batch layers write to the store itself;
                // the Redis cache is on the serving path only.
                Backends {
                    log,
                    store: Arc::new(scylla),
                    dead_letters: Arc::new(KafkaDeadLetters::connect(&Place::kafka_options(
                        services, name,
                    ))?),
                }
            }
        })
    }
}

/// A CQL keyspace name for `name`.
pub fn keyspace(name: &str) -> String {
    name.replace(['-', '.'], "_")
}

/// Appends `events` skewed events to `log`, stamped as accepted now.
pub async fn fill(log: &dyn EventLog, shape: &Shape, events: u64) -> anyhow::Result<()> {
    let mut workload = Workload::new(shape)?;
    let mut left = events;
    while left > 0 {
        let n = left.min(10_000);
        let now = workload::now_millis();
        let chunk: Vec<Append> = (0..n)
            .map(|_| {
                let event = workload.event(now);
                Append {
                    key: event.user_id.to_string(),
                    bytes: signals_schemas::avro::encode(&workload::record(event, now)),
                }
            })
            .collect();
        log.append(chunk).await?;
        left -= n;
    }
    Ok(())
}

/// The default signal definitions, as `signals` ships them.
pub fn default_definitions() -> anyhow::Result<Arc<Definitions>> {
    #[derive(serde::Deserialize)]
    struct File {
        signals: Vec<SignalSpec>,
    }
    let text = include_str!("../../signals/config/default.toml");
    let table: toml::Table = toml::from_str(text)?;
    let file: File = toml::Value::Table(table).try_into()?;
    Ok(Arc::new(Definitions::compile(&file.signals)?))
}

/// The default segments, as `signals` ships them.
pub fn default_segments(definitions: &Definitions) -> anyhow::Result<Segments> {
    #[derive(serde::Deserialize)]
    struct File {
        segments: Vec<SegmentSpec>,
    }
    let text = include_str!("../../signals/config/default.toml");
    let table: toml::Table = toml::from_str(text)?;
    let file: File = toml::Value::Table(table).try_into()?;
    Ok(Segments::compile(&file.segments, definitions)?)
}
