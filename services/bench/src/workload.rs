//! Synthetic user events with the skew of real traffic: a few users and
//! items are very popular (Zipf), most are rarely seen; event types follow
//! a browsing mix (mostly views, some clicks and searches, few wishlist
//! changes); times are mostly "just now" with a tail of late events.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use signals_schemas::{format_smolstr, Event, EventType, LogRecord, Millis, RecordBody};

/// Share of each event type, in per mille.
const MIX: [(EventType, u32); 5] = [
    (EventType::View, 600),
    (EventType::Click, 200),
    (EventType::Search, 120),
    (EventType::WishlistAdd, 50),
    (EventType::WishlistRemove, 30),
];

const CITIES: [&str; 12] = [
    "Paris", "London", "Lisbon", "Rome", "Berlin", "Madrid", "Vienna", "Prague", "Oslo", "Dublin",
    "Athens", "Zurich",
];

const QUERY_WORDS: [&str; 10] = [
    "lofts", "beach", "cabin", "city", "pool", "quiet", "family", "pets", "view", "garden",
];

/// The shape of a workload.
#[derive(Clone, Debug)]
pub struct Shape {
    pub users: u64,
    pub items: u64,
    /// Zipf exponent of user and item popularity (1.0: classic web skew).
    pub skew: f64,
    pub seed: u64,
}

/// An endless, deterministic stream of events of one [`Shape`].
pub struct Workload {
    users: Zipf<f64>,
    user_count: u64,
    items: Zipf<f64>,
    cities: Zipf<f64>,
    rng: SmallRng,
    /// Distinguishes the event ids of separate runs against one platform.
    run: String,
    next: u64,
}

impl Workload {
    pub fn new(shape: &Shape) -> anyhow::Result<Workload> {
        let zipf = |n: u64| {
            Zipf::new(n.max(1) as f64, shape.skew).map_err(|e| {
                anyhow::anyhow!("bad Zipf parameters (n = {n}, s = {}): {e}", shape.skew)
            })
        };
        Ok(Workload {
            users: zipf(shape.users)?,
            user_count: shape.users.max(1),
            items: zipf(shape.items)?,
            cities: zipf(CITIES.len() as u64)?,
            rng: SmallRng::seed_from_u64(shape.seed),
            run: format!("{:x}", shape.seed ^ now_millis() as u64),
            next: 0,
        })
    }

    /// A user id drawn with the workload's skew.
    pub fn user(&mut self) -> String {
        user_id(self.users.sample(&mut self.rng) as u64)
    }

    /// A user id drawn uniformly, without skew.
    pub fn uniform_user(&mut self) -> String {
        user_id(self.rng.random_range(1..=self.user_count))
    }

    /// The next event, stamped around `now`.
    pub fn event(&mut self, now: Millis) -> Event {
        let user = self.user();
        self.event_for(user, now)
    }

    /// The next event of `user`, stamped around `now`.
    pub fn event_for(&mut self, user: String, now: Millis) -> Event {
        self.next += 1;
        let event_type = self.event_type();
        let item = self.items.sample(&mut self.rng) as u64;
        let mut attributes = signals_schemas::Attributes::new();
        if self.rng.random_ratio(3, 4) {
            let city = CITIES[self.cities.sample(&mut self.rng) as usize - 1];
            attributes.insert("city", city);
        }
        // Most events are seconds old; one in fifty arrives hours late.
        let age = if self.rng.random_ratio(1, 50) {
            self.rng.random_range(0..48 * 3_600_000)
        } else {
            self.rng.random_range(0..5_000)
        };
        Event {
            event_id: format_smolstr!("b{}-{}", self.run, self.next),
            user_id: user.into(),
            event_type,
            item_id: (event_type != EventType::Search).then(|| format_smolstr!("listing-{item}")),
            query: (event_type == EventType::Search).then(|| {
                let a = QUERY_WORDS[(item % 10) as usize];
                let b = QUERY_WORDS[(item / 10 % 10) as usize];
                format_smolstr!("{a} {b}")
            }),
            event_time: now - age,
            attributes,
        }
    }

    fn event_type(&mut self) -> EventType {
        let mut roll = self.rng.random_range(0..1000);
        for (event_type, share) in MIX {
            if roll < share {
                return event_type;
            }
            roll -= share;
        }
        EventType::View
    }
}

/// The id of the `n`th user (1-based, most popular first).
pub fn user_id(n: u64) -> String {
    format!("u-{n}")
}

/// The log record the collector would append for `event`.
pub fn record(event: Event, accepted_at: Millis) -> LogRecord {
    LogRecord {
        accepted_at,
        body: RecordBody::Event(event),
    }
}

/// A JSON array of `events`, as `POST /v1/events` takes it.
pub fn json_batch(events: &[Event]) -> Vec<u8> {
    let values: Vec<serde_json::Value> = events.iter().map(signals_schemas::to_json).collect();
    serde_json::to_vec(&values).unwrap_or_default()
}

pub use signals_schemas::now_millis;
