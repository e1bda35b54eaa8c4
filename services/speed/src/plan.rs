//! Turning a batch of log records into one store write: decoding,
//! deduplication by event id and retraction routing. Pure given the index
//! entries of the ids involved, so it is tested without any backend.

use std::collections::{BTreeMap, HashMap, HashSet};

use signals_core::{Deduplication, LogPosition, Occurrence, SpeedEntry};
use signals_log::{DeadLetter, LogEntry};
use signals_schemas::rules::check_id;
use signals_schemas::{avro, Millis, RecordBody, Retraction};
use signals_store::{IndexEntry, PositionedEntry, SpeedProgress, SpeedWrite};

/// A log record that decoded.
#[derive(Clone, Debug)]
pub struct Decoded {
    pub partition: u32,
    pub offset: u64,
    pub accepted_at: Millis,
    pub body: RecordBody,
}

/// A batch after decoding: what to plan with, what to dead-letter, and the
/// position just past its last record.
#[derive(Debug, Default)]
pub struct DecodedBatch {
    pub records: Vec<Decoded>,
    pub dead_letters: Vec<DeadLetter>,
    pub position: LogPosition,
}

/// How the records of one batch were used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanStats {
    pub events: u64,
    pub duplicates: u64,
    /// Counted occurrences a retraction had withdrawn before they came.
    pub withdrawn: u64,
    pub retractions: u64,
    pub deletions: u64,
    /// Events of users deleted before them, not written.
    pub deleted_user_events: u64,
    pub dead_letters: u64,
}

/// Decodes `entries`, starting from the position `before`.
///
/// A record that does not decode is a dead letter. So is one that decodes
/// but cannot be applied, because it names ids no event can have (outside
/// producers write to the log too; events themselves are checked by the
/// decoder): a deletion of an invalid user id is not applied, and a
/// retraction is applied to its valid ids only and dead-lettered for the
/// others. That is what the batch layer computes from the same record (no
/// event has an invalid id), so both layers still agree.
pub fn decode(entries: Vec<LogEntry>, before: &LogPosition) -> DecodedBatch {
    let mut batch = DecodedBatch {
        position: before.clone(),
        ..DecodedBatch::default()
    };
    for entry in entries {
        batch.position.advance(entry.partition, entry.offset + 1);
        let record = match avro::decode(&entry.bytes) {
            Ok(record) => record,
            Err(error) => {
                batch.dead_letters.push(DeadLetter {
                    partition: entry.partition,
                    offset: entry.offset,
                    reason: error.to_string(),
                    bytes: entry.bytes,
                });
                continue;
            }
        };
        let (body, refusal) = applicable(record.body);
        if let Some(reason) = refusal {
            batch.dead_letters.push(DeadLetter {
                partition: entry.partition,
                offset: entry.offset,
                reason,
                bytes: entry.bytes,
            });
        }
        if let Some(body) = body {
            batch.records.push(Decoded {
                partition: entry.partition,
                offset: entry.offset,
                accepted_at: record.accepted_at,
                body,
            });
        }
    }
    batch
}

/// The part of `body` that can be applied, and why the rest cannot.
fn applicable(body: RecordBody) -> (Option<RecordBody>, Option<String>) {
    match body {
        RecordBody::UserDeletion(deletion) => match check_id("user_id", &deletion.user_id) {
            Ok(()) => (Some(RecordBody::UserDeletion(deletion)), None),
            Err(error) => (None, Some(format!("user deletion not applied: {error}"))),
        },
        RecordBody::Retraction(retraction) => {
            let mut refused = Vec::new();
            let mut valid = Vec::with_capacity(retraction.event_ids.len());
            for (index, id) in retraction.event_ids.into_iter().enumerate() {
                match check_id("event_id", &id) {
                    Ok(()) => valid.push(id),
                    Err(error) => refused.push(format!("{index}: {error}")),
                }
            }
            if refused.is_empty() {
                let retraction = Retraction {
                    event_ids: valid,
                    ..retraction
                };
                return (Some(RecordBody::Retraction(retraction)), None);
            }
            let reason = format!(
                "retraction names {} invalid event id(s) (index: problem; {}), not applied; its {} valid id(s) are",
                refused.len(),
                refused.join("; "),
                valid.len()
            );
            let applied = !valid.is_empty();
            let rest = RecordBody::Retraction(Retraction {
                event_ids: valid,
                ..retraction
            });
            let rest = applied.then_some(rest);
            (rest, Some(reason))
        }
        body @ RecordBody::Event(_) => (Some(body), None),
    }
}

/// Every event id the plan needs the index's word on.
pub fn ids_to_look_up(records: &[Decoded]) -> Vec<String> {
    let mut ids: Vec<String> = records
        .iter()
        .flat_map(|r| match &r.body {
            RecordBody::Event(e) => vec![e.event_id.to_string()],
            RecordBody::Retraction(r) => r.event_ids.clone(),
            RecordBody::UserDeletion(_) => Vec::new(),
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// `known`, the index's answers about `ids`, as the index will answer once
/// `in_flight` (the updates of a write planned before, sorted by id, not
/// yet durable) has landed: its entries replace the store's.
pub fn overlay(
    known: &mut HashMap<String, IndexEntry>,
    ids: &[String],
    in_flight: &[(String, IndexEntry)],
) {
    for id in ids {
        if let Ok(i) = in_flight.binary_search_by(|(other, _)| other.as_str().cmp(id)) {
            known.insert(id.clone(), in_flight[i].1.clone());
        }
    }
}

/// Plans the store write for `batch`, given what the index knew about its
/// ids before the batch. Rules, identical to the batch layer's (the
/// deduplication window of [`Deduplication`]): an occurrence of an id
/// accepted within the window of its counted occurrence is a copy and never
/// counts; a retraction withdraws the occurrences of its ids accepted before
/// it and up to the window after it; a deleted user's events never count.
///
/// `deleted` holds users this process saw deleted, and gains the ones
/// `batch` deletes: their later events are indexed (they are still first
/// occurrences of their ids) but not written. Serving ignores them anyway
/// (deletion is permanent in [`signals_core::UserView::merge`]); not writing
/// them keeps a deleted user's data out of the store.
pub fn plan(
    batch: DecodedBatch,
    known: HashMap<String, IndexEntry>,
    last_accepted_at: Option<Millis>,
    rules: &Deduplication,
    deleted: &mut HashSet<String>,
) -> (SpeedWrite, PlanStats) {
    let mut stats = PlanStats {
        dead_letters: batch.dead_letters.len() as u64,
        ..PlanStats::default()
    };
    let mut entries = Vec::with_capacity(batch.records.len());
    // The index's entries as this batch leaves them: what the next record
    // of an id is decided by, and the write's index updates.
    let mut updated: HashMap<String, IndexEntry> = HashMap::new();
    let entry_of = |updated: &HashMap<String, IndexEntry>, id: &str| -> Option<IndexEntry> {
        updated.get(id).or_else(|| known.get(id)).cloned()
    };
    let mut newest = last_accepted_at;

    for record in batch.records {
        newest = newest.max(Some(record.accepted_at));
        let at = |user_id: String, entry: SpeedEntry| PositionedEntry {
            user_id,
            partition: record.partition,
            offset: record.offset,
            entry,
        };
        match record.body {
            RecordBody::Event(event) => {
                let entry = updated
                    .get(event.event_id.as_str())
                    .or_else(|| known.get(event.event_id.as_str()));
                let counted_for_another = entry
                    .and_then(|e| e.user_id.as_ref())
                    .is_some_and(|user| *user != event.user_id);
                let (occurrence, next) = rules.on_event(entry, &event.user_id, record.accepted_at);
                if let Some(next) = next {
                    updated.insert(event.event_id.to_string(), next);
                }
                match occurrence {
                    Occurrence::Copy => {
                        stats.duplicates += 1;
                        // A copy of another user's occurrence (a producer
                        // reusing an id) sits on another partition, so a
                        // write cut short may have stored it counted under
                        // a plan that polled it first. An entry that
                        // retracts nothing takes its position and replaces
                        // that row. A copy of the user's own occurrence is
                        // on the same partition, after it: every plan
                        // decides it alike and writes nothing.
                        if counted_for_another && !deleted.contains(event.user_id.as_str()) {
                            entries.push(at(
                                event.user_id.to_string(),
                                SpeedEntry::Retracted {
                                    event_ids: Vec::new(),
                                },
                            ));
                        }
                    }
                    Occurrence::Withdrawn => {
                        stats.withdrawn += 1;
                        // Written at the event's own position, not left
                        // out: a write cut short may have stored the event
                        // there, counted, under a plan that met it before
                        // its retraction (they travel on different
                        // partitions, and a replay polls them in another
                        // order). This row replaces that one.
                        if !deleted.contains(event.user_id.as_str()) {
                            let event_ids = vec![event.event_id.to_string()];
                            entries.push(at(
                                event.user_id.to_string(),
                                SpeedEntry::Retracted { event_ids },
                            ));
                        }
                    }
                    Occurrence::Counts if deleted.contains(event.user_id.as_str()) => {
                        stats.deleted_user_events += 1
                    }
                    Occurrence::Counts => {
                        entries.push(at(event.user_id.to_string(), SpeedEntry::Event(event)));
                        stats.events += 1;
                    }
                }
            }
            RecordBody::Retraction(retraction) => {
                stats.retractions += 1;
                let mut by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for id in retraction.event_ids {
                    let (withdrawn, next) =
                        rules.on_retraction(entry_of(&updated, &id).as_ref(), record.accepted_at);
                    if let Some(user) = withdrawn {
                        let ids = by_user.entry(user).or_default();
                        if !ids.contains(&id) {
                            ids.push(id.clone());
                        }
                    }
                    updated.insert(id, next);
                }
                for (user, event_ids) in by_user {
                    entries.push(at(user, SpeedEntry::Retracted { event_ids }));
                }
            }
            RecordBody::UserDeletion(deletion) => {
                stats.deletions += 1;
                deleted.insert(deletion.user_id.clone());
                entries.push(at(deletion.user_id, SpeedEntry::Deleted));
            }
        }
    }

    let mut index: Vec<(String, IndexEntry)> = updated.into_iter().collect();
    index.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let write = SpeedWrite {
        entries,
        index,
        progress: SpeedProgress {
            position: batch.position,
            last_accepted_at: newest,
        },
    };
    (write, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use signals_core::testing::event;
    use signals_schemas::{EventType, LogRecord, UserDeletion};

    fn entry(offset: u64, body: RecordBody) -> LogEntry {
        LogEntry {
            partition: 0,
            offset,
            bytes: avro::encode(&LogRecord {
                accepted_at: offset as i64,
                body,
            }),
        }
    }

    fn view(id: &str) -> RecordBody {
        RecordBody::Event(event(id, EventType::View, "item", 1_795_428_000_000))
    }

    fn retract(ids: &[&str]) -> RecordBody {
        RecordBody::Retraction(Retraction {
            event_ids: ids.iter().map(|s| s.to_string()).collect(),
            reason: "test".into(),
        })
    }

    #[test]
    fn duplicates_and_retracted_ids_never_count() {
        let entries = vec![
            entry(0, view("a")),
            entry(1, view("a")),
            entry(2, retract(&["b", "c"])),
            entry(3, view("b")),
            entry(4, view("old")),
            LogEntry {
                partition: 0,
                offset: 5,
                bytes: vec![9, 9, 9],
            },
        ];
        let batch = decode(entries, &LogPosition::new());
        assert_eq!(batch.position.next(0), 6);
        assert_eq!(batch.dead_letters.len(), 1);
        assert_eq!(batch.dead_letters[0].bytes, vec![9, 9, 9]);
        assert_eq!(ids_to_look_up(&batch.records), vec!["a", "b", "c", "old"]);

        // "old" was seen in an earlier batch, for user u.
        let known = HashMap::from([(
            "old".to_owned(),
            IndexEntry {
                user_id: Some("u".into()),
                accepted_at: Some(0),
                retracted_at: None,
                expires_at: None,
            },
        )]);
        let (write, stats) = plan(
            batch,
            known,
            None,
            &Deduplication::default(),
            &mut HashSet::new(),
        );
        let kinds: Vec<(u64, &SpeedEntry)> =
            write.entries.iter().map(|e| (e.offset, &e.entry)).collect();
        assert_eq!(kinds.len(), 2);
        assert!(matches!(kinds[0], (0, SpeedEntry::Event(e)) if e.event_id == "a"));
        // "b", retracted before it came, is withdrawn at its own position.
        assert_eq!(
            kinds[1],
            (
                3,
                &SpeedEntry::Retracted {
                    event_ids: vec!["b".into()]
                }
            )
        );
        assert_eq!(
            stats,
            PlanStats {
                events: 1,
                duplicates: 2,
                withdrawn: 1,
                retractions: 1,
                deletions: 0,
                deleted_user_events: 0,
                dead_letters: 1
            }
        );
        assert_eq!(write.progress.last_accepted_at, Some(4));
        let retracted: Vec<&str> = write
            .index
            .iter()
            .filter(|(_, e)| e.retracted_at.is_some())
            .map(|(id, _)| id.as_str())
            .collect();
        assert_eq!(retracted, vec!["b", "c"]);
    }

    #[test]
    fn a_retraction_of_a_known_event_marks_its_user() {
        let batch = decode(
            vec![entry(7, retract(&["x", "y", "x"]))],
            &LogPosition::new(),
        );
        let known = HashMap::from([
            (
                "x".to_owned(),
                IndexEntry {
                    user_id: Some("u1".into()),
                    accepted_at: Some(0),
                    retracted_at: None,
                    expires_at: None,
                },
            ),
            (
                "y".to_owned(),
                IndexEntry {
                    user_id: Some("u1".into()),
                    accepted_at: Some(0),
                    retracted_at: None,
                    expires_at: None,
                },
            ),
        ]);
        let (write, _) = plan(
            batch,
            known,
            None,
            &Deduplication::default(),
            &mut HashSet::new(),
        );
        assert_eq!(write.entries.len(), 1);
        assert_eq!(write.entries[0].user_id, "u1");
        assert_eq!(
            write.entries[0].entry,
            SpeedEntry::Retracted {
                event_ids: vec!["x".into(), "y".into()]
            }
        );
    }

    #[test]
    fn a_deleted_users_later_events_are_indexed_but_not_written() {
        let deletion = RecordBody::UserDeletion(UserDeletion {
            user_id: "u".into(),
            reason: "asked".into(),
        });
        let batch = decode(
            vec![entry(0, view("a")), entry(1, deletion), entry(2, view("b"))],
            &LogPosition::new(),
        );
        let mut deleted = HashSet::new();
        let after = batch.position.clone();
        let (write, stats) = plan(
            batch,
            HashMap::new(),
            None,
            &Deduplication::default(),
            &mut deleted,
        );
        let written: Vec<(u64, &SpeedEntry)> =
            write.entries.iter().map(|e| (e.offset, &e.entry)).collect();
        assert_eq!(written.len(), 2);
        assert!(matches!(written[0], (0, SpeedEntry::Event(e)) if e.event_id == "a"));
        assert_eq!(written[1], (1, &SpeedEntry::Deleted));
        assert_eq!((stats.events, stats.deleted_user_events), (1, 1));
        assert!(
            write.index.iter().any(|(id, _)| id == "b"),
            "b stays a seen id"
        );
        assert!(deleted.contains("u"));

        // A later batch remembers the deletion.
        let later = decode(vec![entry(3, view("c"))], &after);
        let (write, stats) = plan(
            later,
            HashMap::new(),
            None,
            &Deduplication::default(),
            &mut deleted,
        );
        assert!(write.entries.is_empty());
        assert_eq!(stats.deleted_user_events, 1);
    }

    #[test]
    fn records_naming_invalid_ids_are_dead_letters_and_valid_ids_still_apply() {
        let deletion = |user: &str| {
            RecordBody::UserDeletion(UserDeletion {
                user_id: user.into(),
                reason: "asked".into(),
            })
        };
        let entries = vec![
            entry(0, deletion("")),
            entry(1, retract(&["", "a", "b\u{7}"])),
            entry(2, retract(&[""])),
            entry(3, view("a")),
        ];
        let batch = decode(entries.clone(), &LogPosition::new());
        assert_eq!(batch.position.next(0), 4, "every record is passed");
        let letters: Vec<(u64, &str)> = batch
            .dead_letters
            .iter()
            .map(|l| (l.offset, l.reason.as_str()))
            .collect();
        assert_eq!(
            letters,
            vec![
                (0, "user deletion not applied: `user_id` must not be empty"),
                (1, "retraction names 2 invalid event id(s) (index: problem; 0: `event_id` must not be empty; 2: `event_id` must not contain control characters), not applied; its 1 valid id(s) are"),
                (2, "retraction names 1 invalid event id(s) (index: problem; 0: `event_id` must not be empty), not applied; its 0 valid id(s) are"),
            ]
        );
        assert_eq!(
            batch.dead_letters[0].bytes, entries[0].bytes,
            "original bytes kept"
        );

        // What remains plans like the valid retraction alone: "a" is retracted
        // before its event, so the event never counts, and no write names an
        // empty user or id (which a store refuses).
        let (write, stats) = plan(
            batch,
            HashMap::new(),
            None,
            &Deduplication::default(),
            &mut HashSet::new(),
        );
        assert_eq!(stats.dead_letters, 3);
        assert_eq!(
            (stats.retractions, stats.deletions, stats.events),
            (1, 0, 0)
        );
        assert_eq!(stats.withdrawn, 1);
        let written: Vec<(u64, &SpeedEntry)> =
            write.entries.iter().map(|e| (e.offset, &e.entry)).collect();
        assert_eq!(
            written,
            vec![(
                3,
                &SpeedEntry::Retracted {
                    event_ids: vec!["a".into()]
                }
            )],
            "the withdrawn event's own position says so"
        );
        let index: Vec<&str> = write.index.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(index, vec!["a"]);
    }

    #[test]
    fn a_copy_within_the_window_is_a_duplicate_and_an_id_reused_after_it_counts() {
        let rules = Deduplication {
            window: signals_core::DedupWindow::new(10),
            grace: 5,
        };
        // Offsets double as acceptance times (see `entry`).
        let batch = decode(
            vec![
                entry(0, view("a")),
                entry(10, view("a")),
                entry(11, view("a")),
            ],
            &LogPosition::new(),
        );
        let (write, stats) = plan(batch, HashMap::new(), None, &rules, &mut HashSet::new());
        let counted: Vec<u64> = write.entries.iter().map(|e| e.offset).collect();
        assert_eq!(counted, vec![0, 11]);
        assert_eq!((stats.events, stats.duplicates), (2, 1));
        let (_, entry) = &write.index[0];
        assert_eq!(entry.accepted_at, Some(11));
        assert_eq!(entry.expires_at, Some(11 + 10 + 5));
    }

    #[test]
    fn a_copy_of_another_users_occurrence_takes_its_position_with_an_empty_retraction() {
        let of = |user: &str, id: &str| {
            let mut e = event(id, EventType::View, "item", 1_795_428_000_000);
            e.user_id = user.into();
            RecordBody::Event(e)
        };
        let batch = decode(
            vec![
                entry(0, of("u1", "x")),
                entry(1, of("u1", "x")),
                entry(2, of("u2", "x")),
            ],
            &LogPosition::new(),
        );
        let rules = Deduplication::default();
        let (write, stats) = plan(batch, HashMap::new(), None, &rules, &mut HashSet::new());
        let rows: Vec<(&str, u64, &SpeedEntry)> = write
            .entries
            .iter()
            .map(|e| (e.user_id.as_str(), e.offset, &e.entry))
            .collect();
        // u1's own retry writes nothing; u2's reuse of the id writes a row
        // that withdraws nothing.
        assert_eq!(rows.len(), 2);
        assert!(matches!(rows[0], ("u1", 0, SpeedEntry::Event(e)) if e.event_id == "x"));
        assert_eq!(
            rows[1],
            (
                "u2",
                2,
                &SpeedEntry::Retracted {
                    event_ids: Vec::new()
                }
            )
        );
        assert_eq!((stats.events, stats.duplicates), (1, 2));
    }
}
