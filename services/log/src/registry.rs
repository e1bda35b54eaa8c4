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

    fn recycle(&mut self, entries: Vec<LogEntry>) {
        self.inner.recycle(entries);
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

#[cfg(test)]
mod tests {
    //! Against a stub registry on loopback (a unit test: the real registry
    //! runs in tests/registry) and the real embedded log.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use signals_core::LogPosition;
    use signals_schemas::avro::{self, CURRENT_SCHEMA, CURRENT_SCHEMA_ID};
    use signals_schemas::{Event, EventType, LogRecord, RecordBody};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::RegistryLog;
    use crate::embedded::{EmbeddedLog, EmbeddedLogOptions};
    use crate::{Append, EventLog};

    const OWN_ID: u32 = 7;
    const OTHER_ID: u32 = 8;

    /// Registers our schema as id 7; knows id 8 as our schema too, but
    /// answers 503 to the first `unavailable` lookups of it.
    async fn stub_registry(unavailable: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let failures = Arc::new(AtomicUsize::new(unavailable));
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let failures = failures.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Head, then as much body as Content-Length says.
                    loop {
                        let n = socket.read(&mut buf).await.unwrap_or(0);
                        request.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&request);
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text[..end]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if request.len() >= end + 4 + length || n == 0 {
                                break;
                            }
                        } else if n == 0 {
                            break;
                        }
                    }
                    let text = String::from_utf8_lossy(&request);
                    let (status, body) = if text.starts_with("POST /subjects/t-value/versions") {
                        ("200 OK", serde_json::json!({ "id": OWN_ID }).to_string())
                    } else if text.starts_with(&format!("GET /schemas/ids/{OTHER_ID} ")) {
                        if failures
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
                            .is_ok()
                        {
                            (
                                "503 Service Unavailable",
                                r#"{"error_code":50003,"message":"down"}"#.to_owned(),
                            )
                        } else {
                            (
                                "200 OK",
                                serde_json::json!({ "schema": CURRENT_SCHEMA }).to_string(),
                            )
                        }
                    } else {
                        (
                            "404 Not Found",
                            r#"{"error_code":40403,"message":"Schema not found"}"#.to_owned(),
                        )
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/vnd.schemaregistry.v1+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        format!("http://{address}")
    }

    fn view(id: &str) -> LogRecord {
        LogRecord {
            accepted_at: 1_795_428_000_500,
            body: RecordBody::Event(Event {
                event_id: id.into(),
                user_id: "u-1".into(),
                event_type: EventType::View,
                item_id: Some("listing-9".into()),
                query: None,
                event_time: 1_795_428_000_000,
                attributes: Default::default(),
            }),
        }
    }

    #[tokio::test]
    async fn appends_carry_the_registry_id_and_reads_come_back_with_ours() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner: Arc<dyn EventLog> =
            Arc::new(EmbeddedLog::open(dir.path(), EmbeddedLogOptions::default()).expect("log"));
        let url = stub_registry(0).await;
        let log = RegistryLog::connect(inner.clone(), &url, "t-value", Duration::from_secs(5))
            .await
            .expect("registers");
        assert_eq!(log.framing().own_id(), OWN_ID);
        log.append(vec![Append::record(&view("e-1"))])
            .await
            .expect("append");
        let mut raw = inner.read_from(&LogPosition::new()).await.expect("reader");
        let stored = raw
            .next_batch(10, Duration::from_millis(100))
            .await
            .expect("read");
        assert_eq!(avro::frame(&stored[0].bytes).map(|(id, _)| id), Ok(OWN_ID));
        let mut reader = log.read_from(&LogPosition::new()).await.expect("reader");
        let read = reader
            .next_batch(10, Duration::from_millis(100))
            .await
            .expect("read");
        assert_eq!(
            avro::frame(&read[0].bytes).map(|(id, _)| id),
            Ok(CURRENT_SCHEMA_ID)
        );
        assert_eq!(avro::decode(&read[0].bytes), Ok(view("e-1")));
    }

    #[tokio::test]
    async fn a_registry_that_is_down_delays_records_and_loses_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner: Arc<dyn EventLog> =
            Arc::new(EmbeddedLog::open(dir.path(), EmbeddedLogOptions::default()).expect("log"));
        let url = stub_registry(2).await;
        let log = RegistryLog::connect(inner.clone(), &url, "t-value", Duration::from_secs(5))
            .await
            .expect("registers");
        log.append(vec![Append::record(&view("e-1"))])
            .await
            .expect("append");
        // An outside producer's record, framed with another id of the registry.
        let mut outside = avro::encode(&view("e-2"));
        avro::set_schema_id(&mut outside, OTHER_ID);
        inner
            .append(vec![Append {
                key: "u-1".into(),
                bytes: outside,
            }])
            .await
            .expect("append");

        let mut reader = log.read_from(&LogPosition::new()).await.expect("reader");
        for _ in 0..2 {
            let error = reader
                .next_batch(10, Duration::from_millis(100))
                .await
                .expect_err("the registry is down");
            assert!(error.is_retryable(), "{error}");
            // Neither record was returned, so the position passes neither.
            assert_eq!(reader.position().next(0), 0);
        }
        let read = reader
            .next_batch(10, Duration::from_millis(100))
            .await
            .expect("read");
        let decoded: Vec<_> = read.iter().map(|e| avro::decode(&e.bytes)).collect();
        assert_eq!(decoded, vec![Ok(view("e-1")), Ok(view("e-2"))]);
        assert_eq!(reader.position().next(0), 2);
    }
}
