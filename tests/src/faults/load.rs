//! Steady load while faults happen: clients POSTing batches of events (with
//! re-sends and in-batch duplicates) and retractions, and a reader, each
//! recording exactly what was acknowledged with 200. A request that got
//! anything else (an error, a timeout, a reset) may or may not have reached
//! the log: its events are "maybe" until a later request acknowledges them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::reference::{Reference, Sent};

/// What happened to every event and retraction sent.
#[derive(Default)]
pub struct Ledger {
    /// Every event sent, by id.
    pub sent: HashMap<String, Sent>,
    /// The events acknowledged with 200 and the retractions acknowledged.
    pub acked: Reference,
    pub acked_ids: HashSet<String>,
    /// Sent in requests that got no 200, and never acknowledged since.
    pub maybe_ids: HashSet<String>,
    pub acked_retractions: HashSet<String>,
    pub maybe_retractions: HashSet<String>,
    /// Answers that contradict a 200 (fewer accepted than sent).
    pub anomalies: Vec<String>,
}

impl Ledger {
    pub fn record_events(&mut self, events: &[Sent], acknowledged: bool) {
        for event in events {
            self.sent
                .entry(event.event_id.clone())
                .or_insert_with(|| event.clone());
            if acknowledged {
                if self.acked_ids.insert(event.event_id.clone()) {
                    self.acked.accept(event.clone());
                }
                self.maybe_ids.remove(&event.event_id);
            } else if !self.acked_ids.contains(event.event_id.as_str()) {
                self.maybe_ids.insert(event.event_id.clone());
            }
        }
    }

    pub fn record_retraction(&mut self, ids: &[String], acknowledged: bool) {
        for id in ids {
            if acknowledged {
                self.acked.retract(id);
                self.acked_retractions.insert(id.clone());
                self.maybe_retractions.remove(id);
            } else if !self.acked_retractions.contains(id) {
                self.maybe_retractions.insert(id.clone());
            }
        }
    }
}

/// What a request was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Events,
    /// Events from a client that hangs up on purpose (not "refused").
    HungUp,
    Retraction,
    Read,
}

/// One request's outcome: when it ended, its status (0: no answer).
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    pub request: Request,
    pub ended: Instant,
    pub status: u16,
    pub latency: Duration,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.status == 200
    }
}

/// The load's shape.
#[derive(Clone, Debug)]
pub struct LoadShape {
    pub clients: usize,
    pub batch: usize,
    pub pause: Duration,
    pub users: usize,
    /// A client's request timeout: past it, its events are "maybe".
    pub timeout: Duration,
}

impl Default for LoadShape {
    fn default() -> LoadShape {
        LoadShape {
            clients: 3,
            batch: 20,
            pause: Duration::from_millis(150),
            users: 60,
            timeout: Duration::from_secs(15),
        }
    }
}

/// What the load's tasks share.
pub struct Shared {
    pub base: String,
    pub prefix: String,
    pub shape: LoadShape,
    pub http: reqwest::Client,
    pub ledger: Mutex<Ledger>,
    pub outcomes: Mutex<Vec<Outcome>>,
    stop: AtomicBool,
    /// Event times count down from here, one millisecond per event, so
    /// that no two events of a run share a time (newest-first answers are
    /// then in one order whatever the tie rule).
    clock: AtomicI64,
}

impl Shared {
    pub fn new(base: String, prefix: String, shape: LoadShape) -> Arc<Shared> {
        Arc::new(Shared {
            base,
            prefix,
            shape,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(4)
                .build()
                .expect("an HTTP client"),
            ledger: Mutex::default(),
            outcomes: Mutex::default(),
            stop: AtomicBool::new(false),
            clock: AtomicI64::new(chrono::Utc::now().timestamp_millis() - 2_000),
        })
    }

    pub fn user(&self, index: usize) -> String {
        format!("{}-u{index}", self.prefix)
    }

    pub fn users(&self) -> Vec<String> {
        (0..self.shape.users).map(|i| self.user(i)).collect()
    }

    /// A new event of a random user of this load (or of `user`).
    pub fn event(&self, rng: &mut StdRng, id: String, user: Option<String>) -> Sent {
        let kind = ["view", "view", "click", "search"][rng.random_range(0..4)];
        Sent {
            event_id: id,
            user_id: user.unwrap_or_else(|| self.user(rng.random_range(0..self.shape.users))),
            event_type: kind.into(),
            item_id: (kind != "search").then(|| format!("item-{}", rng.random_range(0..40))),
            query: (kind == "search").then(|| format!("query {}", rng.random_range(0..15))),
            time: self.clock.fetch_sub(1, Ordering::Relaxed),
            city: rng
                .random_bool(0.5)
                .then(|| ["Paris", "Rome", "Oslo"][rng.random_range(0..3)].to_owned()),
        }
    }

    fn outcome(&self, request: Request, started: Instant, status: u16) {
        let ended = Instant::now();
        self.outcomes.lock().expect("outcomes").push(Outcome {
            request,
            ended,
            status,
            latency: ended - started,
        });
    }

    /// POSTs `events`; records the outcome in the ledger; whether it got 200.
    pub async fn post_events(&self, events: &[Sent], timeout: Duration) -> bool {
        self.post_as(Request::Events, events, timeout).await
    }

    /// [`post_events`](Self::post_events), recorded as `request`.
    pub async fn post_as(&self, request: Request, events: &[Sent], timeout: Duration) -> bool {
        let body: Vec<Value> = events.iter().map(Sent::to_json).collect();
        let started = Instant::now();
        let answer = self
            .http
            .post(format!("{}/v1/events", self.base))
            .timeout(timeout)
            .json(&body)
            .send()
            .await;
        let (status, ok) = match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                let body: Option<Value> = response.json().await.ok();
                let ok = status == 200 && body.is_some();
                if let (true, Some(body)) = (ok, &body) {
                    if body["accepted"] != json!(events.len()) {
                        self.ledger
                            .lock()
                            .expect("ledger")
                            .anomalies
                            .push(format!("{} events got 200 {body}", events.len()));
                    }
                }
                (if ok { 200 } else { status.max(1) }, ok)
            }
            Err(_) => (0, false),
        };
        self.outcome(request, started, status);
        self.ledger
            .lock()
            .expect("ledger")
            .record_events(events, ok);
        ok
    }

    pub async fn retract(&self, ids: &[String]) -> bool {
        let started = Instant::now();
        let answer = self
            .http
            .post(format!("{}/v1/retractions", self.base))
            .timeout(self.shape.timeout)
            .json(&json!({"event_ids": ids, "reason": "fault suite"}))
            .send()
            .await;
        let status = answer.map_or(0, |r| r.status().as_u16());
        self.outcome(Request::Retraction, started, status);
        self.ledger
            .lock()
            .expect("ledger")
            .record_retraction(ids, status == 200);
        status == 200
    }

    /// The signals of `user` (`None`: no 200 answer).
    pub async fn read(&self, user: &str, timeout: Duration) -> Option<Value> {
        let started = Instant::now();
        let answer = self
            .http
            .get(format!("{}/v1/users/{user}/signals", self.base))
            .timeout(timeout)
            .send()
            .await;
        let (status, body) = match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.ok())
            }
            Err(_) => (0, None),
        };
        self.outcome(Request::Read, started, status);
        body.filter(|_| status == 200)
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// The running load.
pub struct Load {
    pub shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(shared: Arc<Shared>, seed: u64) -> Load {
        let mut tasks = Vec::new();
        for client in 0..shared.shape.clients {
            let shared = shared.clone();
            tasks.push(tokio::spawn(post_loop(
                shared,
                client,
                seed + client as u64,
            )));
        }
        tasks.push(tokio::spawn(read_loop(shared.clone(), seed + 1_000)));
        Load { shared, tasks }
    }

    /// Stops every client after its request in flight.
    pub async fn stop(self) -> Arc<Shared> {
        self.shared.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        self.shared
    }
}

async fn post_loop(shared: Arc<Shared>, client: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    // Recently sent events, acknowledged or not: sent again now and then,
    // as a client retrying would.
    let mut recent: Vec<Sent> = Vec::new();
    let mut acknowledged: Vec<String> = Vec::new();
    let mut next = 0u64;
    let mut round = 0u64;
    while !shared.stopping() {
        round += 1;
        let mut batch = Vec::with_capacity(shared.shape.batch + 1);
        for _ in 0..shared.shape.batch {
            if !recent.is_empty() && rng.random_bool(0.1) {
                batch.push(recent[rng.random_range(0..recent.len())].clone());
            } else {
                next += 1;
                let id = format!("{}-c{client}-{next}", shared.prefix);
                let event = shared.event(&mut rng, id, None);
                recent.push(event.clone());
                batch.push(event);
            }
        }
        if rng.random_bool(0.2) {
            batch.push(batch[0].clone());
        }
        if recent.len() > 4_000 {
            recent.drain(..2_000);
        }
        if shared.post_events(&batch, shared.shape.timeout).await {
            acknowledged.extend(batch.iter().map(|e| e.event_id.clone()));
        }
        if round.is_multiple_of(8) && acknowledged.len() > 10 {
            let ids: Vec<String> = (0..2)
                .map(|_| acknowledged[rng.random_range(0..acknowledged.len())].clone())
                .collect();
            shared.retract(&ids).await;
        }
        if acknowledged.len() > 4_000 {
            acknowledged.drain(..2_000);
        }
        tokio::time::sleep(shared.shape.pause).await;
    }
}

async fn read_loop(shared: Arc<Shared>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !shared.stopping() {
        let user = shared.user(rng.random_range(0..shared.shape.users));
        shared.read(&user, Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(id: &str) -> Sent {
        Sent {
            event_id: id.into(),
            user_id: "u".into(),
            event_type: "view".into(),
            item_id: Some("i".into()),
            query: None,
            time: 1,
            city: None,
        }
    }

    #[test]
    fn a_failed_request_makes_maybe_and_a_later_200_makes_acknowledged_for_good() {
        let mut ledger = Ledger::default();
        ledger.record_events(&[sent("a"), sent("b")], false);
        assert!(ledger.maybe_ids.contains("a") && ledger.acked_ids.is_empty());
        ledger.record_events(&[sent("a")], true);
        assert!(ledger.acked_ids.contains("a") && !ledger.maybe_ids.contains("a"));
        assert!(ledger.maybe_ids.contains("b"));
        // A later failed re-send never demotes what got 200.
        ledger.record_events(&[sent("a")], false);
        assert!(ledger.acked_ids.contains("a") && !ledger.maybe_ids.contains("a"));
        assert_eq!(ledger.acked.events_of("u").len(), 1);
    }

    #[test]
    fn retractions_follow_the_same_rule() {
        let mut ledger = Ledger::default();
        ledger.record_events(&[sent("a"), sent("b")], true);
        ledger.record_retraction(&["a".into()], false);
        assert!(ledger.maybe_retractions.contains("a"));
        ledger.record_retraction(&["a".into()], true);
        ledger.record_retraction(&["a".into()], false);
        assert!(ledger.acked_retractions.contains("a") && !ledger.maybe_retractions.contains("a"));
        let counted: Vec<&str> = ledger
            .acked
            .events_of("u")
            .iter()
            .map(|e| e.event_id.as_str())
            .collect();
        assert_eq!(counted, ["b"]);
    }
}
