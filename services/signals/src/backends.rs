//! Opens the backends the configuration names.

use std::sync::Arc;

use anyhow::Context;
use signals_log::embedded::{EmbeddedLog, EmbeddedLogOptions, FsyncPolicy};
use signals_log::kafka::{KafkaDeadLetters, KafkaLog, KafkaOptions};
use signals_log::{DeadLetterFile, DeadLetterSink, EventLog};
use signals_store::embedded::EmbeddedStore;
use signals_store::redis_cache::{CachedStore, RedisOptions};
use signals_store::scylla::{ScyllaOptions, ScyllaStore};
use signals_store::SignalStore;

use crate::config::{Config, Fsync, KafkaConfig, LogBackend, ScyllaConfig, StoreBackend};

/// The log, the store and the dead-letter sink of one process.
pub struct Backends {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn SignalStore>,
    pub dead_letters: Arc<dyn DeadLetterSink>,
}

impl Backends {
    pub async fn open(config: &Config) -> anyhow::Result<Backends> {
        let log: Arc<dyn EventLog> = match config.log.backend {
            LogBackend::Embedded => {
                let dir = config.data_dir.join("log");
                let options = EmbeddedLogOptions {
                    partitions: config.log.embedded.partitions,
                    segment_bytes: config.log.embedded.segment_bytes,
                    fsync: match config.log.embedded.fsync {
                        Fsync::Always => FsyncPolicy::Always,
                        Fsync::Never => FsyncPolicy::Never,
                    },
                };
                Arc::new(EmbeddedLog::open(&dir, options).with_context(|| {
                    format!("cannot open the embedded event log in {}", dir.display())
                })?)
            }
            LogBackend::Kafka => Arc::new(
                KafkaLog::connect(kafka_options(&config.log.kafka))
                    .await
                    .with_context(|| {
                        format!("cannot use the Kafka log at {}", config.log.kafka.brokers)
                    })?,
            ),
        };
        let store: Arc<dyn SignalStore> = match config.store.backend {
            StoreBackend::Embedded => {
                let path = config.data_dir.join("store").join("signals.redb");
                Arc::new(EmbeddedStore::open(&path).with_context(|| {
                    format!(
                        "cannot open the embedded store {} (is another signals process using this data dir?)",
                        path.display()
                    )
                })?)
            }
            StoreBackend::Scylla => Arc::new(scylla_store(&config.store.scylla).await?),
        };
        let store = match config.cache.redis_url.as_str() {
            "" => store,
            url => Arc::new(CachedStore::new(
                store,
                RedisOptions {
                    url: url.to_owned(),
                    ttl: config.cache.ttl,
                    timeout: config.cache.timeout,
                    local_cache_bytes: config.cache.local_bytes,
                    ..RedisOptions::default()
                },
            )?) as Arc<dyn SignalStore>,
        };
        let dead_letters: Arc<dyn DeadLetterSink> = match config.log.backend {
            LogBackend::Embedded => Arc::new(DeadLetterFile::new(
                &config.data_dir.join("dead-letters.ndjson"),
            )),
            LogBackend::Kafka => Arc::new(KafkaDeadLetters::connect(&kafka_options(
                &config.log.kafka,
            ))?),
        };
        Ok(Backends {
            log,
            store,
            dead_letters,
        })
    }
}

fn kafka_options(config: &KafkaConfig) -> KafkaOptions {
    KafkaOptions {
        brokers: config.brokers.clone(),
        topic: config.topic.clone(),
        dead_letter_topic: config.dead_letter_topic.clone(),
        partitions: config.partitions,
        replication_factor: config.replication_factor,
        // Checked when the configuration loaded.
        retention: humantime::parse_duration(&config.retention).ok(),
        create_topics: config.create_topics,
        timeout: config.timeout,
        session_timeout: config.session_timeout,
    }
}

/// Connects to ScyllaDB/Cassandra, applying the schema when configured to.
pub async fn scylla_store(config: &ScyllaConfig) -> anyhow::Result<ScyllaStore> {
    let options = ScyllaOptions {
        nodes: config
            .nodes
            .split(',')
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect(),
        keyspace: config.keyspace.clone(),
        replication_factor: config.replication_factor,
        request_timeout: config.request_timeout,
        max_in_flight: config.max_in_flight,
        ..ScyllaOptions::default()
    };
    let store = ScyllaStore::connect(options)
        .await
        .with_context(|| format!("cannot use ScyllaDB/Cassandra at {}", config.nodes))?;
    if config.migrate_on_start {
        store
            .migrate()
            .await
            .context("cannot apply the CQL schema (store.scylla.migrate_on_start)")?;
    }
    Ok(store)
}
