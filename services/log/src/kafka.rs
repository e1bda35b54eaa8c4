//! The event log on Apache Kafka.
//!
//! * **Appends** run in one Kafka transaction per call (idempotent,
//!   `acks=all`): a request's records become visible together or not at all,
//!   which is what "nothing half-accepted" needs. Concurrent appends are
//!   serialised on the one transactional producer of the process, which
//!   ends every transaction it begins and recovers from any error by itself
//!   ([`transactions`]).
//! * **Readers** use `isolation.level=read_committed`, so aborted appends
//!   are never seen. Transaction markers occupy offsets, so offsets are not
//!   dense here: readers report their true position ([`LogReader::position`])
//!   past markers, and that position is what progress and lag use.
//! * **The speed layer** consumes as a consumer group. Offsets are committed
//!   to Kafka only after the store write that covers them is durable
//!   (auto-commit and auto offset store are off). After a rebalance the new
//!   owner of a partition resumes from the last committed offset; anything
//!   between that and the store's progress is replayed, and replays are
//!   idempotent (writes are keyed by log position, the event index drops
//!   ids already applied). No record is skipped: offsets are never committed
//!   ahead of the store.
//! * **Dead letters** go to their own topic with the original bytes (no
//!   key) and headers `signals.reason`, `signals.partition`, `signals.offset`.
//! * **Broker restarts** are ridden out: librdkafka reconnects by itself; a
//!   poll error is returned only when no record was read in the same call
//!   (records already taken from the consumer are never dropped), and the
//!   caller polls again after a backoff. A consumer that reports a fatal
//!   error is replaced by a new member of the same group, which resumes from
//!   the committed offsets.

mod dead_letters;
mod reader;
mod transactions;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use tracing::{info, warn};

pub use self::dead_letters::KafkaDeadLetters;
use self::reader::{KafkaReader, Membership};
use self::transactions::Transactions;

use crate::{Append, EventLog, LogError, LogPosition, LogReader, Offset, Partition};

/// Where the log lives on Kafka and how its topics are made.
#[derive(Clone, Debug)]
pub struct KafkaOptions {
    /// `host:port[,host:port]`.
    pub brokers: String,
    pub topic: String,
    pub dead_letter_topic: String,
    /// Partitions and replication of topics this process creates.
    pub partitions: i32,
    pub replication_factor: i32,
    /// `min.insync.replicas` of topics this process creates: with
    /// `acks=all`, an append is refused (503) rather than acknowledged
    /// while fewer replicas are in sync.
    pub min_insync_replicas: i32,
    /// `retention.ms` of created topics; `None` keeps records forever.
    pub retention: Option<Duration>,
    /// Create missing topics at start-up; otherwise a missing topic is an error.
    pub create_topics: bool,
    /// Longest a Kafka call may block before the log counts as unavailable.
    pub timeout: Duration,
    /// How long a silent consumer-group member keeps its partitions.
    pub session_timeout: Duration,
    /// The collector's `transactional.id`. Stable across restarts of one
    /// collector (and different between collectors), so that a restarted
    /// one fences the transaction its previous incarnation left open.
    pub transactional_id: String,
    /// librdkafka security properties (`security.protocol`, `sasl.*`,
    /// `ssl.*`), set on every client this log makes.
    pub security: SecurityProperties,
}

/// librdkafka properties that may hold secrets: `Debug` shows their keys,
/// never their values.
#[derive(Clone, Default)]
pub struct SecurityProperties(pub Vec<(String, String)>);

impl From<Vec<(String, String)>> for SecurityProperties {
    fn from(properties: Vec<(String, String)>) -> Self {
        SecurityProperties(properties)
    }
}

impl std::fmt::Debug for SecurityProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(key, _)| key))
            .finish()
    }
}

impl Default for KafkaOptions {
    fn default() -> Self {
        KafkaOptions {
            brokers: "127.0.0.1:9092".into(),
            topic: "signals.events".into(),
            dead_letter_topic: "signals.events.dlq".into(),
            partitions: 6,
            replication_factor: 1,
            min_insync_replicas: 1,
            retention: None,
            create_topics: true,
            timeout: Duration::from_secs(10),
            session_timeout: Duration::from_secs(10),
            transactional_id: unique_transactional_id("signals"),
            security: SecurityProperties::default(),
        }
    }
}

/// `{prefix}-{pid}-{nanoseconds}`: an id no other process uses, for
/// processes with no earlier incarnation to fence (one-shot commands).
pub fn unique_transactional_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

/// Longest a readiness probe waits for Kafka's metadata.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

fn unavailable(what: &str, error: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("kafka: {what}: {error}"))
}

fn blocking_failed(error: tokio::task::JoinError) -> LogError {
    LogError::Unavailable(format!("kafka: blocking call failed: {error}"))
}

/// Runs `call` on the blocking pool and gives up waiting for it after
/// `limit`. After a broker pause a librdkafka call can fail to return for
/// minutes (RELIABILITY.md, finding 10); its caller must go on, fail, and
/// replace the consumer as failing calls do. The call itself stays in its
/// thread until it returns.
async fn within<T: Send + 'static>(
    limit: Duration,
    what: &'static str,
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LogError> {
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(call)).await {
        Ok(joined) => joined.map_err(blocking_failed),
        Err(_) => {
            warn!(
                call = what,
                ?limit,
                "a kafka call has not returned; going on without it"
            );
            metrics::counter!("signals_kafka_calls_abandoned_total", "call" => what).increment(1);
            Err(LogError::Unavailable(format!(
                "kafka: {what} has not returned within {limit:?}"
            )))
        }
    }
}

fn base_config(options: &KafkaOptions) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &options.brokers)
        .set("socket.timeout.ms", options.timeout.as_millis().to_string())
        .set("client.id", "signals");
    for (key, value) in &options.security.0 {
        config.set(key, value);
    }
    config
}

/// The event log on a Kafka topic.
pub struct KafkaLog {
    options: KafkaOptions,
    partitions: u32,
    transactions: Transactions,
    /// Metadata and watermark queries; never joins a group.
    probe: Probe,
}

/// The client of metadata and watermark queries, replaced after a failure
/// (at most every [`Probe::RENEW_AFTER`]): a client whose connection went
/// bad while the broker was paused or cut off must not keep readiness and
/// freshness failing after the broker is back.
struct Probe {
    options: KafkaOptions,
    current: std::sync::Mutex<(Arc<BaseConsumer>, std::time::Instant)>,
}

impl Probe {
    const RENEW_AFTER: Duration = Duration::from_secs(10);

    fn new(options: &KafkaOptions) -> Result<Probe, LogError> {
        Ok(Probe {
            options: options.clone(),
            current: std::sync::Mutex::new((
                Arc::new(probe_client(options)?),
                std::time::Instant::now(),
            )),
        })
    }

    fn get(&self) -> Arc<BaseConsumer> {
        match self.current.lock() {
            Ok(current) => current.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
    }

    /// Notes a failed query: a client older than `RENEW_AFTER` is replaced.
    fn failed(&self) {
        let Ok(mut current) = self.current.lock() else {
            return;
        };
        if current.1.elapsed() < Self::RENEW_AFTER {
            return;
        }
        match probe_client(&self.options) {
            Ok(fresh) => {
                let old =
                    std::mem::replace(&mut *current, (Arc::new(fresh), std::time::Instant::now()));
                // Dropping a client may block briefly.
                std::thread::spawn(move || drop(old));
            }
            Err(error) => warn!(%error, "cannot renew the kafka metadata client"),
        }
    }
}

/// A consumer that never joins its group, for metadata and watermarks.
fn probe_client(options: &KafkaOptions) -> Result<BaseConsumer, LogError> {
    base_config(options)
        .set("group.id", "signals-probe")
        .set("enable.auto.commit", "false")
        // Watermarks as the high watermark, not the last stable offset:
        // an append that returned is counted at once, even while its
        // transaction's commit marker is still being written.
        .set("isolation.level", "read_uncommitted")
        .create()
        .map_err(|e| unavailable("cannot create a consumer", e))
}

impl KafkaLog {
    /// Connects and creates or checks the topics. The transactional
    /// producer is created at the first append, or by
    /// [`KafkaLog::prepare_appends`].
    pub async fn connect(options: KafkaOptions) -> Result<KafkaLog, LogError> {
        if options.create_topics {
            ensure_topics(&options).await?;
        }
        let probe = Probe::new(&options)?;
        let partitions = partition_count(&probe.get(), &options, options.timeout).await?;
        info!(brokers = %options.brokers, topic = %options.topic, partitions, "connected to kafka");
        Ok(KafkaLog {
            transactions: Transactions::new(options.clone()),
            options,
            partitions,
            probe,
        })
    }

    /// Creates the transactional producer now: a collector calls this at
    /// start-up so that its previous incarnation's open transaction (same
    /// transactional id) is fenced and aborted at once.
    pub async fn prepare_appends(&self) -> Result<(), LogError> {
        self.transactions.prepare().await
    }
}

/// A `read_committed` consumer of `group` with offsets under our control.
fn consumer(options: &KafkaOptions, group: &str) -> Result<BaseConsumer, LogError> {
    base_config(options)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        // A member that died (SIGKILL) holds its partitions until this
        // expires; librdkafka's 45 s default stalls a restarted group.
        .set(
            "session.timeout.ms",
            options.session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (options.session_timeout.as_millis() / 3).max(1).to_string(),
        )
        .create()
        .map_err(|e| unavailable("cannot create a consumer", e))
}

async fn ensure_topics(options: &KafkaOptions) -> Result<(), LogError> {
    let admin: AdminClient<DefaultClientContext> = base_config(options)
        .create()
        .map_err(|e| unavailable("cannot create an admin client", e))?;
    let retention = options
        .retention
        .map_or_else(|| "-1".to_owned(), |r| r.as_millis().to_string());
    let min_insync = options.min_insync_replicas.to_string();
    let topics: Vec<NewTopic<'_>> = [&options.topic, &options.dead_letter_topic]
        .into_iter()
        .map(|name| {
            NewTopic::new(
                name,
                options.partitions,
                TopicReplication::Fixed(options.replication_factor),
            )
            .set("retention.ms", &retention)
            .set("min.insync.replicas", &min_insync)
        })
        .collect();
    let results = admin
        .create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(options.timeout)),
        )
        .await
        .map_err(|e| unavailable("cannot create topics", e))?;
    for result in results {
        match result {
            Ok(topic) => info!(%topic, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) if is_configuration_error(code) => {
                return Err(LogError::Invalid(format!(
                    "kafka: cannot create topic {topic}: {code} (check log.kafka.partitions, replication_factor, min_insync_replicas, retention)"
                )))
            }
            Err((topic, code)) => {
                return Err(unavailable(&format!("cannot create topic {topic}"), code))
            }
        }
    }
    Ok(())
}

/// Whether a topic creation error is the configuration's fault (retrying
/// will not help) rather than the cluster's state (brokers starting, no
/// controller yet, timeouts).
fn is_configuration_error(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::InvalidPartitions
            | RDKafkaErrorCode::InvalidReplicationFactor
            | RDKafkaErrorCode::InvalidReplicaAssignment
            | RDKafkaErrorCode::InvalidConfig
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::InvalidRequest
    )
}

/// The topic's partition count. A topic just created (by this process or a
/// sibling starting beside it) may be missing from a broker's metadata, or
/// have no leader yet, for a moment: that is waited out within `timeout`
/// before the topic is called missing.
async fn partition_count(
    probe: &Arc<BaseConsumer>,
    options: &KafkaOptions,
    timeout: Duration,
) -> Result<u32, LogError> {
    let probe = probe.clone();
    let topic = options.topic.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            let metadata = probe
                .fetch_metadata(Some(&topic), remaining.max(Duration::from_millis(100)))
                .map_err(|e| unavailable("cannot read metadata", e))?;
            let count = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .filter(|t| t.error().is_none())
                .map_or(0, |t| t.partitions().len());
            if count > 0 {
                return Ok(count as u32);
            }
            if std::time::Instant::now() + METADATA_RETRY >= deadline {
                return Err(LogError::Invalid(format!(
                    "kafka: topic {topic} does not exist (set log.kafka.create_topics = true or create it)"
                )));
            }
            std::thread::sleep(METADATA_RETRY);
        }
    })
    .await
    .map_err(blocking_failed)?
}

/// How often a topic missing from the metadata is looked for again.
const METADATA_RETRY: Duration = Duration::from_millis(200);

#[async_trait]
impl EventLog for KafkaLog {
    async fn append(&self, records: Vec<Append>) -> Result<Vec<(Partition, Offset)>, LogError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        self.transactions.append(records).await
    }

    async fn end(&self) -> Result<LogPosition, LogError> {
        let probe = self.probe.get();
        let topic = self.options.topic.clone();
        let timeout = self.options.timeout;
        let partitions = self.partitions;
        // One deadline for every partition's request, and the call given up
        // past it: serving's freshness readings wait on this one at a time
        // (finding 10: a librdkafka call may not return for minutes).
        let end = within(timeout + CHECK_TIMEOUT, "read the log's end", move || {
            let deadline = std::time::Instant::now() + timeout;
            (0..partitions)
                .map(|p| {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    probe
                        .fetch_watermarks(&topic, p as i32, left.max(Duration::from_millis(1)))
                        .map(|(_, high)| (p, high.max(0) as Offset))
                        .map_err(|e| unavailable("cannot read watermarks", e))
                })
                .collect::<Result<LogPosition, LogError>>()
        })
        .await
        .and_then(|end| end);
        if end.is_err() {
            self.probe.failed();
        }
        end
    }

    async fn read_from(&self, from: &LogPosition) -> Result<Box<dyn LogReader>, LogError> {
        let membership = Membership::Assigned {
            partitions: self.partitions,
        };
        let consumer = membership.join(&self.options, from)?;
        Ok(Box::new(KafkaReader::new(
            consumer,
            self.options.clone(),
            from.clone(),
            membership,
        )))
    }

    async fn subscribe(
        &self,
        group: &str,
        checkpoint: &LogPosition,
    ) -> Result<Box<dyn LogReader>, LogError> {
        let membership = Membership::Grouped {
            group: group.to_owned(),
        };
        let consumer = membership.join(&self.options, checkpoint)?;
        Ok(Box::new(KafkaReader::new(
            consumer,
            self.options.clone(),
            checkpoint.clone(),
            membership,
        )))
    }

    async fn check(&self) -> Result<(), LogError> {
        let timeout = self.options.timeout.min(CHECK_TIMEOUT);
        if let Err(error) = partition_count(&self.probe.get(), &self.options, timeout).await {
            self.probe.failed();
            return Err(error);
        }
        match self.transactions.problem() {
            Some(problem) => Err(LogError::Unavailable(format!("kafka: {problem}"))),
            None => Ok(()),
        }
    }
}
