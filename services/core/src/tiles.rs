//! Tiles: aggregation states over blocks of a batch record's events, so that
//! a read costs about the same for the heaviest user as for a light one.
//!
//! A published record holds a user's raw events of the serving horizon
//! (retention + widest window). Folding all of them into every requested
//! signal on every read made a read cost O(events). For each definition, a
//! record's matching events are put in time order and cut into blocks of
//! fixed *counts* at a few levels (64, 512, … 262144 events); each block
//! keeps the state of its events. A window `[from, until)` is two binary
//! searches, then whole blocks merged (largest first) and raw events only
//! at the two edges, fewer than a smallest block on each side; a window
//! from the first event (lifetime signals, sessions) starts from a running
//! state. O(log n + levels × fan-out) per signal, exact at any millisecond,
//! because states merge exactly like folding (the monoid law of
//! [`State::merge`], property-tested there and for tiles below).
//!
//! Blocks by count rather than by time bucket: a heavy user's hour holds
//! thousands of events, a light user's day a handful, and a block's cost is
//! what it holds. Tiles are derived data: built on a record's first read
//! per definition, kept beside the decoded record in the store's record
//! cache, never stored. Records too small for tiles to pay keep the plain
//! fold.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use signals_schemas::{Event, Millis};

use crate::aggregate::State;
use crate::definition::{Aggregation, SignalDefinition, SignalSpec};

/// Block sizes (events per block, each a multiple of the one before) and
/// the smallest record worth tiling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TileShape {
    pub sizes: Vec<usize>,
    pub min_events: usize,
}

impl Default for TileShape {
    fn default() -> Self {
        TileShape {
            sizes: vec![64, 512, 4096, 32_768, 262_144],
            min_events: 1024,
        }
    }
}

/// Most running states kept per definition.
const MAX_PREFIXES: usize = 2048;

/// One definition's matching events of a record, in time order, with the
/// states of their blocks.
#[derive(Debug)]
pub struct DefinitionTiles {
    /// The definition the blocks were folded with.
    spec: SignalSpec,
    /// Indices into the record's events, by event time ascending.
    order: Vec<u32>,
    /// The event time of each entry of `order`.
    times: Vec<Millis>,
    /// Per level, smallest first: its block size and the state of each
    /// complete block (`states[b]` folds `order[b * size..(b + 1) * size]`).
    levels: Vec<(usize, Vec<State>)>,
    /// Running states from the first event at every block boundary of one
    /// level (`states[k]` folds `order[..(k + 1) * size]`): lifetime
    /// signals and sessions read from the first event, and one merge of a
    /// prefix replaces most of the blocks they would merge. Not kept for
    /// distinct counts, whose states grow with every new value.
    prefixes: Option<(usize, Vec<State>)>,
}

impl DefinitionTiles {
    /// Orders `definition`'s matching events among `events` and folds their
    /// blocks at every size of `sizes`.
    pub fn build(definition: &SignalDefinition, events: &[Event], sizes: &[usize]) -> Self {
        // Records keep their events newest first: reversed, they are in
        // order already, and the sort only checks it.
        let mut order: Vec<u32> = (0..events.len())
            .rev()
            .filter(|&i| definition.matches(&events[i]))
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        if !order.is_sorted_by_key(|&i| events[i as usize].event_time) {
            order.sort_by_key(|&i| events[i as usize].event_time);
        }
        let times: Vec<Millis> = order
            .iter()
            .map(|&i| events[i as usize].event_time)
            .collect();
        let aggregation = &definition.aggregation;
        let mut levels: Vec<(usize, Vec<State>)> = Vec::new();
        for &size in sizes.iter().filter(|&&s| s > 0 && s <= order.len()) {
            let states = match levels.last() {
                // A block of this level merges whole blocks of the one below.
                Some((below, below_states)) if size % below == 0 => below_states
                    .chunks_exact(size / below)
                    .map(|parts| {
                        let mut state = State::empty(aggregation);
                        for part in parts {
                            state.merge(aggregation, part);
                        }
                        state
                    })
                    .collect(),
                _ => order
                    .chunks_exact(size)
                    .map(|block| {
                        let mut state = State::empty(aggregation);
                        for &i in block {
                            state.add(aggregation, &events[i as usize]);
                        }
                        state
                    })
                    .collect(),
            };
            levels.push((size, states));
        }
        // The finest level with at most MAX_PREFIXES blocks: memory stays
        // bounded while what is left after a prefix is under one block.
        let prefixes = levels
            .iter()
            .find(|(_, blocks)| blocks.len() <= MAX_PREFIXES)
            .filter(|_| !matches!(aggregation, Aggregation::DistinctCount(_)))
            .map(|(size, blocks)| {
                let mut running = State::empty(aggregation);
                let states = blocks
                    .iter()
                    .map(|block| {
                        running.merge(aggregation, block);
                        running.clone()
                    })
                    .collect();
                (*size, states)
            });
        DefinitionTiles {
            spec: definition.spec.clone(),
            order,
            times,
            levels,
            prefixes,
        }
    }

    /// Adds to `state` the matching events with `from <= event_time < until`.
    pub fn fold(
        &self,
        definition: &SignalDefinition,
        events: &[Event],
        from: Millis,
        until: Millis,
        state: &mut State,
    ) {
        let mut lo = self.times.partition_point(|&t| t < from);
        let hi = self.times.partition_point(|&t| t < until);
        if let Some((size, prefixes)) = &self.prefixes {
            if lo == 0 && hi >= *size {
                let whole = hi / size;
                state.merge(&definition.aggregation, &prefixes[whole - 1]);
                lo = whole * size;
            }
        }
        if lo < hi {
            self.fold_positions(self.levels.len(), lo, hi, definition, events, state);
        }
    }

    /// Folds `order[lo..hi]` with the blocks of levels below `level`.
    fn fold_positions(
        &self,
        level: usize,
        lo: usize,
        hi: usize,
        definition: &SignalDefinition,
        events: &[Event],
        state: &mut State,
    ) {
        let Some(below) = level.checked_sub(1) else {
            for &i in &self.order[lo..hi] {
                state.add(&definition.aggregation, &events[i as usize]);
            }
            return;
        };
        let (size, states) = &self.levels[below];
        let first = lo.div_ceil(*size);
        let last = hi / size;
        if first >= last {
            return self.fold_positions(below, lo, hi, definition, events, state);
        }
        self.fold_positions(below, lo, first * size, definition, events, state);
        for block in &states[first..last] {
            state.merge(&definition.aggregation, block);
        }
        self.fold_positions(below, last * size, hi, definition, events, state);
    }

    /// How many states the blocks and prefixes hold.
    pub fn blocks(&self) -> usize {
        let prefixes = self.prefixes.as_ref().map_or(0, |(_, p)| p.len());
        self.levels
            .iter()
            .map(|(_, states)| states.len())
            .sum::<usize>()
            + prefixes
    }
}

/// The tiles of one record, built per definition on first use and shared
/// by every read of the record after that.
#[derive(Default)]
pub struct Tiles {
    shape: TileShape,
    built: RwLock<HashMap<String, Arc<OnceLock<Arc<DefinitionTiles>>>>>,
}

impl Tiles {
    pub fn with_shape(shape: TileShape) -> Tiles {
        Tiles {
            shape,
            built: RwLock::default(),
        }
    }

    /// `definition`'s tiles over `events` (the record's), built now if this
    /// is their first use; `None` when the record is too small to tile.
    pub fn for_definition(
        &self,
        definition: &SignalDefinition,
        events: &[Event],
    ) -> Option<Arc<DefinitionTiles>> {
        if events.len() < self.shape.min_events.max(1) {
            return None;
        }
        let cell = {
            let built = self.built.read().unwrap_or_else(|p| p.into_inner());
            built.get(&definition.name).cloned()
        };
        let cell = match cell {
            Some(cell) => cell,
            None => {
                let mut built = self.built.write().unwrap_or_else(|p| p.into_inner());
                built.entry(definition.name.clone()).or_default().clone()
            }
        };
        // Concurrent first reads wait for one build instead of each doing it.
        let tiles = cell
            .get_or_init(|| {
                Arc::new(DefinitionTiles::build(
                    definition,
                    events,
                    &self.shape.sizes,
                ))
            })
            .clone();
        // A definition of the same name but other content (a test, or a
        // reload) is folded plainly rather than with blocks of another.
        (tiles.spec == definition.spec).then_some(tiles)
    }
}

/// Tiles are derived from the record's events: a copy starts without them.
impl Clone for Tiles {
    fn clone(&self) -> Self {
        Tiles::with_shape(self.shape.clone())
    }
}

/// Tiles never make two records differ: they are derived from the events.
impl PartialEq for Tiles {
    fn eq(&self, _: &Tiles) -> bool {
        true
    }
}

impl std::fmt::Debug for Tiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let built = self.built.read().map_or(0, |b| b.len());
        f.debug_struct("Tiles")
            .field("shape", &self.shape)
            .field("definitions", &built)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::definition::Definitions;
    use crate::testing::arb_events;

    fn definitions() -> Definitions {
        let text = r#"
            [[signals]]
            name = "recent"
            events = ["view", "click"]
            aggregation = "last_distinct"
            field = "item_id"
            limit = 3
            [[signals]]
            name = "views_50"
            events = ["view"]
            aggregation = "count"
            window = "50ms"
            [[signals]]
            name = "wishlist"
            aggregation = "set"
            field = "item_id"
            add = ["wishlist_add"]
            remove = ["wishlist_remove"]
            [[signals]]
            name = "cities_70"
            aggregation = "top_k"
            field = "attributes.city"
            limit = 2
            window = "70ms"
            [[signals]]
            name = "price_sum"
            aggregation = "sum"
            field = "attributes.price"
            [[signals]]
            name = "price_max_30"
            aggregation = "max"
            field = "attributes.price"
            window = "30ms"
            [[signals]]
            name = "items"
            aggregation = "distinct_count"
            field = "item_id"
            [[signals]]
            name = "first"
            aggregation = "first_seen"
            [[signals]]
            name = "last_active"
            aggregation = "last_seen"
            [[signals]]
            name = "sessions_50"
            aggregation = "session_count"
            gap = "7ms"
            window = "50ms"
            [[signals]]
            name = "session_minutes"
            aggregation = "session_minutes"
            gap = "7ms"
            window = "90ms"
            [[signals]]
            name = "current_session"
            aggregation = "current_session"
            gap = "7ms"
        "#;
        #[derive(serde::Deserialize)]
        struct File {
            signals: Vec<SignalSpec>,
        }
        let file: File = toml::from_str(text).expect("test definitions parse");
        Definitions::compile(&file.signals).expect("test definitions compile")
    }

    proptest! {
        /// Folding a window through blocks of any sizes gives the value of
        /// folding its events one by one, for every aggregation and any
        /// window edges.
        #[test]
        fn blocks_fold_like_the_events_one_by_one(
            events in arb_events(120),
            base in 1usize..6,
            fan_out in 2usize..4,
            from in -10i64..210,
            width in 0i64..220,
        ) {
            let until = from + width;
            let sizes = vec![base, base * fan_out, base * fan_out * fan_out];
            for definition in definitions().iter() {
                let tiles = DefinitionTiles::build(definition, &events, &sizes);
                let mut tiled = State::empty(&definition.aggregation);
                tiles.fold(definition, &events, from, until, &mut tiled);
                let mut plain = State::empty(&definition.aggregation);
                for event in events.iter().filter(|e| {
                    definition.matches(e) && e.event_time >= from && e.event_time < until
                }) {
                    plain.add(&definition.aggregation, event);
                }
                prop_assert_eq!(
                    definition.value(&tiled, until),
                    definition.value(&plain, until),
                    "{} over [{}, {})", definition.name, from, until
                );
            }
        }
    }

    #[test]
    fn small_records_are_not_tiled_and_a_changed_definition_is_not_served_old_blocks() {
        let defs = definitions();
        let recent = defs.get("recent").expect("defined");
        let events: Vec<Event> = (0..8)
            .map(|i| {
                crate::testing::event(&format!("e{i}"), signals_schemas::EventType::View, "a", i)
            })
            .collect();
        let tiles = Tiles::with_shape(TileShape {
            sizes: vec![2, 4],
            min_events: 9,
        });
        assert!(tiles.for_definition(recent, &events).is_none());
        let tiles = Tiles::with_shape(TileShape {
            sizes: vec![2, 4],
            min_events: 8,
        });
        let built = tiles.for_definition(recent, &events).expect("tiled");
        assert_eq!(built.blocks(), 4 + 2 + 4);
        let mut changed = recent.spec.clone();
        changed.limit = Some(5);
        let changed = Definitions::compile(&[changed]).expect("valid");
        let changed = changed.get("recent").expect("defined");
        assert!(tiles.for_definition(changed, &events).is_none());
    }
}
