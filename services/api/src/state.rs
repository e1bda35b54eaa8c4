//! What every handler shares.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use signals_core::Definitions;
use signals_log::EventLog;
use signals_schemas::Millis;
use signals_store::ServingStore;

pub use crate::progress::ProgressReadings;

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
    /// Conditions of the process that `/readyz` checks beside the backends
    /// (the speed layer's state, where the process runs it).
    pub readiness: crate::routes::ops::Conditions,
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
            readiness: Default::default(),
        }
    }
}

/// The backends and configuration behind the router, behind one reference
/// count: axum clones the state for every request and every middleware,
/// and a count per backend (each an atomic shared by the worker threads)
/// was 4 % of a warm read.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl From<Shared> for AppState {
    fn from(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn ServingStore>,
    pub definitions: Arc<Definitions>,
    /// Present where this process may run the batch (admin endpoints).
    pub operations: Option<Arc<dyn crate::Operations>>,
    /// Renders `/metrics`; absent when no recorder is installed.
    pub metrics: Option<PrometheusHandle>,
    pub options: Arc<ApiOptions>,
    /// Shared readings of the speed layer's progress and the log's end.
    pub progress: Arc<ProgressReadings>,
    /// Users' latest answers, kept until they can change.
    pub answers: Arc<crate::answers::AnswerCache>,
}
