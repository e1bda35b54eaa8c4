//! What every handler shares.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use signals_batch::BatchLayer;
use signals_core::Definitions;
use signals_log::EventLog;
use signals_schemas::Millis;
use signals_store::SignalStore;

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
    /// Most users in one multi-user query.
    pub max_users_per_query: usize,
    pub tokens: Tokens,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            max_body_bytes: 8 * 1024 * 1024,
            retention: 30 * signals_core::time::DAY,
            max_users_per_query: 1_000,
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
}
