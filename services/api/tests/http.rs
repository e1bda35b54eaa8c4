//! The router driven without a socket, on embedded backends in a temp dir.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use signals_api::{app, ApiOptions, AppState, Tokens};
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
    let dir = tempfile::tempdir().expect("temp dir");
    let log =
        EmbeddedLog::open(&dir.path().join("log"), EmbeddedLogOptions::default()).expect("log");
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).expect("store");
    let state = AppState {
        log: Arc::new(log),
        store: Arc::new(store),
        definitions: Arc::new(definitions()),
        batch: None,
        metrics: None,
        options: Arc::new(options),
        progress: Default::default(),
    };
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
