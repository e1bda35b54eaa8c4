//! The OpenAPI description, generated from the handlers and their types.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{admin, collector, ops, serving};

#[derive(OpenApi)]
#[openapi(
    info(title = "Signals", description = "Per-user signals from raw events: collector, serving and admin API."),
    paths(
        collector::post_events,
        collector::post_retractions,
        serving::user_signals,
        serving::activity,
        serving::query,
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
        admin::DefinitionsResponse,
        admin::BatchStatusResponse,
        admin::DeleteUserRequest,
        ops::ReadyResponse,
    )),
    modifiers(&Tokens),
    tags(
        (name = "collector", description = "Events and retractions into the log"),
        (name = "serving", description = "Signal values and activity"),
        (name = "admin", description = "The batch layer"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct Tokens;

impl Modify for Tokens {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// `GET /openapi.json`
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
