//! Bearer tokens, required once any are configured (always beyond loopback).

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// Paths that need the admin token rather than an API token.
fn needs_admin(path: &str) -> bool {
    path.starts_with("/v1/admin/") || path == "/v1/admin" || path == "/v1/retractions"
}

/// Compares in constant time (`subtle`): how much of a guess matches
/// does not show in how long the answer takes.
fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

pub async fn require_tokens(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let tokens = &state.options.tokens;
    let path = request.uri().path();
    if !tokens.enabled() || !path.starts_with("/v1") {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return ApiError::Unauthorized("missing `Authorization: Bearer <token>` header".into())
            .into_response();
    };
    let is_admin = tokens
        .admin
        .as_deref()
        .is_some_and(|admin| same(admin, presented));
    // Every token is compared, so timing does not say which one matched.
    let is_api = tokens
        .api
        .iter()
        .fold(false, |found, t| same(t, presented) | found);
    if needs_admin(path) {
        if !is_admin {
            let error = if is_api {
                ApiError::Forbidden(format!("{path} requires the admin token"))
            } else {
                ApiError::Unauthorized("unknown token".into())
            };
            return error.into_response();
        }
    } else if !is_admin && !is_api {
        return ApiError::Unauthorized("unknown token".into()).into_response();
    }
    next.run(request).await
}
