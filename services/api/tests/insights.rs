//! The insights routes driven without a socket, on embedded backends.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use signals_api::routes::insights::Insights;
use signals_api::{app, with_insights, ApiOptions, AppState, Shared};
use signals_core::{Definitions, SegmentSpec, Segments, SignalSpec};
use signals_log::embedded::{EmbeddedLog, EmbeddedLogOptions};
use signals_store::embedded::EmbeddedStore;
use signals_store::insights::{Change, InsightsProgress, Membership, MembershipUpdate, Transition};
use signals_store::InsightsStore;
use tower::ServiceExt;

struct Fixture {
    router: Router,
    bare: Router,
    store: Arc<EmbeddedStore>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let specs: Vec<SignalSpec> = serde_json::from_value(json!([
        {"name": "views_24h", "events": ["view"], "aggregation": "count", "window": "24h"},
        {"name": "sessions_7d", "aggregation": "session_count", "window": "7d"}
    ]))
    .expect("specs");
    let definitions = Definitions::compile(&specs).expect("valid");
    let segments = Segments::compile(
        &[
            SegmentSpec {
                name: "active_browser".into(),
                description: None,
                rule: "views_24h >= 10".into(),
            },
            SegmentSpec {
                name: "engaged".into(),
                description: None,
                rule: "sessions_7d >= 3".into(),
            },
        ],
        &definitions,
    )
    .expect("valid");
    let dir = tempfile::tempdir().expect("temp dir");
    let log =
        EmbeddedLog::open(&dir.path().join("log"), EmbeddedLogOptions::default()).expect("log");
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).expect("store"));
    let state = AppState::from(Shared {
        log: Arc::new(log),
        store: store.clone(),
        definitions: Arc::new(definitions),
        operations: None,
        metrics: None,
        options: Arc::new(ApiOptions::default()),
        progress: Default::default(),
        answers: std::sync::Arc::new(signals_api::answers::AnswerCache::new(1 << 20)),
    });
    Fixture {
        router: with_insights(
            app(state.clone()),
            Insights {
                segments: Arc::new(segments),
                store: Some(store.clone()),
            },
        ),
        bare: app(state),
        store,
        _dir: dir,
    }
}

async fn get(router: &Router, path: &str) -> (StatusCode, Value) {
    let request = Request::get(path).body(Body::empty()).expect("request");
    let response = router.clone().oneshot(request).await.expect("answered");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, serde_json::from_slice(&bytes).expect("JSON"))
}

fn entered(user: &str, at: i64) -> MembershipUpdate {
    MembershipUpdate {
        user_id: user.into(),
        previous: None,
        next: Membership {
            segments: vec!["engaged".into()],
            evaluated_at: at,
            due: None,
        },
        transitions: vec![Transition {
            user_id: user.into(),
            segment: "engaged".into(),
            change: Change::Entered,
            at,
        }],
    }
}

#[tokio::test]
async fn members_and_changes_page_with_cursors_and_freshness() {
    let f = fixture();
    let updates = ["u-3", "u-1", "u-2"]
        .iter()
        .map(|u| entered(u, 1_795_428_000_000))
        .collect();
    f.store
        .apply_insights(
            updates,
            InsightsProgress {
                evaluated_until: Some(1_795_428_000_000),
                ..InsightsProgress::default()
            },
        )
        .await
        .expect("applied");

    let (status, body) = get(&f.router, "/v1/segments/engaged/users?limit=2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["users"], json!(["u-1", "u-2"]));
    assert_eq!(body["next_cursor"], json!("u-2"));
    assert_eq!(
        body["freshness"]["evaluated_until"],
        json!("2026-11-23T10:00:00.000Z")
    );
    let (_, body) = get(&f.router, "/v1/segments/engaged/users?limit=2&cursor=u-2").await;
    assert_eq!(
        (body["users"].clone(), body["next_cursor"].clone()),
        (json!(["u-3"]), Value::Null)
    );

    let (status, body) = get(&f.router, "/v1/segments/changes?limit=2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["changes"][0],
        json!({"user_id": "u-3", "segment": "engaged", "change": "entered",
               "at": "2026-11-23T10:00:00.000Z", "cursor": 1})
    );
    assert_eq!(body["next_cursor"], json!(2));
    let (_, body) = get(&f.router, "/v1/segments/changes?after=2").await;
    assert_eq!(body["changes"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["next_cursor"], json!(3));
    let (_, body) = get(&f.router, "/v1/segments/changes?after=3").await;
    assert_eq!(
        (body["changes"].clone(), body["next_cursor"].clone()),
        (json!([]), json!(3))
    );
}

#[tokio::test]
async fn refusals_are_precise() {
    let f = fixture();
    let (status, body) = get(&f.router, "/v1/segments/fans/users").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body["error"],
        json!("unknown segment `fans` (defined: active_browser, engaged)")
    );
    let (status, body) = get(&f.router, "/v1/segments/changes?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["error"],
        json!("`limit` = 0 is out of range (1 to 1000)")
    );
    let (status, _) = get(&f.router, "/v1/segments/changes?after=x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = get(&f.bare, "/v1/users/u-1/segments").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], json!("this process serves no segments"));
}

#[tokio::test]
async fn an_unknown_user_is_in_no_segment_with_freshness() {
    let f = fixture();
    let (status, body) = get(&f.router, "/v1/users/u-9/segments").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["segments"], json!([]));
    assert_eq!(body["user_id"], json!("u-9"));
    assert!(body["freshness"]["speed_position"].is_object(), "{body}");
}
