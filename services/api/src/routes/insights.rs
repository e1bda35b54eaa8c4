//! Asynchronous insights over HTTP: a user's segments at a point in time,
//! a segment's members now, and the feed of transitions.
//!
//! A user's segments at `at` are the rules applied to the user's signals at
//! `at`, so they are exact exactly when the signals are. Members and the
//! feed are what the insights worker recorded; their `freshness` says how
//! far it has got in the log and up to which instant its timers have fired.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use signals_core::time::format_millis;
use signals_core::{LogPosition, Segments};
use signals_store::InsightsStore;
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::extract::{ApiQuery, UserId};
use crate::routes::serving::{
    answer, parse_at_param, resolve_at, select_distinct, speed_and_log, Freshness, Reading,
};
use crate::state::AppState;

/// What the insights routes need beside [`AppState`]; the binary adds it to
/// the router as an extension (see [`crate::with_insights`]).
#[derive(Clone)]
pub struct Insights {
    pub segments: Arc<Segments>,
    /// Membership and the feed, as the insights worker keeps them; absent
    /// where the store keeps none (then only a user's segments answer).
    pub store: Option<Arc<dyn InsightsStore>>,
}

impl Insights {
    fn store(&self) -> Result<&Arc<dyn InsightsStore>, ApiError> {
        self.store.as_ref().ok_or_else(|| {
            ApiError::NotFound(
                "segment membership and changes are kept by the insights worker on the embedded store; this store keeps none"
                    .into(),
            )
        })
    }
}

/// Most entries a page holds, and the default.
const MAX_PAGE: usize = 1_000;
const DEFAULT_PAGE: usize = 100;

/// The insights of this process, or a 404 saying none are served here.
fn configured(insights: Option<Extension<Insights>>) -> Result<Insights, ApiError> {
    insights
        .map(|Extension(i)| i)
        .ok_or_else(|| ApiError::NotFound("this process serves no segments".into()))
}

fn page_size(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!(
            "`limit` = {n} is out of range (1 to {MAX_PAGE})"
        ))),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct SegmentsParams {
    /// RFC 3339 or epoch milliseconds; now when absent.
    at: Option<String>,
}

/// One user's segments at one point in time.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct UserSegmentsResponse {
    pub user_id: String,
    /// The evaluation time: the signals the rules read are taken at `at`.
    pub at: String,
    /// Names of the segments whose rule holds, sorted.
    pub segments: Vec<String>,
    pub freshness: Freshness,
}

/// How current membership and the feed are.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct MembershipFreshness {
    /// Log position (partition → next offset) the worker has reflected.
    #[schema(value_type = Object)]
    pub worker_position: LogPosition,
    /// The log's end, read for this answer.
    #[schema(value_type = Object)]
    pub log_end: LogPosition,
    /// Records in the log the worker has not reflected yet.
    pub worker_lag_records: u64,
    /// Timers due before this instant have fired (null before the first pass).
    pub evaluated_until: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct MembersParams {
    /// `next_cursor` of the previous page; the first page when absent.
    cursor: Option<String>,
    /// Most users per page (default 100, at most 1000).
    limit: Option<usize>,
}

/// A page of a segment's members, by user id.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SegmentMembersResponse {
    pub segment: String,
    pub users: Vec<String>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
    pub freshness: MembershipFreshness,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ChangesParams {
    /// Transitions with a cursor greater than this; from the start when absent.
    after: Option<u64>,
    /// Most transitions per page (default 100, at most 1000).
    limit: Option<usize>,
}

/// One transition of the feed.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ChangeJson {
    pub user_id: String,
    pub segment: String,
    /// `entered` or `left`.
    pub change: String,
    /// The instant the user entered or left, RFC 3339.
    pub at: String,
    /// Position in the feed: pass the last one as `after` to read on.
    pub cursor: u64,
}

/// A page of the feed, in cursor order.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SegmentChangesResponse {
    pub changes: Vec<ChangeJson>,
    /// The cursor to pass as `after` next (the last one returned, or `after`).
    pub next_cursor: u64,
    pub freshness: MembershipFreshness,
}

/// The segments a user is in.
#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/segments",
    params(("user_id" = String, Path, description = "The user"), SegmentsParams),
    responses(
        (status = 200, description = "Segment names, sorted (none for an unknown user)", body = UserSegmentsResponse),
        (status = 400, description = "Malformed `at` or user id", body = crate::error::ErrorBody),
        (status = 404, description = "This process serves no segments", body = crate::error::ErrorBody),
        (status = 422, description = "`at` outside the history retention", body = crate::error::ErrorBody),
    ),
    tag = "insights"
)]
pub async fn user_segments(
    State(state): State<AppState>,
    insights: Option<Extension<Insights>>,
    UserId(user_id): UserId,
    ApiQuery(params): ApiQuery<SegmentsParams>,
) -> Result<Json<UserSegmentsResponse>, ApiError> {
    let insights = configured(insights)?;
    let at = resolve_at(&state, parse_at_param(params.at.as_deref())?)?;
    let names: Vec<String> = insights
        .segments
        .signals()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let definitions = select_distinct(&state, names)?;
    let reading = Reading::new(&state, at).await?;
    let answer = answer(&state, user_id, &definitions, &reading).await?;
    let values: HashMap<&str, Value> = insights
        .segments
        .signals()
        .into_iter()
        .filter_map(|name| Some((name, answer.signals.get(name)?)))
        .collect();
    Ok(Json(UserSegmentsResponse {
        segments: insights.segments.members(|name| values.get(name)),
        user_id: answer.user_id,
        at: answer.at.to_string(),
        freshness: answer.freshness,
    }))
}

async fn membership_freshness(
    state: &AppState,
    insights: &Insights,
) -> Result<MembershipFreshness, ApiError> {
    let progress = insights.store()?.insights_progress().await?;
    let (_, end) = speed_and_log(state).await?;
    Ok(MembershipFreshness {
        worker_lag_records: progress.position.lag_behind(&end.position),
        worker_position: progress.position,
        log_end: end.position,
        evaluated_until: progress.evaluated_until.map(format_millis),
    })
}

/// A segment's members now, paged by user id.
#[utoipa::path(
    get,
    path = "/v1/segments/{name}/users",
    params(("name" = String, Path, description = "The segment"), MembersParams),
    responses(
        (status = 200, body = SegmentMembersResponse),
        (status = 400, description = "Malformed `limit`", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown segment", body = crate::error::ErrorBody),
    ),
    tag = "insights"
)]
pub async fn segment_users(
    State(state): State<AppState>,
    insights: Option<Extension<Insights>>,
    Path(name): Path<String>,
    ApiQuery(params): ApiQuery<MembersParams>,
) -> Result<Json<SegmentMembersResponse>, ApiError> {
    let insights = configured(insights)?;
    if insights.segments.get(&name).is_none() {
        let known: Vec<&str> = insights.segments.iter().map(|s| s.name.as_str()).collect();
        return Err(ApiError::NotFound(format!(
            "unknown segment `{}` (defined: {})",
            crate::guard::excerpt(&name, 64),
            known.join(", ")
        )));
    }
    let limit = page_size(params.limit)?;
    let freshness = membership_freshness(&state, &insights).await?;
    // One more than asked tells whether another page follows.
    let mut users = insights
        .store()?
        .segment_members(&name, params.cursor.as_deref(), limit + 1)
        .await?;
    let next_cursor = if users.len() > limit {
        users.truncate(limit);
        users.last().cloned()
    } else {
        None
    };
    Ok(Json(SegmentMembersResponse {
        segment: name,
        users,
        next_cursor,
        freshness,
    }))
}

/// The feed of transitions, in order.
#[utoipa::path(
    get,
    path = "/v1/segments/changes",
    params(ChangesParams),
    responses(
        (status = 200, body = SegmentChangesResponse),
        (status = 400, description = "Malformed `after` or `limit`", body = crate::error::ErrorBody),
    ),
    tag = "insights"
)]
pub async fn segment_changes(
    State(state): State<AppState>,
    insights: Option<Extension<Insights>>,
    ApiQuery(params): ApiQuery<ChangesParams>,
) -> Result<Json<SegmentChangesResponse>, ApiError> {
    let insights = configured(insights)?;
    let limit = page_size(params.limit)?;
    let after = params.after.unwrap_or(0);
    let freshness = membership_freshness(&state, &insights).await?;
    let entries = insights.store()?.segment_changes(after, limit).await?;
    let next_cursor = entries.last().map_or(after, |e| e.cursor);
    Ok(Json(SegmentChangesResponse {
        changes: entries
            .into_iter()
            .map(|e| ChangeJson {
                user_id: e.transition.user_id,
                segment: e.transition.segment,
                change: e.transition.change.as_str().to_owned(),
                at: format_millis(e.transition.at),
                cursor: e.cursor,
            })
            .collect(),
        next_cursor,
        freshness,
    }))
}
