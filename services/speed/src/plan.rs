//! Turning a batch of log records into one store write: decoding,
//! deduplication by event id and retraction routing. Pure given the index
//! entries of the ids involved, so it is tested without any backend.

use std::collections::{BTreeMap, HashMap, HashSet};

use signals_core::{LogPosition, SpeedEntry};
use signals_log::{DeadLetter, LogEntry};
use signals_schemas::{avro, Millis, RecordBody};
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
    pub retractions: u64,
    pub deletions: u64,
    /// Events of users deleted before them, not written.
    pub deleted_user_events: u64,
    pub dead_letters: u64,
}

/// Decodes `entries`, starting from the position `before`.
pub fn decode(entries: Vec<LogEntry>, before: &LogPosition) -> DecodedBatch {
    let mut batch = DecodedBatch {
        position: before.clone(),
        ..DecodedBatch::default()
    };
    for entry in entries {
        batch.position.advance(entry.partition, entry.offset + 1);
        match avro::decode(&entry.bytes) {
            Ok(record) => batch.records.push(Decoded {
                partition: entry.partition,
                offset: entry.offset,
                accepted_at: record.accepted_at,
                body: record.body,
            }),
            Err(error) => batch.dead_letters.push(DeadLetter {
                partition: entry.partition,
                offset: entry.offset,
                reason: error.to_string(),
                bytes: entry.bytes,
            }),
        }
    }
    batch
}

/// Every event id the plan needs the index's word on.
pub fn ids_to_look_up(records: &[Decoded]) -> Vec<String> {
    let mut ids: Vec<String> = records
        .iter()
        .flat_map(|r| match &r.body {
            RecordBody::Event(e) => vec![e.event_id.clone()],
            RecordBody::Retraction(r) => r.event_ids.clone(),
            RecordBody::UserDeletion(_) => Vec::new(),
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Plans the store write for `batch`, given what the index knew about its
/// ids before the batch. Rules, identical to the batch layer's:
/// the first occurrence of an id in log order counts, later ones never; an
/// id named by a retraction never counts, whether it came before or after;
/// a deleted user's events never count.
///
/// `deleted` holds users this process saw deleted, and gains the ones
/// `batch` deletes: their later events are indexed (they are still first
/// occurrences of their ids) but not written. Serving ignores them anyway
/// (deletion is permanent in [`signals_core::UserView::merge`]); not writing
/// them keeps a deleted user's data out of the store.
pub fn plan(
    batch: &DecodedBatch,
    mut known: HashMap<String, IndexEntry>,
    last_accepted_at: Option<Millis>,
    deleted: &mut HashSet<String>,
) -> (SpeedWrite, PlanStats) {
    let mut stats = PlanStats {
        dead_letters: batch.dead_letters.len() as u64,
        ..PlanStats::default()
    };
    let mut entries = Vec::new();
    let mut touched: BTreeMap<String, IndexEntry> = BTreeMap::new();
    let mut newest = last_accepted_at;

    for record in &batch.records {
        newest = newest.max(Some(record.accepted_at));
        let at = |user_id: &str, entry: SpeedEntry| PositionedEntry {
            user_id: user_id.to_owned(),
            partition: record.partition,
            offset: record.offset,
            entry,
        };
        match &record.body {
            RecordBody::Event(event) => {
                if known.contains_key(&event.event_id) {
                    stats.duplicates += 1;
                    continue;
                }
                let entry = IndexEntry {
                    user_id: Some(event.user_id.clone()),
                    retracted: false,
                };
                known.insert(event.event_id.clone(), entry.clone());
                touched.insert(event.event_id.clone(), entry);
                if deleted.contains(&event.user_id) {
                    stats.deleted_user_events += 1;
                    continue;
                }
                entries.push(at(&event.user_id, SpeedEntry::Event(event.clone())));
                stats.events += 1;
            }
            RecordBody::Retraction(retraction) => {
                stats.retractions += 1;
                let mut by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for id in &retraction.event_ids {
                    let previous = known.get(id).cloned();
                    if previous.as_ref().is_some_and(|p| p.retracted) {
                        continue;
                    }
                    let user_id = previous.and_then(|p| p.user_id);
                    if let Some(user) = &user_id {
                        by_user.entry(user.clone()).or_default().push(id.clone());
                    }
                    let entry = IndexEntry {
                        user_id,
                        retracted: true,
                    };
                    known.insert(id.clone(), entry.clone());
                    touched.insert(id.clone(), entry);
                }
                for (user, event_ids) in by_user {
                    entries.push(at(&user, SpeedEntry::Retracted { event_ids }));
                }
            }
            RecordBody::UserDeletion(deletion) => {
                stats.deletions += 1;
                deleted.insert(deletion.user_id.clone());
                entries.push(at(&deletion.user_id, SpeedEntry::Deleted));
            }
        }
    }

    let write = SpeedWrite {
        entries,
        index: touched.into_iter().collect(),
        progress: SpeedProgress {
            position: batch.position.clone(),
            last_accepted_at: newest,
        },
    };
    (write, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use signals_core::testing::event;
    use signals_schemas::{EventType, LogRecord, Retraction, UserDeletion};

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
                retracted: false,
            },
        )]);
        let (write, stats) = plan(&batch, known, None, &mut HashSet::new());
        let kinds: Vec<(u64, &SpeedEntry)> =
            write.entries.iter().map(|e| (e.offset, &e.entry)).collect();
        assert_eq!(kinds.len(), 1);
        assert!(matches!(kinds[0], (0, SpeedEntry::Event(e)) if e.event_id == "a"));
        assert_eq!(
            stats,
            PlanStats {
                events: 1,
                duplicates: 3,
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
            .filter(|(_, e)| e.retracted)
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
                    retracted: false,
                },
            ),
            (
                "y".to_owned(),
                IndexEntry {
                    user_id: Some("u1".into()),
                    retracted: false,
                },
            ),
        ]);
        let (write, _) = plan(&batch, known, None, &mut HashSet::new());
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
        let (write, stats) = plan(&batch, HashMap::new(), None, &mut deleted);
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
        let later = decode(vec![entry(3, view("c"))], &batch.position);
        let (write, stats) = plan(&later, HashMap::new(), None, &mut deleted);
        assert!(write.entries.is_empty());
        assert_eq!(stats.deleted_user_events, 1);
    }
}
