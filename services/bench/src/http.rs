//! A lean HTTP/1.1 load driver: one keep-alive connection per worker task,
//! latencies in an HDR histogram (microseconds). The client must cost little
//! CPU because it shares the machine's two cores with the server it measures.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One request to make.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub body: Option<Bytes>,
}

impl Call {
    pub fn get(path: impl Into<String>) -> Call {
        Call {
            method: Method::GET,
            path: path.into(),
            body: None,
        }
    }

    pub fn post_json(path: impl Into<String>, body: impl Into<Bytes>) -> Call {
        Call {
            method: Method::POST,
            path: path.into(),
            body: Some(body.into()),
        }
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct Conn {
    address: SocketAddr,
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(address: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(address)
            .await
            .with_context(|| format!("cannot connect to {address}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the server or the sender closes; nothing to report.
            let _ = connection.await;
        });
        Ok(Conn { address, sender })
    }

    /// Sends `call` and reads the whole answer, reconnecting once if the
    /// server closed the connection in between.
    pub async fn send(&mut self, call: &Call) -> anyhow::Result<(StatusCode, Bytes)> {
        if self.sender.ready().await.is_err() {
            *self = Conn::open(self.address).await?;
        }
        let mut request = Request::builder()
            .method(call.method.clone())
            .uri(call.path.as_str())
            .header(hyper::header::HOST, self.address.to_string());
        if call.body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(call.body.clone().unwrap_or_default()))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// What a run of requests did.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Latency of successful requests, µs (from the scheduled start in open loop).
    pub latency: Histogram<u64>,
    pub ok: u64,
    pub failed: u64,
    /// Application-level counts a [`Tally`] extracts (e.g. accepted events).
    pub accepted: u64,
    pub rejected: u64,
    pub elapsed: Duration,
}

impl Outcome {
    fn empty() -> Outcome {
        Outcome {
            latency: histogram(),
            ok: 0,
            failed: 0,
            accepted: 0,
            rejected: 0,
            elapsed: Duration::ZERO,
        }
    }

    fn absorb(&mut self, other: &Outcome) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
        self.failed += other.failed;
        self.accepted += other.accepted;
        self.rejected += other.rejected;
    }

    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Accepted items per second.
    pub fn accepted_rate(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile of latency in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// A histogram of microseconds from 1 µs to 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("constant, valid histogram bounds")
}

/// Reads an answer into (accepted, rejected) items; `None` is a failure.
pub type Tally = fn(StatusCode, &Bytes) -> Option<(u64, u64)>;

/// Any 2xx is one accepted item.
pub fn tally_status(status: StatusCode, _: &Bytes) -> Option<(u64, u64)> {
    status.is_success().then_some((1, 0))
}

/// `POST /v1/events`: `{"accepted": n, "rejected": [...]}`.
pub fn tally_events(status: StatusCode, body: &Bytes) -> Option<(u64, u64)> {
    if !status.is_success() {
        return None;
    }
    let answer: serde_json::Value = serde_json::from_slice(body).ok()?;
    let accepted = answer.get("accepted")?.as_u64()?;
    let rejected = answer.get("rejected")?.as_array()?.len() as u64;
    Some((accepted, rejected))
}

/// How requests are paced.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// Each worker sends its next request as soon as the last one answered.
    Closed,
    /// Requests start on a fixed schedule of this many per second; latency
    /// counts from the scheduled start, so a stalled server cannot hide its
    /// queue (no coordinated omission).
    Rate(f64),
}

/// Drives `workers` connections at `address` for `duration`; `make` builds
/// the `n`th request.
pub async fn drive<F>(
    address: SocketAddr,
    workers: usize,
    pace: Pace,
    duration: Duration,
    make: F,
    tally: Tally,
) -> anyhow::Result<Outcome>
where
    F: Fn(u64) -> Call + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let tickets = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let make = make.clone();
        let tickets = tickets.clone();
        let mut conn = Conn::open(address).await?;
        tasks.spawn(async move {
            let mut outcome = Outcome::empty();
            loop {
                let n = tickets.fetch_add(1, Ordering::Relaxed);
                let scheduled = match pace {
                    Pace::Closed => Instant::now(),
                    Pace::Rate(rate) => started + Duration::from_secs_f64(n as f64 / rate),
                };
                if scheduled >= deadline || Instant::now() >= deadline {
                    break;
                }
                // Never sleep when already due: a timer rounds up to the
                // next millisecond and would cap each connection at ~1k/s.
                if scheduled > Instant::now() {
                    tokio::time::sleep_until(scheduled.into()).await;
                }
                let call = make(n);
                match conn.send(&call).await {
                    Ok((status, body)) => match tally(status, &body) {
                        Some((accepted, rejected)) => {
                            let micros = scheduled.elapsed().as_micros() as u64;
                            let _ = outcome.latency.record(micros.max(1));
                            outcome.ok += 1;
                            outcome.accepted += accepted;
                            outcome.rejected += rejected;
                        }
                        None => outcome.failed += 1,
                    },
                    Err(_) => {
                        outcome.failed += 1;
                        match Conn::open(address).await {
                            Ok(fresh) => conn = fresh,
                            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                }
            }
            outcome
        });
    }
    let mut total = Outcome::empty();
    while let Some(done) = tasks.join_next().await {
        total.absorb(&done?);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}
