//! The OpenAPI description, generated from the handlers and their types.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use signals_core::Definitions;
use signals_schemas::EventType;
use utoipa::OpenApi;

use crate::routes::{admin, collector, insights, ops, serving};
use crate::state::{ApiOptions, AppState};

#[derive(OpenApi)]
#[openapi(
    info(title = "Signals", description = "Per-user signals from raw events: collector, serving and admin API."),
    paths(
        collector::post_events,
        collector::post_retractions,
        serving::user_signals,
        serving::activity,
        serving::query,
        insights::user_segments,
        insights::segment_users,
        insights::segment_changes,
        admin::definitions,
        admin::batch_status,
        admin::run_batch,
        admin::delete_user,
        ops::healthz,
        ops::readyz,
        ops::metrics,
    ),
    components(schemas(
        crate::error::ErrorBody,
        collector::EventJson,
        collector::RetractionJson,
        collector::EventsResponse,
        collector::Rejected,
        collector::RetractionResponse,
        serving::SignalsResponse,
        serving::Freshness,
        serving::QueryRequest,
        serving::QueryResponse,
        serving::ActivityResponse,
        insights::UserSegmentsResponse,
        insights::MembershipFreshness,
        insights::SegmentMembersResponse,
        insights::ChangeJson,
        insights::SegmentChangesResponse,
        admin::DefinitionsResponse,
        admin::BatchStatusResponse,
        admin::DeleteUserRequest,
        ops::ReadyResponse,
    )),
    tags(
        (name = "collector", description = "Events and retractions into the log"),
        (name = "serving", description = "Signal values and activity"),
        (name = "insights", description = "Sessions and segments: a user's segments, members, the feed of transitions"),
        (name = "admin", description = "The batch layer"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

/// The description served at `/openapi.json`: the generated one, made to
/// say what this server, as configured, does (see [`document`]).
pub async fn serve(State(state): State<AppState>) -> Json<Value> {
    Json(document(&state.options, &state.definitions))
}

/// Routes that answer whatever the load and whoever asks.
const OPERATIONS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/openapi.json"];

/// The generated description, completed from the running configuration:
/// security only when tokens are configured (and then on every `/v1`
/// route, the admin token on admin routes and retractions), the limits
/// (`maxItems`, `maxLength`, ranges) in force, the signal names defined,
/// and on every operation every status the server can answer with and the
/// JSON error body. The router's middleware applies these to every route
/// alike, so they are added here alike rather than repeated by hand.
pub fn document(options: &ApiOptions, definitions: &Definitions) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    let names: Vec<&str> = definitions.iter().map(|d| d.name.as_str()).collect();
    // The oldest answerable `at` as epoch milliseconds, as of this document.
    let oldest = crate::time::now_millis() - options.retention;
    let tokens = options.tokens.enabled();
    let error = json!({"$ref": "#/components/schemas/ErrorBody"});
    let error_response = |description: &str| json!({"description": description, "content": {"application/json": {"schema": error}}});

    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, operation) in item.iter_mut() {
                let has_body = operation.get("requestBody").is_some();
                let has_params = operation.get("parameters").is_some();
                let Some(operation) = operation.as_object_mut() else {
                    continue;
                };
                let is_operations = OPERATIONS.contains(&path.as_str());
                operation.remove("security");
                let responses = operation
                    .entry("responses")
                    .or_insert_with(|| json!({}))
                    .as_object_mut();
                let Some(responses) = responses else { continue };
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status)
                        .or_insert_with(|| error_response(description));
                };
                if has_body || has_params {
                    add(
                        "400",
                        "The request is malformed or breaks a rule named in the message",
                    );
                }
                if has_body {
                    add("408", "The body did not arrive within server.body_timeout");
                    add("413", "The body is over server.max_body_bytes (or, for events, server.max_events_per_request)");
                    add(
                        "415",
                        "A body was sent with another content type than the one documented",
                    );
                }
                if !is_operations {
                    add("503", "The server is at server.max_concurrent_requests (with Retry-After), or a backend is down");
                }
                if tokens && path.starts_with("/v1") {
                    add("401", "No or an unknown bearer token");
                    add(
                        "403",
                        "The token may not use this route (the admin token is needed)",
                    );
                } else if !tokens {
                    add(
                        "403",
                        if method == "get" {
                            "The request is addressed to a name that is not loopback (without tokens)"
                        } else {
                            "A cross-site request (Origin, Sec-Fetch-Site) or one addressed to a name that is not loopback (without tokens)"
                        },
                    );
                }
                if tokens && path.starts_with("/v1") {
                    let admin = path.starts_with("/v1/admin") || path == "/v1/retractions";
                    operation.insert(
                        "security".into(),
                        if admin {
                            json!([{"admin_token": []}])
                        } else {
                            json!([{"api_token": []}, {"admin_token": []}])
                        },
                    );
                }
            }
        }
    }

    let user_id = json!({
        "type": "string",
        "minLength": 1,
        "maxLength": signals_schemas::json::MAX_ID_BYTES,
        "pattern": ID_PATTERN,
        "description": "Non-empty, at most 256 bytes in UTF-8, no control characters"
    });
    let time = json!({
        "type": "string",
        "anyOf": [{"format": "date-time"}, {"pattern": EPOCH_MILLIS_PATTERN}],
        "description": "RFC 3339 (e.g. 2026-11-23T10:00:00Z) or integer epoch milliseconds"
    });
    // Every route names users and times by the same rules.
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for operation in item.values_mut() {
                let Some(parameters) = operation
                    .get_mut("parameters")
                    .and_then(Value::as_array_mut)
                else {
                    continue;
                };
                for parameter in parameters {
                    match (parameter["name"].as_str(), parameter["in"].as_str()) {
                        (Some("user_id"), Some("path")) => parameter["schema"] = user_id.clone(),
                        (Some("at" | "since" | "until"), Some("query")) => {
                            parameter["schema"] = time.clone()
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    let name_list = list_pattern(&names, options.max_names_per_query);
    let types: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    let type_list = list_pattern(&types, options.max_names_per_query);
    for (path, method) in [
        ("/v1/users/{user_id}/signals", "get"),
        ("/v1/users/{user_id}/activity", "get"),
        ("/v1/admin/users/{user_id}", "delete"),
    ] {
        let pointer = format!("/paths/{}/{method}/parameters", path.replace('/', "~1"));
        let Some(parameters) = doc.pointer_mut(&pointer).and_then(Value::as_array_mut) else {
            continue;
        };
        for parameter in parameters {
            let schema = match parameter["name"].as_str() {
                Some("names") => json!({"type": "string", "pattern": name_list,
                    "description": format!("Comma-separated signal names, at most {}: {}", options.max_names_per_query, names.join(", "))}),
                Some("types") => json!({"type": "string", "pattern": type_list,
                    "description": format!("Comma-separated event types: {}", types.join(", "))}),
                Some("limit") => {
                    json!({"type": "integer", "minimum": 1, "maximum": MAX_ACTIVITY_LIMIT, "default": 100})
                }
                _ => continue,
            };
            parameter["schema"] = schema;
        }
    }
    // Each event is checked on its own and refused by index inside a 200
    // (`rejected`), so any item is schema-valid here; the body as a whole
    // must be an array (or one object: a single NDJSON line).
    doc["paths"]["/v1/events"]["post"]["requestBody"]["content"] = json!({
        "application/json": {"schema": {"oneOf": [
            {
                "type": "array",
                "maxItems": options.max_events_per_request,
                "items": {"anyOf": [{"$ref": "#/components/schemas/EventJson"}, {}]},
                "description": "Events; an item that is not a valid event is listed in `rejected` of the 200"
            },
            {
                "type": "object",
                "description": "One event as a single NDJSON line (application/x-ndjson takes one event per line)"
            }
        ]}}
    });
    let schemas = &mut doc["components"]["schemas"];
    schemas["RetractionJson"]["properties"]["event_ids"] = json!({
        "type": "array",
        "minItems": 1,
        "maxItems": signals_schemas::json::MAX_RETRACTED_IDS,
        "items": user_id.clone(),
    });
    schemas["RetractionJson"]["properties"]["reason"] = json!({
        "type": ["string", "null"],
        "maxLength": signals_schemas::json::MAX_TEXT_BYTES,
        "description": "At most 1024 bytes in UTF-8"
    });
    schemas["RetractionJson"]["additionalProperties"] = json!(false);
    schemas["DeleteUserRequest"]["properties"]["reason"] = json!({
        "type": "string",
        "maxLength": signals_schemas::json::MAX_TEXT_BYTES,
        "description": "At most 1024 bytes in UTF-8"
    });
    schemas["DeleteUserRequest"]["additionalProperties"] = json!(false);
    schemas["QueryRequest"]["properties"]["user_ids"] = json!({
        "type": "array", "items": user_id, "maxItems": options.max_users_per_query,
        "description": "Users to answer for; a user named twice is answered once"
    });
    schemas["QueryRequest"]["properties"]["names"] = json!({
        "type": ["array", "null"], "items": {"type": "string", "enum": names},
        "maxItems": options.max_names_per_query,
        "description": "Signal names (all when absent); a name given twice counts once"
    });
    schemas["QueryRequest"]["properties"]["at"] = json!({
        "oneOf": [time, {"type": "integer", "minimum": oldest, "maximum": crate::time::MAX_EPOCH_MILLIS}, {"type": "null"}],
        "description": "RFC 3339 string or epoch milliseconds; now when absent"
    });
    schemas["QueryRequest"]["additionalProperties"] = json!(false);
    if tokens {
        doc["components"]["securitySchemes"] = json!({
            "api_token": {"type": "http", "scheme": "bearer", "description": "One of server.api_tokens"},
            "admin_token": {"type": "http", "scheme": "bearer", "description": "server.admin_token"}
        });
    }
    doc
}

/// Most events `GET /v1/users/{user_id}/activity` answers with.
pub const MAX_ACTIVITY_LIMIT: usize = 1_000;

/// No control characters (Unicode `Cc`, what `char::is_control` tests).
const ID_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$";

/// Integer epoch milliseconds (the other form of a time is RFC 3339).
const EPOCH_MILLIS_PATTERN: &str = "^-?[0-9]{1,18}$";

/// A comma-separated list of at most `max` of `items`.
fn list_pattern(items: &[&str], max: usize) -> String {
    let one = format!("({})", items.join("|"));
    format!("^{one}(,{one}){{0,{}}}$", max.saturating_sub(1))
}
