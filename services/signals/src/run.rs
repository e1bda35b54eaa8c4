//! The long-running commands: `up`, `serve`, `speed`.
//!
//! Shutdown order on SIGINT/SIGTERM: stop accepting connections and let
//! in-flight requests finish (up to `server.shutdown_grace`), then stop the
//! speed layer after the batch in hand is durable, then close the backends.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use signals_api::answers::AnswerCache;
use signals_api::routes::insights::Insights;
use signals_api::routes::ops::Conditions;
use signals_api::{ApiOptions, AppState, Shared, Tokens};
use signals_batch::{BatchLayer, BatchOptions, BotFilter, Job, Quiet};
use signals_core::Segments;
use signals_insights::kafka::{KafkaChangeSink, KafkaSinkOptions};
use signals_insights::{ChangeSink, InsightsError, InsightsOptions, InsightsWorker};
use signals_speed::{SpeedLayer, SpeedOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backends::{Backends, Role, Startup};
use crate::config::{Config, Listen, LogBackend, Schedule};
use crate::readiness::{SpeedHealth, Starting};
use crate::supervise::{supervise, Down, Restarts};
use crate::{http_server, telemetry};

/// Cancels `token` on SIGINT or SIGTERM.
fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let interrupt = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    warn!(%error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = interrupt => info!("SIGINT received; shutting down"),
            () = terminate => info!("SIGTERM received; shutting down"),
        }
        token.cancel();
    });
}

/// The batch layer as configured; `up`, `serve` and `batch run` share it.
pub fn batch_layer(
    config: &Config,
    backends: &Backends,
    definitions: Arc<signals_core::Definitions>,
) -> Arc<BatchLayer> {
    Arc::new(BatchLayer::new(
        backends.log.clone(),
        backends.store.clone(),
        definitions,
        BatchOptions {
            retention: config.retention_millis(),
            write_chunk: config.batch.write_chunk,
            bot_filter: (config.batch.bot_max_events_per_minute > 0).then_some(BotFilter {
                max_events_per_minute: config.batch.bot_max_events_per_minute,
            }),
            dedup_window: config.deduplication().window,
            memory_budget: config.batch.memory_bytes,
            spill_dir: Some(config.data_dir.clone()),
            ..BatchOptions::default()
        },
    ))
}

fn speed_layer(
    config: &Config,
    backends: &Backends,
    status: Arc<signals_speed::SpeedStatus>,
) -> SpeedLayer {
    SpeedLayer {
        log: backends.log.clone(),
        store: backends.store.clone(),
        dead_letters: backends.dead_letters.clone(),
        options: SpeedOptions {
            group: config.log.kafka.group.clone(),
            max_batch: config.speed.max_batch,
            poll_wait: config.speed.poll_wait,
            status,
            deduplication: config.deduplication(),
            ..SpeedOptions::default()
        },
    }
}

/// Runs the batch on `schedule` until `shutdown`.
fn schedule_batch(
    batch: Arc<BatchLayer>,
    schedule: Schedule,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(wait) = schedule.next_after(chrono::Utc::now()) {
            info!(in_seconds = wait.as_secs(), "next scheduled batch run");
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            if let Err(error) = batch.run(Job::Run, false, &Quiet).await {
                error!(%error, "scheduled batch run failed");
            }
        }
    })
}

async fn serve_http(
    config: &Config,
    listen: Option<SocketAddr>,
    state: AppState,
    insights: Insights,
    shutdown: CancellationToken,
    prebound: Option<tokio::net::TcpListener>,
) -> anyhow::Result<()> {
    let address = listen.unwrap_or(config.server.listen);
    if !address.ip().is_loopback() && config.server.api_tokens.is_empty() {
        anyhow::bail!("--listen {address} is not a loopback address, so server.api_tokens and server.admin_token must be configured");
    }
    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => Some(http_server::tls_acceptor(cert, key)?),
        _ => None,
    };
    let listener = match prebound {
        Some(listener) => listener,
        None => tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?,
    };
    let limits = http_server::Limits {
        max_connections: config.server.max_connections,
        header_read_timeout: config.server.header_read_timeout,
        shutdown_grace: config.server.shutdown_grace,
    };
    let router = signals_api::with_insights(signals_api::app(state), insights);
    http_server::serve(listener, router, tls, limits, shutdown).await
}

/// What the insights routes answer from.
fn insights(backends: &Backends, segments: Arc<Segments>) -> Insights {
    Insights {
        segments,
        store: backends.insights.clone(),
    }
}

/// The insights worker, where the store keeps segment membership.
fn insights_worker(
    config: &Config,
    backends: &Backends,
    definitions: Arc<signals_core::Definitions>,
    segments: Arc<Segments>,
) -> Option<InsightsWorker> {
    Some(InsightsWorker {
        log: backends.log.clone(),
        store: backends.serving.clone(),
        insights: backends.insights.clone()?,
        definitions,
        segments,
        sink: None,
        options: InsightsOptions {
            // Named after the deployment's group, so that deployments (and
            // test runs) sharing a Kafka cluster do not share one group.
            group: format!("{}-insights", config.log.kafka.group),
            ..InsightsOptions::default()
        },
    })
}

/// Runs the insights worker of `signals up` until `stop`, restarting it
/// with backoff when it fails (it retries backend outages itself; a
/// restart resumes from its durable progress, so nothing is published
/// twice): the collector and serving stay up meanwhile, and `down` tells
/// readiness why it stopped. Only a configuration error ends it, returned.
fn supervise_insights(
    worker: InsightsWorker,
    down: Arc<Down>,
    stop: CancellationToken,
) -> JoinHandle<Result<(), InsightsError>> {
    supervise(
        Restarts::new(
            "insights worker",
            metrics::counter!("signals_insights_restarts_total"),
        ),
        down,
        stop,
        InsightsError::is_configuration,
        move |stop| {
            let worker = worker.clone();
            async move { worker.run(stop).await }
        },
    )
}

/// Resolves when the supervised insights worker of `up` has ended by
/// itself (a configuration error); never if there is none.
async fn insights_ended(task: &mut Option<JoinHandle<Result<(), InsightsError>>>) -> anyhow::Error {
    let Some(handle) = task.as_mut() else {
        return std::future::pending().await;
    };
    let joined = handle.await;
    *task = None;
    match joined {
        Ok(Ok(())) => anyhow::anyhow!("the insights worker stopped"),
        Ok(Err(error)) => anyhow::Error::new(error).context("the insights worker stopped"),
        Err(error) => anyhow::Error::new(error).context("insights worker task failed"),
    }
}

/// On Kafka, the feed's topic `signals.segments` (one publisher at a time:
/// a second worker's producer fences the first's).
async fn feed_sink(config: &Config) -> anyhow::Result<Option<Arc<dyn ChangeSink>>> {
    if config.log.backend != LogBackend::Kafka {
        return Ok(None);
    }
    let kafka = &config.log.kafka;
    let sink = KafkaChangeSink::connect(KafkaSinkOptions {
        brokers: kafka.brokers.clone(),
        topic: kafka.segments_topic.clone(),
        transactional_id: format!("signals-insights-{}", kafka.group),
        timeout: kafka.timeout,
        replication_factor: kafka.replication_factor,
    })
    .await?;
    Ok(Some(Arc::new(sink)))
}

/// `signals insights`: the insights worker alone. A failure it does not
/// retry itself ends the process, as in `signals speed`: whatever runs it
/// (Kubernetes, systemd) restarts it, and it resumes from its durable
/// progress. Inside `signals up` the process restarts it instead.
pub async fn insights_command(config: Config) -> anyhow::Result<ExitCode> {
    let definitions = Arc::new(config.definitions()?);
    let segments = Arc::new(config.segments(&definitions)?);
    let backends = Backends::open(&config).await?;
    let Some(worker) = insights_worker(&config, &backends, definitions, segments) else {
        anyhow::bail!(
            "store.backend = {:?} keeps no segment membership: the insights worker runs on the embedded store (inside `signals up`)",
            config.store.backend
        );
    };
    let worker = InsightsWorker {
        sink: feed_sink(&config).await?,
        ..worker
    };
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    worker.run(shutdown).await?;
    info!("stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

fn api_state(
    config: &Config,
    backends: &Backends,
    definitions: Arc<signals_core::Definitions>,
    batch: Option<Arc<BatchLayer>>,
    metrics: Option<PrometheusHandle>,
    readiness: Conditions,
) -> anyhow::Result<AppState> {
    Ok(AppState::from(Shared {
        log: backends.log.clone(),
        store: backends.serving.clone(),
        definitions,
        operations: batch.map(|batch| {
            Arc::new(crate::operations::BatchOperations {
                batch,
                serving: backends.serving.clone(),
            }) as Arc<dyn signals_api::Operations>
        }),
        metrics,
        options: Arc::new(ApiOptions {
            max_body_bytes: config.server.max_body_bytes,
            retention: config.retention_millis(),
            max_users_per_query: config.server.max_users_per_query,
            max_names_per_query: config.server.max_names_per_query,
            max_events_per_request: config.server.max_events_per_request,
            max_concurrent_requests: config.server.max_concurrent_requests,
            body_timeout: config.server.body_timeout,
            tokens: Tokens {
                api: config.server.api_tokens.clone(),
                admin: config.server.admin_token.clone(),
            },
            readiness,
        }),
        progress: Default::default(),
        answers: Arc::new(AnswerCache::new(config.cache.answer_bytes)),
    }))
}

/// Waits for the speed layer to stop after `shutdown`, or for it to fail.
async fn join_speed(task: JoinHandle<Result<(), signals_speed::SpeedError>>) -> anyhow::Result<()> {
    match tokio::time::timeout(Duration::from_secs(30), task).await {
        Ok(joined) => joined
            .context("speed layer task failed")?
            .context("speed layer failed"),
        Err(_) => anyhow::bail!("the speed layer did not stop within 30s"),
    }
}

/// The address the collector serves on, refused beyond loopback without tokens.
fn collector_address(config: &Config, listen: Option<SocketAddr>) -> anyhow::Result<SocketAddr> {
    let address = listen.unwrap_or(config.server.listen);
    if !address.ip().is_loopback() && config.server.api_tokens.is_empty() {
        anyhow::bail!("--listen {address} is not a loopback address, so server.api_tokens and server.admin_token must be configured");
    }
    Ok(address)
}

/// Runs the speed layer of `signals up` until `stop`, restarting it with
/// backoff when it fails (a failure that retrying inside the layer cannot
/// cure, e.g. corrupt stored data): the collector and serving stay up, and
/// readiness says the speed layer stopped and why.
fn supervise_speed(
    speed: SpeedLayer,
    health: Arc<SpeedHealth>,
    stop: CancellationToken,
) -> JoinHandle<Result<(), signals_speed::SpeedError>> {
    let speed = Arc::new(speed);
    supervise(
        Restarts::new(
            "speed layer",
            metrics::counter!("signals_speed_restarts_total"),
        ),
        health.stopped.clone(),
        stop,
        // Every failure of the speed layer may be cured by a restart.
        |_| false,
        move |stop| {
            let speed = speed.clone();
            async move { speed.run(stop).await }
        },
    )
}

/// What `up` and `serve` have in common up to their own layers: checked
/// definitions, the API's address already answering `/healthz` and
/// `/readyz` while the backends are awaited, the backends, and a shutdown
/// token that SIGINT/SIGTERM cancel.
struct CollectorStart {
    definitions: Arc<signals_core::Definitions>,
    segments: Arc<Segments>,
    metrics: PrometheusHandle,
    starting: Starting,
    backends: Backends,
    shutdown: CancellationToken,
}

impl CollectorStart {
    async fn begin(config: &Config, listen: Option<SocketAddr>) -> anyhow::Result<CollectorStart> {
        let definitions = Arc::new(config.definitions()?);
        let segments = Arc::new(config.segments(&definitions)?);
        let address = collector_address(config, listen)?;
        let metrics = telemetry::init_metrics()?;
        let startup = Arc::new(Startup::default());
        let starting = Starting::bind(
            address,
            "server.listen",
            startup.clone(),
            Some(metrics.clone()),
        )?;
        let backends =
            Backends::open_as(config, Role::Collector { listen: address }, &startup).await?;
        let shutdown = CancellationToken::new();
        cancel_on_signal(shutdown.clone());
        Ok(CollectorStart {
            definitions,
            segments,
            metrics,
            starting,
            backends,
            shutdown,
        })
    }
}

/// `signals up`
pub async fn up(config: Config, listen: Option<SocketAddr>) -> anyhow::Result<ExitCode> {
    let CollectorStart {
        definitions,
        segments,
        metrics,
        starting,
        backends,
        shutdown,
    } = CollectorStart::begin(&config, listen).await?;

    let health = Arc::new(SpeedHealth::default());
    let speed = speed_layer(&config, &backends, health.status.clone());
    let speed_token = CancellationToken::new();
    let speed_task = supervise_speed(speed, health.clone(), speed_token.clone());
    let batch = batch_layer(&config, &backends, definitions.clone());
    let scheduler = schedule_batch(batch.clone(), config.batch.schedule, shutdown.clone());
    let insights_token = CancellationToken::new();
    let insights_down = Arc::new(Down::default());
    let mut insights_task =
        insights_worker(&config, &backends, definitions.clone(), segments.clone()).map(|worker| {
            supervise_insights(worker, insights_down.clone(), insights_token.clone())
        });
    let readiness = match insights_task {
        Some(_) => {
            let down = insights_down.clone();
            health.condition().with("insights", move || down.reason())
        }
        None => health.condition(),
    };
    let routes = insights(&backends, segments);
    let state = api_state(
        &config,
        &backends,
        definitions,
        Some(batch),
        Some(metrics),
        readiness,
    )?;
    info!(data_dir = %config.data_dir.display(), "signals up");
    let listener = starting.finish().await?;
    let served = tokio::select! {
        served = serve_http(&config, listen, state, routes, shutdown.clone(), Some(listener)) => served,
        // The worker is restarted after any other failure; a configuration
        // error stops the process, loudly.
        error = insights_ended(&mut insights_task) => Err(error),
    };
    shutdown.cancel();
    insights_token.cancel();
    speed_token.cancel();
    scheduler.abort();
    let speed_result = join_speed(speed_task).await;
    if let Some(task) = insights_task {
        task.await.context("insights worker task failed")??;
    }
    served?;
    speed_result?;
    info!("stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

/// `signals serve`
pub async fn serve(config: Config, listen: Option<SocketAddr>) -> anyhow::Result<ExitCode> {
    let CollectorStart {
        definitions,
        segments,
        metrics,
        starting,
        backends,
        shutdown,
    } = CollectorStart::begin(&config, listen).await?;
    let batch = batch_layer(&config, &backends, definitions.clone());
    let routes = insights(&backends, segments);
    let state = api_state(
        &config,
        &backends,
        definitions,
        Some(batch),
        Some(metrics),
        Conditions::default(),
    )?;
    let listener = starting.finish().await?;
    serve_http(&config, listen, state, routes, shutdown, Some(listener)).await?;
    Ok(ExitCode::SUCCESS)
}

/// `signals speed`: the speed layer, and `/metrics`, `/healthz`, `/readyz`
/// on `speed.listen` until it stops (from start-up on: while the backends
/// are awaited, `/readyz` says what for).
pub async fn speed(config: Config) -> anyhow::Result<ExitCode> {
    let definitions = Arc::new(config.definitions()?);
    let metrics = telemetry::init_metrics()?;
    let startup = Arc::new(Startup::default());
    let starting = match config.speed.listen {
        Listen::Off => None,
        Listen::At(address) => Some(Starting::bind(
            address,
            "speed.listen",
            startup.clone(),
            Some(metrics.clone()),
        )?),
    };
    let backends = Backends::open_as(&config, Role::Other, &startup).await?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let health = Arc::new(SpeedHealth::default());
    let state = api_state(
        &config,
        &backends,
        definitions,
        None,
        Some(metrics),
        health.condition(),
    )?;
    let operations = match starting {
        None => None,
        Some(starting) => Some(serve_operations(
            starting.finish().await?,
            state,
            shutdown.clone(),
        )),
    };
    let result = speed_layer(&config, &backends, health.status.clone())
        .run(shutdown.clone())
        .await;
    shutdown.cancel();
    if let Some(server) = operations {
        match tokio::time::timeout(config.server.shutdown_grace, server).await {
            Ok(joined) => joined
                .context("operations endpoint task failed")?
                .context("operations endpoint failed")?,
            Err(_) => warn!("operations endpoint did not stop in time"),
        }
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Serves the operations routes on `listener` until `shutdown`.
fn serve_operations(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> JoinHandle<anyhow::Result<()>> {
    use axum::routing::get;
    use signals_api::routes::ops;
    if let Ok(address) = listener.local_addr() {
        info!(%address, "serving /metrics, /healthz and /readyz");
    }
    let app = axum::Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .with_state(state);
    tokio::spawn(http_server::serve(
        listener,
        app,
        None,
        http_server::Limits::OPERATIONS,
        shutdown,
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use signals_log::embedded::{EmbeddedLog, EmbeddedLogOptions, FsyncPolicy};
    use signals_log::{Append, DeadLetterFile, EventLog};
    use signals_schemas::{Event, EventType, LogRecord, Millis, RecordBody};
    use signals_store::embedded::EmbeddedStore;
    use signals_store::insights::{
        Applied, Change, FeedEntry, InsightsProgress, Membership, MembershipUpdate,
    };
    use signals_store::{InsightsStore, StoreError};

    use super::*;

    /// The embedded store, except that the worker's first write, once
    /// durable, reports an error no retry cures (as corrupt data would):
    /// the worker's run ends there, after it published.
    struct FirstWriteFails {
        store: Arc<EmbeddedStore>,
        publishing_writes: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl InsightsStore for FirstWriteFails {
        async fn insights_progress(&self) -> Result<InsightsProgress, StoreError> {
            self.store.insights_progress().await
        }

        async fn memberships(
            &self,
            users: &[String],
        ) -> Result<HashMap<String, Membership>, StoreError> {
            self.store.memberships(users).await
        }

        async fn due(
            &self,
            until: Millis,
            limit: usize,
        ) -> Result<Vec<(Millis, String)>, StoreError> {
            self.store.due(until, limit).await
        }

        async fn apply_insights(
            &self,
            updates: Vec<MembershipUpdate>,
            progress: InsightsProgress,
        ) -> Result<Applied, StoreError> {
            let applied = self.store.apply_insights(updates, progress).await?;
            if applied.published.is_empty()
                || self.publishing_writes.fetch_add(1, Ordering::SeqCst) > 0
            {
                return Ok(applied);
            }
            Err(StoreError::Corrupt("the test's failing write".into()))
        }

        async fn segment_members(
            &self,
            segment: &str,
            after: Option<&str>,
            limit: usize,
        ) -> Result<Vec<String>, StoreError> {
            self.store.segment_members(segment, after, limit).await
        }

        async fn segment_changes(
            &self,
            after: u64,
            limit: usize,
        ) -> Result<Vec<FeedEntry>, StoreError> {
            self.store.segment_changes(after, limit).await
        }
    }

    fn event(id: &str, kind: EventType, time: Millis) -> Append {
        Append::record(&LogRecord {
            accepted_at: time,
            body: RecordBody::Event(Event {
                event_id: id.into(),
                user_id: "u-1".into(),
                event_type: kind,
                item_id: (kind != EventType::Search).then(|| "item".into()),
                query: (kind == EventType::Search).then(|| "lofts".into()),
                event_time: time,
                attributes: Default::default(),
            }),
        })
    }

    fn now() -> Millis {
        chrono::Utc::now().timestamp_millis()
    }

    /// The feed once it holds `n` entries (a liveness bound, not a timing).
    async fn feed_of(store: &EmbeddedStore, n: usize) -> Vec<(String, Change)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let feed = store.segment_changes(0, 100).await.expect("feed");
            if feed.len() >= n {
                return feed
                    .into_iter()
                    .map(|e| (e.transition.segment, e.transition.change))
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "{n} entries within 60 s: {feed:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_insights_worker_of_up_is_restarted_after_a_failed_run() {
        let config = crate::config::load(None).expect("default configuration");
        let definitions = Arc::new(config.definitions().expect("definitions"));
        let segments = Arc::new(config.segments(&definitions).expect("segments"));
        let dir = tempfile::tempdir().expect("temp dir");
        let log = Arc::new(
            EmbeddedLog::open(
                &dir.path().join("log"),
                EmbeddedLogOptions {
                    fsync: FsyncPolicy::Never,
                    ..EmbeddedLogOptions::default()
                },
            )
            .expect("log"),
        );
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).expect("store"));
        let stop = CancellationToken::new();
        let speed = SpeedLayer {
            log: log.clone(),
            store: store.clone(),
            dead_letters: Arc::new(DeadLetterFile::new(&dir.path().join("dead.ndjson"))),
            options: SpeedOptions {
                poll_wait: Duration::from_millis(10),
                ..SpeedOptions::default()
            },
        };
        let speed_task = supervise_speed(speed, Arc::default(), stop.clone());
        let failing = Arc::new(FirstWriteFails {
            store: store.clone(),
            publishing_writes: AtomicUsize::new(0),
        });
        let worker = InsightsWorker {
            log: log.clone(),
            store: store.clone(),
            insights: failing.clone(),
            definitions,
            segments,
            sink: None,
            options: InsightsOptions {
                poll_wait: Duration::from_millis(20),
                ..InsightsOptions::default()
            },
        };
        let down = Arc::new(Down::default());
        let insights_task = supervise_insights(worker, down.clone(), stop.clone());

        // Ten views: the user enters active_browser, and the write that
        // published it fails the worker's run.
        let start = now();
        let views = (0..10)
            .map(|i| event(&format!("v{i}"), EventType::View, start - 1_000 + i))
            .collect();
        log.append(views).await.expect("appended");
        assert_eq!(
            feed_of(&store, 1).await,
            [("active_browser".to_owned(), Change::Entered)]
        );

        // Three searches: only a restarted worker publishes `searcher`.
        let searches = (0..3)
            .map(|i| event(&format!("s{i}"), EventType::Search, start + i))
            .collect();
        log.append(searches).await.expect("appended");
        assert_eq!(
            feed_of(&store, 2).await,
            [
                ("active_browser".to_owned(), Change::Entered),
                ("searcher".to_owned(), Change::Entered)
            ],
            "each transition once, across the failed run and the restart"
        );
        assert_eq!(
            failing.publishing_writes.load(Ordering::SeqCst),
            2,
            "the write that failed the first run, then the restarted run's"
        );
        assert_eq!(down.reason(), None, "running again: readiness is clear");

        stop.cancel();
        insights_task
            .await
            .expect("joined")
            .expect("the worker stopped cleanly");
        speed_task
            .await
            .expect("joined")
            .expect("the speed layer stopped cleanly");
    }

    #[tokio::test]
    async fn a_configuration_error_stops_the_insights_worker_of_up() {
        let config = crate::config::load(None).expect("default configuration");
        let definitions = config.definitions().expect("definitions");
        let segments = Arc::new(config.segments(&definitions).expect("segments"));
        let dir = tempfile::tempdir().expect("temp dir");
        let log = Arc::new(
            EmbeddedLog::open(&dir.path().join("log"), EmbeddedLogOptions::default()).expect("log"),
        );
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).expect("store"));
        // Definitions without the signals the default segments read.
        let worker = InsightsWorker {
            log,
            store: store.clone(),
            insights: store,
            definitions: Arc::new(signals_core::Definitions::compile(&[]).expect("no signals")),
            segments,
            sink: None,
            options: InsightsOptions::default(),
        };
        let down = Arc::new(Down::default());
        let mut task = Some(supervise_insights(
            worker,
            down.clone(),
            CancellationToken::new(),
        ));
        let error = insights_ended(&mut task).await;
        assert!(task.is_none());
        let text = format!("{error:#}");
        assert!(text.contains("have no definition"), "{text}");
        assert!(down
            .reason()
            .is_some_and(|r| r.starts_with("stopped: configuration")));
    }
}
