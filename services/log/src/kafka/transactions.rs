//! The collector's transactional producer: one Kafka transaction per append,
//! always completed or aborted, and a producer that recovers by itself.
//!
//! * **Never cancelled half-way.** [`Transactions::append`] runs the whole
//!   transaction (begin, sends, commit or abort) on a spawned task. The
//!   caller may be dropped (an HTTP client hung up and axum dropped the
//!   handler): the transaction still ends, so the producer is never left
//!   `InTransaction` for the next request.
//! * **Recovered after any error.** After a failed send or commit the
//!   transaction is aborted; when the abort fails too, or the error is
//!   fatal (fenced, broker state lost), the producer is dropped and the next
//!   append (or readiness probe) creates a new one with the same
//!   transactional id. `init_transactions` of the new one aborts whatever
//!   the old one left open, so nothing half-written becomes visible to
//!   `read_committed` readers, and later appends succeed once Kafka is back.
//! * **Stable transactional id.** The id comes from the configuration (by
//!   default host + listen address, see the binary), so a collector that
//!   crashed mid-transaction and restarts fences its old transaction at once
//!   instead of leaving `read_committed` readers blocked until the broker's
//!   transaction timeout.
//! * **Readiness that does not flap to ready.** A failed append keeps the
//!   log not ready for [`RECENT_FAILURE`] even after a later append or a
//!   new producer works: when the connections to the broker keep being
//!   cut, producers are created and some transactions commit between the
//!   cuts while others fail, and a readiness that forgot each failure at
//!   the next success said ready through the whole fault (RELIABILITY.md,
//!   finding 9).
//! * **Group commit.** Appends are serialised on the one producer, and a
//!   transaction costs a round trip to the coordinator per partition and
//!   one to commit (tens of ms on a busy box): one per request capped a
//!   collector at a few dozen requests/s, however small they were. So the
//!   appends that queued while a transaction ran go into the next one
//!   together (up to [`MAX_GROUP_RECORDS`]): each request's records still
//!   become visible with the rest of that request or not at all. A record
//!   the broker refuses as such fails its own request only: the group is
//!   then retried one request per transaction.
//! * **Fast refusal while Kafka is down.** A request that waited behind an
//!   attempt that found Kafka unavailable gets that attempt's reason at
//!   once (503) instead of waiting out its own timeout in the queue: one
//!   transaction at a time probes Kafka, the others are refused quickly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::{oneshot, Mutex};
use tracing::{info, warn};

use super::{base_config, blocking_failed, KafkaOptions};
use crate::{Append, LogError, Offset, Partition};

/// The transactional producer of one process and its state.
#[derive(Clone)]
pub(super) struct Transactions {
    inner: Arc<Inner>,
}

struct Inner {
    options: KafkaOptions,
    /// The producer (`None`: to be created), locked for a whole transaction.
    slot: Arc<Mutex<Slot>>,
    /// A copy of the last failure, readable without waiting for `slot`.
    failure: std::sync::Mutex<Option<Failure>>,
    /// Since when the transaction in progress runs, if one does.
    running_since: std::sync::Mutex<Option<Instant>>,
    /// Appends waiting for the producer: whoever holds it next commits
    /// them together.
    waiting: std::sync::Mutex<Vec<Waiting>>,
}

/// One request's append, queued for the next transaction.
struct Waiting {
    records: Vec<Append>,
    queued_at: Instant,
    reply: oneshot::Sender<Result<Vec<(Partition, Offset)>, LogError>>,
}

/// At most this many records go into one group's transaction (a request
/// larger than that still goes alone).
const MAX_GROUP_RECORDS: usize = 20_000;

#[derive(Default)]
struct Slot {
    producer: Option<FutureProducer>,
}

/// How long a failed append keeps readiness at not ready once Kafka
/// answers again.
pub(super) const RECENT_FAILURE: Duration = Duration::from_secs(5);

/// How long a transaction may run before readiness calls it stalled. One
/// takes milliseconds; while the broker's connections keep being cut,
/// librdkafka retries inside it for up to the log timeout, and clients
/// time out waiting long before it fails.
pub(super) const STALLED_AFTER: Duration = Duration::from_secs(2);

/// Why the last attempt to use Kafka failed, and when.
#[derive(Clone, Debug)]
struct Failure {
    at: Instant,
    reason: String,
    /// An append that committed after [`STALLED_AFTER`] or more: it worked
    /// in the end, but clients waiting on it had timed out.
    stalled: bool,
    /// Whether an append or a new producer worked since.
    recovered: bool,
}

/// What one attempt to use Kafka came to, as readiness sees it.
enum Attempt<'a> {
    Worked,
    Failed(&'a LogError),
    /// Committed, after this long.
    Stalled(Duration),
}

impl Transactions {
    pub(super) fn new(options: KafkaOptions) -> Transactions {
        Transactions {
            inner: Arc::new(Inner {
                options,
                slot: Arc::new(Mutex::new(Slot::default())),
                failure: std::sync::Mutex::new(None),
                running_since: std::sync::Mutex::new(None),
                waiting: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    /// Creates the producer now (fencing an earlier incarnation's open
    /// transaction), instead of at the first append.
    pub(super) async fn prepare(&self) -> Result<(), LogError> {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut slot = inner.slot.lock().await;
            inner.producer(&mut slot).await.map(|_| ())
        })
        .await
        .map_err(blocking_failed)?
    }

    /// Appends `records` in one transaction, all or none, on its own task.
    pub(super) async fn append(
        &self,
        records: Vec<Append>,
    ) -> Result<Vec<(Partition, Offset)>, LogError> {
        let inner = self.inner.clone();
        let queued_at = Instant::now();
        // Spawned: dropping the caller does not cancel the transaction.
        tokio::spawn(async move { inner.append(records, queued_at).await })
            .await
            .map_err(blocking_failed)?
    }

    /// The reason appends fail now, if the last attempt failed, or failed
    /// less than [`RECENT_FAILURE`] ago. A failed producer is recreated in
    /// the background meanwhile, so that readiness turns green by itself
    /// once Kafka is back even with no traffic.
    pub(super) fn problem(&self) -> Option<String> {
        if let Some(running) = self.inner.running_for().filter(|t| *t >= STALLED_AFTER) {
            return Some(format!(
                "an append has waited on Kafka for {running:.1?} (stalled)"
            ));
        }
        let failure = self.inner.last_failure()?;
        if failure.recovered {
            let ago = failure.at.elapsed();
            let what = if failure.stalled { "stalled" } else { "failed" };
            return (ago < RECENT_FAILURE).then(|| {
                format!(
                    "an append {what} {ago:.1?} ago ({}); appends work again",
                    failure.reason
                )
            });
        }
        // After a failure the producer is gone (see `recover`): creating
        // one is a real round trip to the transaction coordinator.
        if let Ok(mut slot) = self.inner.slot.clone().try_lock_owned() {
            let inner = self.inner.clone();
            tokio::spawn(async move {
                let _ = inner.producer(&mut slot).await;
            });
        }
        Some(format!(
            "appends failing for {:.1?}: {}",
            failure.at.elapsed(),
            failure.reason
        ))
    }
}

impl Inner {
    fn last_failure(&self) -> Option<Failure> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// How long the transaction in progress has run, if one does.
    fn running_for(&self) -> Option<Duration> {
        self.running_since
            .lock()
            .ok()
            .and_then(|since| since.map(|t| t.elapsed()))
    }

    fn set_running(&self, since: Option<Instant>) {
        if let Ok(mut running) = self.running_since.lock() {
            *running = since;
        }
    }

    fn record(&self, attempt: Attempt) {
        let Ok(mut failure) = self.failure.lock() else {
            return;
        };
        match (attempt, failure.as_mut()) {
            (Attempt::Worked, Some(last)) if !last.recovered => {
                last.recovered = true;
                info!("kafka appends work again");
            }
            (Attempt::Worked, _) => {}
            (Attempt::Failed(error), _) => {
                *failure = Some(Failure {
                    at: Instant::now(),
                    reason: error.to_string(),
                    stalled: false,
                    recovered: false,
                })
            }
            (Attempt::Stalled(took), _) => {
                warn!(?took, "a kafka append committed only after a stall");
                *failure = Some(Failure {
                    at: Instant::now(),
                    reason: format!("it took {took:.1?}"),
                    stalled: true,
                    recovered: true,
                })
            }
        }
    }

    async fn append(
        &self,
        records: Vec<Append>,
        queued_at: Instant,
    ) -> Result<Vec<(Partition, Offset)>, LogError> {
        let (reply, mut answer) = oneshot::channel();
        self.lock_waiting().push(Waiting {
            records,
            queued_at,
            reply,
        });
        // Whoever holds the producer commits what waits, oldest first. A
        // holder that took this append answered it before letting the
        // producer go; while none did, it still waits (past a full group).
        let unanswered = || {
            LogError::Unavailable("kafka: the append's transaction ended without an answer".into())
        };
        loop {
            let mut slot = self.slot.lock().await;
            match answer.try_recv() {
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Closed) => return Err(unanswered()),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let group = self.next_group();
            if group.is_empty() {
                return Err(unanswered());
            }
            self.commit_group(&mut slot, group).await;
        }
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The waiting appends of the next transaction, oldest first, up to
    /// [`MAX_GROUP_RECORDS`] records (at least one append).
    fn next_group(&self) -> Vec<Waiting> {
        let mut waiting = self.lock_waiting();
        let mut records = 0;
        let take = waiting
            .iter()
            .take_while(|w| {
                records += w.records.len();
                records <= MAX_GROUP_RECORDS
            })
            .count()
            .max(1)
            .min(waiting.len());
        waiting.drain(..take).collect()
    }

    /// Commits `group` in one transaction and answers each of its appends;
    /// those queued before a failure that is not over are refused at once.
    async fn commit_group(&self, slot: &mut Slot, group: Vec<Waiting>) {
        let mut runnable = Vec::with_capacity(group.len());
        for waiting in group {
            match self
                .last_failure()
                .filter(|f| f.at > waiting.queued_at && !f.recovered)
            {
                Some(failure) => {
                    count("refused", 1);
                    let _ = waiting.reply.send(Err(LogError::Unavailable(format!(
                        "{} (an append that ran while this request waited failed {:.1?} ago; not retried)",
                        failure.reason,
                        failure.at.elapsed()
                    ))));
                }
                None => runnable.push(waiting),
            }
        }
        if runnable.is_empty() {
            return;
        }
        let records: Vec<&Append> = runnable.iter().flat_map(|w| &w.records).collect();
        let result = self.attempt(slot, &records).await;
        match result {
            Ok(positions) => {
                let mut positions = positions.into_iter();
                for waiting in runnable {
                    let own = positions.by_ref().take(waiting.records.len()).collect();
                    count(outcome(None), 1);
                    let _ = waiting.reply.send(Ok(own));
                }
            }
            // A record the broker refuses: only its own request fails.
            Err(LogError::Invalid(_)) if runnable.len() > 1 => {
                for waiting in runnable {
                    let records: Vec<&Append> = waiting.records.iter().collect();
                    let result = self.attempt(slot, &records).await;
                    count(outcome(result.as_ref().err()), 1);
                    let _ = waiting.reply.send(result);
                }
            }
            Err(error) => {
                count(outcome(Some(&error)), runnable.len() as u64);
                for waiting in runnable {
                    let _ = waiting.reply.send(Err(copy(&error)));
                }
            }
        }
    }

    /// One transaction of `records`, timed for readiness.
    async fn attempt(
        &self,
        slot: &mut Slot,
        records: &[&Append],
    ) -> Result<Vec<(Partition, Offset)>, LogError> {
        let started = Instant::now();
        self.set_running(Some(started));
        let result = self.transaction(slot, records).await;
        self.set_running(None);
        let took = started.elapsed();
        metrics::histogram!("signals_kafka_transaction_records").record(records.len() as f64);
        match &result {
            // A stall that ended counts as a recent failure.
            Ok(_) if took >= STALLED_AFTER => self.record(Attempt::Stalled(took)),
            Ok(_) => self.record(Attempt::Worked),
            Err(error @ LogError::Unavailable(_)) => self.record(Attempt::Failed(error)),
            Err(_) => {}
        }
        result
    }

    /// The producer, created (and its transactions initialised) if needed.
    async fn producer(&self, slot: &mut Slot) -> Result<FutureProducer, LogError> {
        if let Some(producer) = &slot.producer {
            return Ok(producer.clone());
        }
        let created = create(&self.options).await;
        match &created {
            Ok(producer) => {
                slot.producer = Some(producer.clone());
                self.record(Attempt::Worked);
            }
            Err(error) => self.record(Attempt::Failed(error)),
        }
        created
    }

    /// One transaction; on any error the transaction is aborted, or the
    /// producer dropped when it cannot be.
    async fn transaction(
        &self,
        slot: &mut Slot,
        records: &[&Append],
    ) -> Result<Vec<(Partition, Offset)>, LogError> {
        let producer = self.producer(slot).await?;
        let timeout = self.options.timeout;
        if let Err(error) = blocking(&producer, |p| p.begin_transaction()).await {
            self.recover(slot, &producer, &error).await;
            return Err(classify("cannot begin a transaction", error));
        }
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
        if let Some(error) = failure {
            self.recover(slot, &producer, &error).await;
            return Err(classify(
                "a record was not delivered; transaction aborted",
                error,
            ));
        }
        match commit(&producer, timeout).await {
            Ok(()) => Ok(positions),
            Err(error) => {
                self.recover(slot, &producer, &error).await;
                Err(classify(
                    "cannot commit the transaction (aborted; a retry of the request is safe, duplicates never count)",
                    error,
                ))
            }
        }
    }

    /// Leaves the producer ready for the next transaction. The open
    /// transaction is aborted; then, unless the failure was the request's
    /// own (a record the broker refuses), the producer is dropped and the
    /// next use creates a new one: its `init_transactions` fences this one
    /// and aborts anything it left open, whatever state librdkafka is in
    /// (abortable, fatal, timed out), and is a real check that Kafka's
    /// transaction coordinator answers again.
    async fn recover(&self, slot: &mut Slot, producer: &FutureProducer, error: &KafkaError) {
        warn!(%error, "kafka transaction failed; aborting it");
        let fatal = matches!(error, KafkaError::Transaction(e) if e.is_fatal());
        let mut aborted = false;
        if !fatal {
            let timeout = self.options.timeout;
            match blocking(producer, move |p| p.abort_transaction(timeout)).await {
                Ok(()) => aborted = true,
                Err(abort) => warn!(error = %abort, "cannot abort the transaction"),
            }
        }
        let the_requests_fault = matches!(classify("", error.clone()), LogError::Invalid(_));
        if aborted && the_requests_fault {
            return;
        }
        metrics::counter!("signals_kafka_producer_recreated_total").increment(1);
        if let Some(old) = slot.producer.take() {
            // Dropping purges and flushes (blocking, up to 500 ms).
            let _ = tokio::task::spawn_blocking(move || drop(old)).await;
        }
    }
}

/// Commits, retrying once a commit that timed out (it may have landed;
/// librdkafka allows calling commit again).
async fn commit(producer: &FutureProducer, timeout: Duration) -> Result<(), KafkaError> {
    match blocking(producer, move |p| p.commit_transaction(timeout)).await {
        Err(KafkaError::Transaction(e)) if e.is_retriable() && !e.txn_requires_abort() => {
            warn!(error = %e, "commit did not finish in time; trying again");
            blocking(producer, move |p| p.commit_transaction(timeout)).await
        }
        other => other,
    }
}

/// A new transactional producer with its transactions initialised.
async fn create(options: &KafkaOptions) -> Result<FutureProducer, LogError> {
    let id = options.transactional_id.clone();
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
        .map_err(|e| LogError::Invalid(format!("kafka: cannot create a producer: {e}")))?;
    let timeout = options.timeout;
    let started = Instant::now();
    let initialised = blocking(&producer, move |p| p.init_transactions(timeout)).await;
    match initialised {
        Ok(()) => {
            info!(transactional_id = %id, took = ?started.elapsed(), "kafka transactional producer ready");
            Ok(producer)
        }
        Err(error) => {
            tokio::task::spawn_blocking(move || drop(producer))
                .await
                .map_err(blocking_failed)?;
            Err(classify("cannot initialise transactions", error))
        }
    }
}

/// Counts `n` appends (requests) that came to `outcome`.
fn count(outcome: &'static str, n: u64) {
    metrics::counter!("signals_kafka_appends_total", "outcome" => outcome).increment(n);
}

/// The outcome label of an append that failed with `error`, if it did.
fn outcome(error: Option<&LogError>) -> &'static str {
    match error {
        None => "committed",
        Some(LogError::Unavailable(_)) => "failed",
        Some(_) => "invalid",
    }
}

/// The same failure, for each request of a group.
fn copy(error: &LogError) -> LogError {
    match error {
        LogError::Unavailable(m) => LogError::Unavailable(m.clone()),
        LogError::Corrupt(m) => LogError::Corrupt(m.clone()),
        LogError::Invalid(m) => LogError::Invalid(m.clone()),
        other => LogError::Unavailable(other.to_string()),
    }
}

/// Runs a blocking producer call off the async threads.
async fn blocking<T: Send + 'static>(
    producer: &FutureProducer,
    call: impl FnOnce(&FutureProducer) -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || call(&producer))
        .await
        .map_err(|_| KafkaError::Canceled)?
}

/// A producer error as a [`LogError`]: a record the broker refuses as such
/// (too large) is the request's fault; everything else may pass.
fn classify(what: &str, error: KafkaError) -> LogError {
    use rdkafka::types::RDKafkaErrorCode as Code;
    match error.rdkafka_error_code() {
        Some(Code::MessageSizeTooLarge | Code::InvalidMessageSize | Code::InvalidRecord) => {
            LogError::Invalid(format!("kafka: {what}: {error}"))
        }
        _ => LogError::Unavailable(format!("kafka: {what}: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 9: a Kafka whose connections keep being cut lets producers be
    /// created and some transactions commit between the cuts; readiness
    /// must not forget each failure at the next success.
    #[tokio::test]
    async fn a_failed_append_keeps_the_log_not_ready_for_a_while_after_appends_work_again() {
        let transactions = Transactions::new(KafkaOptions {
            brokers: "127.0.0.1:9".into(),
            timeout: Duration::from_millis(100),
            ..KafkaOptions::default()
        });
        assert_eq!(transactions.problem(), None);

        let cut = LogError::Unavailable("kafka: connection reset".into());
        transactions.inner.record(Attempt::Failed(&cut));
        let down = transactions.problem().expect("failing");
        assert!(down.starts_with("appends failing for"), "{down}");

        transactions.inner.record(Attempt::Worked);
        let recent = transactions
            .problem()
            .expect("a recent failure still counts");
        assert!(
            recent.contains("connection reset") && recent.ends_with("appends work again"),
            "{recent}"
        );

        transactions.inner.record(Attempt::Failed(&cut));
        transactions.inner.record(Attempt::Worked);
        let mut failure = transactions.inner.failure.lock().expect("not poisoned");
        if let Some(last) = failure.as_mut() {
            last.at -= RECENT_FAILURE;
        }
        drop(failure);
        assert_eq!(transactions.problem(), None, "ready once it is old enough");
    }

    /// While the connections are cut, a transaction neither commits nor
    /// fails for seconds (librdkafka retries inside it): that is down too.
    #[tokio::test]
    async fn an_append_that_runs_for_seconds_makes_the_log_not_ready() {
        let transactions = Transactions::new(KafkaOptions::default());
        transactions.inner.set_running(Some(Instant::now()));
        assert_eq!(transactions.problem(), None, "an append in progress");
        transactions
            .inner
            .set_running(Some(Instant::now() - STALLED_AFTER));
        let stalled = transactions.problem().expect("stalled");
        assert!(stalled.contains("stalled"), "{stalled}");
        transactions.inner.set_running(None);
        assert_eq!(transactions.problem(), None);

        // A stall that ended in a commit stays a recent problem, and says
        // it was a stall, not a failure.
        transactions
            .inner
            .record(Attempt::Stalled(STALLED_AFTER * 2));
        let recent = transactions.problem().expect("a recent stall still counts");
        assert!(
            recent.starts_with("an append stalled") && recent.contains("took 4.0s"),
            "{recent}"
        );
        transactions.inner.record(Attempt::Worked);
        assert!(transactions.problem().is_some(), "for RECENT_FAILURE");
    }
}
