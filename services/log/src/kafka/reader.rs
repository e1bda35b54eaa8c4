//! Reading the log from Kafka, and the watchdog that keeps a reader going
//! when librdkafka does not recover by itself (docs/RELIABILITY.md,
//! findings 2, 7 and 11).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset as KafkaOffset, TopicPartitionList};
use tracing::{info, warn};

use super::{consumer, probe_client, unavailable, within, KafkaOptions, CHECK_TIMEOUT};
use crate::{LogEntry, LogError, LogPosition, LogReader, Offset, Partition};

/// A reader over a Kafka consumer; polling happens on a blocking thread.
pub(super) struct KafkaReader {
    consumer: Arc<BaseConsumer>,
    options: KafkaOptions,
    position: LogPosition,
    membership: Membership,
    /// Since when every poll has failed; None while polls succeed.
    failing_since: Option<std::time::Instant>,
    /// When a fresh client was last asked whether the brokers answer while
    /// polls fail.
    brokers_asked_at: Option<std::time::Instant>,
    /// Whether its answer replaced a consumer since a poll last succeeded.
    replaced_early: bool,
    /// Since when a group member has held no partition; None while it does.
    unassigned_since: Option<std::time::Instant>,
    /// Since when polls have brought back no record, and what the last look
    /// for records waiting found.
    idle: Option<Idle>,
    /// [`LOOK_FOR_WAITING_RECORDS_EVERY`], shorter in tests.
    look_for_waiting_every: Duration,
}

/// A reader's polls bringing back nothing.
struct Idle {
    since: std::time::Instant,
    /// Partitions with records the reader has not got, and where it stood
    /// on each, at the last look (empty before the first).
    waiting: Vec<(i32, i64)>,
}

/// How long polls may keep failing before the consumer is replaced. After a
/// broker restart, kill or pause, librdkafka sometimes keeps reporting
/// `AllBrokersDown` on connections that work again (RELIABILITY.md, finding
/// 2); a new member of the same group resumes from the committed offsets.
const REPLACE_FAILING_CONSUMER_AFTER: Duration = Duration::from_secs(30);

/// How long polls may fail before a fresh client asks whether the brokers
/// answer, and how often it asks again. When they do (a broker restart is
/// over) while this consumer's polls still fail, the failures are the
/// consumer's own (finding 2): it is replaced then rather than after
/// [`REPLACE_FAILING_CONSUMER_AFTER`]. Once only until a poll succeeds
/// again: polls that fail for a reason every consumer meets (an ACL, say)
/// beside answering brokers are left to the slower rule, not churned.
const ASK_BROKERS_AFTER: Duration = Duration::from_secs(5);

/// How long a group member may hold no partition before it asks the group
/// coordinator whether it is a member at all. A broker paused long enough
/// to be fenced can lose a join in flight: the coordinator reloads the
/// group empty, and librdkafka waits for a SyncGroup answer that never
/// comes, polling without error and without partitions (RELIABILITY.md,
/// finding 7). A rebalance normally completes within a session timeout.
const CHECK_UNASSIGNED_MEMBER_AFTER: Duration = Duration::from_secs(60);

/// How long polls may bring back no record before the reader looks for
/// records waiting that it does not get, and how often it looks again.
/// After a broker pause, a consumer can poll without error and without
/// records while its partitions hold records (RELIABILITY.md, finding 10);
/// seen twice in a row, with nothing moved in between, that is a stall,
/// and the consumer is replaced.
const LOOK_FOR_WAITING_RECORDS_EVERY: Duration = Duration::from_secs(15);

/// How a reader gets its partitions.
pub(super) enum Membership {
    /// Every partition, from a given position (batch, replays).
    Assigned { partitions: u32 },
    /// A consumer-group member: the group assigns partitions and they
    /// resume from the group's committed offsets.
    Grouped { group: String },
}

impl Membership {
    /// A consumer reading as this membership says, from `from` when assigned.
    pub(super) fn join(
        &self,
        options: &KafkaOptions,
        from: &LogPosition,
    ) -> Result<BaseConsumer, LogError> {
        match self {
            Membership::Assigned { partitions } => {
                let consumer = consumer(options, "signals-reader")?;
                let mut assignment = TopicPartitionList::new();
                for p in 0..*partitions {
                    assignment
                        .add_partition_offset(
                            &options.topic,
                            p as i32,
                            KafkaOffset::Offset(from.next(p) as i64),
                        )
                        .map_err(|e| unavailable("cannot build an assignment", e))?;
                }
                consumer
                    .assign(&assignment)
                    .map_err(|e| unavailable("cannot assign partitions", e))?;
                Ok(consumer)
            }
            Membership::Grouped { group } => {
                let consumer = consumer(options, group)?;
                consumer
                    .subscribe(&[&options.topic])
                    .map_err(|e| unavailable("cannot subscribe", e))?;
                Ok(consumer)
            }
        }
    }
}

/// What one blocking poll call brought back.
struct Polled {
    entries: Vec<LogEntry>,
    /// Next offset per assigned partition (past transaction markers too).
    positions: Vec<(Partition, Offset)>,
    /// An error met before any record was read.
    error: Option<KafkaError>,
    /// Partitions assigned to the consumer.
    assigned: usize,
}

impl KafkaReader {
    pub(super) fn new(
        consumer: BaseConsumer,
        options: KafkaOptions,
        position: LogPosition,
        membership: Membership,
    ) -> KafkaReader {
        KafkaReader {
            consumer: Arc::new(consumer),
            options,
            position,
            membership,
            failing_since: None,
            brokers_asked_at: None,
            replaced_early: false,
            unassigned_since: None,
            idle: None,
            look_for_waiting_every: LOOK_FOR_WAITING_RECORDS_EVERY,
        }
    }

    /// A new member of the same group (it resumes from the committed
    /// offsets) or a new assigned reader at our position; replays are
    /// idempotent downstream.
    fn replace_consumer(&mut self) -> Result<(), LogError> {
        let fresh = self.membership.join(&self.options, &self.position)?;
        let old = std::mem::replace(&mut self.consumer, Arc::new(fresh));
        // Off this task: each of these waits on the old consumer's own
        // threads, which may be the ones stuck. It leaves the group and
        // gives up its partitions before closing, so that the group hands
        // them to the new member even if closing never finishes
        // (librdkafka cannot destroy a consumer in some states, a paused
        // one among them); a consumer stuck for good is evicted when its
        // session times out.
        tokio::task::spawn_blocking(move || {
            old.unsubscribe();
            if let Err(error) = old.unassign() {
                info!(%error, "cannot give up the replaced consumer's partitions; closing it will");
            }
            drop(old);
        });
        self.failing_since = None;
        self.unassigned_since = None;
        self.idle = None;
        metrics::counter!("signals_kafka_consumer_replaced_total").increment(1);
        Ok(())
    }

    /// Counts a failed poll: a consumer whose polls have failed for
    /// [`REPLACE_FAILING_CONSUMER_AFTER`], or failed fatally, or failed for
    /// [`ASK_BROKERS_AFTER`] while a fresh client finds the brokers
    /// answering, is replaced.
    async fn failed(&mut self, error: &KafkaError, fatal: bool) -> Result<(), LogError> {
        let now = std::time::Instant::now();
        let failing_since = *self.failing_since.get_or_insert(now);
        let failing_for = now.duration_since(failing_since);
        if fatal || failing_for >= REPLACE_FAILING_CONSUMER_AFTER {
            // A new member resumes from the committed offsets (grouped)
            // or from our position; replays are idempotent downstream.
            warn!(%error, fatal, ?failing_for, "kafka consumer keeps failing; replacing it");
            return self.replace_consumer();
        }
        let ask = !self.replaced_early
            && failing_for >= ASK_BROKERS_AFTER
            && self
                .brokers_asked_at
                .is_none_or(|t| now.duration_since(t) >= ASK_BROKERS_AFTER);
        if ask {
            self.brokers_asked_at = Some(now);
            match self.brokers_answer().await {
                Ok(()) => {
                    warn!(%error, ?failing_for, "kafka consumer keeps failing while the brokers answer a fresh client; replacing it");
                    self.replaced_early = true;
                    return self.replace_consumer();
                }
                Err(why) => {
                    info!(%error, ?failing_for, %why, "kafka polls fail and the brokers do not answer a fresh client either; waiting")
                }
            }
        }
        Ok(())
    }

    /// Whether a client of its own, with no connection of this consumer's,
    /// reads the topic's metadata with a leader for every partition; why
    /// not otherwise.
    async fn brokers_answer(&self) -> Result<(), String> {
        let options = self.options.clone();
        let timeout = self.options.timeout.min(CHECK_TIMEOUT);
        within(timeout * 2, "ask the brokers", move || {
            let client = probe_client(&options).map_err(|e| e.to_string())?;
            let metadata = client
                .fetch_metadata(Some(&options.topic), timeout)
                .map_err(|e| e.to_string())?;
            let topic = metadata
                .topics()
                .iter()
                .find(|t| t.name() == options.topic && t.error().is_none())
                .ok_or("the topic is missing from the metadata")?;
            match !topic.partitions().is_empty()
                && topic.partitions().iter().all(|p| p.leader() >= 0)
            {
                true => Ok(()),
                false => Err("a partition has no leader".to_owned()),
            }
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Called after a poll that brought back nothing: every
    /// [`LOOK_FOR_WAITING_RECORDS_EVERY`] of such polls, looks for records
    /// waiting that this reader does not get; replaces the consumer when
    /// two looks in a row find the same ones.
    async fn watch_idle(&mut self) -> Result<(), LogError> {
        let now = std::time::Instant::now();
        let idle = self.idle.get_or_insert_with(|| Idle {
            since: now,
            waiting: Vec::new(),
        });
        if now.duration_since(idle.since) < self.look_for_waiting_every {
            return Ok(());
        }
        idle.since = now;
        let previous = std::mem::take(&mut idle.waiting);
        // A look that fails (brokers down) finds nothing: failing polls
        // have their own rule.
        let waiting = self.waiting_records().await;
        if waiting.is_empty() {
            return Ok(());
        }
        if waiting != previous {
            info!(
                ?waiting,
                "kafka reader idle while records wait (partition, next offset); looking again"
            );
            if let Some(idle) = &mut self.idle {
                idle.waiting = waiting;
            }
            return Ok(());
        }
        warn!(?waiting, idle_for = ?self.look_for_waiting_every * 2, "kafka consumer gets no record while its partitions hold some; replacing it");
        self.replace_consumer()
    }

    /// The partitions with records past where this reader stands on them:
    /// its assigned partitions, or, holding none as a group member, every
    /// partition past the group's committed offset (nobody reads them), or
    /// past this reader's last position when the coordinator does not
    /// answer for the committed offsets.
    ///
    /// Only the assignment (local state) comes from the reader's consumer:
    /// the brokers are asked by a client made for the look, with the
    /// reader's settings and group but never a member. The consumer's own
    /// connections may be the part that is stuck; a look through them
    /// failed as they did and found nothing, so the stall went on
    /// (RELIABILITY.md, finding 11).
    async fn waiting_records(&self) -> Vec<(i32, i64)> {
        let consumer = self.consumer.clone();
        let options = self.options.clone();
        let timeout = self.options.timeout.min(CHECK_TIMEOUT);
        let position = self.position.clone();
        let group = self.look_group();
        let grouped = matches!(self.membership, Membership::Grouped { .. });
        let look = within(
            self.options.timeout,
            "look for waiting records",
            move || {
                let topic = &options.topic;
                let assigned = consumer.assignment().map_err(|e| e.to_string())?;
                let asking = self::consumer(&options, &group).map_err(|e| e.to_string())?;
                let standing: Vec<(i32, i64)> = if assigned.count() > 0 {
                    assigned
                        .elements_for_topic(topic)
                        .iter()
                        .map(|e| {
                            (
                                e.partition(),
                                position.next(e.partition() as Partition) as i64,
                            )
                        })
                        .collect()
                } else if grouped {
                    let metadata = asking
                        .fetch_metadata(Some(topic), timeout)
                        .map_err(|e| e.to_string())?;
                    let mut all = TopicPartitionList::new();
                    for t in metadata.topics() {
                        for p in t.partitions() {
                            all.add_partition(topic, p.id());
                        }
                    }
                    match asking.committed_offsets(all.clone(), timeout) {
                        Ok(committed) => committed
                            .elements_for_topic(topic)
                            .iter()
                            .map(|e| match e.offset() {
                                KafkaOffset::Offset(next) => (e.partition(), next),
                                _ => (e.partition(), 0),
                            })
                            .collect(),
                        // The brokers answer and the group coordinator does
                        // not (a member left waiting for it after a broker
                        // restart): where this reader last stood.
                        Err(_) => all
                            .elements_for_topic(topic)
                            .iter()
                            .map(|e| {
                                (
                                    e.partition(),
                                    position.next(e.partition() as Partition) as i64,
                                )
                            })
                            .collect(),
                    }
                } else {
                    Vec::new()
                };
                let mut waiting = Vec::new();
                for (partition, next) in standing {
                    let (_, high) = asking
                        .fetch_watermarks(topic, partition, timeout)
                        .map_err(|e| e.to_string())?;
                    if high > next {
                        waiting.push((partition, next));
                    }
                }
                waiting.sort_unstable();
                Ok::<_, String>(waiting)
            },
        );
        match look.await {
            Ok(Ok(waiting)) => waiting,
            // The brokers do not answer a client of its own either: an
            // outage, which failing polls and readiness report.
            Ok(Err(error)) => {
                info!(%error, "cannot look for records waiting; looking again later");
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }

    /// The group a look's client carries: the reader's, so that it may
    /// read the group's committed offsets (it never joins), or a probe's.
    fn look_group(&self) -> String {
        match &self.membership {
            Membership::Grouped { group } => group.clone(),
            Membership::Assigned { .. } => "signals-probe".to_owned(),
        }
    }

    /// Whether the group coordinator says `group` has no member at all (or
    /// does not know it), so that this consumer, subscribed and polling, is
    /// not one. An idle member of a group with more members than
    /// partitions is listed, and stays. `false` when the coordinator does
    /// not answer. Asked by a client of its own, like the looks above.
    async fn group_is_empty(&self, group: String) -> bool {
        let options = self.options.clone();
        let timeout = self.options.timeout.min(CHECK_TIMEOUT);
        let listed = within(timeout * 2, "list the group", move || {
            let asking = probe_client(&options).ok()?;
            let list = asking.fetch_group_list(Some(&group), timeout).ok()?;
            // A group the coordinator does not know has no member either.
            let info = list.groups().iter().find(|g| g.name() == group);
            Some(info.is_none_or(|info| info.members().is_empty()))
        })
        .await;
        matches!(listed, Ok(Some(true)))
    }
}

#[async_trait]
impl LogReader for KafkaReader {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<LogEntry>, LogError> {
        let consumer = self.consumer.clone();
        let topic = self.options.topic.clone();
        let limit = wait + self.options.timeout;
        let polled = within(limit, "poll", move || {
            let mut entries = Vec::new();
            let mut error = None;
            let mut timeout = wait;
            while entries.len() < max {
                match consumer.poll(timeout) {
                    None => break,
                    // Records taken from the consumer are returned whatever
                    // follows: the consumer has moved past them.
                    Some(Err(e)) => {
                        if entries.is_empty() {
                            error = Some(e);
                        } else {
                            warn!(error = %e, "kafka poll failed after some records; returning those");
                        }
                        break;
                    }
                    Some(Ok(message)) => entries.push(LogEntry {
                        partition: message.partition() as Partition,
                        offset: message.offset() as Offset,
                        bytes: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    }),
                }
                timeout = Duration::ZERO;
            }
            let mut positions = Vec::new();
            if let Ok(assigned) = consumer.position() {
                for element in assigned.elements_for_topic(&topic) {
                    if let KafkaOffset::Offset(next) = element.offset() {
                        positions.push((element.partition() as Partition, next.max(0) as Offset));
                    }
                }
            }
            let assigned = consumer.assignment().map_or(0, |a| a.count());
            Polled {
                entries,
                positions,
                error,
                assigned,
            }
        })
        .await;
        let polled = match polled {
            Ok(polled) => polled,
            // The abandoned poll may still take records from this consumer
            // and they would never reach us: reading on with it could skip
            // them. A new one resumes from the committed offsets (or our
            // position), which never pass a record not yet applied.
            Err(error) => {
                warn!(%error, "kafka poll abandoned; replacing the consumer");
                self.replace_consumer()?;
                return Err(error);
            }
        };
        if let Some(error) = polled.error {
            let fatal = matches!(error, KafkaError::MessageConsumptionFatal(_));
            self.failed(&error, fatal).await?;
            return Err(unavailable("poll failed", error));
        }
        self.failing_since = None;
        self.replaced_early = false;
        if polled.assigned > 0 {
            self.unassigned_since = None;
        } else if let Membership::Grouped { group } = &self.membership {
            let since = *self
                .unassigned_since
                .get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= CHECK_UNASSIGNED_MEMBER_AFTER {
                // Asked again after another interval, whatever the answer.
                self.unassigned_since = Some(std::time::Instant::now());
                if self.group_is_empty(group.clone()).await {
                    warn!(%group, unassigned_for = ?since.elapsed(), "kafka consumer holds no partition and its group has no member; rejoining");
                    self.replace_consumer()?;
                }
            }
        }
        for entry in &polled.entries {
            self.position.advance(entry.partition, entry.offset + 1);
        }
        for (partition, next) in polled.positions {
            self.position.advance(partition, next);
        }
        if polled.entries.is_empty() {
            self.watch_idle().await?;
        } else {
            self.idle = None;
        }
        Ok(polled.entries)
    }

    fn position(&self) -> LogPosition {
        self.position.clone()
    }

    async fn commit(&mut self, position: &LogPosition) -> Result<(), LogError> {
        if !matches!(self.membership, Membership::Grouped { .. }) {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        let topic = self.options.topic.clone();
        let position = position.clone();
        let committed = within(self.options.timeout, "commit", move || {
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
        .await;
        if committed.is_err() {
            // Seen after a broker pause: the consumer's own threads are
            // stuck, and every later commit would wait out the limit too.
            warn!("kafka commit abandoned; replacing the consumer");
            self.replace_consumer()?;
        }
        committed?
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use rdkafka::error::RDKafkaErrorCode;

    use super::*;
    use crate::kafka::KafkaLog;
    use crate::{Append, EventLog};

    /// A topic of its own with two partitions, on `brokers`.
    fn two_partitions(brokers: String) -> KafkaOptions {
        let topic = signals_test_support::unique_name("signals-unit");
        KafkaOptions {
            brokers,
            dead_letter_topic: format!("{topic}.dlq"),
            topic,
            partitions: 2,
            ..KafkaOptions::default()
        }
    }

    /// `n` records of users `user-0`.., each holding its index.
    fn records(n: u8) -> Vec<Append> {
        (0..n)
            .map(|i| Append {
                key: format!("user-{i}"),
                bytes: vec![i],
            })
            .collect()
    }

    /// A reader from the log's start, as `membership` joins.
    fn reader_from_start(options: &KafkaOptions, membership: Membership) -> KafkaReader {
        let consumer = membership
            .join(options, &LogPosition::new())
            .expect("a consumer");
        KafkaReader::new(consumer, options.clone(), LogPosition::new(), membership)
    }

    /// The check of finding 7 asks the coordinator about real groups: one
    /// whose member holds partitions is not empty, one nobody joined is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_is_empty_only_when_the_coordinator_lists_no_member() {
        let Some(brokers) = signals_test_support::kafka_brokers() else {
            return;
        };
        let options = two_partitions(brokers);
        let _log = KafkaLog::connect(options.clone()).await.expect("connects");
        let group = format!("{}-group", options.topic);
        let mut reader = reader_from_start(
            &options,
            Membership::Grouped {
                group: group.clone(),
            },
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while reader.consumer.assignment().map_or(0, |a| a.count()) == 0 {
            assert!(Instant::now() < deadline, "the member was never assigned");
            reader
                .next_batch(10, Duration::from_millis(200))
                .await
                .expect("polls");
        }
        assert!(reader.unassigned_since.is_none());
        assert!(
            !reader.group_is_empty(group.clone()).await,
            "a member holds its partitions"
        );
        assert!(
            reader.group_is_empty(format!("{group}-nobody")).await,
            "nobody joined this group"
        );
    }

    /// Polls failing for a while beside brokers that answer a fresh client
    /// (finding 2's shape after a restart) replace the consumer without
    /// waiting for the 30 s rule, once until a poll succeeds; beside brokers
    /// that do not answer (an outage), they do not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_consumer_failing_beside_answering_brokers_is_replaced_early() {
        let Some(brokers) = signals_test_support::kafka_brokers() else {
            return;
        };
        let options = two_partitions(brokers);
        let _log = KafkaLog::connect(options.clone()).await.expect("connects");
        let mut reader = reader_from_start(&options, Membership::Assigned { partitions: 2 });
        let down = KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown);
        let failing_for = |d: Duration| Instant::now().checked_sub(d);

        // Failing, but not for long: nobody is asked.
        reader.failing_since = failing_for(Duration::from_secs(1));
        let first = Arc::as_ptr(&reader.consumer);
        reader.failed(&down, false).await.expect("counted");
        assert!(std::ptr::eq(first, Arc::as_ptr(&reader.consumer)));
        assert!(reader.brokers_asked_at.is_none());

        reader.failing_since = failing_for(ASK_BROKERS_AFTER);
        reader.failed(&down, false).await.expect("replaced");
        assert!(
            !std::ptr::eq(first, Arc::as_ptr(&reader.consumer)),
            "replaced while the brokers answer"
        );
        assert!(reader.failing_since.is_none());

        // Failing again before any poll succeeded: not replaced early twice.
        let second = Arc::as_ptr(&reader.consumer);
        reader.failing_since = failing_for(ASK_BROKERS_AFTER);
        reader.brokers_asked_at = failing_for(ASK_BROKERS_AFTER);
        reader.failed(&down, false).await.expect("counted");
        assert!(std::ptr::eq(second, Arc::as_ptr(&reader.consumer)));
        // A poll that succeeds ends the episode: the next one may again.
        reader
            .next_batch(10, Duration::from_millis(100))
            .await
            .expect("polls");
        reader.failing_since = failing_for(ASK_BROKERS_AFTER);
        reader.brokers_asked_at = failing_for(ASK_BROKERS_AFTER);
        reader.failed(&down, false).await.expect("replaced");
        assert!(!std::ptr::eq(second, Arc::as_ptr(&reader.consumer)));

        // Brokers that do not answer (nothing listens there): kept.
        let unreachable = KafkaOptions {
            brokers: "127.0.0.1:9".into(),
            timeout: Duration::from_secs(1),
            ..options
        };
        let mut outage = reader_from_start(&unreachable, Membership::Assigned { partitions: 2 });
        outage.failing_since = failing_for(ASK_BROKERS_AFTER);
        let kept = Arc::as_ptr(&outage.consumer);
        outage.failed(&down, false).await.expect("counted");
        assert!(std::ptr::eq(kept, Arc::as_ptr(&outage.consumer)));
        assert!(outage.brokers_asked_at.is_some(), "asked");
    }

    /// A consumer left with no usable broker connection (finding 11)
    /// fails whatever it asks; the watchdog's look must ask the brokers
    /// through a client of its own, or it sees nothing waiting and the
    /// stall goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_look_for_waiting_records_does_not_ask_through_the_consumer_it_watches() {
        let Some(brokers) = signals_test_support::kafka_brokers() else {
            return;
        };
        let options = two_partitions(brokers);
        let log = KafkaLog::connect(options.clone()).await.expect("connects");
        log.append(records(20)).await.expect("appends");
        let group = format!("{}-group", options.topic);
        let unreachable = KafkaOptions {
            brokers: "127.0.0.1:1".to_owned(),
            ..options.clone()
        };
        let stuck = consumer(&unreachable, &group).expect("a consumer");
        // Never dropped: destroying a client that never reached a broker
        // is not what this test is about.
        let reader = std::mem::ManuallyDrop::new(KafkaReader::new(
            stuck,
            options.clone(),
            LogPosition::new(),
            Membership::Grouped { group },
        ));
        let waiting = reader.waiting_records().await;
        assert!(!waiting.is_empty(), "nothing found waiting");
        assert!(
            waiting.iter().all(|&(_, next)| next == 0),
            "the group has committed nothing: {waiting:?}"
        );
    }

    /// The shape of finding 10, made on demand: a member whose partitions
    /// are paused polls without error and without records while records
    /// wait. The reader sees them waiting twice and replaces its consumer;
    /// the new member resumes from the group's committed offsets.
    ///
    /// librdkafka cannot destroy a paused consumer: the replaced one hangs
    /// in its blocking-pool thread for good, so the runtime here is shut
    /// down without waiting for it, as `signals` does.
    #[test]
    fn a_member_that_gets_no_record_while_records_wait_is_replaced() {
        let Some(brokers) = signals_test_support::kafka_brokers() else {
            return;
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(replaces_a_member_that_gets_no_record(brokers));
        runtime.shutdown_timeout(Duration::from_secs(1));
    }

    async fn replaces_a_member_that_gets_no_record(brokers: String) {
        let options = two_partitions(brokers);
        let log = KafkaLog::connect(options.clone()).await.expect("connects");
        let group = format!("{}-group", options.topic);
        // Never dropped, so that a failure fails instead of hanging in the
        // destruction of the paused consumer.
        let mut reader =
            std::mem::ManuallyDrop::new(reader_from_start(&options, Membership::Grouped { group }));
        reader.look_for_waiting_every = Duration::from_millis(300);
        let deadline = Instant::now() + Duration::from_secs(30);
        while reader.consumer.assignment().map_or(0, |a| a.count()) < 2 {
            assert!(Instant::now() < deadline, "the member was never assigned");
            reader
                .next_batch(10, Duration::from_millis(200))
                .await
                .expect("polls");
        }
        let assignment = reader.consumer.assignment().expect("assignment");
        reader.consumer.pause(&assignment).expect("pauses");
        let stalled = Arc::as_ptr(&reader.consumer);
        log.append(records(20)).await.expect("appends");

        let mut read = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while read.len() < 20 {
            let replaced = !std::ptr::eq(stalled, Arc::as_ptr(&reader.consumer));
            assert!(
                Instant::now() < deadline,
                "read {} of 20 records; replaced: {replaced}",
                read.len(),
            );
            read.extend(
                reader
                    .next_batch(100, Duration::from_millis(100))
                    .await
                    .expect("polls"),
            );
        }
        assert!(
            !std::ptr::eq(stalled, Arc::as_ptr(&reader.consumer)),
            "replaced"
        );
        let mut bytes: Vec<u8> = read.iter().flat_map(|e| e.bytes.clone()).collect();
        bytes.sort_unstable();
        assert_eq!(bytes, (0..20).collect::<Vec<u8>>());
    }
}
