//! Serving: the platform's read API over HTTP (warm single user, cold
//! single user, 100-user multi-get; saturation and fixed rates) against a
//! bare axum handler with canned answers of the same size, measured in the
//! same run with the same client.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::http::{self, Call, Conn, Outcome, Pace};
use crate::platform::{Platform, Services, Stack};
use crate::suite::ingest;
use crate::workload::{self, Shape, Workload};

/// Connections of the saturation runs.
const CONNECTIONS: usize = 16;
/// The fixed rate of the latency runs, requests/s.
pub const FIXED_RATE: f64 = 20_000.0;

/// Serving figures of one server (ours or the bare handler).
pub struct Serving {
    /// Zipf-drawn users: the heaviest histories are asked most.
    pub warm_zipf: Outcome,
    /// Uniformly drawn users: the typical user.
    pub warm: Outcome,
    pub warm_fixed: Outcome,
    pub cold: Option<Outcome>,
    pub multi: Outcome,
}

pub struct ServingFigures {
    pub ours: Serving,
    pub bare: Serving,
    pub answer_bytes: usize,
}

/// Loads `events` events, runs the batch, adds a speed tail, then measures.
pub async fn measure(
    stack: Stack,
    services: &Services,
    shape: &Shape,
    events: u64,
    duration: Duration,
) -> anyhow::Result<ServingFigures> {
    let mut platform = Platform::start(stack, services, &[]).await?;
    let address = platform.address;
    preload(address, shape, events).await?;
    let mut conn = Conn::open(address).await?;
    let (status, _) = conn
        .send(&Call::post_json("/v1/admin/batch/run", ""))
        .await?;
    anyhow::ensure!(status.is_success(), "the batch run failed: {status}");
    // A speed tail after the batch, as serving meets it between runs.
    let tail = Shape {
        seed: shape.seed + 1,
        ..shape.clone()
    };
    preload(address, &tail, (events / 10).max(ingest::BATCH as u64)).await?;
    let (_, sample) = conn.send(&Call::get("/v1/users/u-1/signals")).await?;
    drop(conn);

    let cold_users = shape.users;
    let cold = move |n: u64| {
        Call::get(format!(
            "/v1/users/{}/signals",
            workload::user_id(n % cold_users + 1)
        ))
    };

    // Warm the caches with one pass of the measured mix, untimed.
    closed(address, duration, warm(shape, Draw::Uniform)?).await?;
    let ours_zipf = closed(address, duration, warm(shape, Draw::Zipf)?).await?;
    let ours_warm = closed(address, duration, warm(shape, Draw::Uniform)?).await?;
    let ours_fixed = fixed(address, duration, warm(shape, Draw::Uniform)?).await?;
    let ours_multi = closed(address, duration, multi(shape)?).await?;
    platform.restart().await?;
    let ours_cold = closed(platform.address, duration, cold).await?;
    drop(platform);

    let mut bare = BareServer::start(shape.users, &sample).await?;
    closed(bare.address, duration, warm(shape, Draw::Uniform)?).await?;
    let bare_zipf = closed(bare.address, duration, warm(shape, Draw::Zipf)?).await?;
    let bare_warm = closed(bare.address, duration, warm(shape, Draw::Uniform)?).await?;
    let bare_warm_fixed = fixed(bare.address, duration, warm(shape, Draw::Uniform)?).await?;
    let bare_multi = closed(bare.address, duration, multi(shape)?).await?;
    bare.stop();
    Ok(ServingFigures {
        ours: Serving {
            warm_zipf: ours_zipf,
            warm: ours_warm,
            warm_fixed: ours_fixed,
            cold: Some(ours_cold),
            multi: ours_multi,
        },
        bare: Serving {
            warm_zipf: bare_zipf,
            warm: bare_warm,
            warm_fixed: bare_warm_fixed,
            cold: None,
            multi: bare_multi,
        },
        answer_bytes: sample.len(),
    })
}

/// As many requests as `CONNECTIONS` connections get answered.
pub(super) async fn closed<F>(
    address: SocketAddr,
    duration: Duration,
    make: F,
) -> anyhow::Result<Outcome>
where
    F: Fn(u64) -> Call + Send + Sync + 'static,
{
    http::drive(
        address,
        CONNECTIONS,
        Pace::Closed,
        duration,
        make,
        http::tally_status,
    )
    .await
}

/// `FIXED_RATE` requests/s on a schedule, with room for queues to form.
async fn fixed<F>(address: SocketAddr, duration: Duration, make: F) -> anyhow::Result<Outcome>
where
    F: Fn(u64) -> Call + Send + Sync + 'static,
{
    paced(address, duration, FIXED_RATE, make).await
}

/// `rate` requests/s on a schedule, with room for queues to form.
pub(super) async fn paced<F>(
    address: SocketAddr,
    duration: Duration,
    rate: f64,
    make: F,
) -> anyhow::Result<Outcome>
where
    F: Fn(u64) -> Call + Send + Sync + 'static,
{
    http::drive(
        address,
        CONNECTIONS * 4,
        Pace::Rate(rate),
        duration,
        make,
        http::tally_status,
    )
    .await
}

/// How a read picks its user.
#[derive(Clone, Copy)]
enum Draw {
    /// With the write skew: the heaviest histories are read most.
    Zipf,
    /// Every user alike: the typical history.
    Uniform,
}

/// Single-user reads.
fn warm(shape: &Shape, draw: Draw) -> anyhow::Result<impl Fn(u64) -> Call + Send + Sync + 'static> {
    let users = Mutex::new(Workload::new(shape)?);
    Ok(move |_: u64| {
        let mut users = users.lock().unwrap_or_else(|e| e.into_inner());
        let user = match draw {
            Draw::Zipf => users.user(),
            Draw::Uniform => users.uniform_user(),
        };
        Call::get(format!("/v1/users/{user}/signals"))
    })
}

/// Multi-gets of 100 uniformly drawn users.
fn multi(shape: &Shape) -> anyhow::Result<impl Fn(u64) -> Call + Send + Sync + 'static> {
    let users = Mutex::new(Workload::new(shape)?);
    Ok(move |_: u64| {
        let mut users = users.lock().unwrap_or_else(|e| e.into_inner());
        let ids: Vec<String> = (0..100).map(|_| users.uniform_user()).collect();
        Call::post_json(
            "/v1/signals/query",
            serde_json::json!({ "user_ids": ids }).to_string(),
        )
    })
}

/// Posts `events` distinct events as fast as the platform accepts them and
/// waits until the speed layer has applied them all.
pub(super) async fn preload(address: SocketAddr, shape: &Shape, events: u64) -> anyhow::Result<()> {
    let mut w = Workload::new(shape)?;
    let mut bodies = Vec::new();
    let now = workload::now_millis();
    for _ in 0..events.div_ceil(ingest::BATCH as u64) {
        let batch: Vec<_> = (0..ingest::BATCH).map(|_| w.event(now)).collect();
        bodies.push(bytes::Bytes::from(workload::json_batch(&batch)));
    }
    post_bodies(address, bodies).await?;
    wait_caught_up(address).await
}

/// Posts each of `bodies` (JSON arrays of events) once, over
/// `ingest::CONNECTIONS` connections, as fast as the platform accepts them.
pub(super) async fn post_bodies(
    address: SocketAddr,
    bodies: Vec<bytes::Bytes>,
) -> anyhow::Result<()> {
    let bodies = std::sync::Arc::new(bodies);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..ingest::CONNECTIONS {
        let (bodies, next) = (bodies.clone(), next.clone());
        tasks.spawn(async move {
            let mut conn = Conn::open(address).await?;
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(body) = bodies.get(n) else {
                    return anyhow::Ok(());
                };
                let (status, answer) = conn
                    .send(&Call::post_json("/v1/events", body.clone()))
                    .await?;
                anyhow::ensure!(status.is_success(), "events refused: {status} {answer:?}");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Until the speed layer lags the log by no record.
pub async fn wait_caught_up(address: SocketAddr) -> anyhow::Result<()> {
    let mut conn = Conn::open(address).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (_, body) = conn
            .send(&Call::get("/v1/users/u-1/signals?names=views_24h"))
            .await?;
        let answer: serde_json::Value = serde_json::from_slice(&body)?;
        if answer["freshness"]["speed_lag_records"].as_u64() == Some(0) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the speed layer did not catch up in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `signals-bench bare-server` as a child process.
pub(super) struct BareServer {
    pub(super) address: SocketAddr,
    child: Child,
    _sample: tempfile::NamedTempFile,
}

impl BareServer {
    pub(super) async fn start(users: u64, sample: &[u8]) -> anyhow::Result<BareServer> {
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), sample)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(std::env::current_exe()?)
            .args([
                "bare-server",
                "--listen",
                &address.to_string(),
                "--users",
                &users.to_string(),
            ])
            .arg("--sample")
            .arg(file.path())
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start the bare server")?;
        let mut server = BareServer {
            address,
            child,
            _sample: file,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Conn::open(address).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the bare server did not start");
            if server.child.try_wait()?.is_some() {
                anyhow::bail!("the bare server exited");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BareServer {
    fn drop(&mut self) {
        self.stop();
    }
}
