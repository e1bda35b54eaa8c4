//! What the default signals must be, computed the plain way: straight from
//! CONTRACT.md over a list of events, sharing no code with the platform.
//!
//! Ties the contract leaves open are broken as the README documents: among
//! events at the same `event_time`, the larger `event_id` is the later one.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, SecondsFormat};
use serde_json::{json, Value};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const SESSION_GAP: i64 = 30 * 60_000;

/// One accepted event, as the test sent it.
#[derive(Clone, Debug)]
pub struct Sent {
    pub event_id: String,
    pub user_id: String,
    pub event_type: String,
    pub item_id: Option<String>,
    pub query: Option<String>,
    pub time: i64,
    pub city: Option<String>,
}

impl Sent {
    pub fn to_json(&self) -> Value {
        let mut attributes = serde_json::Map::new();
        if let Some(city) = &self.city {
            attributes.insert("city".into(), json!(city));
        }
        json!({
            "event_id": self.event_id,
            "user_id": self.user_id,
            "event_type": self.event_type,
            "item_id": self.item_id,
            "query": self.query,
            "event_time": rfc3339(self.time),
            "attributes": attributes,
        })
    }

    fn later_than(&self, other: &Sent) -> bool {
        (self.time, &self.event_id) > (other.time, &other.event_id)
    }
}

pub fn rfc3339(t: i64) -> String {
    DateTime::from_timestamp_millis(t)
        .expect("time in range")
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Every event the platform accepted, in acceptance order, and retractions.
#[derive(Default)]
pub struct Reference {
    accepted: Vec<Sent>,
    retracted: HashSet<String>,
}

impl Reference {
    pub fn accept(&mut self, event: Sent) {
        self.accepted.push(event);
    }

    pub fn retract(&mut self, id: &str) {
        self.retracted.insert(id.to_owned());
    }

    /// The user's events that count: first occurrence per id, not retracted.
    pub fn events_of(&self, user: &str) -> Vec<&Sent> {
        let mut seen = HashSet::new();
        self.accepted
            .iter()
            .filter(|e| seen.insert(e.event_id.clone()))
            .filter(|e| e.user_id == user && !self.retracted.contains(e.event_id.as_str()))
            .collect()
    }

    pub fn users(&self) -> Vec<String> {
        let mut users: Vec<String> = self.accepted.iter().map(|e| e.user_id.clone()).collect();
        users.sort();
        users.dedup();
        users
    }

    /// Every default signal of `user` at `at`.
    pub fn signals(&self, user: &str, at: i64) -> BTreeMap<String, Value> {
        let events: Vec<&Sent> = self
            .events_of(user)
            .into_iter()
            .filter(|e| e.time < at)
            .collect();
        let count = |kind: &str, window: i64| {
            events
                .iter()
                .filter(|e| e.event_type == kind && e.time >= at - window)
                .count()
        };
        let mut out = BTreeMap::new();
        out.insert(
            "recent_views".into(),
            json!(newest_distinct(
                events
                    .iter()
                    .filter(|e| e.event_type == "view" || e.event_type == "click"),
                |e| e.item_id.clone(),
                20
            )),
        );
        out.insert(
            "recent_searches".into(),
            json!(newest_distinct(
                events.iter().filter(|e| e.event_type == "search"),
                |e| e.query.clone(),
                10
            )),
        );
        out.insert("wishlist".into(), json!(wishlist(&events)));
        out.insert("views_1h".into(), json!(count("view", HOUR)));
        out.insert("views_24h".into(), json!(count("view", DAY)));
        out.insert("views_7d".into(), json!(count("view", 7 * DAY)));
        out.insert("clicks_24h".into(), json!(count("click", DAY)));
        out.insert("searches_24h".into(), json!(count("search", DAY)));
        let mut cities: HashMap<&str, u64> = HashMap::new();
        for e in events.iter().filter(|e| e.time >= at - 7 * DAY) {
            if let Some(city) = &e.city {
                *cities.entry(city).or_default() += 1;
            }
        }
        let mut cities: Vec<(&str, u64)> = cities.into_iter().collect();
        cities.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        out.insert(
            "top_cities_7d".into(),
            Value::from_iter(
                cities
                    .into_iter()
                    .take(3)
                    .map(|(k, n)| json!({"key": k, "count": n})),
            ),
        );
        out.insert(
            "last_active".into(),
            events
                .iter()
                .map(|e| e.time)
                .max()
                .map_or(Value::Null, |t| json!(rfc3339(t))),
        );
        let sessions = sessions(&events);
        let week: Vec<&(i64, i64, usize)> = sessions
            .iter()
            .filter(|(start, _, _)| *start >= at - 7 * DAY)
            .collect();
        out.insert("sessions_7d".into(), json!(week.len()));
        out.insert(
            "session_minutes_7d".into(),
            json!(week
                .iter()
                .map(|(start, end, _)| (end - start) / 60_000)
                .sum::<i64>()),
        );
        out.insert(
            "current_session".into(),
            match sessions.last() {
                Some((start, end, n)) if at - end <= SESSION_GAP => {
                    json!({"start": rfc3339(*start), "events": n})
                }
                _ => Value::Null,
            },
        );
        out
    }

    /// The activity endpoint's answer: events of `types` in `[since, until)`.
    pub fn activity(
        &self,
        user: &str,
        types: &[&str],
        since: i64,
        until: i64,
        limit: usize,
    ) -> Vec<String> {
        let mut events: Vec<&Sent> = self
            .events_of(user)
            .into_iter()
            .filter(|e| types.is_empty() || types.contains(&e.event_type.as_str()))
            .filter(|e| e.time >= since && e.time < until)
            .collect();
        events.sort_by(|a, b| (b.time, &b.event_id).cmp(&(a.time, &a.event_id)));
        events
            .into_iter()
            .take(limit)
            .map(|e| e.event_id.clone())
            .collect()
    }
}

/// The contract's sessions of `events`: (start, end, events), oldest first,
/// split where consecutive events are more than 30 minutes apart.
fn sessions(events: &[&Sent]) -> Vec<(i64, i64, usize)> {
    let mut times: Vec<i64> = events.iter().map(|e| e.time).collect();
    times.sort();
    let mut sessions: Vec<(i64, i64, usize)> = Vec::new();
    for t in times {
        match sessions.last_mut() {
            Some((_, end, n)) if t - *end <= SESSION_GAP => {
                *end = t;
                *n += 1;
            }
            _ => sessions.push((t, t, 1)),
        }
    }
    sessions
}

/// Distinct values, ordered by each value's newest event, newest first.
fn newest_distinct<'a>(
    events: impl Iterator<Item = &'a &'a Sent>,
    value: impl Fn(&Sent) -> Option<String>,
    limit: usize,
) -> Vec<String> {
    let mut newest: HashMap<String, &Sent> = HashMap::new();
    for e in events {
        if let Some(v) = value(e) {
            let slot = newest.entry(v).or_insert(e);
            if e.later_than(slot) {
                *slot = e;
            }
        }
    }
    let mut values: Vec<(String, &Sent)> = newest.into_iter().collect();
    values.sort_by(|a, b| (b.1.time, &b.1.event_id).cmp(&(a.1.time, &a.1.event_id)));
    values.into_iter().take(limit).map(|(v, _)| v).collect()
}

fn wishlist(events: &[&Sent]) -> Vec<String> {
    let mut latest: HashMap<String, &Sent> = HashMap::new();
    for e in events
        .iter()
        .filter(|e| e.event_type.starts_with("wishlist_"))
    {
        if let Some(item) = &e.item_id {
            let slot = latest.entry(item.clone()).or_insert(e);
            if e.later_than(slot) {
                *slot = e;
            }
        }
    }
    let mut present: Vec<(String, &Sent)> = latest
        .into_iter()
        .filter(|(_, e)| e.event_type == "wishlist_add")
        .collect();
    present.sort_by(|a, b| (b.1.time, &b.1.event_id).cmp(&(a.1.time, &a.1.event_id)));
    present.into_iter().map(|(item, _)| item).collect()
}
