//! The deduplication window: how long an event id stays reserved, and what a
//! retraction reaches. Both layers apply these rules to the acceptance times
//! the collector stamps on every log record, so they decide every record
//! alike, and the speed layer's event index may forget an id once no record
//! can still be decided by it (ADR 006).
//!
//! * An occurrence of an id accepted within the window of the counted
//!   occurrence's acceptance is a copy: it never counts. A client retrying,
//!   a producer resending, a replay of the same batch: all copies.
//! * An id re-used more than the window later is a new event.
//! * A retraction withdraws every occurrence of its ids accepted before it,
//!   whatever their age, and those accepted up to the window after it (a
//!   retraction can overtake its event: they travel on different partitions).

use serde::{Deserialize, Serialize};
use signals_schemas::Millis;

/// The width of the deduplication window, in acceptance time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupWindow(Millis);

impl DedupWindow {
    /// Seven days: far beyond any client's retries, and a week of ids is
    /// what the index holds.
    pub const DEFAULT: DedupWindow = DedupWindow(7 * 24 * 3_600_000);

    pub const fn new(width: Millis) -> DedupWindow {
        DedupWindow(width)
    }

    pub const fn width(self) -> Millis {
        self.0
    }

    /// Whether an occurrence accepted at `accepted_at` is a copy of the
    /// counted occurrence accepted at `first`.
    pub fn is_copy(self, first: Millis, accepted_at: Millis) -> bool {
        accepted_at <= first.saturating_add(self.0)
    }

    /// Whether a retraction accepted at `retracted_at` withdraws an
    /// occurrence accepted at `accepted_at`.
    pub fn withdraws(self, retracted_at: Millis, accepted_at: Millis) -> bool {
        accepted_at <= retracted_at.saturating_add(self.0)
    }
}

impl Default for DedupWindow {
    fn default() -> Self {
        DedupWindow::DEFAULT
    }
}

/// 128-bit SipHash-1-3 of event ids under keys drawn when it is made: ids
/// come from clients, so an unkeyed hash would let one craft two ids that
/// collide and make a layer take one event for another (a copy dropped, an
/// id forgotten). The batch and the embedded store's index key their
/// in-memory id tables by it; a collision needs about 2^-128 luck per pair.
#[derive(Clone, Copy)]
pub struct IdDigest {
    keys: (u64, u64),
}

impl Default for IdDigest {
    fn default() -> Self {
        use std::hash::BuildHasher;
        // std seeds every RandomState from the OS's randomness.
        let random = || std::collections::hash_map::RandomState::new().hash_one(0u8);
        IdDigest {
            keys: (random(), random()),
        }
    }
}

impl IdDigest {
    pub fn of(&self, event_id: &str) -> u128 {
        use siphasher::sip128::{Hasher128, SipHasher13};
        use std::hash::Hasher;
        let mut hasher = SipHasher13::new_with_keys(self.keys.0, self.keys.1);
        hasher.write(event_id.as_bytes());
        hasher.finish128().as_u128()
    }
}

/// What the speed layer's index remembers of one event id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The user of the counted occurrence (or of a retraction's target).
    pub user_id: Option<String>,
    /// When the counted occurrence was accepted. `None` with a user: an
    /// entry written before the window existed, which reserves its id for
    /// good.
    pub accepted_at: Option<Millis>,
    /// When the newest retraction naming the id was accepted.
    pub retracted_at: Option<Millis>,
    /// Wall-clock time after which the store may drop the entry (the
    /// acceptance time until which it decides anything, plus a grace for
    /// the speed layer's lag); `None`: never.
    pub expires_at: Option<Millis>,
}

/// What an occurrence of an event id is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Occurrence {
    /// It counts.
    Counts,
    /// A copy of the counted occurrence.
    Copy,
    /// It is the id's counted occurrence, but a retraction withdrew it.
    Withdrawn,
}

/// The index's rules: what each record is, given what the index holds of its
/// ids, and what the index holds after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deduplication {
    pub window: DedupWindow,
    /// How long after the window an entry is kept: the speed layer may fall
    /// this far behind the collector (in acceptance time) and still find
    /// every entry that decides a record.
    pub grace: Millis,
}

impl Default for Deduplication {
    fn default() -> Self {
        Deduplication {
            window: DedupWindow::DEFAULT,
            grace: DedupWindow::DEFAULT.width(),
        }
    }
}

impl Deduplication {
    /// Decides an event of `user_id` accepted at `accepted_at`, and the
    /// index's entry for its id afterwards (`None`: unchanged).
    pub fn on_event(
        &self,
        entry: Option<&IndexEntry>,
        user_id: &str,
        accepted_at: Millis,
    ) -> (Occurrence, Option<IndexEntry>) {
        if entry.is_some_and(|e| self.reserves(e, accepted_at)) {
            return (Occurrence::Copy, None);
        }
        let retracted_at = entry.and_then(|e| e.retracted_at);
        let occurrence = match retracted_at {
            Some(at) if self.window.withdraws(at, accepted_at) => Occurrence::Withdrawn,
            _ => Occurrence::Counts,
        };
        let next = self.sealed(IndexEntry {
            user_id: Some(user_id.to_owned()),
            accepted_at: Some(accepted_at),
            retracted_at,
            expires_at: None,
        });
        (occurrence, Some(next))
    }

    /// Applies a retraction accepted at `accepted_at` to the entry of one of
    /// its ids: the entry afterwards, and the user whose counted occurrence
    /// it reaches (`None`: nothing counted that it reaches).
    ///
    /// The user is named even when an earlier retraction withdrew that
    /// occurrence already: the speed layer writes a retraction's ids per
    /// user as one row at the retraction's position, and a replay of a
    /// write cut short, planned with some of its index rows landed, must
    /// write that row whole again, not a smaller one over it.
    pub fn on_retraction(
        &self,
        entry: Option<&IndexEntry>,
        accepted_at: Millis,
    ) -> (Option<String>, IndexEntry) {
        let counted = entry.and_then(|e| e.user_id.clone().map(|u| (u, e.accepted_at)));
        let retracted_at = entry.and_then(|e| e.retracted_at).max(Some(accepted_at));
        // An entry from before the window (no acceptance time): any
        // retraction reaches it.
        let reached = counted.as_ref().and_then(|(user, counted_at)| {
            counted_at
                .is_none_or(|at| self.window.withdraws(accepted_at, at))
                .then(|| user.clone())
        });
        let next = self.sealed(IndexEntry {
            user_id: counted.as_ref().map(|(u, _)| u.clone()),
            accepted_at: counted.and_then(|(_, at)| at),
            retracted_at,
            expires_at: None,
        });
        (reached, next)
    }

    /// Whether `entry` makes an occurrence accepted at `accepted_at` a copy.
    fn reserves(&self, entry: &IndexEntry, accepted_at: Millis) -> bool {
        match (&entry.user_id, entry.accepted_at) {
            (_, Some(first)) => self.window.is_copy(first, accepted_at),
            (Some(_), None) => true,
            (None, None) => false,
        }
    }

    /// The last acceptance time at which `entry` decides anything: after
    /// it, every record is decided as if the entry were absent. `None`:
    /// never (an entry from before the window).
    pub fn decides_until(&self, entry: &IndexEntry) -> Option<Millis> {
        let counted = match (&entry.user_id, entry.accepted_at) {
            (Some(_), None) => return None,
            (_, at) => at,
        };
        counted
            .max(entry.retracted_at)
            .map(|at| at.saturating_add(self.window.width()))
    }

    fn sealed(&self, mut entry: IndexEntry) -> IndexEntry {
        entry.expires_at = self
            .decides_until(&entry)
            .map(|until| until.saturating_add(self.grace));
        entry
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use proptest::prelude::*;

    use super::*;

    /// One record of a log: an event occurrence or a retraction of one id.
    #[derive(Clone, Debug)]
    enum Record {
        Event { id: u8, user: u8 },
        Retract { id: u8 },
    }

    /// Records with their acceptance times: mostly rising, with the jitter
    /// of several collectors' clocks.
    fn arb_log() -> impl Strategy<Value = Vec<(Record, Millis)>> {
        let record = prop_oneof![
            4 => (0u8..6, 0u8..3).prop_map(|(id, user)| Record::Event { id, user }),
            1 => (0u8..6).prop_map(|id| Record::Retract { id }),
        ];
        prop::collection::vec((record, 0i64..40, -5i64..5), 1..80).prop_map(|items| {
            let mut clock = 0;
            items
                .into_iter()
                .map(|(record, step, jitter)| {
                    clock += step;
                    (record, (clock + jitter).max(0))
                })
                .collect()
        })
    }

    /// The batch's way: the whole log in hand, the window rules applied
    /// with full memory. The occurrences that count, by log index.
    fn batch(window: DedupWindow, log: &[(Record, Millis)]) -> HashSet<usize> {
        let mut first: HashMap<u8, Millis> = HashMap::new();
        let mut retracted: HashMap<u8, Millis> = HashMap::new();
        let mut counted = Vec::new();
        for (index, (record, at)) in log.iter().enumerate() {
            match record {
                Record::Event { id, .. } => {
                    if first.get(id).is_some_and(|f| window.is_copy(*f, *at)) {
                        continue;
                    }
                    first.insert(*id, *at);
                    counted.push((index, *id, *at));
                }
                Record::Retract { id } => {
                    let newest = retracted.entry(*id).or_insert(*at);
                    *newest = (*newest).max(*at);
                }
            }
        }
        counted
            .into_iter()
            .filter(|(_, id, at)| !retracted.get(id).is_some_and(|r| window.withdraws(*r, *at)))
            .map(|(index, _, _)| index)
            .collect()
    }

    proptest! {
        /// The speed layer's index, dropping every entry as soon as its
        /// expiry allows (the speed layer applying each record `lag` after
        /// the newest acceptance it has seen, `lag` within the grace),
        /// decides the same occurrences as the batch with the whole log.
        ///
        /// Two kinds of retraction take effect at the next batch run
        /// instead (the contract lets retractions wait for it), and are left
        /// out of the comparison: one accepted more than the window after
        /// the occurrence it withdraws (the index may have forgotten whose
        /// it was), and one of an id re-used after the window (serving
        /// withdraws by id, for the user the index names).
        #[test]
        fn a_forgetting_index_decides_like_the_whole_log(
            log in arb_log(),
            width in 1i64..60,
            lag in 0i64..15,
        ) {
            let window = DedupWindow::new(width);
            let rules = Deduplication { window, grace: 25 };
            let mut index: HashMap<u8, IndexEntry> = HashMap::new();
            let mut counted: HashMap<u8, Vec<usize>> = HashMap::new();
            let mut newest = 0;
            for (position, (record, at)) in log.iter().enumerate() {
                newest = newest.max(*at);
                // The wall clock the speed layer applies this record at.
                let now = newest + lag;
                index.retain(|_, e| e.expires_at.is_none_or(|t| t >= now));
                match record {
                    Record::Event { id, user } => {
                        let (occurrence, next) =
                            rules.on_event(index.get(id), &user.to_string(), *at);
                        if let Some(next) = next {
                            index.insert(*id, next);
                        }
                        if occurrence == Occurrence::Counts {
                            counted.entry(*id).or_default().push(position);
                        }
                    }
                    Record::Retract { id } => {
                        let (withdrawn, next) = rules.on_retraction(index.get(id), *at);
                        index.insert(*id, next);
                        if withdrawn.is_some() {
                            counted.remove(id);
                        }
                    }
                }
            }
            let generations = generations(window, &log);
            let decided_later = |index: &usize| {
                let (Record::Event { id, .. }, at) = log[*index] else { return false };
                let retractions = || log.iter().filter_map(|(r, t)| match r {
                    Record::Retract { id: r } if *r == id => Some(*t),
                    _ => None,
                });
                let reused = generations.get(&id).is_some_and(|g| *g > 1);
                let long_after = retractions().any(|t| t > at + width);
                (reused && retractions().next().is_some()) || long_after
            };
            let speed: HashSet<usize> =
                counted.into_values().flatten().filter(|i| !decided_later(i)).collect();
            let mut expected = batch(window, &log);
            expected.retain(|i| !decided_later(i));
            prop_assert_eq!(speed, expected);
        }
    }

    /// How many generations (occurrences that are not copies) each id has.
    fn generations(window: DedupWindow, log: &[(Record, Millis)]) -> HashMap<u8, usize> {
        let mut first: HashMap<u8, Millis> = HashMap::new();
        let mut count = HashMap::new();
        for (record, at) in log {
            if let Record::Event { id, .. } = record {
                if !first.get(id).is_some_and(|f| window.is_copy(*f, *at)) {
                    first.insert(*id, *at);
                    *count.entry(*id).or_insert(0) += 1;
                }
            }
        }
        count
    }

    #[test]
    fn copies_count_once_within_the_window_and_again_after_it() {
        let rules = Deduplication {
            window: DedupWindow::new(100),
            grace: 10,
        };
        let (first, entry) = rules.on_event(None, "u", 1_000);
        assert_eq!(first, Occurrence::Counts);
        let entry = entry.expect("a new entry");
        assert_eq!(entry.expires_at, Some(1_110));
        assert_eq!(rules.on_event(Some(&entry), "u", 1_100).0, Occurrence::Copy);
        assert_eq!(
            rules.on_event(Some(&entry), "u", 1_101).0,
            Occurrence::Counts
        );
    }

    #[test]
    fn a_retraction_reaches_old_events_and_ones_that_arrive_soon_after_it() {
        let rules = Deduplication {
            window: DedupWindow::new(100),
            grace: 10,
        };
        let (_, counted) = rules.on_event(None, "u", 0);
        let (withdrawn, entry) = rules.on_retraction(counted.as_ref(), 5_000);
        assert_eq!(withdrawn.as_deref(), Some("u"));
        // A second retraction reaches it too, and names its user again.
        assert_eq!(
            rules.on_retraction(Some(&entry), 5_001).0.as_deref(),
            Some("u")
        );

        // The retraction overtook its event.
        let (none, early) = rules.on_retraction(None, 5_000);
        assert_eq!(none, None);
        assert_eq!(early.expires_at, Some(5_110));
        assert_eq!(
            rules.on_event(Some(&early), "u", 5_100).0,
            Occurrence::Withdrawn
        );
        assert_eq!(
            rules.on_event(Some(&early), "u", 5_101).0,
            Occurrence::Counts
        );
    }

    #[test]
    fn entries_from_before_the_window_reserve_their_id_for_good() {
        let rules = Deduplication::default();
        let legacy = IndexEntry {
            user_id: Some("u".into()),
            accepted_at: None,
            retracted_at: None,
            expires_at: None,
        };
        assert_eq!(
            rules.on_event(Some(&legacy), "u", Millis::MAX).0,
            Occurrence::Copy
        );
        assert_eq!(rules.decides_until(&legacy), None);
        let (withdrawn, after) = rules.on_retraction(Some(&legacy), 7);
        assert_eq!(withdrawn.as_deref(), Some("u"));
        assert_eq!(after.expires_at, None);
    }
}
