//! The HTTP surface of Signals as one axum [`Router`]: the collector, the
//! serving API, admin and operations endpoints. [`app`] builds it from
//! [`AppState`]; the binary only binds it to a socket, and tests drive it
//! without one.

mod auth;
pub mod error;
pub mod openapi;
pub mod routes;
pub mod state;
mod time;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

pub use state::{ApiOptions, AppState, Tokens};

/// The whole API.
pub fn app(state: AppState) -> Router {
    let max_body = state.options.max_body_bytes;
    let routes = routes(state.options.tokens.enabled().then(|| state.clone()));
    routes
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(track))
        .with_state(state)
}

/// Every route, guarded by tokens when `guarded_by` is set (a layer that
/// only passes requests through costs every request a boxed future).
fn routes(guarded_by: Option<AppState>) -> Router<AppState> {
    let routes = Router::new()
        .route("/v1/events", post(routes::collector::post_events))
        .route("/v1/retractions", post(routes::collector::post_retractions))
        .route(
            "/v1/users/{user_id}/signals",
            get(routes::serving::user_signals),
        )
        .route(
            "/v1/users/{user_id}/activity",
            get(routes::serving::activity),
        )
        .route("/v1/signals/query", post(routes::serving::query))
        .route("/v1/definitions", get(routes::admin::definitions))
        .route("/v1/admin/batch", get(routes::admin::batch_status))
        .route("/v1/admin/batch/run", post(routes::admin::run_batch))
        .route(
            "/v1/admin/users/{user_id}",
            axum::routing::delete(routes::admin::delete_user),
        )
        .route("/healthz", get(routes::ops::healthz))
        .route("/readyz", get(routes::ops::readyz))
        .route("/metrics", get(routes::ops::metrics))
        .route("/openapi.json", get(openapi::serve));
    match guarded_by {
        Some(state) => routes.layer(middleware::from_fn_with_state(state, auth::require_tokens)),
        None => routes,
    }
}

/// Request counts and latencies, labelled by route template, never by user.
async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("signals_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("signals_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
