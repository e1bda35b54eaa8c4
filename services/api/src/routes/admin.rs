//! Definitions and the batch, for operators.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use signals_batch::{BatchError, BatchSummary, Quiet, Running};
use signals_core::SignalSpec;
use signals_store::BatchManifest;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::state::AppState;

/// The signal definitions in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct DefinitionsResponse {
    /// Each definition as configured, with its fingerprint.
    #[schema(value_type = Vec<Object>)]
    pub signals: Vec<DefinitionEntry>,
}

#[derive(Debug, Serialize)]
pub struct DefinitionEntry {
    #[serde(flatten)]
    pub spec: SignalSpec,
    pub fingerprint: String,
}

/// The batch layer's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchStatusResponse {
    /// The version serving merges now.
    #[schema(value_type = Option<Object>)]
    pub published: Option<BatchManifest>,
    /// A run in progress in this process.
    #[schema(value_type = Option<Object>)]
    pub running: Option<Running>,
    /// The last run of this process.
    #[schema(value_type = Option<Object>)]
    pub last_run: Option<BatchSummary>,
}

/// Lists the signal definitions in force.
#[utoipa::path(get, path = "/v1/definitions", responses((status = 200, body = DefinitionsResponse)), tag = "serving")]
pub async fn definitions(State(state): State<AppState>) -> Json<DefinitionsResponse> {
    Json(DefinitionsResponse {
        signals: state
            .definitions
            .iter()
            .map(|d| DefinitionEntry {
                spec: d.spec.clone(),
                fingerprint: d.fingerprint(),
            })
            .collect(),
    })
}

/// Runs the batch now and answers with the published version.
#[utoipa::path(
    post,
    path = "/v1/admin/batch/run",
    responses(
        (status = 200, description = "The run's summary: version, log position covered, counts", body = Object),
        (status = 409, description = "A run is already in progress", body = crate::error::ErrorBody),
        (status = 503, description = "A backend failed; the published version is unchanged", body = crate::error::ErrorBody),
    ),
    security(("admin_token" = [])),
    tag = "admin"
)]
pub async fn run_batch(State(state): State<AppState>) -> Result<Json<BatchSummary>, ApiError> {
    let batch = state
        .batch
        .clone()
        .ok_or_else(|| ApiError::Unavailable("this process does not run the batch layer".into()))?;
    // Run detached: a client that disconnects must not abort a publish.
    let run = tokio::spawn(async move { batch.run(false, &Quiet).await });
    match run.await {
        Ok(Ok(summary)) => Ok(Json(summary)),
        Ok(Err(error @ BatchError::AlreadyRunning(_))) => {
            Err(ApiError::Conflict(error.to_string()))
        }
        Ok(Err(error)) => Err(ApiError::Unavailable(error.to_string())),
        Err(error) => Err(ApiError::Internal(format!("batch task failed: {error}"))),
    }
}

/// Shows the published version and the running and last runs.
#[utoipa::path(get, path = "/v1/admin/batch", responses((status = 200, body = BatchStatusResponse)), security(("admin_token" = [])), tag = "admin")]
pub async fn batch_status(
    State(state): State<AppState>,
) -> Result<Json<BatchStatusResponse>, ApiError> {
    let published = state.store.published().await?;
    Ok(Json(BatchStatusResponse {
        published,
        running: state.batch.as_ref().and_then(|b| b.running()),
        last_run: state.batch.as_ref().and_then(|b| b.last()),
    }))
}
