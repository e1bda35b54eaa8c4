//! The HTTP ceiling: a bare axum server answering the serving routes with
//! canned bodies of the real answers' size from an in-memory map, so the
//! difference to the platform is everything the platform does per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;

/// Canned answers, one per user id.
struct Answers {
    by_user: HashMap<String, Bytes>,
    fallback: Bytes,
}

#[derive(serde::Deserialize)]
struct Query {
    user_ids: Vec<String>,
}

async fn user_signals(
    State(answers): State<Arc<Answers>>,
    Path(user): Path<String>,
) -> impl IntoResponse {
    let body = answers
        .by_user
        .get(&user)
        .unwrap_or(&answers.fallback)
        .clone();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

async fn query(State(answers): State<Arc<Answers>>, Json(query): Json<Query>) -> impl IntoResponse {
    let mut body = Vec::with_capacity(query.user_ids.len() * answers.fallback.len() + 16);
    body.extend_from_slice(b"{\"results\":[");
    for (i, user) in query.user_ids.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(answers.by_user.get(user).unwrap_or(&answers.fallback));
    }
    body.extend_from_slice(b"]}");
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// Serves until killed; `sample` is a real answer body to imitate.
pub async fn serve(listen: SocketAddr, users: u64, sample: String) -> anyhow::Result<()> {
    let sample = Bytes::from(sample);
    let answers = Answers {
        by_user: (1..=users)
            .map(|n| (crate::workload::user_id(n), sample.clone()))
            .collect(),
        fallback: sample,
    };
    let app = Router::new()
        .route("/v1/users/{user_id}/signals", get(user_signals))
        .route("/v1/signals/query", post(query))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(Arc::new(answers));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
