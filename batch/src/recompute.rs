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
//!
//! The log does not have to fit in memory (ADR 012). Reading numbers every
//! occurrence of an event id in log order and sorts two streams of records
//! externally ([`spill`](crate::spill), within a memory budget):
//!
//! * by **id digest**: every occurrence and every retraction. Reading them
//!   back in digest order hands over each id's whole story at once, in log
//!   order, so deduplication and retractions are decided id by id exactly
//!   as a single pass over the log decides them; the verdict of each
//!   occurrence (a copy, counted, or counted then withdrawn) is two bits
//!   in a table indexed by its number;
//! * by **user id**: every kept event, packed, with its number. Reading
//!   them back in user order, after the verdicts, gives each user's events
//!   in log order with every correction known.
//!
//! Deletions are held as a set of user ids (a handful of operator actions).

mod decide;
#[cfg(test)]
mod in_memory;

use std::collections::HashSet;
use std::path::PathBuf;

use signals_core::{DedupWindow, IdDigest};
use signals_schemas::{Millis, RecordBody};

use crate::bots::BotFilter;
use crate::packed::EventFields;
use crate::read::Record;
use crate::spill::{Merge, Sorter, SpillError};
use crate::user_events::UserEvents;
use decide::{Kind, Occurrence, Verdict, Verdicts};

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
    /// The events that count (within [`Keep::times`], if set), packed.
    Events(UserEvents),
}

/// How much memory a recompute may hold while it reads, and where it
/// spills the rest.
#[derive(Clone, Debug)]
pub struct Memory {
    /// Bytes of records held before they are written out as a sorted run.
    pub budget: usize,
    /// The directory under which a run's spill directory is made.
    pub spill_in: PathBuf,
}

impl Default for Memory {
    fn default() -> Self {
        Memory {
            budget: 512 << 20,
            spill_in: std::env::temp_dir(),
        }
    }
}

/// Why a recompute failed.
#[derive(Debug, thiserror::Error)]
pub enum RecomputeError {
    #[error(transparent)]
    Spill(#[from] SpillError),
    #[error("cannot pack event {event_id:?}: {source}")]
    Pack {
        event_id: String,
        source: postcard::Error,
    },
    #[error("cannot unpack an event of user {user:?}: {source}")]
    Unpack {
        user: String,
        source: postcard::Error,
    },
    #[error("a spilled record is malformed: {0}")]
    Malformed(&'static str),
}

type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

/// History read from the log so far, in log order.
pub struct Recompute {
    keep: Keep,
    window: DedupWindow,
    digest: IdDigest,
    /// Every occurrence of an event id and every retracted id, by digest.
    ids: Sorter,
    /// Every kept event, packed, by user id.
    events: Sorter,
    deleted: FastSet<String>,
    /// The number the next occurrence of an event id gets: its place in
    /// log order.
    next_occurrence: u64,
    /// The first failure (a spill that could not be written, an event that
    /// could not be packed): reading goes on, [`Recompute::finish`] reports it.
    failed: Option<RecomputeError>,
}

/// The part of the budget the id records get, as their bytes compare
/// with a kept event's: 57 with its slot, against some 80 for a view with
/// its number, its length and its share of a block's unused tail.
const ID_SHARE: (usize, usize) = (2, 5);

impl Recompute {
    pub fn new(keep: Keep, window: DedupWindow, memory: &Memory) -> Recompute {
        // What recomputes killed mid-run left would fill the disk in time.
        crate::spill::remove_abandoned(&memory.spill_in);
        let ids = memory.budget / ID_SHARE.1 * ID_SHARE.0;
        Recompute {
            keep,
            window,
            digest: IdDigest::default(),
            ids: Sorter::new(ids, &memory.spill_in),
            // Many events per user: equal keys found by hashing.
            events: Sorter::grouped(memory.budget - ids, &memory.spill_in),
            deleted: FastSet::default(),
            next_occurrence: 0,
            failed: None,
        }
    }

    /// Takes the next record of the log, accepted at `accepted_at`.
    pub fn add(&mut self, accepted_at: Millis, body: RecordBody) {
        if self.failed.is_none() {
            if let Err(error) = self.try_add(accepted_at, body) {
                self.failed = Some(error);
            }
        }
    }

    /// Takes note of an event id whose event another worker recomputes:
    /// it still makes later copies duplicates.
    pub fn see(&mut self, event_id: &str, accepted_at: Millis) {
        if self.failed.is_none() {
            if let Err(error) = self.occurrence(event_id, accepted_at, Kind::Seen) {
                self.failed = Some(error.into());
            }
        }
    }

    fn try_add(&mut self, accepted_at: Millis, body: RecordBody) -> Result<(), RecomputeError> {
        match body {
            RecordBody::Event(event) => {
                let fields = EventFields {
                    accepted_at,
                    event_id: &event.event_id,
                    user_id: &event.user_id,
                    event_time: event.event_time,
                };
                let mut packed = Ok(());
                self.event(fields, |value| {
                    packed = postcard::to_io(&event, value).map(drop);
                })?;
                packed.map_err(|source| RecomputeError::Pack {
                    event_id: event.event_id.to_string(),
                    source,
                })
            }
            RecordBody::Retraction(retraction) => {
                for id in &retraction.event_ids {
                    let digest = self.digest.of(id).to_be_bytes();
                    self.ids.push_with(&digest, |value| {
                        Occurrence::retraction(accepted_at).write(value)
                    })?;
                }
                Ok(())
            }
            RecordBody::UserDeletion(deletion) => {
                self.deleted.insert(deletion.user_id);
                Ok(())
            }
        }
    }

    /// Takes the next record of the log, read straight into its packed
    /// form if it is a plain event.
    pub fn take(&mut self, record: Record<'_>) {
        match record {
            Record::Event(fields, packed) => {
                if self.failed.is_none() {
                    if let Err(error) = self.event(fields, |value| value.extend_from_slice(packed))
                    {
                        self.failed = Some(error.into());
                    }
                }
            }
            Record::Other(accepted_at, body) => self.add(accepted_at, body),
        }
    }

    /// Records an occurrence of an event and, if kept, the event: `pack`
    /// appends its packed form.
    fn event(
        &mut self,
        fields: EventFields<'_>,
        pack: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), SpillError> {
        let number = self.occurrence(fields.event_id, fields.accepted_at, Kind::Added)?;
        if let Some(users) = &self.keep.users {
            if !users.contains(fields.user_id) {
                return Ok(());
            }
        }
        let in_range = self
            .keep
            .times
            .is_none_or(|(from, to)| fields.event_time >= from && fields.event_time < to);
        // Out of range, the user is still listed if the occurrence counts:
        // an entry with no event says so.
        self.events.push_with(fields.user_id.as_bytes(), |value| {
            value.extend_from_slice(&number.to_le_bytes());
            if in_range {
                pack(value);
            }
        })
    }

    /// Records an occurrence of `event_id`; its number in log order.
    fn occurrence(
        &mut self,
        event_id: &str,
        accepted_at: Millis,
        kind: Kind,
    ) -> Result<u64, SpillError> {
        let number = self.next_occurrence;
        self.next_occurrence += 1;
        let digest = self.digest.of(event_id).to_be_bytes();
        self.ids.push_with(&digest, |value| {
            Occurrence {
                kind,
                number,
                accepted_at,
            }
            .write(value)
        })?;
        Ok(number)
    }

    /// Runs written to disk so far (both streams).
    pub fn spilled_runs(&self) -> usize {
        self.ids.spilled_runs() + self.events.spilled_runs()
    }

    /// Decides every occurrence, then hands the users over in user id
    /// order, ready to be unpacked with every correction applied.
    pub fn finish(self, bots: Option<BotFilter>) -> Result<Recomputed, RecomputeError> {
        if let Some(failed) = self.failed {
            return Err(failed);
        }
        let mut verdicts = Verdicts::new(self.next_occurrence);
        let duplicates = decide::all(self.ids.finish()?, self.window, &mut verdicts)?;
        let entries = self.events.records();
        Ok(Recomputed {
            events: self.events.finish()?,
            verdicts,
            deleted: self.deleted,
            bots,
            corrections: Corrections {
                duplicates,
                ..Corrections::default()
            },
            entries,
            taken: 0,
            key: Vec::new(),
            value: Vec::new(),
        })
    }
}

/// The users of a finished recompute, in user id order: each one's events
/// are unpacked and corrected as it is taken.
pub struct Recomputed {
    events: Merge,
    verdicts: Verdicts,
    deleted: FastSet<String>,
    bots: Option<BotFilter>,
    corrections: Corrections,
    /// Event entries in all, and taken so far (progress).
    entries: u64,
    taken: u64,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Recomputed {
    /// Event entries taken so far and in all: how far the users went.
    pub fn progress(&self) -> (u64, u64) {
        (self.taken, self.entries)
    }

    /// The next users, at most `max_users` of them, and no more than one
    /// user beyond `max_packed_bytes` of packed events (heavy users make
    /// short chunks: decoded events are about ten times their packed size).
    /// Empty once every user is taken.
    pub fn next_chunk(
        &mut self,
        max_users: usize,
        max_packed_bytes: usize,
    ) -> Result<Vec<(String, UserOutcome)>, RecomputeError> {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        while chunk.len() < max_users.max(1) && (chunk.is_empty() || bytes < max_packed_bytes) {
            let Some((user, outcome, packed)) = self.next_user()? else {
                break;
            };
            chunk.push((user, outcome));
            bytes += packed;
        }
        Ok(chunk)
    }

    /// What the corrections removed from the users taken so far (and every
    /// duplicate of the log).
    pub fn corrections(&self) -> Corrections {
        self.corrections
    }

    /// The next user with an occurrence that counts, what counts of theirs
    /// and the bytes of their packed events.
    fn next_user(&mut self) -> Result<Option<(String, UserOutcome, usize)>, RecomputeError> {
        loop {
            let Some(user) = self.events.peek_key().map(<[u8]>::to_vec) else {
                return Ok(None);
            };
            let user = String::from_utf8(user)
                .map_err(|_| RecomputeError::Malformed("a user id is not UTF-8"))?;
            let deleted = self.deleted.contains(&user);
            let (mut listed, mut withdrawn, mut packed) = (false, 0, 0);
            let mut events = UserEvents::default();
            while self.events.peek_key() == Some(user.as_bytes()) {
                self.events.next_into(&mut self.key, &mut self.value)?;
                self.taken += 1;
                let (number, event) = self
                    .value
                    .split_first_chunk::<8>()
                    .ok_or(RecomputeError::Malformed("an event entry has no number"))?;
                let verdict = self.verdicts.get(u64::from_le_bytes(*number))?;
                if verdict == Verdict::Copy {
                    continue;
                }
                listed = true;
                if event.is_empty() {
                    continue;
                }
                packed += event.len();
                if verdict == Verdict::Withdrawn {
                    withdrawn += 1;
                } else if deleted {
                    // Counted, never unpacked: only the number matters.
                    withdrawn += 1;
                } else {
                    events
                        .push(event)
                        .map_err(|source| RecomputeError::Unpack {
                            user: user.clone(),
                            source,
                        })?;
                }
            }
            if !listed {
                // Every occurrence of theirs was a copy of someone's.
                continue;
            }
            let corrections = &mut self.corrections;
            if deleted {
                corrections.deleted_users += 1;
                corrections.deleted_user_events += withdrawn;
                return Ok(Some((user, UserOutcome::Deleted, packed)));
            }
            corrections.retracted += withdrawn;
            if let Some(bots) = self.bots {
                let removed = bots.apply(&mut events);
                if removed > 0 {
                    corrections.bot_events += removed;
                    corrections.bot_users += 1;
                }
            }
            return Ok(Some((user, UserOutcome::Events(events), packed)));
        }
    }
}

impl Iterator for Recomputed {
    type Item = Result<(String, UserOutcome), RecomputeError>;

    /// The next user and what counts of theirs.
    fn next(&mut self) -> Option<Self::Item> {
        self.next_user()
            .map(|next| next.map(|(user, outcome, _)| (user, outcome)))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read;
    use proptest::prelude::*;
    use signals_core::testing::event;
    use signals_schemas::{Event, EventType, Retraction, UserDeletion};

    fn finish(r: Recompute) -> (Vec<(String, UserOutcome)>, Corrections) {
        let mut users = r.finish(None).expect("decides");
        let all = users.by_ref().collect::<Result<_, _>>().expect("unpacks");
        (all, users.corrections())
    }

    fn recompute(keep: Keep, window: DedupWindow) -> Recompute {
        Recompute::new(keep, window, &Memory::default())
    }

    /// What the recompute hands over of `events`.
    fn packed(events: &[Event]) -> UserOutcome {
        UserOutcome::Events(UserEvents::of(events).expect("packs"))
    }

    fn of(user: &str, id: &str, time: Millis) -> Event {
        let mut e = event(id, EventType::View, "a", time);
        e.user_id = user.into();
        e
    }

    #[test]
    fn applies_every_correction() {
        let mut r = recompute(Keep::default(), DedupWindow::DEFAULT);
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
                ("u1".into(), packed(&[e1])),
            ]
        );
    }

    #[test]
    fn keeps_only_what_it_is_asked_to_but_dedups_over_everything() {
        let mut r = recompute(
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
        assert_eq!(users, vec![("a".into(), packed(&[of("a", "z", 100)]))]);
    }

    #[test]
    fn chunks_are_bounded_by_users_and_by_packed_bytes_and_lose_nobody() {
        let mut r = recompute(Keep::default(), DedupWindow::DEFAULT);
        // "heavy" has 200 events, the others one each.
        for i in 0..200 {
            r.add(0, RecordBody::Event(of("heavy", &format!("h{i}"), i)));
        }
        for user in ["a", "b", "c", "x", "y", "z"] {
            r.add(0, RecordBody::Event(of(user, &format!("{user}1"), 1)));
        }
        let one_event = postcard::to_stdvec(&of("a", "a1", 1)).expect("packs").len();
        let mut users = r.finish(None).expect("decides");
        let mut chunks = Vec::new();
        loop {
            let chunk = users.next_chunk(4, 3 * one_event).expect("unpacks");
            if chunk.is_empty() {
                break;
            }
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
                    e.attributes.insert("city", format!("city-{}", id % 3));
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
                RecordBody::Event(e) if seen.insert(e.event_id.clone()) => users
                    .entry(e.user_id.to_string())
                    .or_default()
                    .push(e.clone()),
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
                    let counted: Vec<Event> = events
                        .into_iter()
                        .filter(|e| !retracted.contains(e.event_id.as_str()))
                        .collect();
                    packed(&counted)
                };
                (user, outcome)
            })
            .collect()
    }

    proptest! {
        /// Spilling, digests and unpacking in chunks of any size change
        /// nothing: the outcome is the reference's, user by user, in order.
        #[test]
        fn packed_recompute_in_any_chunks_equals_the_reference(
            steps in proptest::collection::vec(step(), 0..200),
            max_users in 1usize..5,
            max_bytes in 1usize..400,
            budget in 1usize..4_000,
        ) {
            let log: Vec<RecordBody> = steps.iter().map(body).collect();
            let dir = tempfile::tempdir().expect("temp dir");
            let memory = Memory { budget, spill_in: dir.path().into() };
            let mut recompute = Recompute::new(Keep::default(), DedupWindow::DEFAULT, &memory);
            for body in log.iter().cloned() {
                recompute.add(0, body);
            }
            let mut users = recompute.finish(None).expect("decides");
            let mut chunked = Vec::new();
            loop {
                let chunk = users.next_chunk(max_users, max_bytes).expect("unpacks");
                if chunk.is_empty() {
                    break;
                }
                prop_assert!(chunk.len() <= max_users);
                chunked.extend(chunk);
            }
            prop_assert_eq!(chunked, reference(&log));
        }
    }

    #[test]
    fn the_window_decides_copies_and_what_retractions_reach() {
        let mut r = recompute(Keep::default(), DedupWindow::new(10));
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
        let times: Vec<Millis> = events.times().collect();
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

    /// Event times of generated logs start here (the log's rules refuse
    /// events before 2000).
    const T0: Millis = signals_schemas::rules::MIN_EVENT_TIME;

    /// A generated log for the comparison with the in-memory recompute:
    /// acceptance times wander (partitions' clocks differ) over several
    /// windows, ids are copied across users and shares.
    #[derive(Clone, Debug)]
    enum Record {
        Event {
            id: u8,
            user: u8,
            time: Millis,
            accepted_at: Millis,
            /// Another worker's partition: only its id is seen.
            elsewhere: bool,
        },
        Retract(Vec<u8>, Millis),
        Delete(u8),
    }

    fn record() -> impl Strategy<Value = Record> {
        prop_oneof![
            12 => (0u8..60, 0u8..10, 0i64..600_000, 0i64..400, prop::bool::weighted(0.15))
                .prop_map(|(id, user, time, accepted_at, elsewhere)| Record::Event {
                    id, user, time: T0 + time, accepted_at, elsewhere,
                }),
            2 => (prop::collection::vec(0u8..60, 1..4), 0i64..400)
                .prop_map(|(ids, at)| Record::Retract(ids, at)),
            1 => (0u8..10).prop_map(Record::Delete),
        ]
    }

    fn keep() -> impl Strategy<Value = Keep> {
        let users = prop_oneof![
            Just(None),
            (0.05f64..1.0).prop_map(|f| Some(UserFilter::Fraction(f))),
            prop::collection::hash_set(0u8..10, 0..5).prop_map(|ids| Some(UserFilter::Ids(
                ids.into_iter().map(|u| format!("user-{u}")).collect()
            ))),
        ];
        let times = prop_oneof![
            Just(None),
            (0i64..600_000, 0i64..600_000).prop_map(|(a, b)| Some((T0 + a.min(b), T0 + a.max(b)))),
        ];
        (users, times).prop_map(|(users, times)| Keep { users, times })
    }

    /// Feeds `log` to `add` and `see` as a batch run does.
    fn replay(
        log: &[Record],
        mut add: impl FnMut(Millis, RecordBody),
        mut see: impl FnMut(&str, Millis),
    ) {
        replay_read(
            log,
            |record| {
                if let read::Record::Other(at, body) = record {
                    add(at, body)
                }
            },
            false,
            &mut see,
        );
    }

    /// Feeds `log` as `read_log` hands it over: events read straight into
    /// their packed form if `packed`, other records decoded in full.
    fn replay_read(
        log: &[Record],
        mut take: impl FnMut(read::Record<'_>),
        packed: bool,
        see: &mut impl FnMut(&str, Millis),
    ) {
        let mut add = |at: Millis, body: RecordBody| {
            if !packed {
                return take(read::Record::Other(at, body));
            }
            let bytes = signals_schemas::avro::encode(&signals_schemas::LogRecord {
                accepted_at: at,
                body: body.clone(),
            });
            let mut buffer = Vec::new();
            match crate::packed::read_event(&bytes, &mut buffer) {
                Some(fields) => take(read::Record::Event(fields, &buffer)),
                None => take(read::Record::Other(at, body)),
            }
        };
        for record in log {
            match record {
                Record::Event {
                    id,
                    user,
                    time,
                    accepted_at,
                    elsewhere,
                } => {
                    let mut e = of(&format!("user-{user}"), &format!("event-{id}"), *time);
                    // Several users' events share minutes: bursts for the bot rule.
                    e.attributes.insert("city", format!("city-{}", id % 3));
                    if *elsewhere {
                        see(&e.event_id, *accepted_at);
                    } else {
                        add(*accepted_at, RecordBody::Event(e));
                    }
                }
                Record::Retract(ids, at) => add(
                    *at,
                    RecordBody::Retraction(Retraction {
                        event_ids: ids.iter().map(|id| format!("event-{id}")).collect(),
                        reason: String::new(),
                    }),
                ),
                Record::Delete(user) => add(
                    0,
                    RecordBody::UserDeletion(UserDeletion {
                        user_id: format!("user-{user}"),
                        reason: String::new(),
                    }),
                ),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// The streaming recompute, spilling at any budget (down to a run
        /// per record), gives exactly what the whole log in memory gave:
        /// the same users in the same order, the same events in the same
        /// order, the same corrections.
        #[test]
        fn spilling_recompute_equals_the_in_memory_one(
            log in prop::collection::vec(record(), 0..300),
            keep in keep(),
            window in 1i64..150,
            bots in prop::option::of(0u32..4),
            budget in 1usize..3_000,
            packed in any::<bool>(),
        ) {
            let window = DedupWindow::new(window);
            let bots = bots.map(|max_events_per_minute| BotFilter { max_events_per_minute });

            let reference = std::cell::RefCell::new(in_memory::InMemory::new(keep.clone(), window));
            replay(&log, |at, body| reference.borrow_mut().add(at, body), |id, at| reference.borrow_mut().see(id, at));
            let (expected, expected_corrections) = reference.into_inner().finish(bots);

            let dir = tempfile::tempdir().expect("temp dir");
            let memory = Memory { budget, spill_in: dir.path().into() };
            let streaming = std::cell::RefCell::new(Recompute::new(keep, window, &memory));
            replay_read(&log, |record| streaming.borrow_mut().take(record), packed, &mut |id, at| streaming.borrow_mut().see(id, at));
            let streaming = streaming.into_inner();
            let spilled = streaming.spilled_runs();
            let mut users = streaming.finish(bots).expect("decides");
            let got: Vec<(String, UserOutcome)> = users.by_ref().collect::<Result<_, _>>().expect("unpacks");
            prop_assert_eq!(&got, &expected, "spilled {} runs", spilled);
            prop_assert_eq!(users.corrections(), expected_corrections);
            drop(users);
            // Nothing is left behind in the spill directory.
            prop_assert_eq!(std::fs::read_dir(dir.path()).expect("listed").count(), 0);
        }
    }
}
