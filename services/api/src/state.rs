//! What every handler shares.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use signals_batch::BatchLayer;
use signals_core::{Definitions, LogPosition};
use signals_log::EventLog;
use signals_schemas::Millis;
use signals_store::{SignalStore, SpeedProgress};

use crate::error::ApiError;

/// Tokens that guard the API when it listens beyond loopback.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    /// Accepted on every `/v1` route.
    pub api: Vec<String>,
    /// Required on `/v1/admin/*` and `/v1/retractions`.
    pub admin: Option<String>,
}

impl Tokens {
    /// Whether any token is configured (and so required).
    pub fn enabled(&self) -> bool {
        !self.api.is_empty() || self.admin.is_some()
    }
}

/// Limits and policies of the HTTP surface.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How far back `at` may go.
    pub retention: Millis,
    /// Most users in one multi-user query (before deduplication).
    pub max_users_per_query: usize,
    /// Most signal names (or event types) in one request, before deduplication.
    pub max_names_per_query: usize,
    /// Most events in one `POST /v1/events` (array items or NDJSON lines).
    pub max_events_per_request: usize,
    /// Requests handled at once (operations routes aside); more get 503.
    pub max_concurrent_requests: usize,
    /// Longest wait for a request body once its headers are in.
    pub body_timeout: Duration,
    pub tokens: Tokens,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            max_body_bytes: 8 * 1024 * 1024,
            retention: 30 * signals_core::time::DAY,
            max_users_per_query: 1_000,
            max_names_per_query: 100,
            max_events_per_request: 10_000,
            max_concurrent_requests: 256,
            body_timeout: Duration::from_secs(30),
            tokens: Tokens::default(),
        }
    }
}

/// The backends and configuration behind the router.
#[derive(Clone)]
pub struct AppState {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn SignalStore>,
    pub definitions: Arc<Definitions>,
    /// Present where this process may run the batch (admin endpoints).
    pub batch: Option<Arc<BatchLayer>>,
    /// Renders `/metrics`; absent when no recorder is installed.
    pub metrics: Option<PrometheusHandle>,
    pub options: Arc<ApiOptions>,
    /// Shared readings of the speed layer's progress and the log's end.
    pub progress: Arc<ProgressReadings>,
}

/// The speed layer's progress and the log's end, as each answer's
/// `freshness` reports them, read once and shared by the answers made
/// within a few milliseconds of each other: concurrent requests wait for
/// one reading instead of each scanning the progress table and asking the
/// log for its end (on Kafka, one watermark request per partition).
///
/// An append acknowledged by this process discards the reading, so
/// `log_end` always includes every append this process acknowledged before
/// the request came; appends through other processes show within
/// [`ProgressReadings::MAX_AGE`].
#[derive(Default)]
pub struct ProgressReadings {
    /// Bumped by every append; a reading taken at another one is stale.
    generation: AtomicU64,
    current: tokio::sync::Mutex<Option<Reading>>,
}

struct Reading {
    generation: u64,
    taken: Instant,
    progress: SpeedProgress,
    end: LogPosition,
}

impl ProgressReadings {
    /// How long a reading serves answers.
    pub const MAX_AGE: Duration = Duration::from_millis(20);

    /// Discards the current reading (call after an append).
    pub fn appended(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// A reading no older than [`Self::MAX_AGE`] and no older than the
    /// last append, taken now if needed.
    pub async fn read(
        &self,
        store: &dyn SignalStore,
        log: &dyn EventLog,
    ) -> Result<(SpeedProgress, LogPosition), ApiError> {
        let mut current = self.current.lock().await;
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some(reading) = current.as_ref() {
            if reading.generation == generation && reading.taken.elapsed() < Self::MAX_AGE {
                return Ok((reading.progress.clone(), reading.end.clone()));
            }
        }
        let taken = Instant::now();
        let (progress, end) = tokio::join!(store.speed_progress(), log.end());
        let (progress, end) = (progress?, end?);
        *current = Some(Reading {
            generation,
            taken,
            progress: progress.clone(),
            end: end.clone(),
        });
        Ok((progress, end))
    }
}
