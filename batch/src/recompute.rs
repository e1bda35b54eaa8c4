//! The batch's view of history, folded record by record: the same rules as
//! the speed layer, applied with the whole log in hand.
//!
//! * the first occurrence of an event id in log order is the event; later
//!   ones are duplicates;
//! * an id named by any retraction never counts, before or after;
//! * a deleted user's events never count, before or after the deletion.

use std::collections::{HashMap, HashSet};

use signals_core::{Definitions, UserRecord};
use signals_schemas::{Event, Millis, RecordBody};

/// Counts of what the recompute saw and corrected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Corrections {
    pub duplicates: u64,
    pub retracted: u64,
    pub deleted_user_events: u64,
}

/// History accumulated from the log, in log order.
#[derive(Default)]
pub struct Recompute {
    seen: HashSet<String>,
    by_user: HashMap<String, Vec<Event>>,
    retracted: HashSet<String>,
    deleted: HashSet<String>,
    duplicates: u64,
}

impl Recompute {
    /// Takes the next record of the log.
    pub fn add(&mut self, body: RecordBody) {
        match body {
            RecordBody::Event(event) => {
                if self.seen.contains(&event.event_id) {
                    self.duplicates += 1;
                } else {
                    self.seen.insert(event.event_id.clone());
                    self.by_user
                        .entry(event.user_id.clone())
                        .or_default()
                        .push(event);
                }
            }
            RecordBody::Retraction(retraction) => self.retracted.extend(retraction.event_ids),
            RecordBody::UserDeletion(deletion) => {
                self.deleted.insert(deletion.user_id);
            }
        }
    }

    /// Number of distinct users with events so far.
    pub fn users(&self) -> usize {
        self.by_user.len()
    }

    /// Every user's record, with corrections applied, and what they removed.
    pub fn finish(
        self,
        definitions: &Definitions,
        horizon: Millis,
    ) -> (impl Iterator<Item = (String, UserRecord)> + '_, Corrections) {
        let Recompute {
            by_user,
            retracted,
            deleted,
            duplicates,
            ..
        } = self;
        let mut corrections = Corrections {
            duplicates,
            ..Corrections::default()
        };
        // Every user seen in the log gets a record, empty when nothing of
        // theirs counts: a rerun of a version that crashed before publishing
        // then overwrites every row the crashed run may have written.
        let mut kept: Vec<(String, Vec<Event>)> = Vec::with_capacity(by_user.len());
        for (user, mut events) in by_user {
            if deleted.contains(&user) {
                corrections.deleted_user_events += events.len() as u64;
                events.clear();
            }
            let before = events.len();
            events.retain(|e| !retracted.contains(&e.event_id));
            corrections.retracted += (before - events.len()) as u64;
            kept.push((user, events));
        }
        kept.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let records = kept
            .into_iter()
            .map(move |(user, events)| (user, UserRecord::compact(definitions, events, horizon)));
        (records, corrections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signals_core::testing::event;
    use signals_schemas::{EventType, Retraction, UserDeletion};

    #[test]
    fn applies_every_correction() {
        let mut r = Recompute::default();
        let mut e1 = event("e1", EventType::View, "a", 10);
        e1.user_id = "u1".into();
        let mut e1_again = e1.clone();
        e1_again.event_time = 99;
        let mut e2 = event("e2", EventType::View, "b", 20);
        e2.user_id = "u1".into();
        let mut e3 = event("e3", EventType::View, "c", 30);
        e3.user_id = "gone".into();
        r.add(RecordBody::Retraction(Retraction {
            event_ids: vec!["e2".into()],
            reason: String::new(),
        }));
        for e in [e1.clone(), e1_again, e2, e3] {
            r.add(RecordBody::Event(e));
        }
        r.add(RecordBody::UserDeletion(UserDeletion {
            user_id: "gone".into(),
            reason: String::new(),
        }));
        let definitions = Definitions::default();
        let (records, corrections) = r.finish(&definitions, 0);
        let records: Vec<(String, UserRecord)> = records.collect();
        assert_eq!(
            corrections,
            Corrections {
                duplicates: 1,
                retracted: 1,
                deleted_user_events: 1
            }
        );
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].0, "gone");
        assert!(records[0].1.events.is_empty() && records[0].1.base.is_empty());
        assert_eq!(records[1].0, "u1");
        assert_eq!(records[1].1.events, vec![e1]);
    }
}
