//! The batch's view of history, folded record by record: the same rules as
//! the speed layer, applied with the whole log in hand.
//!
//! * the first occurrence of an event id in log order is the event; later
//!   ones accepted within the deduplication window of it are duplicates
//!   (whatever their user), later ones still are a new event;
//! * a retraction withdraws the occurrences of its ids accepted before it
//!   and up to the window after it ([`DedupWindow`]);
//! * a deleted user's events never count, before or after the deletion;
//! * then the configured bot rule ([`BotFilter`]) drops over-limit minutes.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

use siphasher::sip128::{Hasher128, SipHasher13};

use signals_core::DedupWindow;
use signals_schemas::{Event, Millis, RecordBody};

use crate::bots::BotFilter;

pub use signals_core::operations::Corrections;

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

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

/// History accumulated from the log, in log order.
///
/// Memory is what bounds a recompute: it holds the whole log's events at
/// once. So events are kept packed (postcard, back to back per user: about
/// a tenth of a decoded event, whose attribute map alone allocates half a
/// KiB) and ids as 128-bit digests, and they are decoded one user at a time
/// when the records are built.
#[derive(Default)]
pub struct Recompute {
    keep: Keep,
    /// Digests of every event id seen, with when its counted occurrence was
    /// accepted: a collision (about 2^-128 per pair, under keys no client
    /// knows) would be needed to take an event for a duplicate.
    seen: FastMap<u128, Millis>,
    digest: IdDigest,
    window: DedupWindow,
    /// Per user, their counted occurrences packed with their acceptance times.
    by_user: FastMap<String, Vec<u8>>,
    /// Retracted id → when its newest retraction was accepted.
    retracted: FastMap<String, Millis>,
    deleted: FastSet<String>,
    duplicates: u64,
    /// The first event that could not be packed (never expected: events
    /// always serialise), reported by [`Recompute::finish`].
    failed: Option<String>,
}

/// 128-bit SipHash-1-3 of event ids under random keys: ids come from
/// clients, so an unkeyed hash would let one craft two ids that collide
/// and make the batch drop an event the speed layer counts.
#[derive(Clone, Copy)]
struct IdDigest {
    keys: (u64, u64),
}

impl Default for IdDigest {
    fn default() -> Self {
        // std seeds every RandomState from the OS's randomness.
        let random = || std::collections::hash_map::RandomState::new().hash_one(0u8);
        IdDigest {
            keys: (random(), random()),
        }
    }
}

impl IdDigest {
    fn of(&self, event_id: &str) -> u128 {
        let mut hasher = SipHasher13::new_with_keys(self.keys.0, self.keys.1);
        hasher.write(event_id.as_bytes());
        hasher.finish128().as_u128()
    }
}

impl Recompute {
    pub fn new(keep: Keep, window: DedupWindow) -> Recompute {
        Recompute {
            keep,
            window,
            ..Recompute::default()
        }
    }

    /// Whether an occurrence of `event_id` accepted at `accepted_at` counts
    /// (is not a copy); if so it is now the id's counted occurrence.
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

    /// Takes the next record of the log, accepted at `accepted_at`.
    pub fn add(&mut self, accepted_at: Millis, body: RecordBody) {
        match body {
            RecordBody::Event(event) => {
                if !self.counts(&event.event_id, accepted_at) {
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
                let packed = match self.by_user.get_mut(&event.user_id) {
                    Some(packed) => packed,
                    None => self.by_user.entry(event.user_id.clone()).or_default(),
                };
                if in_range {
                    if let Err(error) = pack(packed, accepted_at, &event) {
                        self.failed
                            .get_or_insert(format!("event {:?}: {error}", event.event_id));
                    }
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

    /// Takes note of an event id whose event another worker recomputes:
    /// it still makes later copies duplicates.
    pub fn see(&mut self, event_id: &str, accepted_at: Millis) {
        self.counts(event_id, accepted_at);
    }

    /// Number of distinct users with events so far.
    pub fn users(&self) -> usize {
        self.by_user.len()
    }

    /// Every user seen in the log, in user id order, ready to be unpacked
    /// with every correction applied.
    pub fn finish(self, bots: Option<BotFilter>) -> Result<Recomputed, String> {
        if let Some(failed) = self.failed {
            return Err(format!(
                "cannot hold an event of the log in memory: {failed}"
            ));
        }
        let mut users: Vec<(String, Vec<u8>)> = self.by_user.into_iter().collect();
        users.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(Recomputed {
            users: users.into_iter(),
            retracted: self.retracted,
            window: self.window,
            deleted: self.deleted,
            bots,
            corrections: Corrections {
                duplicates: self.duplicates,
                ..Corrections::default()
            },
        })
    }
}

fn pack(packed: &mut Vec<u8>, accepted_at: Millis, event: &Event) -> Result<(), postcard::Error> {
    *packed = postcard::to_extend(&(accepted_at, event), std::mem::take(packed))?;
    Ok(())
}

/// The users of a finished recompute, in user id order: each one's events
/// are unpacked and corrected as it is taken.
pub struct Recomputed {
    users: std::vec::IntoIter<(String, Vec<u8>)>,
    retracted: FastMap<String, Millis>,
    window: DedupWindow,
    deleted: FastSet<String>,
    bots: Option<BotFilter>,
    corrections: Corrections,
}

impl Recomputed {
    /// Users not taken yet.
    pub fn remaining(&self) -> usize {
        self.users.len()
    }

    /// The next users, at most `max_users` of them, and no more than one
    /// user beyond `max_packed_bytes` of packed events (heavy users make
    /// short chunks: decoded events are about ten times their packed size).
    pub fn next_chunk(
        &mut self,
        max_users: usize,
        max_packed_bytes: usize,
    ) -> Result<Vec<(String, UserOutcome)>, String> {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        while chunk.len() < max_users.max(1) && (chunk.is_empty() || bytes < max_packed_bytes) {
            let Some(packed) = self.users.as_slice().first().map(|(_, p)| p.len()) else {
                break;
            };
            chunk.extend(self.next().transpose()?);
            bytes += packed;
        }
        Ok(chunk)
    }

    /// Whether `user` is among the users not taken yet.
    pub fn holds(&self, user: &str) -> bool {
        self.users
            .as_slice()
            .binary_search_by(|(u, _)| u.as_str().cmp(user))
            .is_ok()
    }

    /// What the corrections removed from the users taken so far (and every
    /// duplicate of the log).
    pub fn corrections(&self) -> Corrections {
        self.corrections
    }

    fn outcome(&mut self, user: &str, mut packed: &[u8]) -> Result<UserOutcome, String> {
        let mut events = Vec::new();
        let mut withdrawn = 0;
        while !packed.is_empty() {
            let ((accepted_at, event), rest) = postcard::take_from_bytes::<(Millis, Event)>(packed)
                .map_err(|e| format!("cannot unpack an event of user {user:?}: {e}"))?;
            packed = rest;
            let retracted = self
                .retracted
                .get(&event.event_id)
                .is_some_and(|at| self.window.withdraws(*at, accepted_at));
            if retracted {
                withdrawn += 1;
            } else {
                events.push(event);
            }
        }
        let corrections = &mut self.corrections;
        if self.deleted.contains(user) {
            corrections.deleted_users += 1;
            corrections.deleted_user_events += events.len() as u64 + withdrawn;
            return Ok(UserOutcome::Deleted);
        }
        corrections.retracted += withdrawn;
        if let Some(bots) = self.bots {
            let removed = bots.apply(&mut events);
            if removed > 0 {
                corrections.bot_events += removed;
                corrections.bot_users += 1;
            }
        }
        Ok(UserOutcome::Events(events))
    }
}

impl Iterator for Recomputed {
    type Item = Result<(String, UserOutcome), String>;

    /// The next user and what counts of theirs.
    fn next(&mut self) -> Option<Self::Item> {
        let (user, packed) = self.users.next()?;
        Some(self.outcome(&user, &packed).map(|outcome| (user, outcome)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use signals_core::testing::event;
    use signals_schemas::{EventType, Retraction, UserDeletion};

    fn finish(r: Recompute) -> (Vec<(String, UserOutcome)>, Corrections) {
        let mut users = r.finish(None).expect("packs");
        let all = users.by_ref().collect::<Result<_, _>>().expect("unpacks");
        (all, users.corrections())
    }

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
        r.add(
            0,
            RecordBody::Retraction(Retraction {
                event_ids: vec!["e2".into()],
                reason: String::new(),
            }),
        );
        for e in [
            e1.clone(),
            e1_again,
            of("u1", "e2", 20),
            of("gone", "e3", 30),
        ] {
            r.add(0, RecordBody::Event(e));
        }
        r.add(
            0,
            RecordBody::UserDeletion(UserDeletion {
                user_id: "gone".into(),
                reason: String::new(),
            }),
        );
        r.add(0, RecordBody::Event(of("gone", "e4", 40)));
        let (users, corrections) = finish(r);
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
        let mut r = Recompute::new(
            Keep {
                users: Some(UserFilter::Ids(HashSet::from(["a".to_owned()]))),
                times: Some((100, 200)),
            },
            DedupWindow::DEFAULT,
        );
        r.add(0, RecordBody::Event(of("b", "x", 150)));
        r.add(0, RecordBody::Event(of("a", "x", 150)));
        r.add(0, RecordBody::Event(of("a", "y", 250)));
        r.add(0, RecordBody::Event(of("a", "z", 100)));
        let (users, corrections) = finish(r);
        assert_eq!(corrections.duplicates, 1);
        assert_eq!(
            users,
            vec![("a".into(), UserOutcome::Events(vec![of("a", "z", 100)]))]
        );
    }

    #[test]
    fn chunks_are_bounded_by_users_and_by_packed_bytes_and_lose_nobody() {
        let mut r = Recompute::default();
        // "heavy" has 200 events, the others one each.
        for i in 0..200 {
            r.add(0, RecordBody::Event(of("heavy", &format!("h{i}"), i)));
        }
        for user in ["a", "b", "c", "x", "y", "z"] {
            r.add(0, RecordBody::Event(of(user, &format!("{user}1"), 1)));
        }
        let one_event = {
            let mut packed = Vec::new();
            pack(&mut packed, 0, &of("a", "a1", 1)).expect("packs");
            packed.len()
        };
        let mut users = r.finish(None).expect("packs");
        let mut chunks = Vec::new();
        while users.remaining() > 0 {
            let chunk = users.next_chunk(4, 3 * one_event).expect("unpacks");
            chunks.push(chunk.into_iter().map(|(u, _)| u).collect::<Vec<_>>());
        }
        // Users in id order; at most 4 per chunk; a chunk ends once it holds
        // three events' worth of bytes; the heavy user alone in its chunk.
        assert_eq!(
            chunks,
            vec![vec!["a", "b", "c"], vec!["heavy"], vec!["x", "y", "z"],]
        );
    }

    /// One record of a generated log.
    #[derive(Clone, Debug)]
    enum Step {
        Event {
            id: u8,
            user: u8,
            time: Millis,
            city: bool,
        },
        Retract(u8),
        Delete(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        // Few ids and users, so that duplicates (also across users),
        // retractions and deletions meet the same events often.
        prop_oneof![
            8 => (0u8..40, 0u8..6, 0i64..1_000, any::<bool>())
                .prop_map(|(id, user, time, city)| Step::Event { id, user, time, city }),
            1 => (0u8..40).prop_map(Step::Retract),
            1 => (0u8..6).prop_map(Step::Delete),
        ]
    }

    fn body(step: &Step) -> RecordBody {
        match step {
            Step::Event {
                id,
                user,
                time,
                city,
            } => {
                let mut e = of(&format!("user-{user}"), &format!("event-{id}"), *time);
                if *city {
                    e.attributes
                        .insert("city".into(), format!("city-{}", id % 3));
                }
                RecordBody::Event(e)
            }
            Step::Retract(id) => RecordBody::Retraction(Retraction {
                event_ids: vec![format!("event-{id}")],
                reason: String::new(),
            }),
            Step::Delete(user) => RecordBody::UserDeletion(UserDeletion {
                user_id: format!("user-{user}"),
                reason: String::new(),
            }),
        }
    }

    /// The rules stated plainly, over the whole log at once.
    fn reference(log: &[RecordBody]) -> Vec<(String, UserOutcome)> {
        let mut seen = HashSet::new();
        let (mut retracted, mut deleted) = (HashSet::new(), HashSet::new());
        let mut users: std::collections::BTreeMap<String, Vec<Event>> = Default::default();
        for body in log {
            match body {
                RecordBody::Event(e) if seen.insert(e.event_id.clone()) => {
                    users.entry(e.user_id.clone()).or_default().push(e.clone())
                }
                RecordBody::Event(_) => {}
                RecordBody::Retraction(r) => retracted.extend(r.event_ids.iter().cloned()),
                RecordBody::UserDeletion(d) => {
                    deleted.insert(d.user_id.clone());
                }
            }
        }
        users
            .into_iter()
            .map(|(user, events)| {
                let outcome = if deleted.contains(&user) {
                    UserOutcome::Deleted
                } else {
                    UserOutcome::Events(
                        events
                            .into_iter()
                            .filter(|e| !retracted.contains(&e.event_id))
                            .collect(),
                    )
                };
                (user, outcome)
            })
            .collect()
    }

    proptest! {
        /// Packing, digests and unpacking in chunks of any size change
        /// nothing: the outcome is the reference's, user by user, in order.
        #[test]
        fn packed_recompute_in_any_chunks_equals_the_reference(
            steps in proptest::collection::vec(step(), 0..200),
            max_users in 1usize..5,
            max_bytes in 1usize..400,
        ) {
            let log: Vec<RecordBody> = steps.iter().map(body).collect();
            let mut recompute = Recompute::default();
            for body in log.iter().cloned() {
                recompute.add(0, body);
            }
            let mut users = recompute.finish(None).expect("packs");
            let mut chunked = Vec::new();
            while users.remaining() > 0 {
                let chunk = users.next_chunk(max_users, max_bytes).expect("unpacks");
                prop_assert!(!chunk.is_empty() && chunk.len() <= max_users);
                chunked.extend(chunk);
            }
            prop_assert_eq!(chunked, reference(&log));
        }
    }

    #[test]
    fn the_window_decides_copies_and_what_retractions_reach() {
        let mut r = Recompute::new(Keep::default(), DedupWindow::new(10));
        r.add(0, RecordBody::Event(of("u", "a", 1)));
        r.add(10, RecordBody::Event(of("u", "a", 2)));
        // Re-used after the window: a new event.
        r.add(11, RecordBody::Event(of("u", "a", 3)));
        // Withdrawn although it is far older than the retraction...
        r.add(0, RecordBody::Event(of("u", "old", 4)));
        // ...and this one, which the retraction overtook by the window...
        r.add(110, RecordBody::Event(of("u", "late", 5)));
        // ...but not this one, accepted later still.
        r.add(111, RecordBody::Event(of("u", "later", 6)));
        r.add(
            100,
            RecordBody::Retraction(Retraction {
                event_ids: vec!["old".into(), "late".into(), "later".into()],
                reason: String::new(),
            }),
        );
        let (users, corrections) = finish(r);
        assert_eq!((corrections.duplicates, corrections.retracted), (1, 2));
        let UserOutcome::Events(events) = &users[0].1 else {
            panic!("not deleted")
        };
        let times: Vec<Millis> = events.iter().map(|e| e.event_time).collect();
        assert_eq!(times, vec![1, 3, 6]);
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
