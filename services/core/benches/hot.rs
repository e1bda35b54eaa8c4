//! The core's hot functions: `cargo bench -p signals-core`.
//!
//! * fold: `State::add` of one user's events into every default definition
//!   (what the batch does per user, and serving per request);
//! * merge: `State::merge` of two halves (pre-aggregated base + tail);
//! * view: `UserView::merge` of a batch record with a speed tail, then
//!   `evaluate` of every default signal (one serving request, no I/O);
//! * compact: `UserRecord::compact` (the batch's per-user output);
//! * heavy user: one read of every default signal for a user with 1M
//!   events in the last 7 days, through tiles (warm: built by an earlier
//!   read) and with the plain fold, beside a light user's read.
//!
//! Avro decode is timed in `schemas/benches/codec.rs`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use signals_core::{
    Definitions, EventTypes, SignalSpec, SpeedEntry, SpeedTail, State, TileShape, Tiles,
    UserRecord, UserView,
};
use signals_schemas::{Attributes, Event, EventType, Millis};
use smol_str::format_smolstr;

const NOW: Millis = 1_795_428_000_000;
const HOUR: Millis = 3_600_000;

fn definitions() -> Definitions {
    #[derive(serde::Deserialize)]
    struct File {
        signals: Vec<SignalSpec>,
    }
    let text = include_str!("../../signals/config/default.toml");
    let file: File = toml::from_str(text).expect("the shipped default config parses");
    Definitions::compile(&file.signals).expect("the shipped definitions compile")
}

/// `n` events of one user over the last 10 days, a browsing mix of types.
fn events(n: usize) -> Vec<Event> {
    events_over(n, 500)
}

/// Like [`events`], over `items` distinct items.
fn events_over(n: usize, items: u64) -> Vec<Event> {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..n)
        .map(|i| {
            let r = next();
            let event_type = match r % 100 {
                0..60 => EventType::View,
                60..80 => EventType::Click,
                80..92 => EventType::Search,
                92..97 => EventType::WishlistAdd,
                _ => EventType::WishlistRemove,
            };
            let item = format_smolstr!("listing-{}", (r >> 8) % items);
            let mut attributes = Attributes::new();
            attributes.insert("city", format!("city-{}", (r >> 20) % 12));
            Event {
                event_id: format_smolstr!("e-{i}"),
                user_id: "u-1".into(),
                event_type,
                item_id: (event_type != EventType::Search).then(|| item.clone()),
                query: (event_type == EventType::Search).then_some(item),
                event_time: NOW - ((r >> 32) as i64 % (240 * HOUR)),
                attributes,
            }
        })
        .collect()
}

fn fold(c: &mut Criterion) {
    let definitions = definitions();
    let mut group = c.benchmark_group("fold");
    for n in [100, 1_000] {
        let events = events(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &events, |b, events| {
            b.iter(|| {
                for d in definitions.iter() {
                    let mut state = State::empty(&d.aggregation);
                    for e in events.iter().filter(|e| d.matches(e)) {
                        state.add(&d.aggregation, e);
                    }
                    black_box(&state);
                }
            })
        });
    }
    group.finish();
}

fn merge(c: &mut Criterion) {
    let definitions = definitions();
    let events = events(1_000);
    let (old, new) = events.split_at(500);
    let states = |part: &[Event]| -> Vec<State> {
        definitions
            .iter()
            .map(|d| {
                let mut state = State::empty(&d.aggregation);
                for e in part.iter().filter(|e| d.matches(e)) {
                    state.add(&d.aggregation, e);
                }
                state
            })
            .collect()
    };
    let (a, b) = (states(old), states(new));
    c.bench_function("merge/all default signals, 500 + 500 events", |bench| {
        bench.iter_batched(
            || a.clone(),
            |mut a| {
                for ((d, a), b) in definitions.iter().zip(a.iter_mut()).zip(&b) {
                    a.merge(&d.aggregation, b);
                }
                a
            },
            BatchSize::SmallInput,
        )
    });
}

fn view(c: &mut Criterion) {
    let definitions = definitions();
    let all: Vec<_> = definitions.iter().collect();
    let mut group = c.benchmark_group("view merge + evaluate");
    for (batch_events, speed_events) in [(20, 5), (200, 20), (2_000, 50)] {
        let events = events(batch_events + speed_events);
        let (old, tail) = events.split_at(batch_events);
        let record = Arc::new(UserRecord::compact(
            &definitions,
            old.to_vec(),
            NOW - 40 * 24 * HOUR,
        ));
        let speed: Vec<SpeedEntry> = tail.iter().cloned().map(SpeedEntry::Event).collect();
        group.throughput(Throughput::Elements((batch_events + speed_events) as u64));
        group.bench_function(
            BenchmarkId::from_parameter(format!("{batch_events}+{speed_events}")),
            |b| {
                b.iter_batched(
                    || speed.clone(),
                    |speed| {
                        let view = UserView::merge(Some(record.clone()), speed);
                        view.evaluate(&all, NOW)
                    },
                    BatchSize::SmallInput,
                )
            },
        );
    }
    group.finish();
}

fn compact(c: &mut Criterion) {
    let definitions = definitions();
    let events = events(1_000);
    c.bench_function("compact/1000 events, half before the horizon", |b| {
        b.iter_batched(
            || events.clone(),
            |events| UserRecord::compact(&definitions, events, NOW - 120 * HOUR),
            BatchSize::SmallInput,
        )
    });
}

/// `n` events of one user spread over the last `days` days.
fn recent_events(n: usize, days: i64) -> Vec<Event> {
    recent_events_over(n, days, 500)
}

/// Like [`recent_events`], over `items` distinct items.
fn recent_events_over(n: usize, days: i64, items: u64) -> Vec<Event> {
    let span = days * 24 * HOUR;
    let mut all = events_over(n, items);
    for (i, event) in all.iter_mut().enumerate() {
        event.event_time = NOW - 1 - (i as i64 * 7_919 % span);
    }
    all
}

fn heavy_user(c: &mut Criterion) {
    let definitions = definitions();
    let all: Vec<_> = definitions.iter().collect();
    let mut group = c.benchmark_group("heavy user");
    group.sample_size(10);
    let light = Arc::new(UserRecord::compact(
        &definitions,
        recent_events(100, 7),
        NOW - 40 * 24 * HOUR,
    ));
    let heavy = Arc::new(UserRecord::compact(
        &definitions,
        recent_events(1_000_000, 7),
        NOW - 40 * 24 * HOUR,
    ));
    let mut plain = UserRecord::clone(&heavy);
    plain.tiles = Tiles::with_shape(TileShape {
        min_events: usize::MAX,
        ..TileShape::default()
    });
    let plain = Arc::new(plain);
    // The first read builds the tiles; the figures are of warm reads.
    UserView::merge(Some(heavy.clone()), []).evaluate(&all, NOW);
    for (name, record) in [
        ("light, 100 events", &light),
        ("1M events, tiles", &heavy),
        ("1M events, plain fold", &plain),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| UserView::merge(Some(record.clone()), []).evaluate(black_box(&all), NOW))
        });
    }
    let views = {
        let mut types = EventTypes::default();
        types.insert(EventType::View);
        types
    };
    // Over 20k items the wishlist holds thousands (the HTTP suite's heavy
    // user: a 137 KB answer), and reads at past hours cannot be kept.
    let wide = Arc::new(UserRecord::compact(
        &definitions,
        recent_events_over(1_000_000, 7, 20_000),
        NOW - 40 * 24 * HOUR,
    ));
    UserView::merge(Some(wide.clone()), []).evaluate(&all, NOW);
    group.bench_function("1M events, 20k items, at = now", |b| {
        b.iter(|| UserView::merge(Some(wide.clone()), []).evaluate(black_box(&all), NOW))
    });
    let mut at = past_hours();
    group.bench_function("1M events, 20k items, at = past hours", |b| {
        b.iter(|| UserView::merge(Some(wide.clone()), []).evaluate(black_box(&all), at()))
    });
    // What serving does: each value written as JSON, never a `Value`.
    let mut at = past_hours();
    group.bench_function("1M events, 20k items, at = past hours, as JSON", |b| {
        b.iter(|| UserView::merge(Some(wide.clone()), []).evaluate_encoded(black_box(&all), at()))
    });
    // One of the record's events retracted after the batch ran: until the
    // next run, every read of the user hides it.
    let retracted = UserView::merge(
        Some(wide.clone()),
        [SpeedEntry::Retracted {
            event_ids: vec![wide.events[wide.events.len() / 2].event_id.to_string()],
        }],
    );
    let mut at = past_hours();
    group.bench_function(
        "1M events, 20k items, one retracted, at = past hours",
        |b| b.iter(|| retracted.evaluate_encoded(black_box(&all), at())),
    );
    // A serving process's first read of the user after a batch published:
    // the stored record decoded, 100k newer speed entries checked against
    // its ids and tiled, every signal's tiles built and evaluated.
    let stored = postcard::to_stdvec(&*heavy).expect("encodes");
    let newer: Vec<SpeedEntry> = recent_events(100_000, 1)
        .into_iter()
        .map(|mut e| {
            e.event_id = format_smolstr!("new-{}", e.event_id);
            SpeedEntry::Event(e)
        })
        .collect();
    group.bench_function("1M events and 100k newer, first read", |b| {
        b.iter_batched(
            || newer.clone(),
            |newer| {
                let record: UserRecord = postcard::from_bytes(&stored).expect("decodes");
                UserView::merge(Some(Arc::new(record)), newer).evaluate_encoded(&all, NOW)
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("1M events, activity of the last 100 views", |b| {
        b.iter(|| {
            UserView::merge(Some(heavy.clone()), []).activity(
                views,
                Millis::MIN,
                NOW,
                black_box(100),
            )
        })
    });
    group.finish();
}

/// The hour boundaries of the last week, one per call: a stride coprime
/// with 168 walks every one of them.
fn past_hours() -> impl FnMut() -> Millis {
    let mut hour = 0;
    move || {
        hour = (hour + 37) % 168;
        NOW / HOUR * HOUR - hour * HOUR
    }
}

/// A popular user between batch runs: a record and a speed tail, read
/// through a kept tail (ADR 009) or merged from the entries on every read.
fn popular_tail(c: &mut Criterion) {
    let definitions = definitions();
    let all: Vec<_> = definitions.iter().collect();
    let mut group = c.benchmark_group("popular user's tail");
    group.sample_size(20);
    for (in_record, in_tail) in [(7_500, 750), (100_000, 100_000)] {
        let events = recent_events(in_record + in_tail, 7);
        let (old, new) = events.split_at(in_record);
        let record = Arc::new(UserRecord::compact(
            &definitions,
            old.to_vec(),
            NOW - 40 * 24 * HOUR,
        ));
        let entries: Vec<SpeedEntry> = new.iter().cloned().map(SpeedEntry::Event).collect();
        // Kept as serving keeps it: extended write by write (100 entries).
        let mut tail = SpeedTail::default();
        for write in entries.chunks(100) {
            tail = tail.extended(Some(&record), write.to_vec());
        }
        UserView::with_tail(Some(record.clone()), tail.clone()).evaluate(&all, NOW);
        let name = format!("{in_record} in the record + {in_tail} in the tail");
        group.bench_function(format!("{name}, kept tail"), |b| {
            b.iter(|| {
                UserView::with_tail(Some(record.clone()), tail.clone())
                    .evaluate(black_box(&all), NOW)
            })
        });
        group.bench_function(format!("{name}, entries merged per read"), |b| {
            b.iter_batched(
                || entries.clone(),
                |entries| UserView::merge(Some(record.clone()), entries).evaluate(&all, NOW),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    fold,
    merge,
    view,
    compact,
    heavy_user,
    popular_tail
);
criterion_main!(benches);
