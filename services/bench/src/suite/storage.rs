//! Bytes stored per user per day: a user's published record (what the
//! embedded store's `batch` values, the CQL records and the Redis entries
//! hold, one format everywhere) for a typical and a heavy user, beside
//! the log's own Avro bytes for the same events.
//!
//! Tiles are derived on read and never stored, so a record is the user's
//! base states plus their raw events of the retained days; a day costs its
//! events. Measured in process from records made as the batch makes them.

use signals_schemas::{avro, Event, Millis};
use signals_store::EncodedRecord;

use signals_core::UserRecord;

use crate::backends;
use crate::workload::{self, Shape, Workload};

const DAY: Millis = 86_400_000;

/// One user's storage, per day of their activity.
pub struct Storage {
    pub events_per_day: u64,
    /// The published record's bytes per day of events.
    pub record_per_day: f64,
    /// The log's bytes (Avro, framed) of the same events, per day.
    pub log_per_day: f64,
}

impl Storage {
    pub fn record_per_event(&self) -> f64 {
        self.record_per_day / self.events_per_day as f64
    }
}

/// A user with `events_per_day` events on each of `days` days (ending now),
/// their record made by the batch's rule, measured per day.
pub fn measure(shape: &Shape, events_per_day: u64, days: u64) -> anyhow::Result<Storage> {
    anyhow::ensure!(events_per_day > 0 && days > 0, "no events to store");
    let definitions = backends::default_definitions()?;
    let mut w = Workload::new(shape)?;
    let now = workload::now_millis();
    let total = events_per_day * days;
    let span = days as Millis * DAY;
    let mut log_bytes = 0usize;
    let events: Vec<Event> = (0..total)
        .map(|i| {
            let mut event = w.event_for("u-storage".to_owned(), now);
            // Spread evenly over the days; ids as clients send them (UUIDs).
            event.event_time = now - span + (i as Millis * span) / total as Millis;
            event.event_id = uuid_like(i, shape.seed).into();
            log_bytes += avro::encode(&workload::record(event.clone(), now)).len();
            event
        })
        .collect();
    // The horizon before every event: all of them are retained raw.
    let record = UserRecord::compact(&definitions, events, now - span - DAY);
    let stored = EncodedRecord::of(&record)?.as_bytes().len();
    Ok(Storage {
        events_per_day,
        record_per_day: stored as f64 / days as f64,
        log_per_day: log_bytes as f64 / days as f64,
    })
}

/// A 36-character id shaped like a UUID, distinct per `i`.
fn uuid_like(i: u64, seed: u64) -> String {
    let x = (u128::from(seed) << 64 | u128::from(i))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    let h = format!("{x:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_costs_its_events_and_ids_are_distinct() {
        let shape = Shape {
            users: 10,
            items: 1000,
            skew: 0.9,
            seed: 7,
        };
        let one = measure(&shape, 200, 1).expect("one day");
        let four = measure(&shape, 200, 4).expect("four days");
        // Per day the same within the base states' and lengths' noise.
        let drift = (one.record_per_day - four.record_per_day).abs() / one.record_per_day;
        assert!(
            drift < 0.1,
            "{} vs {}",
            one.record_per_day,
            four.record_per_day
        );
        assert!(one.record_per_event() > 20.0, "{}", one.record_per_event());
        assert!(one.log_per_day > 0.0);
        assert_ne!(uuid_like(1, 7), uuid_like(2, 7));
        assert_eq!(uuid_like(1, 7).len(), 36);
    }
}
