//! `signals-bench load`: skewed traffic at a fixed rate against any running
//! platform, with what it achieved.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;

use crate::http::{self, Call, Outcome, Pace};
use crate::workload::{self, Shape, Workload};

/// What traffic to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// `POST /v1/events` with `--batch` events per request; `--rate` is events/s.
    Events,
    /// `GET /v1/users/{id}/signals` of Zipf-drawn users; `--rate` is requests/s.
    Signals,
    /// `POST /v1/signals/query` for `--batch` users at once; `--rate` is requests/s.
    Query,
}

#[derive(Clone, Debug, clap::Args)]
pub struct LoadArgs {
    /// The platform's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[arg(long, value_enum, default_value = "events")]
    pub kind: Kind,
    /// Events per second (events) or requests per second (signals, query).
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Distinct users (Zipf-distributed).
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,
    /// Distinct items (Zipf-distributed).
    #[arg(long, default_value_t = 50_000)]
    pub items: u64,
    /// Zipf exponent of user and item popularity.
    #[arg(long, default_value_t = 1.0)]
    pub skew: f64,
    /// Events per POST (events) or users per query (query).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Concurrent connections (most requests in flight).
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

pub async fn run(args: &LoadArgs) -> anyhow::Result<()> {
    let address = resolve(&args.url).await?;
    let duration = Duration::from_secs_f64(args.duration);
    let shape = Shape {
        users: args.users,
        items: args.items,
        skew: args.skew,
        seed: args.seed,
    };
    let outcome = send(
        address,
        args.kind,
        &shape,
        args.rate,
        args.batch,
        args.connections,
        duration,
    )
    .await?;
    print(args, &outcome);
    Ok(())
}

/// Sends one kind of traffic at `rate` for `duration`.
pub async fn send(
    address: SocketAddr,
    kind: Kind,
    shape: &Shape,
    rate: f64,
    batch: usize,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let workload = Mutex::new(Workload::new(shape)?);
    let batch = batch.max(1);
    let (request_rate, tally): (f64, http::Tally) = match kind {
        Kind::Events => (rate / batch as f64, http::tally_events),
        Kind::Signals | Kind::Query => (rate, http::tally_status),
    };
    let make = move |_: u64| {
        let mut w = workload.lock().unwrap_or_else(|e| e.into_inner());
        match kind {
            Kind::Events => {
                let now = workload::now_millis();
                let events: Vec<_> = (0..batch).map(|_| w.event(now)).collect();
                Call::post_json("/v1/events", workload::json_batch(&events))
            }
            Kind::Signals => Call::get(format!("/v1/users/{}/signals", w.user())),
            Kind::Query => {
                let users: Vec<String> = (0..batch).map(|_| w.user()).collect();
                let body = serde_json::json!({ "user_ids": users }).to_string();
                Call::post_json("/v1/signals/query", body)
            }
        }
    };
    http::drive(
        address,
        connections,
        Pace::Rate(request_rate),
        duration,
        make,
        tally,
    )
    .await
}

fn print(args: &LoadArgs, o: &Outcome) {
    let seconds = o.elapsed.as_secs_f64();
    println!(
        "{:?} against {} for {seconds:.1}s ({} connections, target {} /s)",
        args.kind, args.url, args.connections, args.rate
    );
    println!(
        "requests: {} ok, {} failed; {:.0} requests/s",
        o.ok,
        o.failed,
        o.rate()
    );
    if args.kind == Kind::Events {
        println!(
            "events: {} accepted, {} rejected; {:.0} accepted/s",
            o.accepted,
            o.rejected,
            o.accepted_rate()
        );
    }
    println!(
        "latency from scheduled start: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        o.ms(0.5),
        o.ms(0.9),
        o.ms(0.99),
        o.ms(0.999),
        o.latency.max() as f64 / 1000.0
    );
}

/// `http://host:port[/]` → a socket address.
pub async fn resolve(url: &str) -> anyhow::Result<SocketAddr> {
    let authority = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?}: only http:// URLs are supported"))?
        .trim_end_matches('/');
    tokio::net::lookup_host(authority)
        .await
        .with_context(|| format!("cannot resolve {authority:?}"))?
        .next()
        .with_context(|| format!("{authority:?} resolves to no address"))
}
