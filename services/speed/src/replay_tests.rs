//! Crashes and replays, against a model of the store.
//!
//! A speed write lands in pieces on CQL: its entry rows, then its index rows,
//! then its progress. A process killed in between leaves some of them, and
//! the next one replays from the recorded progress, polling the partitions
//! in another interleaving, so its plan may differ from the one cut short.
//! The store below keeps what landed exactly as CQL would (a row per
//! position, overwritten by a later write to it); whatever the crashes, once
//! a run completes each event id that counts must be held once, by one
//! user that appended it, and no retracted one by anybody.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use proptest::prelude::*;
use signals_core::testing::event;
use signals_core::{Deduplication, LogPosition, SpeedEntry, SpeedTail, UserView};
use signals_log::LogEntry;
use signals_schemas::{avro, EventType, LogRecord, RecordBody, Retraction};
use signals_store::{IndexEntry, SpeedWrite};

use crate::plan::{decode, ids_to_look_up, overlay, plan};

const PARTITIONS: u32 = 3;
const USERS: u32 = 4;

/// What a client appends, in the order the log accepts it.
#[derive(Clone, Debug)]
enum Append {
    /// An event of `user` with the `n`-th event id of user `owner` (a later
    /// append of the same id is a copy; an owner other than the user is a
    /// producer reusing another user's id, on another partition).
    Event { user: u32, owner: u32, n: u32 },
    /// A retraction of some users' event ids, on a partition of its own.
    Retraction {
        partition: u32,
        ids: Vec<(u32, u32)>,
    },
}

fn event_id(user: u32, n: u32) -> String {
    format!("u{user}-e{n}")
}

fn appends() -> impl Strategy<Value = Vec<Append>> {
    let own = (0..USERS, 0..6u32).prop_map(|(user, n)| Append::Event {
        user,
        owner: user,
        n,
    });
    let reused =
        (0..USERS, 0..USERS, 0..6u32).prop_map(|(user, owner, n)| Append::Event { user, owner, n });
    let retraction = (
        0..PARTITIONS,
        prop::collection::vec((0..USERS, 0..6u32), 1..3),
    )
        .prop_map(|(partition, ids)| Append::Retraction { partition, ids });
    prop::collection::vec(prop_oneof![6 => own, 1 => reused, 2 => retraction], 1..40)
}

/// The log's partitions, each a list of (accepted at, record).
fn log_of(appends: &[Append]) -> Vec<Vec<(i64, RecordBody)>> {
    let mut partitions = vec![Vec::new(); PARTITIONS as usize];
    for (accepted_at, append) in appends.iter().enumerate() {
        let (partition, body) = match append {
            Append::Event { user, owner, n } => {
                let mut e = event(
                    &event_id(*owner, *n),
                    EventType::View,
                    "item",
                    1_795_428_000_000,
                );
                e.user_id = signals_schemas::format_smolstr!("u{user}");
                (user % PARTITIONS, RecordBody::Event(e))
            }
            Append::Retraction { partition, ids } => (
                *partition,
                RecordBody::Retraction(Retraction {
                    event_ids: ids.iter().map(|(u, n)| event_id(*u, *n)).collect(),
                    reason: "wrong".into(),
                }),
            ),
        };
        partitions[partition as usize].push((accepted_at as i64, body));
    }
    partitions
}

/// The users that appended each event id, for every id that counts: every
/// id appended, none retracted.
fn expected(appends: &[Append]) -> BTreeMap<String, BTreeSet<String>> {
    let retracted: HashSet<String> = appends
        .iter()
        .flat_map(|a| match a {
            Append::Retraction { ids, .. } => ids.iter().map(|(u, n)| event_id(*u, *n)).collect(),
            Append::Event { .. } => Vec::new(),
        })
        .collect();
    let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for append in appends {
        if let Append::Event { user, owner, n } = append {
            let id = event_id(*owner, *n);
            if !retracted.contains(&id) {
                ids.entry(id).or_default().insert(format!("u{user}"));
            }
        }
    }
    ids
}

/// What the store holds: rows keyed like CQL's, overwritten in place.
#[derive(Default)]
struct Store {
    entries: BTreeMap<(String, u32, u64), SpeedEntry>,
    index: HashMap<String, IndexEntry>,
    progress: LogPosition,
}

impl Store {
    /// Each event id served, with the users whose views hold it (as many
    /// times as they hold it).
    fn served(&self) -> BTreeMap<String, Vec<String>> {
        let mut by_user: BTreeMap<String, Vec<SpeedEntry>> = BTreeMap::new();
        for ((user, _, _), entry) in &self.entries {
            by_user.entry(user.clone()).or_default().push(entry.clone());
        }
        let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (user, entries) in by_user {
            let view = UserView::with_tail(None, SpeedTail::default().extended(None, entries));
            for event in view.events() {
                ids.entry(event.event_id.to_string())
                    .or_default()
                    .push(user.clone());
            }
        }
        ids
    }
}

/// Random choices, drawn in turn (proptest shrinks them like any value).
struct Choices {
    values: Vec<u32>,
    next: usize,
}

impl Choices {
    fn below(&mut self, n: u32) -> u32 {
        let value = self.values[self.next % self.values.len()];
        self.next += 1;
        value % n
    }
}

/// Writes `write` as CQL would, unless the process is killed in the middle
/// of it (`false`): entry rows land first, in any order; the index rows only
/// once every entry row is acknowledged; the progress last.
fn apply(
    store: &mut Store,
    write: &SpeedWrite,
    choices: &mut Choices,
    crashes: &mut u32,
    committed: &mut LogPosition,
) -> bool {
    if *crashes > 0 && choices.below(3) == 0 {
        *crashes -= 1;
        let mut all_landed = true;
        for e in &write.entries {
            if choices.below(2) == 0 {
                let key = (e.user_id.clone(), e.partition, e.offset);
                store.entries.insert(key, e.entry.clone());
            } else {
                all_landed = false;
            }
        }
        if all_landed {
            for (id, entry) in &write.index {
                if choices.below(2) == 0 {
                    store.index.insert(id.clone(), entry.clone());
                }
            }
        }
        return false;
    }
    for e in &write.entries {
        let key = (e.user_id.clone(), e.partition, e.offset);
        store.entries.insert(key, e.entry.clone());
    }
    store.index.extend(write.index.iter().cloned());
    store.progress = write.progress.position.clone();
    if choices.below(2) == 0 {
        *committed = store.progress.clone();
    }
    true
}

/// Runs the speed layer over `log` until it has applied every record,
/// killing it up to `crashes` times in the middle of a write. `pipelined`:
/// each batch is planned while the one before is written, as the layer
/// does, the index's answers overlaid with that write's updates.
fn run(
    log: &[Vec<(i64, RecordBody)>],
    choices: &mut Choices,
    mut crashes: u32,
    pipelined: bool,
) -> Store {
    let rules = Deduplication::default();
    let mut store = Store::default();
    // The consumer group's committed offsets: at most the recorded progress.
    let mut committed = LogPosition::new();
    'process: loop {
        // A new process resumes each partition from its committed offset,
        // or further: anything up to the recorded progress may replay.
        let mut next: Vec<u64> = (0..PARTITIONS)
            .map(|p| {
                let (from, to) = (committed.next(p), store.progress.next(p));
                from + u64::from(choices.below((to - from) as u32 + 1))
            })
            .collect();
        if (0..PARTITIONS).all(|p| next[p as usize] as usize >= log[p as usize].len()) {
            return store;
        }
        let mut position = store.progress.clone();
        let mut pending: Option<SpeedWrite> = None;
        loop {
            // One poll: a few records from each of some partitions, in an
            // order of its own.
            let mut polled = Vec::new();
            for _ in 0..=choices.below(4) {
                let unread: Vec<u32> = (0..PARTITIONS)
                    .filter(|p| (next[*p as usize] as usize) < log[*p as usize].len())
                    .collect();
                let Some(&p) = unread.get(choices.below(unread.len().max(1) as u32) as usize)
                else {
                    break;
                };
                for _ in 0..=choices.below(3) {
                    let Some((accepted_at, body)) = log[p as usize].get(next[p as usize] as usize)
                    else {
                        break;
                    };
                    polled.push(LogEntry {
                        partition: p,
                        offset: next[p as usize],
                        bytes: avro::encode(&LogRecord {
                            accepted_at: *accepted_at,
                            body: body.clone(),
                        }),
                    });
                    next[p as usize] += 1;
                }
            }
            if polled.is_empty() {
                if let Some(write) = pending.take() {
                    if !apply(&mut store, &write, choices, &mut crashes, &mut committed) {
                        continue 'process;
                    }
                }
                return store;
            }
            let batch = decode(polled, &position);
            let ids = ids_to_look_up(&batch.records);
            let mut known = ids
                .iter()
                .filter_map(|id| store.index.get(id).map(|e| (id.clone(), e.clone())))
                .collect();
            if let Some(in_flight) = &pending {
                overlay(&mut known, &ids, &in_flight.index);
            }
            let (write, _) = plan(batch, known, None, &rules, &mut HashSet::new());
            position = write.progress.position.clone();
            if let Some(in_flight) = pending.take() {
                if !apply(
                    &mut store,
                    &in_flight,
                    choices,
                    &mut crashes,
                    &mut committed,
                ) {
                    continue 'process;
                }
            }
            if pipelined {
                pending = Some(write);
            } else if !apply(&mut store, &write, choices, &mut crashes, &mut committed) {
                continue 'process;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_event_counts_once_and_no_retracted_one_whatever_the_crashes(
        appends in appends(),
        values in prop::collection::vec(any::<u32>(), 1..200),
        crashes in 0..4u32,
        pipelined in any::<bool>(),
    ) {
        let log = log_of(&appends);
        let store = run(&log, &mut Choices { values, next: 0 }, crashes, pipelined);
        let served = store.served();
        let expected = expected(&appends);
        prop_assert_eq!(served.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
        for (id, users) in &served {
            // Which user wins an id two users appended depends on the
            // order partitions are polled in; that exactly one does does not.
            prop_assert_eq!(users.len(), 1, "{} counted for {:?}", id, users);
            prop_assert!(expected[id].contains(&users[0]), "{} counted for {:?}", id, users);
        }
    }
}
