//! Definitions and the batch, for operators.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use signals_core::SignalSpec;
use signals_store::BatchManifest;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::{JsonBody, UserId, JSON};
use crate::operations::{BatchSummary, DeletionReceipt, OperationError, Operations, Running};
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
    /// `current`: the published batch version was computed with this
    /// definition; `changed` or `new`: it was not (lifetime signals are
    /// then computed from raw events only and reported stale until the
    /// next `signals batch run` or `signals batch backfill --signal`);
    /// `unpublished`: no batch version yet.
    pub status: &'static str,
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
    /// The last runs of this process (at most 20), newest first.
    #[schema(value_type = Vec<Object>)]
    pub runs: Vec<BatchSummary>,
}

/// Lists the signal definitions in force.
#[utoipa::path(get, path = "/v1/definitions", responses((status = 200, body = DefinitionsResponse)), tag = "serving")]
pub async fn definitions(
    State(state): State<AppState>,
) -> Result<Json<DefinitionsResponse>, ApiError> {
    let published = state.store.published().await?;
    Ok(Json(DefinitionsResponse {
        signals: state
            .definitions
            .iter()
            .map(|d| {
                let fingerprint = d.fingerprint();
                let status = match published.as_ref().map(|m| m.definitions.get(&d.name)) {
                    None => "unpublished",
                    Some(None) => "new",
                    Some(Some(used)) if *used == fingerprint => "current",
                    Some(Some(_)) => "changed",
                };
                DefinitionEntry {
                    spec: d.spec.clone(),
                    fingerprint,
                    status,
                }
            })
            .collect(),
    }))
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
    let operations = available(&state)?;
    // Run detached: a client that disconnects must not abort a publish.
    let run = tokio::spawn(async move { operations.run_batch().await });
    match run.await {
        Ok(result) => Ok(Json(result?)),
        Err(error) => Err(ApiError::Internal(format!("batch task failed: {error}"))),
    }
}

/// Shows the published version and the running and last runs.
#[utoipa::path(get, path = "/v1/admin/batch", responses((status = 200, body = BatchStatusResponse)), security(("admin_token" = [])), tag = "admin")]
pub async fn batch_status(
    State(state): State<AppState>,
) -> Result<Json<BatchStatusResponse>, ApiError> {
    let published = state.store.published().await?;
    let runs = state
        .operations
        .as_ref()
        .map(|o| o.history())
        .unwrap_or_default();
    Ok(Json(BatchStatusResponse {
        published,
        running: state.operations.as_ref().and_then(|o| o.running()),
        last_run: runs.first().cloned(),
        runs,
    }))
}

/// Why a user is deleted (kept in the log's deletion record).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteUserRequest {
    #[serde(default)]
    pub reason: String,
}

/// Deletes a user from every layer, permanently: records the deletion in
/// the event log (both layers skip the user's events from then on, earlier
/// and later ones alike) and erases their entries and records from the
/// store and the cache. Afterwards the user answers as an unknown user.
#[utoipa::path(
    delete,
    path = "/v1/admin/users/{user_id}",
    params(("user_id" = String, Path, description = "The user to delete")),
    request_body(content = Option<DeleteUserRequest>, description = "Optional reason"),
    responses(
        (status = 200, description = "Deleted: the log position of the deletion record", body = Object),
        (status = 400, description = "Invalid user id", body = crate::error::ErrorBody),
        (status = 503, description = "A backend failed; retrying is safe", body = crate::error::ErrorBody),
    ),
    security(("admin_token" = [])),
    tag = "admin"
)]
pub async fn delete_user(
    State(state): State<AppState>,
    UserId(user_id): UserId,
    body: JsonBody,
) -> Result<Json<DeletionReceipt>, ApiError> {
    body.require(JSON)?;
    let text = body.bytes.trim_ascii();
    // No body and `null` are the documented ways to give no reason.
    let reason = if text.is_empty() || text == b"null" {
        String::new()
    } else {
        body.json::<DeleteUserRequest>().await?.reason
    };
    if reason.len() > signals_schemas::json::MAX_TEXT_BYTES {
        return Err(ApiError::BadRequest(format!(
            "`reason` is longer than {} bytes",
            signals_schemas::json::MAX_TEXT_BYTES
        )));
    }
    let operations = available(&state)?;
    // Detached, like a batch run: half a deletion must not be left behind
    // by a client that disconnects.
    let deletion = tokio::spawn(async move { operations.delete_user(&user_id, &reason).await });
    match deletion.await {
        Ok(Ok(receipt)) => {
            state.progress.appended();
            Ok(Json(receipt))
        }
        Ok(Err(error)) => Err(error.into()),
        Err(error) => Err(ApiError::Internal(format!("deletion task failed: {error}"))),
    }
}

/// The operations of this process, or 503 where it runs no batch layer.
fn available(state: &AppState) -> Result<std::sync::Arc<dyn Operations>, ApiError> {
    state
        .operations
        .clone()
        .ok_or_else(|| ApiError::Unavailable("this process does not run the batch layer".into()))
}

impl From<OperationError> for ApiError {
    fn from(error: OperationError) -> Self {
        match error {
            OperationError::Conflict(why) => ApiError::Conflict(why),
            OperationError::Invalid(why) => ApiError::BadRequest(why),
            OperationError::Unavailable(why) => ApiError::Unavailable(why),
        }
    }
}
