//! Opens the backends the configuration names, waiting for them at start-up.
//!
//! A backend that is unavailable (Kafka, ScyllaDB/Cassandra not up yet, or
//! restarting) is retried with exponential backoff until `startup_timeout`;
//! what the process waits for is logged, counted
//! (`signals_startup_retries_total{backend}`) and kept in [`Startup`] for
//! readiness. An error that waiting cannot cure (a bad setting, a missing
//! topic with `create_topics = false`, another process holding the
//! embedded data directory) stops start-up at once.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use signals_log::embedded::{EmbeddedLog, EmbeddedLogOptions, FsyncPolicy};
use signals_log::kafka::{
    unique_transactional_id, KafkaDeadLetters, KafkaLog, KafkaOptions, SecurityProperties,
};
use signals_log::registry::RegistryLog;
use signals_log::{DeadLetterFile, DeadLetterSink, EventLog, LogError};
use signals_store::embedded::{EmbeddedOptions, EmbeddedStore};
use signals_store::follow::{ChangeFeed, FollowedStore};
use signals_store::kept_records::KeptRecords;
use signals_store::redis_cache::{CachedStore, RedisOptions};
use signals_store::scylla::{ScyllaOptions, ScyllaStore};
use signals_store::{InsightsStore, ServingStore, SignalStore, StoreError, TailCache};
use tracing::{info, warn};

use crate::config::{Config, Fsync, KafkaConfig, LogBackend, ScyllaConfig, StoreBackend};

/// The log, the store and the dead-letter sink of one process.
pub struct Backends {
    pub log: Arc<dyn EventLog>,
    /// The store itself: what the speed and batch layers write to.
    pub store: Arc<dyn SignalStore>,
    /// What serving reads: the store, through the Redis cache if one is
    /// configured.
    pub serving: Arc<dyn ServingStore>,
    pub dead_letters: Arc<dyn DeadLetterSink>,
    /// Segment membership and the change feed, where the store keeps them.
    pub insights: Option<Arc<dyn InsightsStore>>,
}

/// What the process does with the log, which decides its Kafka
/// transactional id.
#[derive(Clone, Copy, Debug)]
pub enum Role {
    /// Runs the collector on this address: a stable transactional id,
    /// and the producer is readied (fencing the previous incarnation) at
    /// start-up.
    Collector { listen: SocketAddr },
    /// Appends at most now and then (batch commands): an id of its own.
    Other,
}

/// What start-up is waiting for, for readiness.
#[derive(Debug, Default)]
pub struct Startup {
    waiting: Mutex<Option<String>>,
}

impl Startup {
    /// `None` once nothing is awaited; else what and why.
    pub fn problem(&self) -> Option<String> {
        self.waiting.lock().ok().and_then(|w| w.clone())
    }

    fn set(&self, problem: Option<String>) {
        if let Ok(mut waiting) = self.waiting.lock() {
            *waiting = problem;
        }
    }
}

/// An attempt's failure: worth retrying or not.
enum Failure {
    Transient(anyhow::Error),
    Permanent(anyhow::Error),
}

impl From<LogError> for Failure {
    fn from(error: LogError) -> Self {
        if error.is_retryable() {
            Failure::Transient(error.into())
        } else {
            Failure::Permanent(error.into())
        }
    }
}

/// How often the tail cache reads the speed layer's progress: the embedded
/// store answers from memory; on CQL it is a round trip, and a reading a
/// moment old only leaves the newest entries to be read again.
fn progress_refresh(backend: StoreBackend) -> Duration {
    match backend {
        StoreBackend::Embedded => Duration::ZERO,
        StoreBackend::Scylla => Duration::from_millis(25),
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        if error.is_retryable() {
            Failure::Transient(error.into())
        } else {
            Failure::Permanent(error.into())
        }
    }
}

impl Backends {
    /// The backends of a process that runs no collector.
    pub async fn open(config: &Config) -> anyhow::Result<Backends> {
        Backends::open_as(config, Role::Other, &Startup::default()).await
    }

    /// The backends of a process in `role`, waiting up to
    /// `startup_timeout` for those that are down, reporting in `startup`.
    pub async fn open_as(
        config: &Config,
        role: Role,
        startup: &Startup,
    ) -> anyhow::Result<Backends> {
        let deadline = Instant::now() + config.startup_timeout;
        let log = wait_for("log", "the event log", deadline, startup, || {
            open_log(config, role)
        })
        .await?;
        let log = with_registry(config, log, deadline, startup).await?;
        let (store, insights, feed) = wait_for("store", "the store", deadline, startup, || {
            open_store(config)
        })
        .await?;
        let serving = match config.cache.redis_url.as_str() {
            "" => store.clone() as Arc<dyn ServingStore>,
            // Redis is not waited for: reads go to the store while it is away.
            url => Arc::new(CachedStore::new(
                store.clone(),
                RedisOptions {
                    url: url.to_owned(),
                    ttl: config.cache.ttl,
                    timeout: config.cache.timeout,
                    breaker_failures: config.cache.breaker_failures,
                    breaker_cool_down: config.cache.breaker_cool_down,
                    username: config.cache.redis_username.clone(),
                    password: config.cache.redis_password.clone(),
                    tls_root_ca: match &config.cache.redis_tls_ca {
                        Some(path) => Some(std::fs::read(path).with_context(|| {
                            format!("cache.redis_tls_ca = {}: cannot read", path.display())
                        })?),
                        None => None,
                    },
                    ..RedisOptions::default()
                },
            )?),
        };
        // Records kept decoded in the process, in front of Redis or the CQL
        // store alike (the embedded store keeps its own).
        let serving = match (config.store.backend, config.cache.local_bytes) {
            (StoreBackend::Embedded, _) | (_, 0) => serving,
            (StoreBackend::Scylla, budget) => {
                Arc::new(KeptRecords::new(serving, budget)) as Arc<dyn ServingStore>
            }
        };
        let serving = match (feed, config.store.scylla.follow_every) {
            (Some(feed), every) if !every.is_zero() => {
                Arc::new(FollowedStore::new(serving, feed, every)) as Arc<dyn ServingStore>
            }
            _ => serving,
        };
        // Outermost: tails are kept over whatever the records come through.
        let serving: Arc<dyn ServingStore> = match config.cache.tail_bytes {
            0 => serving,
            budget => Arc::new(TailCache::new(
                serving,
                budget,
                progress_refresh(config.store.backend),
            )),
        };
        let dead_letters: Arc<dyn DeadLetterSink> = match config.log.backend {
            LogBackend::Embedded => Arc::new(DeadLetterFile::new(
                &config.data_dir.join("dead-letters.ndjson"),
            )),
            LogBackend::Kafka => Arc::new(KafkaDeadLetters::connect(&kafka_options(
                &config.log.kafka,
                role,
            ))?),
        };
        startup.set(None);
        Ok(Backends {
            log,
            store,
            serving,
            dead_letters,
            insights,
        })
    }
}

/// Calls `attempt` until it succeeds, backing off while it fails
/// transiently, until `deadline`.
async fn wait_for<T, F, Fut>(
    backend: &'static str,
    what: &str,
    deadline: Instant,
    startup: &Startup,
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let started = Instant::now();
    let mut backoff = Duration::from_millis(250);
    for attempts in 1.. {
        let error = match attempt().await {
            Ok(value) => {
                if attempts > 1 {
                    info!(backend, waited = ?started.elapsed(), "{what} is available");
                }
                return Ok(value);
            }
            Err(Failure::Permanent(error)) => return Err(error),
            Err(Failure::Transient(error)) => error,
        };
        let now = Instant::now();
        if now + backoff > deadline {
            return Err(error.context(format!(
                "{what} is still unavailable after {attempts} attempts in {:.0?} (startup_timeout)",
                started.elapsed()
            )));
        }
        warn!(backend, attempts, retry_in = ?backoff, error = %format!("{error:#}"), "{what} is unavailable; waiting for it");
        metrics::counter!("signals_startup_retries_total", "backend" => backend).increment(1);
        startup.set(Some(format!(
            "waiting for {what} ({attempts} attempts in {:.0?}, giving up in {:.0?}): {error:#}",
            started.elapsed(),
            deadline.saturating_duration_since(now)
        )));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
    unreachable!("the attempts never run out")
}

async fn open_log(config: &Config, role: Role) -> Result<Arc<dyn EventLog>, Failure> {
    match config.log.backend {
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
            let log = EmbeddedLog::open(&dir, options).map_err(|e| {
                Failure::Permanent(anyhow::Error::new(e).context(format!(
                    "cannot open the embedded event log in {}",
                    dir.display()
                )))
            })?;
            Ok(Arc::new(log))
        }
        LogBackend::Kafka => {
            let context = || format!("cannot use the Kafka log at {}", config.log.kafka.brokers);
            let log = KafkaLog::connect(kafka_options(&config.log.kafka, role))
                .await
                .map_err(|e| with_context(e.into(), context()))?;
            if let Role::Collector { .. } = role {
                log.prepare_appends()
                    .await
                    .map_err(|e| with_context(e.into(), context()))?;
            }
            Ok(Arc::new(log))
        }
    }
}

/// The Kafka log framed with the schema registry's ids, when one is configured.
/// Waits for the registry like for the log: a registry that is down at
/// start-up (restarting with Kafka, say) is retried until `deadline`.
async fn with_registry(
    config: &Config,
    log: Arc<dyn EventLog>,
    deadline: Instant,
    startup: &Startup,
) -> anyhow::Result<Arc<dyn EventLog>> {
    let url = &config.log.kafka.schema_registry_url;
    if url.is_empty() || config.log.backend != LogBackend::Kafka {
        return Ok(log);
    }
    let subject = format!("{}-value", config.log.kafka.topic);
    let framed = wait_for("registry", "the schema registry", deadline, startup, || {
        let log = log.clone();
        let subject = subject.clone();
        async move {
            RegistryLog::connect(log, url, &subject, config.log.kafka.timeout)
                .await
                .map_err(|e| {
                    with_context(
                        e.into(),
                        format!("cannot register the log's schema in the schema registry at {url}"),
                    )
                })
        }
    })
    .await?;
    let conflicts = framed.framing().conflicts().await?;
    if !conflicts.is_empty() {
        warn!(?conflicts, "the schema registry gives these ids of schemas/versions to other schemas: records framed with them before the registry was turned on read as dead letters or with the registry's schema");
    }
    info!(
        url,
        subject,
        id = framed.framing().own_id(),
        "schema registered; records are framed with the registry's ids"
    );
    Ok(Arc::new(framed))
}

/// The store, and its insights tables where it keeps them.
/// The store, its insights tables, and the feed of the users its speed
/// writes touched, where the store keeps one.
type Stores = (
    Arc<dyn SignalStore>,
    Option<Arc<dyn InsightsStore>>,
    Option<Arc<dyn ChangeFeed>>,
);

async fn open_store(config: &Config) -> Result<Stores, Failure> {
    match config.store.backend {
        StoreBackend::Embedded => {
            let path = config.data_dir.join("store").join("signals.redb");
            let options = EmbeddedOptions {
                record_cache_bytes: config.cache.local_bytes,
                ..EmbeddedOptions::default()
            };
            let store = EmbeddedStore::open_with(&path, options).map_err(|e| {
                Failure::Permanent(anyhow::Error::new(e).context(format!(
                    "cannot open the embedded store {} (is another signals process using this data dir?)",
                    path.display()
                )))
            })?;
            let store = Arc::new(store);
            Ok((store.clone(), Some(store), None))
        }
        StoreBackend::Scylla => {
            let store = Arc::new(connect_scylla(&config.store.scylla).await?);
            Ok((store.clone(), Some(store.clone()), Some(store)))
        }
    }
}

fn with_context(failure: Failure, context: String) -> Failure {
    match failure {
        Failure::Transient(e) => Failure::Transient(e.context(context)),
        Failure::Permanent(e) => Failure::Permanent(e.context(context)),
    }
}

fn kafka_options(config: &KafkaConfig, role: Role) -> KafkaOptions {
    let transactional_id = match role {
        Role::Collector { .. } if !config.transactional_id.is_empty() => {
            config.transactional_id.clone()
        }
        Role::Collector { listen } => format!("signals-collector-{}-{listen}", hostname()),
        Role::Other => unique_transactional_id("signals-cli"),
    };
    KafkaOptions {
        brokers: config.brokers.clone(),
        topic: config.topic.clone(),
        dead_letter_topic: config.dead_letter_topic.clone(),
        partitions: config.partitions,
        replication_factor: config.replication_factor,
        min_insync_replicas: config.min_insync_replicas,
        // Checked when the configuration loaded.
        retention: humantime::parse_duration(&config.retention).ok(),
        create_topics: config.create_topics,
        timeout: config.timeout,
        session_timeout: config.session_timeout,
        transactional_id,
        security: kafka_security(config),
    }
}

/// The librdkafka properties of `[log.kafka]`'s security keys that are set.
fn kafka_security(config: &KafkaConfig) -> SecurityProperties {
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    [
        ("security.protocol", config.security_protocol.clone()),
        ("sasl.mechanism", config.sasl_mechanism.clone()),
        ("sasl.username", config.sasl_username.clone()),
        ("sasl.password", config.sasl_password.clone()),
        ("ssl.ca.location", path(&config.ssl_ca_location)),
        (
            "ssl.certificate.location",
            path(&config.ssl_certificate_location),
        ),
        ("ssl.key.location", path(&config.ssl_key_location)),
        ("ssl.key.password", config.ssl_key_password.clone()),
    ]
    .into_iter()
    .filter_map(|(key, value)| value.map(|v| (key.to_owned(), v)))
    .collect::<Vec<_>>()
    .into()
}

/// This machine's name (a pod's name on Kubernetes), for ids that must stay
/// the same across restarts of one process and differ between machines.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

async fn connect_scylla(config: &ScyllaConfig) -> Result<ScyllaStore, Failure> {
    let context = || format!("cannot use ScyllaDB/Cassandra at {}", config.nodes);
    let options = scylla_options(config).map_err(Failure::Permanent)?;
    let store = ScyllaStore::connect(options)
        .await
        .map_err(|e| with_context(e.into(), context()))?;
    if config.migrate_on_start {
        // Waited for like an unreachable node, whatever the error: processes
        // started together (compose, a rollout) migrate a new keyspace at the
        // same moment, and until the cluster agrees on the schema the tables
        // another process just created may be missing from this session's
        // view. A lasting failure still stops start-up at `startup_timeout`,
        // with the reason logged at every attempt meanwhile.
        store.migrate().await.map_err(|e| {
            Failure::Transient(
                anyhow::Error::new(e).context(
                    "cannot apply the CQL schema (store.scylla.migrate_on_start)".to_owned(),
                ),
            )
        })?;
    }
    Ok(store)
}

fn scylla_options(config: &ScyllaConfig) -> anyhow::Result<ScyllaOptions> {
    Ok(ScyllaOptions {
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
        credentials: config.username.clone().zip(config.password.clone()),
        tls_ca: match &config.tls_ca {
            Some(path) => Some(std::fs::read(path).with_context(|| {
                format!("store.scylla.tls_ca = {}: cannot read", path.display())
            })?),
            None => None,
        },
        ..ScyllaOptions::default()
    })
}

/// Connects to ScyllaDB/Cassandra, applying the schema when configured to
/// (`signals migrate`: no waiting, an operator is watching).
pub async fn scylla_store(config: &ScyllaConfig) -> anyhow::Result<ScyllaStore> {
    match connect_scylla(config).await {
        Ok(store) => Ok(store),
        Err(Failure::Transient(error) | Failure::Permanent(error)) => Err(error),
    }
}
