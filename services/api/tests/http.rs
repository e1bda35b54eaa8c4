//! The router driven without a socket, on embedded backends in a temp dir.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use signals_api::operations::{BatchSummary, DeletionReceipt, Running};
use signals_api::{app, ApiOptions, AppState, OperationError, Shared, Tokens};
use signals_core::operations::Job;
use signals_core::{Definitions, SignalSpec};
use signals_log::embedded::{EmbeddedLog, EmbeddedLogOptions};
use signals_store::embedded::EmbeddedStore;
use tower::ServiceExt;

struct Fixture {
    router: Router,
    _dir: tempfile::TempDir,
}

fn definitions() -> Definitions {
    let specs: Vec<SignalSpec> = serde_json::from_value(json!([
        {"name": "views_1h", "events": ["view"], "aggregation": "count", "window": "1h"},
        {"name": "recent_views", "events": ["view", "click"], "aggregation": "last_distinct", "field": "item_id", "limit": 5}
    ]))
    .expect("specs");
    Definitions::compile(&specs).expect("valid")
}

fn fixture(options: ApiOptions) -> Fixture {
    fixture_with(options, None)
}

fn fixture_with(
    options: ApiOptions,
    operations: Option<Arc<dyn signals_api::Operations>>,
) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let log =
        EmbeddedLog::open(&dir.path().join("log"), EmbeddedLogOptions::default()).expect("log");
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).expect("store");
    let state = AppState::from(Shared {
        log: Arc::new(log),
        store: Arc::new(store),
        definitions: Arc::new(definitions()),
        operations,
        metrics: None,
        options: Arc::new(options),
        progress: Default::default(),
        answers: std::sync::Arc::new(signals_api::answers::AnswerCache::new(1 << 20)),
    });
    Fixture {
        router: app(state),
        _dir: dir,
    }
}

async fn call(router: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = router.clone().oneshot(request).await.expect("answered");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .expect("request")
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("request")
}

#[tokio::test]
async fn the_collector_accepts_valid_events_and_names_what_is_wrong() {
    let f = fixture(ApiOptions::default());
    let body = json!([
        {"event_id": "e-1", "user_id": "u-1", "event_type": "view", "item_id": "i-1", "event_time": "2026-11-23T10:00:00Z"},
        {"event_id": "e-2", "user_id": "u-1", "event_type": "view", "event_time": "2026-11-23T10:00:00Z"},
        {"event_id": "e-3", "user_id": "u-1", "event_type": "search", "query": "lofts", "event_time": 1795428000000_i64}
    ]);
    let (status, answer) = call(&f.router, post("/v1/events", body.to_string())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        json!({"accepted": 2, "rejected": [{"index": 1, "error": "`item_id` is required for view events"}]})
    );

    let ndjson = "{\"event_id\": \"e-4\", \"user_id\": \"u-2\", \"event_type\": \"click\", \"item_id\": \"i\", \"event_time\": 1795428000000}\n{oops\n";
    let request = Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from(ndjson))
        .expect("request");
    let (status, answer) = call(&f.router, request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["accepted"], json!(1));
    assert_eq!(answer["rejected"][0]["index"], json!(1));

    let (status, answer) = call(&f.router, post("/v1/events", "[{\"event_id\": ")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("the body is not valid JSON: EOF while parsing"),
        "{answer}"
    );
}

#[tokio::test]
async fn an_oversized_body_gets_413_with_the_limit() {
    let f = fixture(ApiOptions {
        max_body_bytes: 1024,
        ..ApiOptions::default()
    });
    let (status, answer) = call(&f.router, post("/v1/events", vec![b' '; 4096])).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        answer,
        json!({"error": "request body exceeds the limit of 1024 bytes; split it into smaller requests"})
    );
}

#[tokio::test]
async fn serving_refuses_unknown_signals_and_times_outside_retention() {
    let f = fixture(ApiOptions::default());
    let (status, answer) = call(&f.router, get("/v1/users/u-1/signals?names=views_1h,nope")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer,
        json!({"error": "unknown signal `nope` (defined: views_1h, recent_views)"})
    );

    let (status, answer) = call(
        &f.router,
        get("/v1/users/u-1/signals?at=2000-01-01T00:00:00Z"),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("older than the history retention (30 days)")),
        "{answer}"
    );

    let (status, answer) = call(&f.router, get("/v1/users/u-1/signals?at=soon")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer,
        json!({"error": "`at`: `soon` is not an RFC 3339 time or integer epoch milliseconds"})
    );
}

#[tokio::test]
async fn an_unknown_user_gets_empty_values_with_freshness() {
    let f = fixture(ApiOptions::default());
    let (status, answer) = call(&f.router, get("/v1/users/nobody/signals")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer["signals"],
        json!({"views_1h": 0, "recent_views": []})
    );
    assert_eq!(answer["freshness"]["batch_version"], Value::Null);
    assert_eq!(answer["freshness"]["speed_lag_records"], json!(0));

    let query = json!({"user_ids": ["a", "b"], "names": ["views_1h"]});
    let (status, answer) = call(&f.router, post("/v1/signals/query", query.to_string())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["results"].as_array().map(Vec::len), Some(2));
    assert_eq!(answer["results"][1]["user_id"], json!("b"));
    assert_eq!(answer["results"][1]["signals"], json!({"views_1h": 0}));
}

#[tokio::test]
async fn activity_checks_its_parameters() {
    let f = fixture(ApiOptions::default());
    let (status, answer) = call(&f.router, get("/v1/users/u/activity?types=view,purchase")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer,
        json!({"error": "unknown event type `purchase` in `types` (known: view, click, search, wishlist_add, wishlist_remove)"})
    );
    let (status, answer) = call(&f.router, get("/v1/users/u/activity?limit=0")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer,
        json!({"error": "`limit` = 0 must be between 1 and 1000"})
    );
}

#[tokio::test]
async fn tokens_guard_v1_and_admin_routes_but_not_operations() {
    let tokens = Tokens {
        api: vec!["api-token-0123456789".into()],
        admin: Some("admin-token-0123456789".into()),
    };
    let f = fixture(ApiOptions {
        tokens,
        ..ApiOptions::default()
    });
    let with = |path: &str, token: &str| {
        Request::get(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request")
    };

    assert_eq!(
        call(&f.router, get("/v1/definitions")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&f.router, with("/v1/definitions", "wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&f.router, with("/v1/definitions", "api-token-0123456789"))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(&f.router, with("/v1/admin/batch", "api-token-0123456789"))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&f.router, with("/v1/admin/batch", "admin-token-0123456789"))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(call(&f.router, get("/healthz")).await.0, StatusCode::OK);
    assert_eq!(call(&f.router, get("/readyz")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let f = fixture(ApiOptions::default());
    let (status, doc) = call(&f.router, get("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/events",
        "/v1/retractions",
        "/v1/users/{user_id}/signals",
        "/v1/users/{user_id}/activity",
        "/v1/signals/query",
        "/v1/definitions",
        "/v1/admin/batch",
        "/v1/admin/batch/run",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]
        .get("SignalsResponse")
        .is_some());
}

#[tokio::test]
async fn running_the_batch_needs_a_process_that_has_one() {
    let f = fixture(ApiOptions::default());
    let request = Request::post("/v1/admin/batch/run")
        .body(Body::empty())
        .expect("request");
    let (status, answer) = call(&f.router, request).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        answer,
        json!({"error": "this process does not run the batch layer"})
    );
}

/// Operations that refuse the run and the deletion, with one past run.
struct Refusing;

fn summary() -> BatchSummary {
    BatchSummary {
        job: Job::Run,
        version: 3,
        position: Default::default(),
        horizon: 1,
        started_at: 2,
        duration_ms: 5,
        records_read: 10,
        undecodable: 0,
        events: 9,
        users: 2,
        records_written: 2,
        changed_users: None,
        resumed_after: None,
        partitions: None,
        waiting_for: Vec::new(),
        corrections: Default::default(),
        dry_run: false,
        published: true,
    }
}

#[async_trait::async_trait]
impl signals_api::Operations for Refusing {
    async fn run_batch(&self) -> Result<BatchSummary, OperationError> {
        Err(OperationError::Conflict(
            "a batch run is already in progress (version 4)".into(),
        ))
    }

    fn running(&self) -> Option<Running> {
        None
    }

    fn history(&self) -> Vec<BatchSummary> {
        vec![summary()]
    }

    async fn delete_user(&self, _: &str, _: &str) -> Result<DeletionReceipt, OperationError> {
        Err(OperationError::Unavailable("the log is down".into()))
    }
}

#[tokio::test]
async fn the_admin_routes_answer_through_the_operations_port() {
    let f = fixture_with(ApiOptions::default(), Some(Arc::new(Refusing)));
    let run = Request::post("/v1/admin/batch/run")
        .body(Body::empty())
        .expect("request");
    let (status, answer) = call(&f.router, run).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        answer,
        json!({"error": "a batch run is already in progress (version 4)"})
    );

    let (status, answer) = call(&f.router, get("/v1/admin/batch")).await;
    assert_eq!(status, StatusCode::OK);
    let expected = serde_json::to_value(summary()).expect("json");
    assert_eq!(answer["last_run"], expected);
    assert_eq!(answer["runs"], json!([expected]));
    assert_eq!(answer["running"], Value::Null);
    assert_eq!(expected["job"], json!({"kind": "run"}));

    let (status, answer) = call(&f.router, request("DELETE", "/v1/admin/users/u-1", &[], "")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer, json!({"error": "the log is down"}));
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::from(body.to_owned())).expect("request")
}

#[tokio::test]
async fn every_refusal_has_the_json_error_shape() {
    let f = fixture(ApiOptions::default());
    let cases = [
        (get("/nowhere"), StatusCode::NOT_FOUND, "no route for `/nowhere`; see /openapi.json"),
        (
            request("PUT", "/v1/events", &[], ""),
            StatusCode::METHOD_NOT_ALLOWED,
            "`PUT` is not allowed on `/v1/events` (the Allow header lists the methods that are)",
        ),
        (
            request("BREW", "/v1/definitions", &[], ""),
            StatusCode::METHOD_NOT_ALLOWED,
            "`BREW` is not allowed on `/v1/definitions` (the Allow header lists the methods that are)",
        ),
        (
            get("/v1/users/u/activity?limit=lots"),
            StatusCode::BAD_REQUEST,
            "Failed to deserialize query string: limit: invalid digit found in string",
        ),
        (
            get("/v1/users/u/activity?limit=1001"),
            StatusCode::BAD_REQUEST,
            "`limit` = 1001 must be between 1 and 1000",
        ),
        (
            get("/v1/users/%FF%FE/signals"),
            StatusCode::BAD_REQUEST,
            "Invalid URL: Invalid UTF-8 in `user_id`",
        ),
        (
            request("POST", "/v1/events", &[("content-type", "text/plain")], "[]"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body was sent with content type `text/plain`; send it as application/json or application/x-ndjson or application/ndjson or application/jsonl",
        ),
        (
            request("POST", "/v1/signals/query", &[], r#"{"user_ids": []}"#),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body was sent with no content type; send it as application/json",
        ),
        (
            post("/v1/signals/query", r#"{"user_ids": [], "colour": 1}"#),
            StatusCode::BAD_REQUEST,
            "the body is not valid: unknown field `colour`, expected one of `user_ids`, `names`, `at` at line 1 column 25",
        ),
        (
            post("/v1/signals/query", r#"[["u-1"], null, null]"#),
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        ),
        (
            request(
                "DELETE",
                "/v1/admin/users/u-1",
                &[("content-type", "application/json")],
                "[]",
            ),
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        ),
        (
            get("/v1/users/u/signals?names=views_1h,,recent_views"),
            StatusCode::BAD_REQUEST,
            "`names` has an empty entry at position 2 (entries are separated by single commas, without spaces)",
        ),
    ];
    for (request, status, error) in cases {
        let path = request.uri().to_string();
        let response = f.router.clone().oneshot(request).await.expect("answered");
        assert_eq!(response.status(), status, "{path}");
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert!(response.headers().contains_key(header::ALLOW), "{path}");
        }
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/json",
            "{path}"
        );
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body: Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(body, json!({ "error": error }), "{path}");
    }
}

#[tokio::test]
async fn user_ids_are_checked_on_every_route_like_the_collector_checks_them() {
    let f = fixture(ApiOptions::default());
    let long = "x".repeat(257);
    for path in [
        format!("/v1/users/{long}/signals"),
        format!("/v1/users/{long}/activity"),
        "/v1/users/a%00b/signals".to_owned(),
    ] {
        let (status, answer) = call(&f.router, get(&path)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
    }
    let (status, answer) = call(
        &f.router,
        request("DELETE", &format!("/v1/admin/users/{long}"), &[], ""),
    )
    .await;
    assert_eq!(
        (status, answer),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "`user_id` is longer than 256 bytes"})
        )
    );
    let query = json!({"user_ids": ["u-1", ""]});
    let (status, answer) = call(&f.router, post("/v1/signals/query", query.to_string())).await;
    assert_eq!(
        (status, answer),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "`user_ids[1]` must not be empty"})
        )
    );
}

#[tokio::test]
async fn queries_are_capped_and_repeats_count_once() {
    let f = fixture(ApiOptions {
        max_users_per_query: 3,
        max_names_per_query: 2,
        ..ApiOptions::default()
    });
    let query = json!({"user_ids": ["a", "b", "a", "c"]});
    let (status, answer) = call(&f.router, post("/v1/signals/query", query.to_string())).await;
    assert_eq!(
        (status, answer),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "4 user ids requested; at most 3 per query"})
        )
    );
    let query = json!({"user_ids": ["a"], "names": ["views_1h", "views_1h", "views_1h"]});
    let (status, answer) = call(&f.router, post("/v1/signals/query", query.to_string())).await;
    assert_eq!(
        (status, answer),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "3 signal names requested; at most 2 per request"})
        )
    );
    let query = json!({"user_ids": ["b", "a", "b"], "names": ["views_1h", "views_1h"]});
    let (status, answer) = call(&f.router, post("/v1/signals/query", query.to_string())).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let users: Vec<&Value> = answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| &r["user_id"])
        .collect();
    assert_eq!(users, [&json!("b"), &json!("a")]);
    assert_eq!(answer["results"][0]["signals"], json!({"views_1h": 0}));
    let (status, answer) = call(
        &f.router,
        get("/v1/users/u/signals?names=views_1h,views_1h,views_1h"),
    )
    .await;
    assert_eq!(
        (status, answer),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "`names` lists 3 entries; at most 2 per request"})
        )
    );
}

#[tokio::test]
async fn the_event_cap_refuses_a_request_whole() {
    let f = fixture(ApiOptions {
        max_events_per_request: 2,
        ..ApiOptions::default()
    });
    let (status, answer) = call(&f.router, post("/v1/events", "[1, 2, 3]")).await;
    assert_eq!(
        (status, answer),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": "more than 2 events in one request (server.max_events_per_request); split them into smaller requests"})
        )
    );
    let (status, answer) = call(&f.router, post("/v1/events", "[1, {}]")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer["rejected"][0]["error"],
        "an event must be a JSON object, not a number"
    );
}

#[tokio::test]
async fn without_tokens_only_same_origin_loopback_requests_change_state() {
    let f = fixture(ApiOptions::default());
    let refused = [
        request(
            "POST",
            "/v1/admin/batch/run",
            &[
                ("host", "127.0.0.1:8080"),
                ("origin", "https://evil.example"),
            ],
            "",
        ),
        request(
            "POST",
            "/v1/events",
            &[
                ("host", "127.0.0.1:8080"),
                ("sec-fetch-site", "cross-site"),
                ("content-type", "application/json"),
            ],
            "[]",
        ),
        request(
            "GET",
            "/v1/definitions",
            &[("host", "rebound.evil.example:8080")],
            "",
        ),
    ];
    for request in refused {
        let (status, answer) = call(&f.router, request).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let same = request(
        "POST",
        "/v1/admin/batch/run",
        &[
            ("host", "localhost:8080"),
            ("origin", "http://localhost:8080"),
        ],
        "",
    );
    // Passes the rule (and meets the missing batch layer).
    assert_eq!(
        call(&f.router, same).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn beyond_the_request_cap_the_answer_is_503_but_health_still_answers() {
    let f = fixture(ApiOptions {
        max_concurrent_requests: 0,
        ..ApiOptions::default()
    });
    let response = f
        .router
        .clone()
        .oneshot(get("/v1/definitions"))
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    assert_eq!(call(&f.router, get("/healthz")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_openapi_document_declares_security_only_when_tokens_are_configured() {
    let open = fixture(ApiOptions::default());
    let (_, doc) = call(&open.router, get("/openapi.json")).await;
    assert!(doc["components"].get("securitySchemes").is_none(), "{doc}");
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("item") {
            assert!(operation.get("security").is_none(), "{method} {path}");
            assert!(
                operation.get("parameters").is_none_or(Value::is_array),
                "{method} {path}"
            );
            for (status, response) in operation["responses"].as_object().expect("responses") {
                if status.starts_with('4') || (status.starts_with('5') && path != "/readyz") {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
    assert_eq!(
        doc["components"]["schemas"]["QueryRequest"]["properties"]["user_ids"]["maxItems"],
        1000
    );

    let guarded = fixture(ApiOptions {
        tokens: Tokens {
            api: vec!["api-token-0123456789".into()],
            admin: Some("admin-token-0123456789".into()),
        },
        max_users_per_query: 7,
        ..ApiOptions::default()
    });
    let (_, doc) = call(&guarded.router, get("/openapi.json")).await;
    assert!(doc["components"]["securitySchemes"]["admin_token"].is_object());
    assert_eq!(
        doc["paths"]["/v1/admin/batch/run"]["post"]["security"],
        json!([{"admin_token": []}])
    );
    assert_eq!(
        doc["paths"]["/v1/users/{user_id}/signals"]["get"]["security"],
        json!([{"api_token": []}, {"admin_token": []}])
    );
    assert!(doc["paths"]["/v1/definitions"]["get"]["responses"]["401"].is_object());
    assert!(doc["paths"]["/healthz"]["get"].get("security").is_none());
    assert_eq!(
        doc["components"]["schemas"]["QueryRequest"]["properties"]["user_ids"]["maxItems"],
        7
    );
}
