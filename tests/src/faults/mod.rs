//! The fault-injection suite: the real `signals serve` and `signals speed`
//! against real Kafka, Cassandra and Redis, under steady load, while
//! engines are stopped, killed, paused and cut off, clients hang up, and
//! the platform's own processes are SIGKILLed. After each round of faults
//! the served answers are checked against what was acknowledged
//! ([`check`]). Nothing is restarted by hand, except a `signals` process the
//! suite killed, which it spawns again at once as a supervisor would (and
//! one that exits by itself, which is counted as a failure).
//!
//! Short form: `tests/tests/faults.rs` (in `tests/run`). Long form:
//! `tests/faults`. Results: docs/RELIABILITY.md.

pub mod check;
pub mod engines;
pub mod load;
pub mod processes;
pub mod proxy;
pub mod report;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use check::Verdict;
use engines::{Engine, Engines, Signal};
use load::{Load, LoadShape, Request, Shared};
use processes::{Processes, Role};
use proxy::{Mode, Proxy};

/// Events per hung-up request (about 200 kB of JSON).
const HANGUP_EVENTS: usize = 1_000;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// `infra/local/down kafka`, a pause, `infra/local/up kafka`.
    KafkaRestart,
    /// SIGKILL, a pause, `infra/local/up kafka`.
    KafkaKill,
    /// SIGSTOP for a while, SIGCONT.
    KafkaPause,
    /// Every connection to the broker reset (`ss -K`), repeatedly for a while.
    KafkaCut,
    CassandraKill,
    CassandraPause,
    /// The platform's CQL connections reset and refused for a while (proxy).
    CassandraCut,
    /// The platform's CQL connections held with nothing forwarded (proxy).
    CassandraStall,
    RedisKill,
    RedisPause,
    RedisCut,
    /// Thirty clients that hang up 50 ms into a large POST.
    ClientHangups,
    /// SIGKILL of `signals speed`, spawned again at once.
    SpeedKill,
    /// SIGKILL of `signals serve`, spawned again at once.
    ServeKill,
}

impl Fault {
    pub const ALL: [Fault; 14] = [
        Fault::KafkaRestart,
        Fault::KafkaKill,
        Fault::KafkaPause,
        Fault::KafkaCut,
        Fault::CassandraKill,
        Fault::CassandraPause,
        Fault::CassandraCut,
        Fault::CassandraStall,
        Fault::RedisKill,
        Fault::RedisPause,
        Fault::RedisCut,
        Fault::ClientHangups,
        Fault::SpeedKill,
        Fault::ServeKill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KafkaRestart => "kafka-restart",
            Fault::KafkaKill => "kafka-kill",
            Fault::KafkaPause => "kafka-pause",
            Fault::KafkaCut => "kafka-cut",
            Fault::CassandraKill => "cassandra-kill",
            Fault::CassandraPause => "cassandra-pause",
            Fault::CassandraCut => "cassandra-cut",
            Fault::CassandraStall => "cassandra-stall",
            Fault::RedisKill => "redis-kill",
            Fault::RedisPause => "redis-pause",
            Fault::RedisCut => "redis-cut",
            Fault::ClientHangups => "client-hangups",
            Fault::SpeedKill => "speed-kill",
            Fault::ServeKill => "serve-kill",
        }
    }

    pub fn parse(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }

    /// What was done, for the docs.
    pub fn description(self) -> &'static str {
        match self {
            Fault::KafkaRestart => "`infra/local/down kafka`, 5 s, `infra/local/up kafka`",
            Fault::KafkaKill => "SIGKILL the broker, 3 s, `infra/local/up kafka`",
            Fault::KafkaPause => "SIGSTOP the broker 10 s, SIGCONT",
            Fault::KafkaCut => "`ss -K` every connection to the broker, every 0.5 s for 8 s",
            Fault::CassandraKill => "SIGKILL Cassandra, 3 s, `infra/local/up cassandra`",
            Fault::CassandraPause => "SIGSTOP Cassandra 10 s, SIGCONT",
            Fault::CassandraCut => "proxy resets and refuses CQL connections 8 s",
            Fault::CassandraStall => "proxy holds CQL connections, forwards nothing, 10 s",
            Fault::RedisKill => "SIGKILL Redis, 3 s, start it again (empty)",
            Fault::RedisPause => "SIGSTOP Redis 10 s, SIGCONT",
            Fault::RedisCut => "proxy resets and refuses Redis connections 8 s",
            Fault::ClientHangups => "30 clients POST 1,000 events each and hang up after 50 ms",
            Fault::SpeedKill => "SIGKILL `signals speed`, spawn it again at once",
            Fault::ServeKill => "SIGKILL `signals serve`, spawn it again at once",
        }
    }

    /// The engine whose process the fault stops, kills or pauses.
    fn hurts(self) -> Option<Engine> {
        match self {
            Fault::KafkaRestart | Fault::KafkaKill | Fault::KafkaPause | Fault::KafkaCut => {
                Some(Engine::Kafka)
            }
            Fault::CassandraKill | Fault::CassandraPause => Some(Engine::Cassandra),
            Fault::RedisKill | Fault::RedisPause => Some(Engine::Redis),
            _ => None,
        }
    }

    /// What `/readyz` of `signals serve` must say while the fault lasts.
    pub fn expected_readiness(self) -> Expect {
        match self {
            Fault::KafkaRestart
            | Fault::KafkaKill
            | Fault::KafkaPause
            | Fault::KafkaCut
            | Fault::CassandraKill
            | Fault::CassandraPause
            | Fault::CassandraCut
            | Fault::CassandraStall => Expect::NotReady,
            Fault::RedisKill | Fault::RedisPause | Fault::RedisCut => Expect::Degraded,
            Fault::ClientHangups | Fault::SpeedKill | Fault::ServeKill => Expect::Anything,
        }
    }
}

/// What readiness must say during a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// 503 with a reason, at least once while the dependency is gone.
    NotReady,
    /// 200 with the cache reported degraded, never 503.
    Degraded,
    Anything,
}

/// A `/readyz` answer of one process.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Instant,
    pub role: Role,
    /// 0: no answer within [`READYZ_TIMEOUT`].
    pub status: u16,
    /// The checks that were not `ok`, `name: reason`.
    pub reasons: String,
}

/// One injected fault, measured.
#[derive(Clone, Debug)]
pub struct Injection {
    pub fault: Fault,
    pub round: usize,
    pub started: Instant,
    /// When the fault was lifted (engine answering again, process spawned).
    pub lifted: Instant,
    /// From `lifted` to the first POST answered 200.
    pub first_ok_post: Option<Duration>,
    /// From `lifted` to an event acknowledged after it being served.
    pub recovered: Option<Duration>,
    /// From `lifted` to both processes' `/readyz` answering 200.
    pub ready_again: Option<Duration>,
    /// POSTs (events and retractions) without 200 between start and recovery.
    pub refused: usize,
    pub reads_failed: usize,
    pub readiness: String,
    pub truthful: bool,
    /// Processes that exited by themselves (respawned as a supervisor would).
    pub exits: Vec<String>,
    /// Not recovered within [`RECOVERY_DEADLINE`]: the suite restarted both
    /// processes by hand (a failure) so that the next faults still mean
    /// something.
    pub restarted_by_hand: bool,
}

/// How long after a fault is lifted the platform has to work again.
pub const RECOVERY_DEADLINE: Duration = Duration::from_secs(120);

/// One round: load, some faults, then the check.
#[derive(Clone, Debug)]
pub struct Round {
    pub index: usize,
    pub faults: Vec<Fault>,
    pub injections: Vec<Injection>,
    pub caught_up: Result<Duration, String>,
    pub verdict: Result<Verdict, String>,
    pub posts: usize,
    pub posts_ok: usize,
    pub reads: usize,
    pub reads_ok: usize,
}

impl Round {
    pub fn label(&self) -> String {
        let mut names: Vec<&str> = self.faults.iter().map(|f| f.name()).collect();
        names.dedup();
        names.join("+")
    }

    pub fn clean(&self) -> bool {
        self.caught_up.is_ok() && self.verdict.as_ref().is_ok_and(Verdict::clean)
    }
}

/// The suite's view of the platform and its engines.
pub struct Harness {
    pub engines: Engines,
    pub processes: Processes,
    pub cql: Proxy,
    pub redis: Proxy,
    kafka_port: u16,
    http: reqwest::Client,
    samples: Arc<Mutex<Vec<Sample>>>,
    sampler: [tokio::task::AbortHandle; 2],
    unique: String,
    rng: StdRng,
    rounds: usize,
    /// Processes that exited by themselves while starting or while being
    /// restarted (respawned as a supervisor would; a failure).
    pub startup_exits: Vec<String>,
    /// Where the processes' data and logs are.
    pub dir: PathBuf,
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

impl Harness {
    /// Starts `signals serve` and `signals speed` against the engines named
    /// by `SIGNALS_TEST_*` (Redis: the private one when `engines` has it),
    /// CQL and Redis through proxies of the suite's own; data and logs
    /// under `dir`.
    pub async fn start(engines: Engines, dir: &Path, seed: u64) -> anyhow::Result<Harness> {
        let kafka = env("SIGNALS_TEST_KAFKA_BROKERS")?;
        let cql = env("SIGNALS_TEST_CQL_NODES")?;
        let cql = cql.split(',').next().unwrap_or_default().trim().to_owned();
        let redis_url = match &engines {
            Engines::Shared(redis) => redis.url(),
            Engines::Owned(_) => env("SIGNALS_TEST_REDIS_URL")?,
        };
        let redis_upstream = redis_url
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        let kafka_port = kafka
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .context("the Kafka port")?;
        let cql_proxy = Proxy::start(cql).await?;
        let redis_proxy = Proxy::start(redis_upstream).await?;
        let unique = signals_test_support::unique_name("faults");
        let settings: Vec<(String, String)> = [
            ("SIGNALS_BATCH__SCHEDULE", "off".to_owned()),
            ("SIGNALS_LOG__BACKEND", "kafka".to_owned()),
            ("SIGNALS_LOG__KAFKA__BROKERS", kafka),
            ("SIGNALS_LOG__KAFKA__TOPIC", format!("signals-{unique}")),
            (
                "SIGNALS_LOG__KAFKA__DEAD_LETTER_TOPIC",
                format!("signals-{unique}.dlq"),
            ),
            ("SIGNALS_LOG__KAFKA__GROUP", format!("signals-{unique}")),
            // Kafka's smallest session by default: a SIGKILLed speed
            // process's partitions move after 6 s rather than 10 s.
            ("SIGNALS_LOG__KAFKA__SESSION_TIMEOUT", "6s".to_owned()),
            (
                "SIGNALS_CACHE__REDIS_URL",
                format!("redis://{}", redis_proxy.address),
            ),
            ("SIGNALS_STORE__BACKEND", "scylla".to_owned()),
            (
                "SIGNALS_STORE__SCYLLA__NODES",
                cql_proxy.address.to_string(),
            ),
            ("SIGNALS_STORE__SCYLLA__KEYSPACE", unique.replace('-', "_")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let processes = Processes::start(settings, dir)?;
        let http = reqwest::Client::builder().build()?;
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let sampler = [
            (Role::Serve, processes.serve.clone()),
            (Role::Speed, processes.speed.clone()),
        ]
        .map(|(role, base)| {
            tokio::spawn(sample_readiness(http.clone(), role, base, samples.clone())).abort_handle()
        });
        let mut harness = Harness {
            engines,
            processes,
            cql: cql_proxy,
            redis: redis_proxy,
            kafka_port,
            http,
            samples,
            sampler,
            unique,
            rng: StdRng::seed_from_u64(seed),
            rounds: 0,
            startup_exits: Vec::new(),
            dir: dir.to_path_buf(),
        };
        if harness.wait_ready(Duration::from_secs(180)).await.is_none() {
            bail!(
                "the platform did not become ready within 180 s.\nserve:\n{}\nspeed:\n{}",
                harness.processes.log_tail(Role::Serve, 30),
                harness.processes.log_tail(Role::Speed, 30)
            );
        }
        Ok(harness)
    }

    /// Whether `fault` can be injected here (the short form leaves the
    /// shared engines alone).
    pub fn can_inject(&self, fault: Fault) -> bool {
        match fault {
            Fault::KafkaCut => matches!(self.engines, Engines::Owned(_)),
            _ => fault.hurts().is_none_or(|e| self.engines.may_hurt(e)),
        }
    }

    /// Respawns a process that exited by itself; returns what happened.
    fn supervise(&mut self) -> Vec<String> {
        let mut exits = Vec::new();
        for role in [Role::Serve, Role::Speed] {
            if let Some(status) = self.processes.exited(role) {
                let tail = self.processes.log_tail(role, 8);
                exits.push(format!(
                    "signals {role:?} exited by itself ({status}); log:\n{tail}"
                ));
                if let Err(error) = self.processes.spawn(role) {
                    exits.push(format!("respawning {role:?}: {error}"));
                }
            }
        }
        exits
    }

    /// Waits until both processes answer `/readyz` with 200.
    async fn wait_ready(&mut self, within: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < within {
            let exits = self.supervise();
            self.startup_exits.extend(exits);
            let serve = readyz(&self.http, &self.processes.serve).await;
            let speed = readyz(&self.http, &self.processes.speed).await;
            if serve.0 == 200 && speed.0 == 200 {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// A round: `shape` load on users of its own, `faults` one after the
    /// other, then the load stops and everything is checked.
    pub async fn round(&mut self, faults: &[Fault], shape: LoadShape) -> Round {
        self.rounds += 1;
        let index = self.rounds;
        let label = faults.first().map_or("calm", |f| f.name());
        let prefix = format!("r{index}-{label}-{}", &self.unique[self.unique.len() - 6..]);
        let shared = Shared::new(self.processes.serve.clone(), prefix, shape);
        let load = Load::start(shared.clone(), self.rng.random());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut injections = Vec::new();
        for (i, &fault) in faults.iter().enumerate() {
            eprintln!(
                "faults: round {index}: {} ({}/{})",
                fault.name(),
                i + 1,
                faults.len()
            );
            let injection = match self.inject(fault, index, &shared).await {
                Ok(injection) => injection,
                Err(error) => {
                    eprintln!(
                        "faults: round {index}: injecting {} failed: {error:#}",
                        fault.name()
                    );
                    continue;
                }
            };
            eprintln!(
                "faults:   recovered {:?}, first 200 {:?}, ready {:?}, refused {}, readiness {}{}",
                injection.recovered,
                injection.first_ok_post,
                injection.ready_again,
                injection.refused,
                injection.readiness,
                if injection.exits.is_empty() {
                    ""
                } else {
                    " — A PROCESS EXITED BY ITSELF"
                }
            );
            injections.push(injection);
            let gap = self.rng.random_range(200..1_200);
            tokio::time::sleep(Duration::from_millis(gap)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let shared = load.stop().await;
        let mut exits = self.supervise();
        let caught_up = check::wait_caught_up(&self.http, &shared.base, Duration::from_secs(180))
            .await
            .map_err(|e| format!("{e:#}"));
        exits.extend(self.supervise());
        if let (Some(last), false) = (injections.last_mut(), exits.is_empty()) {
            last.exits.extend(exits);
        }
        let verdict = check::verify(&shared).await.map_err(|e| format!("{e:#}"));
        let outcomes = shared.outcomes.lock().expect("outcomes").clone();
        let posts = outcomes
            .iter()
            .filter(|o| matches!(o.request, Request::Events | Request::Retraction));
        let reads = outcomes.iter().filter(|o| o.request == Request::Read);
        let round = Round {
            index,
            faults: faults.to_vec(),
            injections,
            caught_up,
            verdict,
            posts: posts.clone().count(),
            posts_ok: posts.filter(|o| o.ok()).count(),
            reads: reads.clone().count(),
            reads_ok: reads.filter(|o| o.ok()).count(),
        };
        eprintln!(
            "faults: round {index} ({}): caught up {:?}; {}",
            round.label(),
            round.caught_up,
            match &round.verdict {
                Ok(v) => v.summary(),
                Err(e) => format!("check failed: {e}"),
            }
        );
        round
    }

    async fn blocking<T: Send + 'static>(
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        tokio::task::spawn_blocking(work).await?
    }

    /// Injects one fault and lifts it; returns when the engine or process
    /// is back (`lifted`), before recovery is measured.
    async fn apply(&mut self, fault: Fault, shared: &Arc<Shared>) -> anyhow::Result<()> {
        let hold = |s: u64| tokio::time::sleep(Duration::from_secs(s));
        match fault {
            Fault::KafkaRestart | Fault::KafkaKill | Fault::CassandraKill | Fault::RedisKill => {
                let engine = fault.hurts().expect("an engine");
                if fault == Fault::KafkaRestart {
                    self.engine_blocking(engine, |e, engine| e.down(engine))
                        .await?;
                    hold(5).await;
                } else {
                    self.engine_blocking(engine, |e, engine| e.kill(engine))
                        .await?;
                    hold(3).await;
                }
                self.engine_blocking(engine, |e, engine| e.up(engine))
                    .await?;
            }
            Fault::KafkaPause | Fault::CassandraPause | Fault::RedisPause => {
                let engine = fault.hurts().expect("an engine");
                self.engines.signal(engine, Signal::Stop)?;
                hold(10).await;
                self.engines.signal(engine, Signal::Cont)?;
            }
            Fault::KafkaCut => {
                let until = Instant::now() + Duration::from_secs(8);
                while Instant::now() < until {
                    let port = self.kafka_port;
                    Harness::blocking(move || {
                        let status = std::process::Command::new("ss")
                            .args(["-K", "dst", "127.0.0.1", "dport", "=", &format!(":{port}")])
                            .stdout(std::process::Stdio::null())
                            .stderr(std::process::Stdio::null())
                            .status()?;
                        anyhow::ensure!(status.success(), "ss -K failed: {status}");
                        Ok(())
                    })
                    .await?;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            Fault::CassandraCut | Fault::RedisCut => {
                let proxy = if fault == Fault::CassandraCut {
                    &self.cql
                } else {
                    &self.redis
                };
                proxy.set(Mode::Cut);
                hold(8).await;
                proxy.set(Mode::Open);
            }
            Fault::CassandraStall => {
                self.cql.set(Mode::Stalled);
                hold(10).await;
                self.cql.set(Mode::Open);
            }
            Fault::ClientHangups => {
                // Users of their own: the load's users stay free of "maybe"
                // events, so they are still compared signal by signal.
                let mut rng = StdRng::seed_from_u64(self.rng.random());
                let tag = self.rng.random::<u32>();
                let mut requests = tokio::task::JoinSet::new();
                for client in 0..30 {
                    let user = format!("{}-hang{}", shared.prefix, client % 10);
                    let events: Vec<_> = (0..HANGUP_EVENTS)
                        .map(|k| {
                            let id = format!("{}-hang{tag}-{client}-{k}", shared.prefix);
                            shared.event(&mut rng, id, Some(user.clone()))
                        })
                        .collect();
                    let shared = shared.clone();
                    requests.spawn(async move {
                        shared
                            .post_as(Request::HungUp, &events, Duration::from_millis(50))
                            .await
                    });
                }
                requests.join_all().await;
            }
            Fault::SpeedKill | Fault::ServeKill => {
                let role = if fault == Fault::SpeedKill {
                    Role::Speed
                } else {
                    Role::Serve
                };
                self.processes.kill(role);
                self.processes.spawn(role)?;
            }
        }
        Ok(())
    }

    async fn engine_blocking(
        &mut self,
        engine: Engine,
        work: fn(&mut Engines, Engine) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        // infra/local scripts take seconds; the load and the sampler run on
        // the runtime's other worker meanwhile.
        tokio::task::block_in_place(|| work(&mut self.engines, engine))
    }

    async fn inject(
        &mut self,
        fault: Fault,
        round: usize,
        shared: &Arc<Shared>,
    ) -> anyhow::Result<Injection> {
        if !self.can_inject(fault) {
            bail!("{} cannot be injected on these engines", fault.name());
        }
        let started = Instant::now();
        let applied = self.apply(fault, shared).await;
        let lifted = Instant::now();
        let mut exits = self.supervise();
        if let Err(error) = applied {
            // Leave nothing paused or cut behind.
            self.cql.set(Mode::Open);
            self.redis.set(Mode::Open);
            if let Some(engine) = fault.hurts() {
                let _ = self.engines.signal(engine, Signal::Cont);
            }
            return Err(error);
        }

        // Recovery: a probe event acknowledged, then served.
        let deadline = RECOVERY_DEADLINE;
        let mut rng = StdRng::seed_from_u64(self.rng.random());
        let probe_user = format!("{}-probe{}", shared.prefix, rng.random::<u32>());
        let mut first_ok_post = None;
        let mut recovered = None;
        let mut attempt = 0;
        while lifted.elapsed() < deadline && first_ok_post.is_none() {
            attempt += 1;
            let id = format!("{}-probe-{}-{attempt}", shared.prefix, rng.random::<u32>());
            let mut probe = shared.event(&mut rng, id, Some(probe_user.clone()));
            probe.event_type = "view".into();
            probe.item_id = Some("probe".into());
            probe.query = None;
            if shared.post_events(&[probe], Duration::from_secs(5)).await {
                first_ok_post = Some(lifted.elapsed());
            } else {
                exits.extend(self.supervise());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        while first_ok_post.is_some() && lifted.elapsed() < deadline {
            if probe_views(shared, &probe_user)
                .await
                .is_some_and(|v| v >= 1)
            {
                recovered = Some(lifted.elapsed());
                break;
            }
            exits.extend(self.supervise());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ready_again = self
            .wait_ready(deadline.saturating_sub(lifted.elapsed()))
            .await
            .map(|_| lifted.elapsed());
        exits.extend(self.supervise());
        let restarted_by_hand = recovered.is_none() || ready_again.is_none();
        if restarted_by_hand {
            eprintln!(
                "faults: {} not recovered within {deadline:?}: restarting both processes by hand.\nserve:\n{}\nspeed:\n{}",
                fault.name(),
                self.processes.log_tail(Role::Serve, 15),
                self.processes.log_tail(Role::Speed, 15)
            );
            for role in [Role::Serve, Role::Speed] {
                if let Some(path) = self.processes.dump_stacks(role) {
                    eprintln!("faults: {role:?}'s threads: {}", path.display());
                }
                self.processes.kill(role);
                self.processes.spawn(role)?;
            }
            self.wait_ready(Duration::from_secs(120)).await;
        }

        let end = recovered.map_or(Instant::now(), |r| lifted + r);
        let outcomes = shared.outcomes.lock().expect("outcomes").clone();
        let within = |o: &&load::Outcome| o.ended >= started && o.ended <= end && !o.ok();
        let refused = outcomes
            .iter()
            .filter(|o| matches!(o.request, Request::Events | Request::Retraction))
            .filter(within)
            .count();
        let reads_failed = outcomes
            .iter()
            .filter(|o| o.request == Request::Read)
            .filter(within)
            .count();
        let (readiness, truthful) = self.judge_readiness(fault, started, lifted);
        Ok(Injection {
            fault,
            round,
            started,
            lifted,
            first_ok_post,
            recovered,
            ready_again,
            refused,
            reads_failed,
            readiness,
            truthful,
            exits,
            restarted_by_hand,
        })
    }

    /// What serve's `/readyz` said while the fault lasted, against what it
    /// must say.
    fn judge_readiness(&self, fault: Fault, started: Instant, lifted: Instant) -> (String, bool) {
        let samples = self.samples.lock().expect("samples");
        let during: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.role == Role::Serve && s.at >= started && s.at <= lifted)
            .collect();
        let count = |f: &dyn Fn(&Sample) -> bool| during.iter().filter(|s| f(s)).count();
        let not_ready = count(&|s| s.status == 503 && !s.reasons.is_empty());
        let degraded = count(&|s| s.status == 200 && s.reasons.contains("cache"));
        let ready = count(&|s| s.status == 200 && s.reasons.is_empty());
        let silent = count(&|s| s.status == 0);
        let reason = during
            .iter()
            .find(|s| s.status == 503 || s.reasons.contains("cache"))
            .map(|s| s.reasons.chars().take(90).collect::<String>())
            .unwrap_or_default();
        let text = format!(
            "503 {not_ready}, 200 degraded {degraded}, 200 ready {ready}, no answer {silent}{}",
            if reason.is_empty() {
                String::new()
            } else {
                format!(" ({reason})")
            }
        );
        let truthful = match fault.expected_readiness() {
            Expect::NotReady => not_ready > 0,
            Expect::Degraded => degraded > 0 && not_ready == 0,
            Expect::Anything => true,
        };
        (text, truthful)
    }

    /// Stops the processes (SIGTERM) and the sampler.
    pub fn stop(&mut self) {
        self.sampler
            .iter()
            .for_each(tokio::task::AbortHandle::abort);
        self.processes.stop();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.sampler
            .iter()
            .for_each(tokio::task::AbortHandle::abort);
    }
}

async fn probe_views(shared: &Shared, user: &str) -> Option<u64> {
    let body = shared.read(user, Duration::from_secs(5)).await?;
    body["signals"]["views_24h"].as_u64()
}

/// A probe's patience: `/readyz` bounds its own checks at 2 s.
const READYZ_TIMEOUT: Duration = Duration::from_secs(3);

/// `/readyz` of `base`: status (0: no answer within [`READYZ_TIMEOUT`]) and body.
async fn readyz(http: &reqwest::Client, base: &str) -> (u16, Value) {
    match http
        .get(format!("{base}/readyz"))
        .timeout(READYZ_TIMEOUT)
        .send()
        .await
    {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Samples `/readyz` of one process every 250 ms (each process on its
/// own task, so a slow answer of one does not thin out the other's samples).
async fn sample_readiness(
    http: reqwest::Client,
    role: Role,
    base: String,
    samples: Arc<Mutex<Vec<Sample>>>,
) {
    loop {
        let (status, body) = readyz(&http, &base).await;
        let reasons = body["checks"]
            .as_object()
            .map(|checks| {
                checks
                    .iter()
                    .filter(|(_, v)| v.as_str() != Some("ok"))
                    .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        samples.lock().expect("samples").push(Sample {
            at: Instant::now(),
            role,
            status,
            reasons,
        });
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
