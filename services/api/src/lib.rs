//! The HTTP surface of Signals as one axum [`Router`]: the collector, the
//! serving API, admin and operations endpoints. [`app`] builds it from
//! [`AppState`]; the binary only binds it to a socket, and tests drive it
//! without one.

pub mod answers;
mod auth;
pub mod error;
pub mod events_body;
pub mod extract;
mod guard;
pub mod openapi;
pub mod operations;
pub mod progress;
pub mod routes;
pub mod state;
mod time;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;

pub use operations::{OperationError, Operations};
pub use state::{ApiOptions, AppState, Shared, Tokens};

pub use guard::method_label;

/// The whole API. Every request passes, outermost first: metrics, the
/// same-site rule (only without tokens), the request cap, the JSON error
/// shape, the body limit, tokens (only with tokens), the handler.
pub fn app(state: AppState) -> Router {
    let options = state.options.clone();
    let tokens = options.tokens.enabled();
    let mut router = routes(tokens.then(|| state.clone()))
        .fallback(guard::not_found)
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .layer(middleware::from_fn(guard::json_errors))
        .layer(middleware::from_fn_with_state(
            guard::RequestCap::new(options.max_concurrent_requests),
            guard::cap_requests,
        ));
    if !tokens {
        router = router.layer(middleware::from_fn(guard::same_site));
    }
    router
        .layer(middleware::from_fn(guard::track))
        .with_state(state)
}

/// `router` (from [`app`]) answering the insights routes with `insights`;
/// without it they answer 404.
pub fn with_insights(router: Router, insights: routes::insights::Insights) -> Router {
    router.layer(axum::Extension(insights))
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
        .route(
            "/v1/users/{user_id}/segments",
            get(routes::insights::user_segments),
        )
        .route(
            "/v1/segments/{name}/users",
            get(routes::insights::segment_users),
        )
        .route(
            "/v1/segments/changes",
            get(routes::insights::segment_changes),
        )
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
