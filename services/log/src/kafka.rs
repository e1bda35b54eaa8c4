//! The event log on Apache Kafka.
//!
//! * **Appends** run in one Kafka transaction per call (idempotent,
//!   `acks=all`): a request's records become visible together or not at all,
//!   which is what "nothing half-accepted" needs. Concurrent appends are
//!   serialised on the one transactional producer of the process.
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

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::{
    Append, DeadLetter, DeadLetterSink, EventLog, LogEntry, LogError, LogPosition, LogReader,
    Offset, Partition,
};

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
    /// `retention.ms` of created topics; `None` keeps records forever.
    pub retention: Option<Duration>,
    /// Create missing topics at start-up; otherwise a missing topic is an error.
    pub create_topics: bool,
    /// Longest a Kafka call may block before the log counts as unavailable.
    pub timeout: Duration,
    /// How long a silent consumer-group member keeps its partitions.
    pub session_timeout: Duration,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        KafkaOptions {
            brokers: "127.0.0.1:9092".into(),
            topic: "signals.events".into(),
            dead_letter_topic: "signals.events.dlq".into(),
            partitions: 6,
            replication_factor: 1,
            retention: None,
            create_topics: true,
            timeout: Duration::from_secs(10),
            session_timeout: Duration::from_secs(10),
        }
    }
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(format!("kafka: {what}: {error}"))
}

fn blocking_failed(error: tokio::task::JoinError) -> LogError {
    LogError::Unavailable(format!("kafka: blocking call failed: {error}"))
}

fn base_config(options: &KafkaOptions) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &options.brokers)
        .set("socket.timeout.ms", options.timeout.as_millis().to_string())
        .set("client.id", "signals");
    config
}

/// The event log on a Kafka topic.
pub struct KafkaLog {
    options: KafkaOptions,
    partitions: u32,
    producer: Mutex<FutureProducer>,
    /// Metadata and watermark queries; never joins a group.
    probe: Arc<BaseConsumer>,
}

impl KafkaLog {
    /// Connects, creates or checks the topics, and readies a transactional producer.
    pub async fn connect(options: KafkaOptions) -> Result<KafkaLog, LogError> {
        if options.create_topics {
            ensure_topics(&options).await?;
        }
        let probe: BaseConsumer = base_config(&options)
            .set("group.id", "signals-probe")
            .set("enable.auto.commit", "false")
            // Watermarks as the high watermark, not the last stable offset:
            // an append that returned is counted at once, even while its
            // transaction's commit marker is still being written.
            .set("isolation.level", "read_uncommitted")
            .create()
            .map_err(|e| unavailable("cannot create a consumer", e))?;
        let probe = Arc::new(probe);
        let partitions = partition_count(&probe, &options).await?;
        let producer = transactional_producer(&options).await?;
        info!(brokers = %options.brokers, topic = %options.topic, partitions, "connected to kafka");
        Ok(KafkaLog {
            options,
            partitions,
            producer: Mutex::new(producer),
            probe,
        })
    }

    fn consumer(&self, group: &str) -> Result<BaseConsumer, LogError> {
        base_config(&self.options)
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
                self.options.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (self.options.session_timeout.as_millis() / 3)
                    .max(1)
                    .to_string(),
            )
            .create()
            .map_err(|e| unavailable("cannot create a consumer", e))
    }
}

async fn ensure_topics(options: &KafkaOptions) -> Result<(), LogError> {
    let admin: AdminClient<DefaultClientContext> = base_config(options)
        .create()
        .map_err(|e| unavailable("cannot create an admin client", e))?;
    let retention = options
        .retention
        .map_or_else(|| "-1".to_owned(), |r| r.as_millis().to_string());
    let topics: Vec<NewTopic<'_>> = [&options.topic, &options.dead_letter_topic]
        .into_iter()
        .map(|name| {
            NewTopic::new(
                name,
                options.partitions,
                TopicReplication::Fixed(options.replication_factor),
            )
            .set("retention.ms", &retention)
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
            Err((topic, code)) => {
                return Err(LogError::Invalid(format!(
                    "kafka: cannot create topic {topic}: {code}"
                )))
            }
        }
    }
    Ok(())
}

async fn partition_count(
    probe: &Arc<BaseConsumer>,
    options: &KafkaOptions,
) -> Result<u32, LogError> {
    let probe = probe.clone();
    let topic = options.topic.clone();
    let timeout = options.timeout;
    tokio::task::spawn_blocking(move || {
        let metadata = probe
            .fetch_metadata(Some(&topic), timeout)
            .map_err(|e| unavailable("cannot read metadata", e))?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if count == 0 {
            return Err(LogError::Invalid(format!(
                "kafka: topic {topic} does not exist (set log.kafka.create_topics = true or create it)"
            )));
        }
        Ok(count as u32)
    })
    .await
    .map_err(blocking_failed)?
}

async fn transactional_producer(options: &KafkaOptions) -> Result<FutureProducer, LogError> {
    // One transactional id per process: collectors are stateless, so there
    // is no earlier incarnation to fence.
    let id = format!(
        "signals-collector-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let producer: FutureProducer = base_config(options)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("transactional.id", &id)
        .set("linger.ms", "1")
        // Same partition for a key as Java clients and Kafka Streams.
        .set("partitioner", "murmur2_random")
        .set(
            "message.timeout.ms",
            options.timeout.as_millis().to_string(),
        )
        .create()
        .map_err(|e| unavailable("cannot create a producer", e))?;
    let timeout = options.timeout;
    tokio::task::spawn_blocking(move || {
        producer
            .init_transactions(timeout)
            .map(|()| producer)
            .map_err(|e| unavailable("cannot initialise transactions", e))
    })
    .await
    .map_err(blocking_failed)?
}

/// Runs a blocking producer call off the async threads.
async fn on_producer<T: Send + 'static>(
    producer: &FutureProducer,
    call: impl FnOnce(&FutureProducer) -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || call(&producer))
        .await
        .map_err(|_| KafkaError::Canceled)?
}

#[async_trait]
impl EventLog for KafkaLog {
    async fn append(&self, records: Vec<Append>) -> Result<Vec<(Partition, Offset)>, LogError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut producer = self.producer.lock().await;
        let timeout = self.options.timeout;
        on_producer(&producer, |p| p.begin_transaction())
            .await
            .map_err(|e| unavailable("cannot begin a transaction", e))?;
        let sends = records.iter().map(|r| {
            producer.send(
                FutureRecord::to(&self.options.topic)
                    .key(&r.key)
                    .payload(&r.bytes),
                timeout,
            )
        });
        let deliveries = futures::future::join_all(sends).await;
        let mut positions = Vec::with_capacity(deliveries.len());
        let mut failure = None;
        for delivery in deliveries {
            match delivery {
                Ok(d) => positions.push((d.partition as Partition, d.offset as Offset)),
                Err((error, _)) => failure = Some(error),
            }
        }
        let outcome = match failure {
            None => on_producer(&producer, move |p| p.commit_transaction(timeout)).await,
            Some(error) => Err(error),
        };
        if let Err(error) = outcome {
            warn!(%error, "append failed; aborting its transaction");
            if on_producer(&producer, move |p| p.abort_transaction(timeout))
                .await
                .is_err()
            {
                // A producer in a fatal state cannot abort: replace it.
                *producer = transactional_producer(&self.options).await?;
            }
            return Err(unavailable("append not committed", error));
        }
        Ok(positions)
    }

    async fn end(&self) -> Result<LogPosition, LogError> {
        let probe = self.probe.clone();
        let topic = self.options.topic.clone();
        let timeout = self.options.timeout;
        let partitions = self.partitions;
        tokio::task::spawn_blocking(move || {
            (0..partitions)
                .map(|p| {
                    probe
                        .fetch_watermarks(&topic, p as i32, timeout)
                        .map(|(_, high)| (p, high.max(0) as Offset))
                        .map_err(|e| unavailable("cannot read watermarks", e))
                })
                .collect()
        })
        .await
        .map_err(blocking_failed)?
    }

    async fn read_from(&self, from: &LogPosition) -> Result<Box<dyn LogReader>, LogError> {
        let consumer = self.consumer("signals-reader")?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..self.partitions {
            assignment
                .add_partition_offset(
                    &self.options.topic,
                    p as i32,
                    KafkaOffset::Offset(from.next(p) as i64),
                )
                .map_err(|e| unavailable("cannot build an assignment", e))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| unavailable("cannot assign partitions", e))?;
        Ok(Box::new(KafkaReader::new(
            consumer,
            self.options.clone(),
            from.clone(),
            false,
        )))
    }

    async fn subscribe(
        &self,
        group: &str,
        checkpoint: &LogPosition,
    ) -> Result<Box<dyn LogReader>, LogError> {
        let consumer = self.consumer(group)?;
        consumer
            .subscribe(&[&self.options.topic])
            .map_err(|e| unavailable("cannot subscribe", e))?;
        Ok(Box::new(KafkaReader::new(
            consumer,
            self.options.clone(),
            checkpoint.clone(),
            true,
        )))
    }

    async fn check(&self) -> Result<(), LogError> {
        partition_count(&self.probe, &self.options)
            .await
            .map(|_| ())
    }
}

/// A reader over a Kafka consumer; polling happens on a blocking thread.
struct KafkaReader {
    consumer: Arc<BaseConsumer>,
    options: KafkaOptions,
    position: LogPosition,
    grouped: bool,
}

impl KafkaReader {
    fn new(
        consumer: BaseConsumer,
        options: KafkaOptions,
        position: LogPosition,
        grouped: bool,
    ) -> KafkaReader {
        KafkaReader {
            consumer: Arc::new(consumer),
            options,
            position,
            grouped,
        }
    }
}

#[async_trait]
impl LogReader for KafkaReader {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<LogEntry>, LogError> {
        let consumer = self.consumer.clone();
        let topic = self.options.topic.clone();
        let (entries, positions) = tokio::task::spawn_blocking(move || -> Result<_, LogError> {
            let mut entries = Vec::new();
            let mut timeout = wait;
            while entries.len() < max {
                match consumer.poll(timeout) {
                    None => break,
                    Some(Err(error)) => return Err(unavailable("poll failed", error)),
                    Some(Ok(message)) => entries.push(LogEntry {
                        partition: message.partition() as Partition,
                        offset: message.offset() as Offset,
                        bytes: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    }),
                }
                timeout = Duration::ZERO;
            }
            // Positions move past transaction markers too.
            let mut positions = Vec::new();
            if let Ok(assigned) = consumer.position() {
                for element in assigned.elements_for_topic(&topic) {
                    if let KafkaOffset::Offset(next) = element.offset() {
                        positions.push((element.partition() as Partition, next.max(0) as Offset));
                    }
                }
            }
            Ok((entries, positions))
        })
        .await
        .map_err(blocking_failed)??;
        for entry in &entries {
            self.position.advance(entry.partition, entry.offset + 1);
        }
        for (partition, next) in positions {
            self.position.advance(partition, next);
        }
        Ok(entries)
    }

    fn position(&self) -> LogPosition {
        self.position.clone()
    }

    async fn commit(&mut self, position: &LogPosition) -> Result<(), LogError> {
        if !self.grouped {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        let topic = self.options.topic.clone();
        let position = position.clone();
        tokio::task::spawn_blocking(move || {
            let assigned = consumer.assignment().map_err(|e| unavailable("cannot read the assignment", e))?;
            let mut offsets = TopicPartitionList::new();
            for element in assigned.elements_for_topic(&topic) {
                let partition = element.partition() as Partition;
                if position.next(partition) > 0 {
                    offsets
                        .add_partition_offset(&topic, element.partition(), KafkaOffset::Offset(position.next(partition) as i64))
                        .map_err(|e| unavailable("cannot build offsets", e))?;
                }
            }
            if offsets.count() == 0 {
                return Ok(());
            }
            match consumer.commit(&offsets, CommitMode::Sync) {
                Ok(()) => Ok(()),
                // Lost the partitions in a rebalance: the new owner replays
                // from the last commit, idempotently.
                Err(error) => {
                    warn!(%error, "offset commit failed; the next owner replays from the previous commit");
                    Ok(())
                }
            }
        })
        .await
        .map_err(blocking_failed)?
    }
}

/// Dead letters on their own Kafka topic.
pub struct KafkaDeadLetters {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl KafkaDeadLetters {
    pub fn connect(options: &KafkaOptions) -> Result<KafkaDeadLetters, LogError> {
        let producer: FutureProducer = base_config(options)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .map_err(|e| unavailable("cannot create a producer", e))?;
        Ok(KafkaDeadLetters {
            producer,
            topic: options.dead_letter_topic.clone(),
            timeout: options.timeout,
        })
    }
}

#[async_trait]
impl DeadLetterSink for KafkaDeadLetters {
    async fn send(&self, letters: Vec<DeadLetter>) -> Result<(), LogError> {
        let sends = letters.iter().map(|letter| {
            let partition = letter.partition.to_string();
            let offset = letter.offset.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "signals.reason",
                    value: Some(letter.reason.as_bytes()),
                })
                .insert(Header {
                    key: "signals.partition",
                    value: Some(partition.as_bytes()),
                })
                .insert(Header {
                    key: "signals.offset",
                    value: Some(offset.as_bytes()),
                });
            let record: FutureRecord<'_, [u8], Vec<u8>> = FutureRecord::to(&self.topic)
                .payload(&letter.bytes)
                .headers(headers);
            self.producer.send(record, self.timeout)
        });
        for delivery in futures::future::join_all(sends).await {
            delivery.map_err(|(error, _)| unavailable("dead letter not delivered", error))?;
        }
        Ok(())
    }
}
