//! The batch's recompute as it was before it streamed (commit 002f61a):
//! the whole log in memory, a map of id digests, every user's events in
//! one map. Kept only as the reference the streaming [`super::Recompute`]
//! is tested against; the rules below are that commit's, line for line.

use std::collections::{HashMap, HashSet};

use signals_core::{DedupWindow, IdDigest};
use signals_schemas::{Event, Millis, RecordBody};

use super::{Corrections, Keep, UserOutcome};
use crate::bots::BotFilter;
use crate::user_events::UserEvents;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

#[derive(Default)]
pub struct InMemory {
    keep: Keep,
    seen: FastMap<u128, Millis>,
    digest: IdDigest,
    window: DedupWindow,
    by_user: FastMap<String, Vec<(Millis, Event)>>,
    retracted: FastMap<String, Millis>,
    deleted: FastSet<String>,
    duplicates: u64,
}

impl InMemory {
    pub fn new(keep: Keep, window: DedupWindow) -> InMemory {
        InMemory {
            keep,
            window,
            ..InMemory::default()
        }
    }

    fn counts(&mut self, event_id: &str, accepted_at: Millis) -> bool {
        let digest = self.digest.of(event_id);
        match self.seen.get_mut(&digest) {
            Some(first) if self.window.is_copy(*first, accepted_at) => false,
            Some(first) => {
                *first = accepted_at;
                true
            }
            None => {
                self.seen.insert(digest, accepted_at);
                true
            }
        }
    }

    pub fn add(&mut self, accepted_at: Millis, body: RecordBody) {
        match body {
            RecordBody::Event(event) => {
                if !self.counts(&event.event_id, accepted_at) {
                    self.duplicates += 1;
                    return;
                }
                if let Some(users) = &self.keep.users {
                    if !users.contains(event.user_id.as_str()) {
                        return;
                    }
                }
                let in_range = self
                    .keep
                    .times
                    .is_none_or(|(from, to)| event.event_time >= from && event.event_time < to);
                let events = self.by_user.entry(event.user_id.to_string()).or_default();
                if in_range {
                    events.push((accepted_at, event));
                }
            }
            RecordBody::Retraction(retraction) => {
                for id in retraction.event_ids {
                    let newest = self.retracted.entry(id).or_insert(accepted_at);
                    *newest = (*newest).max(accepted_at);
                }
            }
            RecordBody::UserDeletion(deletion) => {
                self.deleted.insert(deletion.user_id);
            }
        }
    }

    pub fn see(&mut self, event_id: &str, accepted_at: Millis) {
        self.counts(event_id, accepted_at);
    }

    /// Every user in user id order with what counts of theirs, and the
    /// corrections made.
    pub fn finish(self, bots: Option<BotFilter>) -> (Vec<(String, UserOutcome)>, Corrections) {
        let mut corrections = Corrections {
            duplicates: self.duplicates,
            ..Corrections::default()
        };
        let mut users: Vec<(String, Vec<(Millis, Event)>)> = self.by_user.into_iter().collect();
        users.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let outcomes = users
            .into_iter()
            .map(|(user, occurrences)| {
                let mut events = Vec::new();
                let mut withdrawn = 0;
                for (accepted_at, event) in occurrences {
                    let retracted = self
                        .retracted
                        .get(event.event_id.as_str())
                        .is_some_and(|at| self.window.withdraws(*at, accepted_at));
                    if retracted {
                        withdrawn += 1;
                    } else {
                        events.push(event);
                    }
                }
                if self.deleted.contains(&user) {
                    corrections.deleted_users += 1;
                    corrections.deleted_user_events += events.len() as u64 + withdrawn;
                    return (user, UserOutcome::Deleted);
                }
                corrections.retracted += withdrawn;
                let mut events = UserEvents::of(&events).expect("test events pack");
                if let Some(bots) = bots {
                    let removed = bots.apply(&mut events);
                    if removed > 0 {
                        corrections.bot_events += removed;
                        corrections.bot_users += 1;
                    }
                }
                (user, UserOutcome::Events(events))
            })
            .collect();
        (outcomes, corrections)
    }
}
