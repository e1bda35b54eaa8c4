//! Serving: signal values, multi-user queries and raw activity.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use signals_core::time::format_millis;
use signals_core::{Definitions, EventTypes, LogPosition, SignalDefinition, UserView};
use signals_schemas::{EventType, Millis};
use signals_store::BatchManifest;
use utoipa::{IntoParams, ToSchema};

use crate::answers::{Answer, ViewId};
use crate::error::ApiError;
use crate::extract::{check_user_id, ApiQuery, JsonBody, UserId, JSON};
use crate::openapi::MAX_ACTIVITY_LIMIT;
use crate::progress::LogEnd;
use crate::state::AppState;
use crate::time::{now_millis, parse_time, MAX_EPOCH_MILLIS};

/// How fresh an answer is: which layers it merges and how far behind they are.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Freshness {
    /// The published batch version merged, or null before the first run.
    pub batch_version: Option<u64>,
    /// Log position (partition → next offset) the batch covers.
    #[schema(value_type = Object)]
    pub batch_position: Arc<LogPosition>,
    /// When the merged batch run started.
    #[schema(value_type = Option<String>)]
    pub batch_created_at: Option<Arc<str>>,
    /// Log position the speed layer has durably applied (read with `log_end`).
    #[schema(value_type = Object)]
    pub speed_position: Arc<LogPosition>,
    /// The log's end: read at most 20 ms before the answer, and after every
    /// append this process acknowledged before the request came (unless
    /// `positions_stale` says otherwise).
    #[schema(value_type = Object)]
    pub log_end: Arc<LogPosition>,
    /// Records accepted into the log but not yet applied by the speed layer;
    /// null when that is not known for this answer (`positions_stale` says
    /// why): a lag read earlier is no evidence of being caught up now.
    pub speed_lag_records: Option<u64>,
    /// While records lag: milliseconds since the newest applied one was
    /// accepted; else 0; null like `speed_lag_records`.
    pub speed_lag_ms: Option<u64>,
    /// Lifetime signals whose definition changed after the batch ran: they
    /// count only raw history until the next batch run.
    pub stale_signals: Vec<String>,
    /// Null when `speed_position` and `log_end` were read for this answer;
    /// otherwise why they are older (the log or the store did not answer
    /// within 100 ms, e.g. Kafka is away) and how old. The values are exact
    /// either way: they come from the store alone.
    pub positions_stale: Option<String>,
}

/// One user's signal values at one point in time.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SignalsResponse {
    pub user_id: String,
    /// The evaluation time: windows are `[at - window, at)`.
    #[schema(value_type = String)]
    pub at: Arc<str>,
    /// Signal name → value.
    #[schema(value_type = Object)]
    pub signals: Answer,
    pub freshness: Freshness,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct SignalsParams {
    /// Comma-separated signal names; all when absent.
    names: Option<String>,
    /// RFC 3339 or epoch milliseconds; now when absent.
    at: Option<String>,
}

/// Several users at once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub user_ids: Vec<String>,
    /// Signal names; all when absent.
    #[serde(default)]
    pub names: Option<Vec<String>>,
    /// RFC 3339 string or epoch milliseconds; now when absent.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub at: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueryResponse {
    /// One entry per requested user, in request order.
    pub results: Vec<SignalsResponse>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ActivityParams {
    /// Comma-separated event types; all when absent.
    types: Option<String>,
    /// Inclusive lower bound on `event_time` (RFC 3339 or epoch ms).
    since: Option<String>,
    /// Exclusive upper bound on `event_time`; now when absent.
    until: Option<String>,
    /// Most events returned (default 100, at most 1000).
    limit: Option<usize>,
}

/// A user's recent events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActivityResponse {
    pub user_id: String,
    /// Events in the collector's JSON shape.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Value>,
}

/// Resolves `names` against the definitions; all when `None`. At most
/// `server.max_names_per_query` names; repeats count once.
fn select(
    state: &AppState,
    names: Option<Vec<String>>,
) -> Result<Vec<&SignalDefinition>, ApiError> {
    match names {
        None => Ok(state.definitions.iter().collect()),
        Some(names) => {
            let max = state.options.max_names_per_query;
            if names.len() > max {
                return Err(ApiError::BadRequest(format!(
                    "{} signal names requested; at most {max} per request",
                    names.len()
                )));
            }
            select_distinct(state, distinct(names))
        }
    }
}

/// `items` without repeats, in first-seen order.
fn distinct(items: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    items
        .into_iter()
        .filter(|item| seen.insert(item.clone()))
        .collect()
}

pub(crate) fn select_distinct(
    state: &AppState,
    names: Vec<String>,
) -> Result<Vec<&SignalDefinition>, ApiError> {
    state.definitions.select(&names).map_err(|unknown| {
        let known: Vec<&str> = state.definitions.iter().map(|d| d.name.as_str()).collect();
        ApiError::BadRequest(format!(
            "unknown signal `{}` (defined: {})",
            crate::guard::excerpt(&unknown, 64),
            known.join(", ")
        ))
    })
}

/// A comma-separated list (`names`, `types`): no empty entry, no spaces,
/// at most `max` entries.
fn split_list(field: &str, list: &str, max: usize) -> Result<Vec<String>, ApiError> {
    let items: Vec<String> = list.split(',').map(str::to_owned).collect();
    if items.len() > max {
        return Err(ApiError::BadRequest(format!(
            "`{field}` lists {} entries; at most {max} per request",
            items.len()
        )));
    }
    if let Some(i) = items.iter().position(|item| item.is_empty()) {
        return Err(ApiError::BadRequest(format!(
            "`{field}` has an empty entry at position {} (entries are separated by single commas, without spaces)",
            i + 1
        )));
    }
    Ok(items)
}

/// Checks `at` against the history retention; `None` is now.
pub(crate) fn resolve_at(state: &AppState, at: Option<Millis>) -> Result<Millis, ApiError> {
    let now = now_millis();
    let Some(at) = at else { return Ok(now) };
    let oldest = now - state.options.retention;
    if at < oldest {
        return Err(ApiError::Unprocessable(format!(
            "`at` = {} is older than the history retention ({} days): the oldest answerable time is {}",
            format_millis(at),
            state.options.retention / signals_core::time::DAY,
            format_millis(oldest)
        )));
    }
    Ok(at)
}

pub(crate) fn parse_at_param(text: Option<&str>) -> Result<Option<Millis>, ApiError> {
    text.map(|t| parse_time(t).map_err(|e| ApiError::BadRequest(format!("`at`: {e}"))))
        .transpose()
}

pub(crate) async fn speed_and_log(
    state: &AppState,
) -> Result<(signals_store::SpeedProgress, LogEnd), ApiError> {
    Ok(state.progress.read(&state.store, &state.log).await)
}

/// What every answer of one request shares, read and formatted once (a
/// multi-get answers a hundred users).
pub(crate) struct Reading {
    at: Millis,
    at_text: Arc<str>,
    speed_position: Arc<LogPosition>,
    last_accepted_at: Option<Millis>,
    log_end: Arc<LogPosition>,
    positions_stale: Option<String>,
    /// What the answers say of the batch they merge, made by the first
    /// answer: a multi-get's users nearly always merge one version, and
    /// copying its position per user was a twentieth of the request.
    batch: OnceLock<BatchFacts>,
}

/// A published version as answers describe it.
#[derive(Clone)]
struct BatchFacts {
    version: u64,
    position: Arc<LogPosition>,
    created_at: Arc<str>,
}

impl BatchFacts {
    fn of(manifest: &BatchManifest) -> BatchFacts {
        BatchFacts {
            version: manifest.version,
            position: Arc::new(manifest.position.clone()),
            created_at: format_millis(manifest.created_at).into(),
        }
    }
}

impl Reading {
    /// Reads the speed layer's progress and the log's end for answers at `at`.
    pub(crate) async fn new(state: &AppState, at: Millis) -> Result<Reading, ApiError> {
        let (speed, end) = speed_and_log(state).await?;
        Ok(Reading {
            at,
            at_text: format_millis(at).into(),
            speed_position: Arc::new(speed.position),
            last_accepted_at: speed.last_accepted_at,
            log_end: Arc::new(end.position),
            positions_stale: end.stale,
            batch: OnceLock::new(),
        })
    }

    /// What answers say of `manifest`, shared by the request's answers
    /// that merge the same version.
    fn batch_facts(&self, manifest: &BatchManifest) -> BatchFacts {
        let first = self.batch.get_or_init(|| BatchFacts::of(manifest));
        if first.version == manifest.version {
            first.clone()
        } else {
            BatchFacts::of(manifest)
        }
    }
}

pub(crate) async fn answer(
    state: &AppState,
    user_id: String,
    definitions: &[&SignalDefinition],
    reading: &Reading,
) -> Result<SignalsResponse, ApiError> {
    let at = reading.at;
    let history = state.store.served_history(&user_id).await?;
    let manifest = history.manifest.clone();
    let id = ViewId {
        version: manifest.as_ref().map(|m| m.version),
        tail_generation: history.tail.generation(),
    };
    let view = UserView::with_tail(history.record, history.tail);
    if view.untiled(definitions) >= TILED_APART_FROM {
        tile_apart(&view, &state.definitions, definitions).await?;
    }
    let answer = state
        .answers
        .answer(&user_id, id, || view, &state.definitions, definitions, at);
    let lag = reading.speed_position.lag_behind(&reading.log_end);
    let now = now_millis();
    let known = reading.positions_stale.is_none();
    let batch = manifest.as_deref().map(|m| reading.batch_facts(m));
    let freshness = Freshness {
        batch_version: batch.as_ref().map(|b| b.version),
        batch_position: batch
            .as_ref()
            .map(|b| b.position.clone())
            .unwrap_or_default(),
        batch_created_at: batch.map(|b| b.created_at),
        speed_position: reading.speed_position.clone(),
        log_end: reading.log_end.clone(),
        speed_lag_records: known.then_some(lag),
        speed_lag_ms: known.then_some(match (lag, reading.last_accepted_at) {
            (0, _) => 0,
            (_, Some(t)) => (now - t).max(0) as u64,
            (_, None) => 0,
        }),
        stale_signals: answer.stale(),
        positions_stale: reading.positions_stale.clone(),
    };
    Ok(SignalsResponse {
        user_id,
        at: reading.at_text.clone(),
        signals: answer,
        freshness,
    })
}

/// Reads that would first tile this many events or more tile them on the
/// blocking pool: some 6 ms of work at this size, and a million-event
/// user's first read of a version is about 400 ms of it, which on a runtime
/// thread every request queued behind it would wait for.
const TILED_APART_FROM: usize = 16_384;

/// Builds the tiles a read of `asked` needs over `view` on the blocking pool.
async fn tile_apart(
    view: &UserView,
    definitions: &Arc<Definitions>,
    asked: &[&SignalDefinition],
) -> Result<(), ApiError> {
    let (view, definitions) = (view.clone(), definitions.clone());
    let asked: Vec<usize> = asked.iter().map(|d| d.index).collect();
    tokio::task::spawn_blocking(move || {
        let asked: Vec<&SignalDefinition> = asked
            .iter()
            .filter_map(|&i| definitions.by_index(i))
            .collect();
        view.tile(&asked);
    })
    .await
    .map_err(|e| ApiError::Internal(format!("tiling a user's history stopped: {e}")))
}

/// JSON written into a buffer sized for it up front: a 100-user answer is
/// hundreds of kilobytes, and growing a small buffer by doubling copied it
/// over and over.
pub struct SizedJson<T> {
    value: T,
    capacity: usize,
}

impl<T: Serialize> IntoResponse for SizedJson<T> {
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(self.capacity);
        match serde_json::to_writer(&mut body, &self.value) {
            Ok(()) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(error) => {
                ApiError::Internal(format!("cannot encode the answer: {error}")).into_response()
            }
        }
    }
}

/// About how many bytes a response of `answers` takes: the values, and
/// what each result adds around them (ids, times, positions).
fn encoded_len<'a>(answers: impl IntoIterator<Item = &'a SignalsResponse>) -> usize {
    answers
        .into_iter()
        .map(|a| a.signals.encoded_len() + 512)
        .sum::<usize>()
        + 16
}

/// One user's signals.
#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/signals",
    params(("user_id" = String, Path, description = "The user"), SignalsParams),
    responses(
        (status = 200, description = "Values (empty/zero for an unknown user)", body = SignalsResponse),
        (status = 400, description = "Unknown signal name or malformed `at`", body = crate::error::ErrorBody),
        (status = 422, description = "`at` outside the history retention", body = crate::error::ErrorBody),
    ),
    tag = "serving"
)]
pub async fn user_signals(
    State(state): State<AppState>,
    UserId(user_id): UserId,
    ApiQuery(params): ApiQuery<SignalsParams>,
) -> Result<SizedJson<SignalsResponse>, ApiError> {
    let names = params
        .names
        .as_deref()
        .map(|list| split_list("names", list, state.options.max_names_per_query))
        .transpose()?;
    let definitions = select(&state, names)?;
    let at = resolve_at(&state, parse_at_param(params.at.as_deref())?)?;
    let reading = Reading::new(&state, at).await?;
    let answer = answer(&state, user_id, &definitions, &reading).await?;
    let capacity = encoded_len([&answer]);
    Ok(SizedJson {
        value: answer,
        capacity,
    })
}

/// Many users' signals in one call.
#[utoipa::path(
    post,
    path = "/v1/signals/query",
    request_body = QueryRequest,
    responses(
        (status = 200, body = QueryResponse),
        (status = 400, description = "Malformed request or unknown signal", body = crate::error::ErrorBody),
        (status = 422, description = "`at` outside the history retention", body = crate::error::ErrorBody),
    ),
    tag = "serving"
)]
pub async fn query(
    State(state): State<AppState>,
    body: JsonBody,
) -> Result<SizedJson<QueryResponse>, ApiError> {
    body.require(JSON)?;
    let request: QueryRequest = body.json().await?;
    if request.user_ids.len() > state.options.max_users_per_query {
        return Err(ApiError::BadRequest(format!(
            "{} user ids requested; at most {} per query",
            request.user_ids.len(),
            state.options.max_users_per_query
        )));
    }
    for (i, user) in request.user_ids.iter().enumerate() {
        check_user_id(&format!("user_ids[{i}]"), user)?;
    }
    let user_ids = distinct(request.user_ids);
    let definitions = select(&state, request.names)?;
    let at = match request.at {
        None | Some(Value::Null) => None,
        // An integer, also when written with a zero fraction (`1.0` is an
        // integer to JSON Schema, as the document states `at`).
        Some(Value::Number(n)) => Some(
            n.as_i64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 1.0e18)
                        .map(|f| f as i64)
                })
                .filter(|ms| ms.abs() <= MAX_EPOCH_MILLIS)
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "`at`: epoch milliseconds must be an integer of at most 18 digits".into(),
                    )
                })?,
        ),
        Some(Value::String(s)) => parse_at_param(Some(&s))?,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "`at` must be an RFC 3339 string or epoch milliseconds".into(),
            ))
        }
    };
    let at = resolve_at(&state, at)?;
    let reading = Reading::new(&state, at).await?;
    let answers = futures::future::try_join_all(
        user_ids
            .into_iter()
            .map(|user| answer(&state, user, &definitions, &reading)),
    )
    .await?;
    let capacity = encoded_len(&answers);
    Ok(SizedJson {
        value: QueryResponse { results: answers },
        capacity,
    })
}

/// What a user did: their events, newest first.
#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/activity",
    params(("user_id" = String, Path, description = "The user"), ActivityParams),
    responses(
        (status = 200, body = ActivityResponse),
        (status = 400, description = "Unknown event type or malformed time", body = crate::error::ErrorBody),
    ),
    tag = "serving"
)]
pub async fn activity(
    State(state): State<AppState>,
    UserId(user_id): UserId,
    ApiQuery(params): ApiQuery<ActivityParams>,
) -> Result<Json<ActivityResponse>, ApiError> {
    let types = match params.types.as_deref() {
        None => EventTypes::ALL,
        Some(list) => {
            let mut types = EventTypes::default();
            for name in split_list("types", list, state.options.max_names_per_query)? {
                let t = EventType::parse(&name).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "unknown event type `{}` in `types` (known: {})",
                        crate::guard::excerpt(&name, 64),
                        EventType::ALL.map(EventType::as_str).join(", ")
                    ))
                })?;
                types.insert(t);
            }
            types
        }
    };
    let time = |name: &str, value: Option<&str>| {
        value
            .map(|v| parse_time(v).map_err(|e| ApiError::BadRequest(format!("`{name}`: {e}"))))
            .transpose()
    };
    let since = time("since", params.since.as_deref())?.unwrap_or(Millis::MIN);
    let until = time("until", params.until.as_deref())?.unwrap_or_else(now_millis);
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_ACTIVITY_LIMIT {
        return Err(ApiError::BadRequest(format!(
            "`limit` = {limit} must be between 1 and {MAX_ACTIVITY_LIMIT}"
        )));
    }
    let history = state.store.served_history(&user_id).await?;
    let view = UserView::with_tail(history.record, history.tail);
    let events = view
        .activity(types, since, until, limit)
        .iter()
        .map(signals_schemas::json::to_json)
        .collect();
    Ok(Json(ActivityResponse { user_id, events }))
}
