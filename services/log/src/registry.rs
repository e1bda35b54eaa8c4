//! Any [`EventLog`] whose records are framed with a schema registry's ids
//! (feature `registry`; see `signals_schemas::registry` for the
//! translation). Appends leave with the registry's id of the current schema;
//! every record read comes back framed with the ids of `schemas/versions`,
//! so the rest of the platform (speed, batch, dead letters) never sees a
//! registry id.
//!
//! Nothing is skipped when the registry is away: a batch whose translation
//! fails (registry unreachable) is kept and translated again on the next
//! call, and the reader's position does not pass it until it is returned.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use signals_core::{LogPosition, Offset, Partition};
use signals_schemas::registry::{RegistryClient, RegistryError, RegistryFraming};

use crate::{Append, EventLog, LogEntry, LogError, LogReader};

/// `inner`, framed with the registry's ids.
pub struct RegistryLog {
    inner: Arc<dyn EventLog>,
    framing: Arc<RegistryFraming>,
}

impl RegistryLog {
    /// Registers the current schema under `subject` (`<topic>-value`) in the
    /// registry at `url` and wraps `inner`.
    pub async fn connect(
        inner: Arc<dyn EventLog>,
        url: &str,
        subject: &str,
        timeout: Duration,
    ) -> Result<RegistryLog, LogError> {
        let client = RegistryClient::new(url, timeout).map_err(log_error)?;
        let framing = RegistryFraming::connect(client, subject)
            .await
            .map_err(log_error)?;
        Ok(RegistryLog {
            inner,
            framing: Arc::new(framing),
        })
    }

    /// The translation in use (the registry's id of the current schema, conflicts).
    pub fn framing(&self) -> &RegistryFraming {
        &self.framing
    }
}

fn log_error(error: RegistryError) -> LogError {
    if error.is_retryable() {
        LogError::Unavailable(error.to_string())
    } else {
        LogError::Invalid(error.to_string())
    }
}

#[async_trait]
impl EventLog for RegistryLog {
    async fn append(&self, mut records: Vec<Append>) -> Result<Vec<(Partition, Offset)>, LogError> {
        for record in &mut records {
            self.framing.outgoing(&mut record.bytes);
        }
        self.inner.append(records).await
    }

    async fn end(&self) -> Result<LogPosition, LogError> {
        self.inner.end().await
    }

    async fn read_from(&self, from: &LogPosition) -> Result<Box<dyn LogReader>, LogError> {
        let inner = self.inner.read_from(from).await?;
        Ok(Box::new(RegistryReader::new(inner, self.framing.clone())))
    }

    async fn subscribe(
        &self,
        group: &str,
        checkpoint: &LogPosition,
    ) -> Result<Box<dyn LogReader>, LogError> {
        let inner = self.inner.subscribe(group, checkpoint).await?;
        Ok(Box::new(RegistryReader::new(inner, self.framing.clone())))
    }

    async fn check(&self) -> Result<(), LogError> {
        self.inner.check().await
    }
}

struct RegistryReader {
    inner: Box<dyn LogReader>,
    framing: Arc<RegistryFraming>,
    /// Read from `inner` but not yet returned (their translation failed).
    pending: Vec<LogEntry>,
}

impl RegistryReader {
    fn new(inner: Box<dyn LogReader>, framing: Arc<RegistryFraming>) -> RegistryReader {
        RegistryReader {
            inner,
            framing,
            pending: Vec::new(),
        }
    }
}

#[async_trait]
impl LogReader for RegistryReader {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<LogEntry>, LogError> {
        if self.pending.is_empty() {
            self.pending = self.inner.next_batch(max, wait).await?;
        }
        let mut translated = Vec::with_capacity(self.pending.len());
        for entry in &self.pending {
            let bytes = self
                .framing
                .incoming(entry.bytes.clone())
                .await
                .map_err(log_error)?;
            translated.push(LogEntry {
                partition: entry.partition,
                offset: entry.offset,
                bytes,
            });
        }
        self.pending.clear();
        Ok(translated)
    }

    fn position(&self) -> LogPosition {
        let position = self.inner.position();
        if self.pending.is_empty() {
            return position;
        }
        // Not past a record that was read but not returned yet.
        let mut first_pending: BTreeMap<Partition, Offset> = BTreeMap::new();
        for entry in &self.pending {
            let first = first_pending.entry(entry.partition).or_insert(entry.offset);
            *first = (*first).min(entry.offset);
        }
        let mut held = LogPosition::new();
        for (partition, next) in position.iter() {
            let next = first_pending
                .get(&partition)
                .map_or(next, |&first| next.min(first));
            held.set(partition, next);
        }
        held
    }

    async fn commit(&mut self, position: &LogPosition) -> Result<(), LogError> {
        self.inner.commit(position).await
    }
}
