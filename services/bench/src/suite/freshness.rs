//! Freshness: from the collector's answer (the event is accepted) to the
//! event being visible through the serving API, while the platform takes a
//! steady background load, and for the first event after a quiet spell
//! (when a serving process that follows the speed writes polls seldom).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use crate::http::{self, Call, Conn};
use crate::load::{self, Kind};
use crate::platform::{Platform, Services, Stack};
use crate::workload::{self, Shape};

/// Probes in flight at once; each is one user of its own.
const PROBERS: u64 = 4;

/// Freshness at `rate` events/s of background load, in µs.
pub async fn measure(
    stack: Stack,
    services: &Services,
    shape: &Shape,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Histogram<u64>> {
    let platform = Platform::start(stack, services, &[]).await?;
    let address = platform.address;
    // Steady state, not start-up: the speed process may still be joining
    // its group when the collector is ready, and a backlog made then would
    // stay through a short run on a box with no spare capacity. One event
    // made visible first says it reads.
    probe(address, &probe_user(u64::MAX), Duration::from_secs(90)).await?;
    let background = {
        let shape = shape.clone();
        tokio::spawn(async move {
            load::send(address, Kind::Events, &shape, rate, 100, 8, duration).await
        })
    };
    // Let the background load reach its pace before probing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deadline = Instant::now() + duration.saturating_sub(Duration::from_secs(1));
    let next = Arc::new(AtomicU64::new(0));
    let mut probers = tokio::task::JoinSet::new();
    for _ in 0..PROBERS {
        let next = next.clone();
        probers.spawn(async move {
            let mut latencies = http::histogram();
            while Instant::now() < deadline {
                let user = probe_user(next.fetch_add(1, Ordering::Relaxed));
                let micros = probe(address, &user, Duration::from_secs(30)).await?;
                let _ = latencies.record(micros.max(1));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = http::histogram();
    while let Some(done) = probers.join_next().await {
        latencies.add(&done??)?;
    }
    let sent = background.await??;
    if sent.failed > 0 {
        eprintln!("freshness: {} background requests failed", sent.failed);
    }
    Ok(latencies)
}

/// Freshness of an event after `quiet` with no events at all, `probes`
/// times, in µs: what a user whose answers are read sees of an event that
/// follows a quiet spell. Each probe's user is read once before the quiet
/// spell, so that serving keeps its (empty) speed tail, as it does for
/// every user it answers.
pub async fn measure_after_quiet(
    stack: Stack,
    services: &Services,
    probes: u64,
    quiet: Duration,
) -> anyhow::Result<Histogram<u64>> {
    let platform = Platform::start(stack, services, &[]).await?;
    let address = platform.address;
    probe(address, &probe_user(u64::MAX), Duration::from_secs(90)).await?;
    let mut latencies = http::histogram();
    for n in 0..probes {
        let user = probe_user(n);
        let mut conn = Conn::open(address).await?;
        let (status, _) = conn.send(&views_24h(&user)).await?;
        anyhow::ensure!(status.is_success(), "reading {user} failed: {status}");
        tokio::time::sleep(quiet).await;
        let micros = probe(address, &user, Duration::from_secs(30)).await?;
        let _ = latencies.record(micros.max(1));
    }
    Ok(latencies)
}

/// A user of this run's probe `n`, with no events before it.
fn probe_user(n: u64) -> String {
    format!("probe-{:x}-{n}", workload::now_millis())
}

fn views_24h(user: &str) -> Call {
    Call::get(format!("/v1/users/{user}/signals?names=views_24h"))
}

/// Posts one view of `user`, who has none yet, then polls that user's
/// `views_24h` until it counts the view, for at most `patience`; µs from
/// the collector's answer.
async fn probe(address: SocketAddr, user: &str, patience: Duration) -> anyhow::Result<u64> {
    let mut conn = Conn::open(address).await?;
    let event = json!([{
        "event_id": format!("{user}-e"),
        "user_id": user,
        "event_type": "view",
        "item_id": "listing-1",
        "event_time": workload::now_millis() - 1,
    }]);
    let (status, _) = conn
        .send(&Call::post_json("/v1/events", event.to_string()))
        .await?;
    anyhow::ensure!(status.is_success(), "the probe event was refused: {status}");
    let accepted = Instant::now();
    let read = views_24h(user);
    loop {
        let (_, body) = conn.send(&read).await?;
        let answer: serde_json::Value = serde_json::from_slice(&body)?;
        if answer["signals"]["views_24h"].as_u64() == Some(1) {
            return Ok(accepted.elapsed().as_micros() as u64);
        }
        if accepted.elapsed() > patience {
            anyhow::bail!("the probe event was not visible after {patience:?}");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}
