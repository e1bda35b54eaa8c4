//! Dead letters on their own Kafka topic, with the original bytes and
//! headers that say why and where they came from.

use std::time::Duration;

use async_trait::async_trait;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{base_config, unavailable, KafkaOptions};
use crate::{DeadLetter, DeadLetterSink, LogError};

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
