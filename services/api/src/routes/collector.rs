//! The collector: events and retractions into the log.
//!
//! A request's valid events are appended in one durable, all-or-none append;
//! invalid ones are reported by index and never reach the log. "Accepted"
//! means durable: the answer is sent only after the log says so.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use signals_log::Append;
use signals_schemas::{json, LogRecord, RecordBody};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::events_body::{self, BodyRefusal};
use crate::extract::{parse_off_runtime, JsonBody, JSON, JSON_OR_NDJSON};
use crate::state::AppState;
use crate::time::now_millis;

/// An event refused, by its position in the request.
#[derive(Debug, Serialize, ToSchema)]
pub struct Rejected {
    /// Zero-based position in the array (or line number - 1 in NDJSON).
    pub index: usize,
    pub error: String,
}

/// The collector's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsResponse {
    /// Events now durably in the event log.
    pub accepted: usize,
    pub rejected: Vec<Rejected>,
}

/// The retraction endpoint's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetractionResponse {
    /// Event ids named by the retraction now durably in the log.
    pub accepted: usize,
}

/// An event as the collector accepts it (documentation of the wire shape).
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct EventJson {
    /// Idempotency key: the same id twice counts once.
    event_id: String,
    user_id: String,
    /// view, click, search, wishlist_add or wishlist_remove.
    event_type: String,
    /// Required for view, click and wishlist events.
    item_id: Option<String>,
    /// Required for search events.
    query: Option<String>,
    /// RFC 3339 string or integer epoch milliseconds.
    #[schema(value_type = String)]
    event_time: String,
    #[schema(value_type = Object)]
    attributes: Option<std::collections::BTreeMap<String, String>>,
}

/// A retraction request (documentation of the wire shape).
#[allow(dead_code)]
#[derive(ToSchema)]
pub struct RetractionJson {
    event_ids: Vec<String>,
    reason: Option<String>,
}

/// Accepts a JSON array of events or NDJSON.
#[utoipa::path(
    post,
    path = "/v1/events",
    request_body(content = Vec<EventJson>, description = "A JSON array of events, or NDJSON (one event per line)"),
    responses(
        (status = 200, description = "Valid events are durably in the log; invalid ones are listed", body = EventsResponse),
        (status = 400, description = "The body is not a JSON array or NDJSON", body = crate::error::ErrorBody),
        (status = 413, description = "Body over the size limit", body = crate::error::ErrorBody),
        (status = 503, description = "The event log is down; nothing was accepted", body = crate::error::ErrorBody),
    ),
    tag = "collector"
)]
pub async fn post_events(
    State(state): State<AppState>,
    body: JsonBody,
) -> Result<Json<EventsResponse>, ApiError> {
    body.require(JSON_OR_NDJSON)?;
    let max_events = state.options.max_events_per_request;
    let JsonBody {
        bytes,
        content_type,
    } = body;
    let parsed = parse_off_runtime(bytes, move |bytes| {
        events_body::parse(&bytes, content_type.as_deref(), max_events).map_err(|refusal| {
            match refusal {
                BodyRefusal::Malformed(why) => ApiError::BadRequest(why),
                BodyRefusal::TooManyEvents(max) => ApiError::PayloadTooLarge(format!(
                    "more than {max} events in one request (server.max_events_per_request); \
                     split them into smaller requests"
                )),
            }
        })
    })
    .await?;
    let accepted_at = now_millis();
    let mut appends = Vec::with_capacity(parsed.len());
    let mut rejected = Vec::new();
    for (index, result) in parsed.into_iter().enumerate() {
        match result {
            Ok(event) => appends.push(Append::record(&LogRecord {
                accepted_at,
                body: RecordBody::Event(event),
            })),
            Err(error) => rejected.push(Rejected {
                index,
                error: error.to_string(),
            }),
        }
    }
    let accepted = appends.len();
    if accepted > 0 {
        state.log.append(appends).await?;
        state.progress.appended();
    }
    metrics::counter!("signals_collector_events_total", "outcome" => "accepted")
        .increment(accepted as u64);
    metrics::counter!("signals_collector_events_total", "outcome" => "rejected")
        .increment(rejected.len() as u64);
    Ok(Json(EventsResponse { accepted, rejected }))
}

/// Retracts events: they stop counting (at the next batch run at the latest).
#[utoipa::path(
    post,
    path = "/v1/retractions",
    request_body = RetractionJson,
    responses(
        (status = 200, description = "The retraction is durably in the log", body = RetractionResponse),
        (status = 400, description = "Malformed retraction", body = crate::error::ErrorBody),
        (status = 503, description = "The event log is down; nothing was accepted", body = crate::error::ErrorBody),
    ),
    security(("admin_token" = [])),
    tag = "collector"
)]
pub async fn post_retractions(
    State(state): State<AppState>,
    body: JsonBody,
) -> Result<Json<RetractionResponse>, ApiError> {
    body.require(JSON)?;
    let retraction = parse_off_runtime(body.bytes, |bytes| {
        json::parse_retraction(&bytes).map_err(|e| ApiError::BadRequest(e.to_string()))
    })
    .await?;
    let accepted = retraction.event_ids.len();
    let record = LogRecord {
        accepted_at: now_millis(),
        body: RecordBody::Retraction(retraction),
    };
    state.log.append(vec![Append::record(&record)]).await?;
    state.progress.appended();
    metrics::counter!("signals_collector_retractions_total").increment(1);
    Ok(Json(RetractionResponse { accepted }))
}
