//! Liveness, readiness and metrics.
//!
//! Readiness tells the truth and answers quickly: each backend check is
//! bounded by [`CHECK_TIMEOUT`] (a hung dependency is reported as such, not
//! waited out), checks run concurrently and hold no lock that reads need,
//! and the process's own conditions (the speed layer's retries, start-up)
//! are added by name ([`Conditions`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

/// Readiness of each backend.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyResponse {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    /// Backend or condition → `ok` or the reason it is not (`log`,
    /// `store`, and where the process has them `speed` and `insights`);
    /// `cache` appears
    /// only when the Redis cache is degraded (answers still come, from the
    /// store, e.g. `degraded: circuit open (...)`).
    pub checks: BTreeMap<&'static str, String>,
}

/// Longest a readiness check waits for one backend.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A named condition of the process: `Some(problem)` makes it not ready.
type Condition = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Conditions a process adds to its readiness beyond its backends.
#[derive(Clone, Default)]
pub struct Conditions(Vec<(&'static str, Condition)>);

impl Conditions {
    /// Adds the condition `name`, checked on every `/readyz`.
    pub fn with(
        mut self,
        name: &'static str,
        check: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> Conditions {
        self.0.push((name, Arc::new(check)));
        self
    }
}

impl std::fmt::Debug for Conditions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

/// `check`'s outcome, or that it did not answer within [`CHECK_TIMEOUT`].
async fn bounded<E: std::fmt::Display>(
    check: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
    }
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "Alive")), tag = "operations")]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Every backend answers.
#[utoipa::path(
    get,
    path = "/readyz",
    responses((status = 200, body = ReadyResponse), (status = 503, body = ReadyResponse)),
    tag = "operations"
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let cache = async {
        tokio::time::timeout(CHECK_TIMEOUT, state.store.degraded())
            .await
            .unwrap_or_else(|_| Some(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())))
    };
    let (log, store, cache) = tokio::join!(
        bounded(state.log.check()),
        bounded(state.store.check()),
        cache
    );
    let mut checks = BTreeMap::new();
    checks.insert("log", log.clone().err().unwrap_or_else(|| "ok".into()));
    checks.insert("store", store.clone().err().unwrap_or_else(|| "ok".into()));
    if let Some(reason) = cache {
        checks.insert("cache", format!("degraded: {reason}"));
    }
    let mut ready = log.is_ok() && store.is_ok();
    for (name, condition) in &state.options.readiness.0 {
        let problem = condition();
        ready &= problem.is_none();
        checks.insert(name, problem.unwrap_or_else(|| "ok".into()));
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = ReadyResponse {
        status: if ready { "ready" } else { "not_ready" },
        checks,
    };
    (status, Json(body)).into_response()
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")), tag = "operations")]
pub async fn metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no metrics recorder installed").into_response(),
    }
}
