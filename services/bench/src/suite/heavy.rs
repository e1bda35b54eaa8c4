//! One heavy user over HTTP: a user with `events` events spread over the
//! last 7 days, beside the usual users, read alone at saturation, against
//! a light user read the same way from the same server in the same run. Two
//! kinds of read: `at` = now (a warm answer is kept until it can change,
//! ADR 011) and `at` drawn from the last 7 days' hour boundaries (nearly
//! every read evaluates the record through its tiles, ADR 007), each at
//! saturation and the past hours also at [`PACED_RATE`], where a read's
//! latency is its own and not the queue's. The ceiling of the heavy user's
//! reads is the bare handler answering its bytes. Before those, each
//! user's first read of the version the batch published is timed once:
//! the one read that decodes and tiles the record. After them, a second
//! batch run and the first reads again: as after a nightly run, the
//! process holds the previous version's records, which those reads replace.
//! Before that second run, one of the heavy user's events in the record is
//! retracted and the paced past hours are read again: every read until the
//! next run leaves that event out.

use std::net::SocketAddr;
use std::time::Duration;

use crate::http::{Call, Conn, Outcome};
use crate::platform::{Platform, Services, Stack};
use crate::suite::{ingest, serving};
use crate::workload::{self, Shape, Workload};

/// The heavy user's id.
const HEAVY: &str = "u-heavy";
const HOUR: i64 = 3_600_000;
const WEEK: i64 = 7 * 24 * HOUR;
/// Reads per second of the paced runs: a busy client asking about one
/// user, well below what the server answers for the heavy user.
pub const PACED_RATE: f64 = 500.0;
/// How long another user is read while the heavy user's first read runs:
/// longer than that read takes at the quick size.
const BESIDE_FIRST_READ: Duration = Duration::from_secs(2);

pub struct HeavyFigures {
    pub events: u64,
    /// Bytes of the heavy and the light user's answers at `at` = now.
    pub answer_bytes: (usize, usize),
    /// The heavy and the light user's first read after the batch
    /// published (each user's record read, decoded and tiled then).
    pub first_reads: (Duration, Duration),
    /// The same after the next batch run, with the previous version's
    /// records held by the process since the reads above (as after a
    /// nightly run: the old record replaced, and freed, by the first read).
    pub next_first_reads: (Duration, Duration),
    pub heavy_now: Outcome,
    /// The bare handler answering the heavy user's bytes: the ceiling.
    pub bare_heavy: Outcome,
    pub light_now: Outcome,
    pub heavy_hours: Outcome,
    pub light_hours: Outcome,
    /// Past hours at [`PACED_RATE`].
    pub heavy_hours_paced: Outcome,
    pub light_hours_paced: Outcome,
    /// The heavy user's past hours at [`PACED_RATE`] once one of their
    /// events in the batch's record is retracted (hidden from every read
    /// until the next batch run).
    pub heavy_hours_retracted: Outcome,
    /// Another light user's reads at [`PACED_RATE`] from the start of the
    /// first reads after the batch published, for [`BESIDE_FIRST_READ`].
    pub beside_first_read: Outcome,
}

/// Loads the usual users' `light_events` and the heavy user's `events`,
/// runs the batch, adds a speed tail to both, then reads.
pub async fn measure(
    stack: Stack,
    services: &Services,
    shape: &Shape,
    light_events: u64,
    events: u64,
    duration: Duration,
) -> anyhow::Result<HeavyFigures> {
    let platform = Platform::start(stack, services, &[]).await?;
    let address = platform.address;
    serving::preload(address, shape, light_events).await?;
    post_heavy(address, shape, events, WEEK).await?;
    serving::wait_caught_up(address).await?;
    let mut conn = Conn::open(address).await?;
    let (status, _) = conn
        .send(&Call::post_json("/v1/admin/batch/run", ""))
        .await?;
    anyhow::ensure!(status.is_success(), "the batch run failed: {status}");
    // Between batch runs: a tenth more, of the last hour.
    post_heavy(address, shape, (events / 10).max(1), HOUR).await?;
    serving::wait_caught_up(address).await?;
    drop(conn);

    let light = workload::user_id(shape.users / 2);
    let now_reads = |user: String| move |_: u64| Call::get(format!("/v1/users/{user}/signals"));
    // Another user's reads go on meanwhile: what a heavy first read costs
    // everybody else.
    let (first, beside_first_read) = tokio::join!(
        time_first_reads(address, &light),
        serving::paced(
            address,
            BESIDE_FIRST_READ,
            PACED_RATE,
            now_reads(workload::user_id(shape.users / 3))
        )
    );
    let (first_reads, heavy_answer, light_answer) = first?;
    let beside_first_read = beside_first_read?;
    let answer_bytes = (heavy_answer.len(), light_answer.len());
    let hour_reads = |user: String| {
        let top = workload::now_millis() / HOUR * HOUR;
        move |n: u64| {
            // A stride coprime with 168 walks every hour of the week.
            let at = top - (n * 37 % 168) as i64 * HOUR;
            Call::get(format!("/v1/users/{user}/signals?at={at}"))
        }
    };
    // Warm: the heavy user's record decoded and tiled, the caches filled.
    serving::closed(address, Duration::from_secs(1), now_reads(HEAVY.into())).await?;
    let heavy_now = serving::closed(address, duration, now_reads(HEAVY.into())).await?;
    let light_now = serving::closed(address, duration, now_reads(light.clone())).await?;
    let heavy_hours = serving::closed(address, duration, hour_reads(HEAVY.into())).await?;
    let light_hours = serving::closed(address, duration, hour_reads(light.clone())).await?;
    let heavy_hours_paced =
        serving::paced(address, duration, PACED_RATE, hour_reads(HEAVY.into())).await?;
    let light_hours_paced =
        serving::paced(address, duration, PACED_RATE, hour_reads(light.clone())).await?;
    retract_a_batch_event(address).await?;
    serving::wait_caught_up(address).await?;
    let heavy_hours_retracted =
        serving::paced(address, duration, PACED_RATE, hour_reads(HEAVY.into())).await?;
    let mut conn = Conn::open(address).await?;
    let (status, _) = conn
        .send(&Call::post_json("/v1/admin/batch/run", ""))
        .await?;
    anyhow::ensure!(status.is_success(), "the second batch run failed: {status}");
    drop(conn);
    let (next_first_reads, _, _) = time_first_reads(address, &light).await?;
    drop(platform);
    let bare = serving::BareServer::start(1, &heavy_answer).await?;
    serving::closed(
        bare.address,
        Duration::from_secs(1),
        now_reads(HEAVY.into()),
    )
    .await?;
    let bare_heavy = serving::closed(bare.address, duration, now_reads(HEAVY.into())).await?;
    drop(bare);
    Ok(HeavyFigures {
        bare_heavy,
        events,
        answer_bytes,
        first_reads,
        next_first_reads,
        heavy_now,
        light_now,
        heavy_hours,
        light_hours,
        heavy_hours_paced,
        light_hours_paced,
        heavy_hours_retracted,
        beside_first_read,
    })
}

/// Times the heavy and then the `light` user's first read of the version
/// just published (records decoded and tiled on the spot); returns their
/// answers too.
async fn time_first_reads(
    address: SocketAddr,
    light: &str,
) -> anyhow::Result<((Duration, Duration), bytes::Bytes, bytes::Bytes)> {
    let mut conn = Conn::open(address).await?;
    let started = std::time::Instant::now();
    let (_, heavy) = conn
        .send(&Call::get(format!("/v1/users/{HEAVY}/signals")))
        .await?;
    let heavy_took = started.elapsed();
    let started = std::time::Instant::now();
    let (_, light) = conn
        .send(&Call::get(format!("/v1/users/{light}/signals")))
        .await?;
    Ok(((heavy_took, started.elapsed()), heavy, light))
}

/// Retracts the heavy user's newest event older than two hours: one the
/// batch's record holds (the speed tail holds the last hour's).
async fn retract_a_batch_event(address: SocketAddr) -> anyhow::Result<()> {
    let mut conn = Conn::open(address).await?;
    let until = workload::now_millis() - 2 * HOUR;
    let (status, body) = conn
        .send(&Call::get(format!(
            "/v1/users/{HEAVY}/activity?until={until}&limit=1"
        )))
        .await?;
    anyhow::ensure!(status.is_success(), "the heavy user's activity: {status}");
    let activity: serde_json::Value = serde_json::from_slice(&body)?;
    let Some(id) = activity["events"][0]["event_id"].as_str() else {
        anyhow::bail!("the heavy user has no event before {until}");
    };
    let retraction = serde_json::json!({"event_ids": [id], "reason": "bench"});
    let (status, body) = conn
        .send(&Call::post_json("/v1/retractions", retraction.to_string()))
        .await?;
    anyhow::ensure!(
        status.is_success(),
        "the retraction failed: {status} {}",
        String::from_utf8_lossy(&body)
    );
    Ok(())
}

/// Posts `events` distinct events of the heavy user with event times spread
/// evenly over the last `span`.
async fn post_heavy(
    address: SocketAddr,
    shape: &Shape,
    events: u64,
    span: i64,
) -> anyhow::Result<()> {
    let mut w = Workload::new(&Shape {
        seed: shape.seed + 7,
        ..shape.clone()
    })?;
    let now = workload::now_millis();
    let step = (span / events.max(1) as i64).max(1);
    let mut bodies = Vec::new();
    let mut made = 0;
    while made < events {
        let batch: Vec<_> = (made..events.min(made + ingest::BATCH as u64))
            .map(|i| w.event_for(HEAVY.into(), now - 1 - (i as i64 * step) % span))
            .collect();
        made += batch.len() as u64;
        bodies.push(bytes::Bytes::from(workload::json_batch(&batch)));
    }
    serving::post_bodies(address, bodies).await
}
