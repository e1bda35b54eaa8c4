//! The feed on Kafka: every transition produced to `signals.segments`
//! (schema `schemas/segment_change.avsc`, single-object Avro, keyed by user
//! id), once.
//!
//! Entries go out in cursor order, one Kafka transaction per batch, from a
//! transactional producer with a stable id (a restarted worker fences its
//! previous incarnation). Where to resume is read back from the topic with
//! `read_committed`: the greatest cursor among the last committed records
//! of each partition is the last batch that committed, so a crash before
//! or after a commit neither repeats nor skips an entry. The topic has one
//! partition by default, so subscribers see the feed in cursor order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use signals_schemas::segment_change::{self, SegmentChange};
use signals_store::insights::{Change, FeedEntry};
use tracing::info;

use crate::{ChangeSink, InsightsError};

/// How far back from each partition's end the resume point is searched.
const LOOK_BACK: i64 = 1_000;

/// Where and how to produce the feed.
#[derive(Clone, Debug)]
pub struct KafkaSinkOptions {
    pub brokers: String,
    /// `signals.segments` by contract.
    pub topic: String,
    /// Stable across restarts of one worker.
    pub transactional_id: String,
    pub timeout: Duration,
    /// Replication of the topic when this sink creates it.
    pub replication_factor: i32,
}

/// The [`ChangeSink`] on a Kafka topic.
pub struct KafkaChangeSink {
    options: KafkaSinkOptions,
    producer: Arc<ThreadedProducer<DefaultProducerContext>>,
}

fn sink_error(what: &str) -> impl Fn(rdkafka::error::KafkaError) -> InsightsError + '_ {
    move |e| InsightsError::Sink(format!("kafka: cannot {what}: {e}"))
}

impl KafkaChangeSink {
    /// Creates the topic if needed and a transactional producer.
    pub async fn connect(options: KafkaSinkOptions) -> Result<KafkaChangeSink, InsightsError> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &options.brokers)
            .create()
            .map_err(sink_error("create an admin client"))?;
        let topic = NewTopic::new(
            &options.topic,
            1,
            TopicReplication::Fixed(options.replication_factor),
        );
        let created = admin
            .create_topics(
                [&topic],
                &AdminOptions::new().operation_timeout(Some(options.timeout)),
            )
            .await
            .map_err(sink_error("create the segments topic"))?;
        for result in created {
            match result {
                Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(InsightsError::Sink(format!(
                        "kafka: cannot create topic {topic}: {code}"
                    )))
                }
            }
        }
        let opts = options.clone();
        let producer = tokio::task::spawn_blocking(move || {
            let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
                .set("bootstrap.servers", &opts.brokers)
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("transactional.id", &opts.transactional_id)
                .set("message.timeout.ms", opts.timeout.as_millis().to_string())
                .create()
                .map_err(sink_error("create a producer"))?;
            producer
                .init_transactions(opts.timeout)
                .map_err(sink_error("initialise transactions"))?;
            Ok::<_, InsightsError>(producer)
        })
        .await
        .map_err(|e| InsightsError::Sink(format!("kafka: producer task failed: {e}")))??;
        info!(topic = %options.topic, "segment feed producer ready");
        Ok(KafkaChangeSink {
            options,
            producer: Arc::new(producer),
        })
    }

    /// The greatest cursor committed to the topic (0: none).
    fn last_committed(options: &KafkaSinkOptions) -> Result<u64, InsightsError> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &options.brokers)
            .set("group.id", format!("{}-resume", options.transactional_id))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(sink_error("create a consumer"))?;
        let metadata = consumer
            .fetch_metadata(Some(&options.topic), options.timeout)
            .map_err(sink_error("read the topic's metadata"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut last = 0;
        for partition in partitions {
            let (low, high) = consumer
                .fetch_watermarks(&options.topic, partition, options.timeout)
                .map_err(sink_error("read watermarks"))?;
            if high <= low {
                continue;
            }
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset(
                    &options.topic,
                    partition,
                    Offset::Offset(low.max(high - LOOK_BACK)),
                )
                .map_err(sink_error("build an assignment"))?;
            consumer
                .assign(&assignment)
                .map_err(sink_error("assign a partition"))?;
            let deadline = Instant::now() + options.timeout;
            loop {
                let position = consumer.position().ok().and_then(|list| {
                    list.find_partition(&options.topic, partition)
                        .and_then(|p| p.offset().to_raw())
                });
                // The end is past the last record (a commit marker, maybe).
                if position.is_some_and(|p| p >= high - 1) || Instant::now() > deadline {
                    break;
                }
                match consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(message)) => {
                        if let Some(payload) = message.payload() {
                            let change = segment_change::decode(payload).map_err(|e| {
                                InsightsError::Sink(format!(
                                    "kafka: {} partition {partition} offset {}: {e}",
                                    options.topic,
                                    message.offset()
                                ))
                            })?;
                            last = last.max(change.cursor);
                        }
                        if message.offset() >= high - 1 {
                            break;
                        }
                    }
                    Some(Err(e)) => return Err(sink_error("read the topic")(e)),
                    None => {}
                }
            }
        }
        Ok(last)
    }
}

#[async_trait]
impl ChangeSink for KafkaChangeSink {
    async fn published_until(&self) -> Result<u64, InsightsError> {
        let options = self.options.clone();
        tokio::task::spawn_blocking(move || KafkaChangeSink::last_committed(&options))
            .await
            .map_err(|e| InsightsError::Sink(format!("kafka: resume task failed: {e}")))?
    }

    async fn publish(&self, entries: &[FeedEntry]) -> Result<(), InsightsError> {
        let records = entries
            .iter()
            .map(|entry| {
                let t = &entry.transition;
                let bytes = segment_change::encode(&SegmentChange {
                    user_id: t.user_id.clone(),
                    segment: t.segment.clone(),
                    entered: t.change == Change::Entered,
                    at: t.at,
                    cursor: entry.cursor,
                })
                .map_err(|e| InsightsError::Sink(e.to_string()))?;
                Ok((t.user_id.clone(), bytes))
            })
            .collect::<Result<Vec<_>, InsightsError>>()?;
        let producer = self.producer.clone();
        let topic = self.options.topic.clone();
        let timeout = self.options.timeout;
        tokio::task::spawn_blocking(move || {
            producer
                .begin_transaction()
                .map_err(sink_error("begin a transaction"))?;
            for (key, payload) in &records {
                if let Err((e, _)) = producer.send(BaseRecord::to(&topic).key(key).payload(payload))
                {
                    let _ = producer.abort_transaction(timeout);
                    return Err(sink_error("produce a segment change")(e));
                }
            }
            producer.commit_transaction(timeout).map_err(|e| {
                let _ = producer.abort_transaction(timeout);
                sink_error("commit a transaction")(e)
            })
        })
        .await
        .map_err(|e| InsightsError::Sink(format!("kafka: publish task failed: {e}")))?
    }
}
