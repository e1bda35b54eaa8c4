//! After the faults: what serving answers against what was acknowledged.
//!
//! Per user, from the [`Ledger`]:
//! - **must count**: acknowledged with 200 and named by no retraction that
//!   may have reached the log;
//! - **may count**: sent at all (acknowledged or "maybe") and named by no
//!   acknowledged retraction;
//! - everything else must not count; nothing counts twice.
//!
//! The served ids come from the activity endpoint (every event of the user,
//! newest first, paged by time: the load gives every event its own
//! millisecond); the counts (`views_24h`, `clicks_24h`, `searches_24h`)
//! must agree with those ids, so a double count in an aggregate shows too.
//! A user with nothing "maybe" is compared signal by signal with the
//! reference model.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::faults::load::{Ledger, Shared};

/// The verdict over one load's users.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub users: usize,
    pub acked_events: usize,
    pub maybe_events: usize,
    pub served_events: usize,
    /// Acknowledged, not retracted, yet not served.
    pub lost: Vec<String>,
    /// Served more than once (ids), or counted more than served.
    pub doubled: Vec<String>,
    /// Served although never sent, or retracted with 200.
    pub unexpected: Vec<String>,
    /// Users compared signal by signal with the reference, and mismatches.
    pub exact_users: usize,
    pub mismatches: Vec<String>,
    pub anomalies: Vec<String>,
}

impl Verdict {
    pub fn clean(&self) -> bool {
        self.lost.is_empty()
            && self.doubled.is_empty()
            && self.unexpected.is_empty()
            && self.mismatches.is_empty()
            && self.anomalies.is_empty()
    }

    pub fn summary(&self) -> String {
        let sample = |v: &Vec<String>| v.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
        format!(
            "{} users, {} acked, {} maybe, {} served; lost {} [{}], doubled {} [{}], \
             unexpected {} [{}], exact users {} mismatches {} [{}], anomalies {} [{}]",
            self.users,
            self.acked_events,
            self.maybe_events,
            self.served_events,
            self.lost.len(),
            sample(&self.lost),
            self.doubled.len(),
            sample(&self.doubled),
            self.unexpected.len(),
            sample(&self.unexpected),
            self.exact_users,
            self.mismatches.len(),
            sample(&self.mismatches),
            self.anomalies.len(),
            sample(&self.anomalies),
        )
    }
}

async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let mut last = String::new();
    for _ in 0..20 {
        match http.get(url).timeout(Duration::from_secs(10)).send().await {
            Ok(response) if response.status().is_success() => return Ok(response.json().await?),
            Ok(response) => last = format!("{} {}", response.status(), response.text().await?),
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("GET {url}: {last}")
}

/// Waits until serving reports the speed layer caught up with the log.
pub async fn wait_caught_up(
    http: &reqwest::Client,
    base: &str,
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let body = get(
            http,
            &format!("{base}/v1/users/nobody/signals?names=last_active"),
        )
        .await;
        if let Ok(body) = &body {
            if body["freshness"]["speed_lag_records"] == json!(0) {
                return Ok(started.elapsed());
            }
        }
        if started.elapsed() > within {
            bail!("the speed layer still lags after {within:?}: {body:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every event id served for `user`, newest first, all pages.
async fn served_ids(http: &reqwest::Client, base: &str, user: &str) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut until: Option<i64> = None;
    loop {
        let mut url = format!("{base}/v1/users/{user}/activity?limit=1000&since=0");
        match until {
            Some(t) => url.push_str(&format!("&until={t}")),
            None => url.push_str(&format!(
                "&until={}",
                chrono::Utc::now().timestamp_millis() + 60_000
            )),
        }
        let body = get(http, &url).await?;
        let events = body["events"].as_array().context("events")?;
        for event in events {
            ids.push(event["event_id"].as_str().context("event_id")?.to_owned());
        }
        if events.len() < 1000 {
            return Ok(ids);
        }
        let oldest = events.last().context("a last event")?["event_time"].clone();
        let oldest = match &oldest {
            Value::String(text) => chrono::DateTime::parse_from_rfc3339(text)?.timestamp_millis(),
            other => other.as_i64().context("event_time")?,
        };
        until = Some(oldest);
    }
}

/// Checks every user of `shared`'s load (call once the load has stopped and
/// the speed layer caught up).
pub async fn verify(shared: &Shared) -> anyhow::Result<Verdict> {
    // The load has stopped: the ledger is final.
    let ledger = std::mem::take(&mut *shared.ledger.lock().expect("ledger"));
    let mut by_user: HashMap<&str, Vec<&str>> = HashMap::new();
    for (id, event) in &ledger.sent {
        by_user.entry(event.user_id.as_str()).or_default().push(id);
    }
    let mut verdict = Verdict {
        users: by_user.len(),
        acked_events: ledger.acked_ids.len(),
        maybe_events: ledger.maybe_ids.len(),
        anomalies: ledger.anomalies.clone(),
        ..Verdict::default()
    };
    let mut users: Vec<&str> = by_user.keys().copied().collect();
    users.sort_unstable();
    for user in users {
        check_user(shared, &ledger, user, &by_user[user], &mut verdict).await?;
    }
    Ok(verdict)
}

async fn check_user(
    shared: &Shared,
    ledger: &Ledger,
    user: &str,
    ids: &[&str],
    verdict: &mut Verdict,
) -> anyhow::Result<()> {
    let http = &shared.http;
    let base = &shared.base;
    let body = get(http, &format!("{base}/v1/users/{user}/signals")).await?;
    let served = served_ids(http, base, user).await?;
    verdict.served_events += served.len();

    let mut once = HashSet::new();
    for id in &served {
        if !once.insert(id.as_str()) {
            verdict.doubled.push(format!("{user}: {id} served twice"));
        }
    }
    let mut uncertain = false;
    for id in ids {
        let acked = ledger.acked_ids.contains(*id);
        let retracted = ledger.acked_retractions.contains(*id);
        let maybe_retracted = ledger.maybe_retractions.contains(*id);
        uncertain |= ledger.maybe_ids.contains(*id) || maybe_retracted;
        let counted = once.contains(id);
        if acked && !retracted && !maybe_retracted && !counted {
            verdict.lost.push(format!("{user}: {id}"));
        }
        if retracted && counted {
            verdict
                .unexpected
                .push(format!("{user}: {id} counts after a 200 retraction"));
        }
    }
    let known: HashSet<&str> = ids.iter().copied().collect();
    for id in &once {
        if !known.contains(id) {
            verdict
                .unexpected
                .push(format!("{user}: {id} served but never sent for this user"));
        }
    }

    // The aggregates agree with the ids served.
    let mut by_type: BTreeMap<&str, u64> = BTreeMap::new();
    for id in &once {
        if let Some(event) = ledger.sent.get(*id) {
            *by_type.entry(event.event_type.as_str()).or_default() += 1;
        }
    }
    for (kind, signal) in [
        ("view", "views_24h"),
        ("click", "clicks_24h"),
        ("search", "searches_24h"),
    ] {
        let counted = body["signals"][signal].as_u64().unwrap_or(u64::MAX);
        let served = by_type.get(kind).copied().unwrap_or(0);
        if counted > served {
            verdict.doubled.push(format!(
                "{user}: {signal} = {counted} but {served} {kind} events served"
            ));
        } else if counted < served {
            verdict.lost.push(format!(
                "{user}: {signal} = {counted} but {served} {kind} events served"
            ));
        }
    }

    // Nothing uncertain: every signal exactly as the reference says.
    if !uncertain {
        verdict.exact_users += 1;
        let at = body["at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .context("`at` in the answer")?
            .timestamp_millis();
        let expected = ledger.acked.signals(user, at);
        for (name, value) in &expected {
            if body["signals"].get(name) != Some(value) {
                verdict.mismatches.push(format!(
                    "{user}: {name} = {} expected {value}",
                    body["signals"][name]
                ));
            }
        }
    }
    Ok(())
}
