//! What every request passes on its way to a handler: metrics with bounded
//! labels, the request cap, the same-site rule when no tokens guard the
//! API, and one JSON error shape for every refusal, the router's own
//! (404, 405, extractor rejections) included.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::error::{ApiError, ErrorBody};

/// The method as a metric label: the standard ones by name, any other
/// (clients may send any token) as `other`, so labels stay bounded.
pub fn method_label(method: &Method) -> &'static str {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::PATCH,
        Method::TRACE,
        Method::CONNECT,
    ];
    KNOWN
        .iter()
        .find(|known| *known == method)
        .map_or("other", Method::as_str)
}

/// Request counts and latencies, labelled by route template (`unmatched`
/// for none), folded method and status, never by user.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("signals_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("signals_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Routes that answer whatever the load: orchestrators must be able to
/// tell a busy server from a dead one.
fn is_operations(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// At most this many requests in handlers at once.
#[derive(Clone)]
pub struct RequestCap {
    permits: Arc<Semaphore>,
    max: usize,
}

impl RequestCap {
    pub fn new(max: usize) -> Self {
        RequestCap {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

/// Beyond the cap a request is answered 503 at once (with `Retry-After`)
/// instead of queueing: queued requests would hold their memory and
/// sockets while the server is already saturated.
pub async fn cap_requests(State(cap): State<RequestCap>, request: Request, next: Next) -> Response {
    if is_operations(request.uri().path()) {
        return next.run(request).await;
    }
    match cap.permits.clone().try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => {
            metrics::counter!("signals_http_overloaded_total", "limit" => "requests").increment(1);
            let mut response = ApiError::Overloaded(format!(
                "the server is handling its maximum of {} requests (server.max_concurrent_requests); retry shortly",
                cap.max
            ))
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

/// At most `max` characters of client text in a message.
pub(crate) fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The host of a `Host` header or an origin's authority, without the port.
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Why a request is cross-site, if it is; `None` when it may proceed.
fn cross_site(method: &Method, headers: &HeaderMap) -> Option<String> {
    let text = |name| {
        headers
            .get(name)
            .map(|v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let host = text(header::HOST);
    // A name that only resolves to loopback (DNS rebinding) is refused:
    // without tokens the server answers loopback names alone.
    if let Some(host) = &host {
        if !is_loopback_name(host_name(host)) {
            return Some(format!(
                "Host `{}` is not a loopback name; without API tokens the server answers only \
                 requests addressed to localhost or a loopback address",
                excerpt(host, 64)
            ));
        }
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        if !matches!(site.as_str(), "same-origin" | "none") {
            return Some(format!(
                "a `{}` from another site (Sec-Fetch-Site: {}) is refused: without API tokens \
                 only same-origin requests may change state",
                method,
                excerpt(&site, 32)
            ));
        }
    }
    if let Some(origin) = text(header::ORIGIN) {
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        let same = match (authority, &host) {
            (Some(authority), Some(host)) => authority.eq_ignore_ascii_case(host),
            (Some(authority), None) => is_loopback_name(host_name(authority)),
            (None, _) => false,
        };
        if !same {
            return Some(format!(
                "a `{}` from origin `{}` is refused: without API tokens only same-origin \
                 requests may change state",
                method,
                excerpt(&origin, 64)
            ));
        }
    }
    None
}

/// Without tokens (loopback only): requests must be addressed to a
/// loopback name, and requests that change state must not come from
/// another site (`Origin`, `Sec-Fetch-Site`), so that a web page the
/// operator visits cannot drive the API. JSON routes also refuse
/// non-JSON bodies ([`crate::extract::JsonBody::require`]), which a
/// cross-site form cannot send.
pub async fn same_site(request: Request, next: Next) -> Response {
    match cross_site(request.method(), request.headers()) {
        None => next.run(request).await,
        Some(why) => ApiError::Forbidden(why).into_response(),
    }
}

/// No route for the path.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no route for `{}`; see /openapi.json",
        excerpt(uri.path(), 128)
    ))
}

/// Every error answer becomes `{"error": "..."}`, whoever made it: the
/// router (405), the body limit (413), axum's extractors.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = excerpt(request.uri().path(), 128);
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let error = if status == StatusCode::METHOD_NOT_ALLOWED {
        // The router adds the Allow header after this layer.
        format!(
            "`{}` is not allowed on `{path}` (the Allow header lists the methods that are)",
            excerpt(method.as_str(), 32)
        )
    } else if status == StatusCode::PAYLOAD_TOO_LARGE {
        "request body exceeds the size limit (server.max_body_bytes)".to_owned()
    } else if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_ascii_lowercase()
    } else {
        text
    };
    let body = serde_json::to_vec(&ErrorBody { error }).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn made_up_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        for made_up in ["FOO", "BREW", "X1"] {
            let method = Method::from_bytes(made_up.as_bytes()).expect("a token");
            assert_eq!(method_label(&method), "other");
        }
    }

    #[test]
    fn only_same_origin_loopback_requests_change_state() {
        let post = Method::POST;
        assert_eq!(
            cross_site(&post, &headers(&[("host", "127.0.0.1:8080")])),
            None
        );
        assert_eq!(
            cross_site(
                &post,
                &headers(&[
                    ("host", "localhost:8080"),
                    ("origin", "http://localhost:8080")
                ])
            ),
            None
        );
        assert_eq!(
            cross_site(
                &post,
                &headers(&[("host", "[::1]:8080"), ("sec-fetch-site", "same-origin")])
            ),
            None
        );
        for refused in [
            headers(&[
                ("host", "127.0.0.1:8080"),
                ("origin", "https://evil.example"),
            ]),
            headers(&[("host", "127.0.0.1:8080"), ("origin", "null")]),
            headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")]),
            headers(&[("host", "rebound.evil.example:8080")]),
        ] {
            assert!(cross_site(&post, &refused).is_some(), "{refused:?}");
        }
        // Reads are not state changes, but a rebound name is still refused.
        assert_eq!(
            cross_site(
                &Method::GET,
                &headers(&[
                    ("host", "127.0.0.1:8080"),
                    ("origin", "https://evil.example")
                ])
            ),
            None
        );
        assert!(cross_site(&Method::GET, &headers(&[("host", "evil.example")])).is_some());
    }
}
