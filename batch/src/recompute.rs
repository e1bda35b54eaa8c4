//! The batch's view of history, folded record by record: the same rules as
//! the speed layer, applied with the whole log in hand.
//!
//! * the first occurrence of an event id in log order is the event; later
//!   ones are duplicates (whatever their user);
//! * an id named by any retraction never counts, before or after;
//! * a deleted user's events never count, before or after the deletion;
//! * then the configured bot rule ([`BotFilter`]) drops over-limit minutes.

use std::collections::{HashMap, HashSet};

use signals_schemas::{Event, Millis, RecordBody};

use crate::bots::BotFilter;

/// Counts of what the recompute saw and corrected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Corrections {
    pub duplicates: u64,
    pub retracted: u64,
    pub deleted_user_events: u64,
    pub deleted_users: u64,
    pub bot_events: u64,
    pub bot_users: u64,
}

/// Which events a recompute keeps (every id is still tracked, so that
/// deduplication stays exact).
#[derive(Clone, Debug, Default)]
pub struct Keep {
    /// Only these users' events (`None`: everyone's).
    pub users: Option<UserFilter>,
    /// Only events with `event_time` in `[from, to)`; users with events
    /// outside it are still listed.
    pub times: Option<(Millis, Millis)>,
}

/// A subset of users.
#[derive(Clone, Debug)]
pub enum UserFilter {
    /// A stable pseudo-random fraction in `(0, 1]` (by a hash of the id).
    Fraction(f64),
    /// Exactly these.
    Ids(HashSet<String>),
}

impl UserFilter {
    pub fn contains(&self, user: &str) -> bool {
        match self {
            UserFilter::Fraction(fraction) => {
                // FNV-1a then murmur3's finaliser (FNV alone leaves the high
                // bits of similar ids alike): stable across processes,
                // builds and platforms.
                let mut hash = signals_core::fnv1a64(user.as_bytes());
                hash ^= hash >> 33;
                hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
                hash ^= hash >> 33;
                hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
                hash ^= hash >> 33;
                (hash as f64) < fraction * u64::MAX as f64
            }
            UserFilter::Ids(ids) => ids.contains(user),
        }
    }
}

/// What counts of one user once every correction is applied.
#[derive(Clone, Debug, PartialEq)]
pub enum UserOutcome {
    /// The user was deleted: nothing of theirs counts.
    Deleted,
    /// The events that count (within [`Keep::times`], if set).
    Events(Vec<Event>),
}

/// History accumulated from the log, in log order.
#[derive(Default)]
pub struct Recompute {
    keep: Keep,
    seen: HashSet<String>,
    by_user: HashMap<String, Vec<Event>>,
    retracted: HashSet<String>,
    deleted: HashSet<String>,
    duplicates: u64,
}

impl Recompute {
    pub fn new(keep: Keep) -> Recompute {
        Recompute {
            keep,
            ..Recompute::default()
        }
    }

    /// Takes the next record of the log.
    pub fn add(&mut self, body: RecordBody) {
        match body {
            RecordBody::Event(event) => {
                if !self.seen.insert(event.event_id.clone()) {
                    self.duplicates += 1;
                    return;
                }
                if let Some(users) = &self.keep.users {
                    if !users.contains(&event.user_id) {
                        return;
                    }
                }
                let in_range = self
                    .keep
                    .times
                    .is_none_or(|(from, to)| event.event_time >= from && event.event_time < to);
                // Look up before inserting: cloning the user id for every
                // event is a needless allocation on the batch's hot path.
                match self.by_user.get_mut(&event.user_id) {
                    Some(events) if in_range => events.push(event),
                    Some(_) => {}
                    None => {
                        let user = event.user_id.clone();
                        let events = if in_range { vec![event] } else { Vec::new() };
                        self.by_user.insert(user, events);
                    }
                }
            }
            RecordBody::Retraction(retraction) => self.retracted.extend(retraction.event_ids),
            RecordBody::UserDeletion(deletion) => {
                self.deleted.insert(deletion.user_id);
            }
        }
    }

    /// Takes note of an event id whose event another worker recomputes:
    /// it still makes later copies duplicates.
    pub fn see(&mut self, event_id: String) {
        self.seen.insert(event_id);
    }

    /// Number of distinct users with events so far.
    pub fn users(&self) -> usize {
        self.by_user.len()
    }

    /// Every user seen in the log, in user id order, with what counts of
    /// theirs, and what the corrections removed.
    pub fn finish(self, bots: Option<BotFilter>) -> (Vec<(String, UserOutcome)>, Corrections) {
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
        let mut users: Vec<(String, UserOutcome)> = by_user
            .into_iter()
            .map(|(user, mut events)| {
                if deleted.contains(&user) {
                    corrections.deleted_users += 1;
                    corrections.deleted_user_events += events.len() as u64;
                    return (user, UserOutcome::Deleted);
                }
                let before = events.len();
                events.retain(|e| !retracted.contains(&e.event_id));
                corrections.retracted += (before - events.len()) as u64;
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
        users.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        (users, corrections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signals_core::testing::event;
    use signals_schemas::{EventType, Retraction, UserDeletion};

    fn of(user: &str, id: &str, time: Millis) -> Event {
        let mut e = event(id, EventType::View, "a", time);
        e.user_id = user.into();
        e
    }

    #[test]
    fn applies_every_correction() {
        let mut r = Recompute::default();
        let e1 = of("u1", "e1", 10);
        let mut e1_again = of("other", "e1", 99);
        e1_again.item_id = Some("b".into());
        r.add(RecordBody::Retraction(Retraction {
            event_ids: vec!["e2".into()],
            reason: String::new(),
        }));
        for e in [
            e1.clone(),
            e1_again,
            of("u1", "e2", 20),
            of("gone", "e3", 30),
        ] {
            r.add(RecordBody::Event(e));
        }
        r.add(RecordBody::UserDeletion(UserDeletion {
            user_id: "gone".into(),
            reason: String::new(),
        }));
        r.add(RecordBody::Event(of("gone", "e4", 40)));
        let (users, corrections) = r.finish(None);
        assert_eq!(
            corrections,
            Corrections {
                duplicates: 1,
                retracted: 1,
                deleted_user_events: 2,
                deleted_users: 1,
                ..Corrections::default()
            }
        );
        assert_eq!(
            users,
            vec![
                ("gone".into(), UserOutcome::Deleted),
                ("u1".into(), UserOutcome::Events(vec![e1])),
            ]
        );
    }

    #[test]
    fn keeps_only_what_it_is_asked_to_but_dedups_over_everything() {
        let mut r = Recompute::new(Keep {
            users: Some(UserFilter::Ids(HashSet::from(["a".to_owned()]))),
            times: Some((100, 200)),
        });
        r.add(RecordBody::Event(of("b", "x", 150)));
        r.add(RecordBody::Event(of("a", "x", 150)));
        r.add(RecordBody::Event(of("a", "y", 250)));
        r.add(RecordBody::Event(of("a", "z", 100)));
        let (users, corrections) = r.finish(None);
        assert_eq!(corrections.duplicates, 1);
        assert_eq!(
            users,
            vec![("a".into(), UserOutcome::Events(vec![of("a", "z", 100)]))]
        );
    }

    #[test]
    fn a_fraction_samples_stably() {
        let half = UserFilter::Fraction(0.5);
        let picked = (0..10_000)
            .filter(|i| half.contains(&format!("user-{i}")))
            .count();
        assert!((4_500..5_500).contains(&picked), "{picked}");
        assert!((0..100).all(|i| UserFilter::Fraction(1.0).contains(&format!("u{i}"))));
        assert_eq!(half.contains("user-7"), half.contains("user-7"));
    }
}
