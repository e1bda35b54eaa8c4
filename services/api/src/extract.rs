//! What a request names, read so that every refusal is the API's JSON
//! error: user ids in paths (checked like the collector checks them),
//! query strings, and request bodies (size, time and media type bounded,
//! large ones parsed off the async workers).

use std::sync::LazyLock;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::state::AppState;

/// Checks a user id as the collector does (non-empty, at most
/// [`signals_schemas::json::MAX_ID_BYTES`] bytes, no control characters);
/// `name` says where it came from.
pub fn check_user_id(name: &str, id: &str) -> Result<(), ApiError> {
    signals_schemas::rules::check_id(name, id).map_err(|e| ApiError::BadRequest(e.0))
}

/// `{user_id}` in the path, checked.
pub struct UserId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for UserId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
        check_user_id("user_id", &id)?;
        Ok(UserId(id))
    }
}

/// The query string, refused as a JSON 400 when it does not parse.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
    }
}

/// Media types a JSON body may be sent as.
pub const JSON: &[&str] = &["application/json"];
/// Media types of `POST /v1/events`.
pub const JSON_OR_NDJSON: &[&str] = &[
    "application/json",
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
];

/// A request body, whole: within `server.max_body_bytes`, arrived within
/// the body timeout, and (when not empty) of a JSON media type, so that a
/// cross-site form or `text/plain` request cannot reach a handler.
pub struct JsonBody {
    pub bytes: Bytes,
    pub content_type: Option<String>,
}

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let timeout = state.options.body_timeout;
        let bytes = match tokio::time::timeout(timeout, Bytes::from_request(request, state)).await {
            Err(_) => {
                return Err(ApiError::Timeout(format!(
                    "the request body did not arrive within {}s",
                    timeout.as_secs_f64()
                )))
            }
            Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::PayloadTooLarge(format!(
                    "request body exceeds the limit of {} bytes; split it into smaller requests",
                    state.options.max_body_bytes
                )))
            }
            Ok(Err(rejection)) => return Err(ApiError::BadRequest(rejection.body_text())),
            Ok(Ok(bytes)) => bytes,
        };
        Ok(JsonBody {
            bytes,
            content_type,
        })
    }
}

impl JsonBody {
    /// Refuses a non-empty body whose media type is not one of `accepted`.
    pub fn require(&self, accepted: &[&str]) -> Result<(), ApiError> {
        if self.bytes.iter().all(u8::is_ascii_whitespace) && self.content_type.is_none() {
            return Ok(());
        }
        let essence = self
            .content_type
            .as_deref()
            .and_then(|t| t.split(';').next())
            .map(str::trim)
            .unwrap_or("");
        if accepted.iter().any(|a| essence.eq_ignore_ascii_case(a)) {
            return Ok(());
        }
        let sent = match self.content_type.as_deref() {
            None => "no content type".to_owned(),
            Some(t) => format!("content type `{}`", excerpt(t)),
        };
        Err(ApiError::UnsupportedMediaType(format!(
            "the body was sent with {sent}; send it as {}",
            accepted.join(" or ")
        )))
    }

    /// Parses the body as the JSON object `T` (see [`parse_off_runtime`]).
    /// Only an object: serde would also take a struct from an array of
    /// its fields in order, which no client means and the document forbids.
    pub async fn json<T: DeserializeOwned + Send + 'static>(self) -> Result<T, ApiError> {
        if self.bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        }
        parse_off_runtime(self.bytes, |bytes| {
            serde_json::from_slice::<T>(&bytes)
                .map_err(|e| ApiError::BadRequest(format!("the body is not valid: {e}")))
        })
        .await
    }
}

fn excerpt(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Bodies up to this size are parsed in place; a larger parse takes
/// longer than an async worker should be held (~0.5 ms).
const PARSE_IN_PLACE_BYTES: usize = 64 * 1024;

/// Large parses at once: one per core, so that however many large bodies
/// arrive together, the memory their parses hold is bounded and the
/// async workers stay free for other requests (health checks included).
static LARGE_PARSES: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())));

/// Runs `parse` on `bytes`: in place when small, otherwise on the blocking
/// pool, one large parse per core at a time.
pub async fn parse_off_runtime<T, F>(bytes: Bytes, parse: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(Bytes) -> Result<T, ApiError> + Send + 'static,
{
    if bytes.len() <= PARSE_IN_PLACE_BYTES {
        return parse(bytes);
    }
    let _permit = LARGE_PARSES
        .acquire()
        .await
        .map_err(|_| ApiError::Unavailable("the server is shutting down".into()))?;
    tokio::task::spawn_blocking(move || parse(bytes))
        .await
        .map_err(|e| ApiError::Internal(format!("parsing the body failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(content_type: Option<&str>, text: &'static str) -> JsonBody {
        JsonBody {
            bytes: Bytes::from_static(text.as_bytes()),
            content_type: content_type.map(str::to_owned),
        }
    }

    #[test]
    fn only_json_media_types_reach_a_json_route() {
        assert!(body(Some("application/json"), "{}").require(JSON).is_ok());
        assert!(body(Some("Application/JSON; charset=utf-8"), "{}")
            .require(JSON)
            .is_ok());
        assert!(body(None, "").require(JSON).is_ok());
        assert!(body(Some("application/x-ndjson"), "{}")
            .require(JSON_OR_NDJSON)
            .is_ok());
        for refused in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            let error = body(refused, "{}").require(JSON).expect_err("refused");
            assert!(
                matches!(error, ApiError::UnsupportedMediaType(_)),
                "{error}"
            );
        }
    }

    #[test]
    fn user_ids_are_checked_like_the_collector_checks_them() {
        assert!(check_user_id("user_id", "u-42").is_ok());
        assert_eq!(
            check_user_id("user_ids[3]", &"x".repeat(257))
                .expect_err("long")
                .to_string(),
            "`user_ids[3]` is longer than 256 bytes"
        );
        assert!(check_user_id("user_id", "").is_err());
        assert!(check_user_id("user_id", "a\u{0}b").is_err());
    }
}
