//! Liveness, readiness and metrics.

use std::collections::BTreeMap;

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
    /// Backend → `ok` or the reason it is not; `cache` appears only when the
    /// Redis cache is degraded (answers still come, from the store).
    pub checks: BTreeMap<&'static str, String>,
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
    let (log, store, cache) = tokio::join!(
        state.log.check(),
        state.store.check(),
        state.store.degraded()
    );
    let mut checks = BTreeMap::new();
    checks.insert(
        "log",
        log.as_ref()
            .map_or_else(|e| e.to_string(), |()| "ok".into()),
    );
    checks.insert(
        "store",
        store
            .as_ref()
            .map_or_else(|e| e.to_string(), |()| "ok".into()),
    );
    if let Some(reason) = cache {
        checks.insert("cache", format!("degraded: {reason}"));
    }
    let ready = log.is_ok() && store.is_ok();
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
