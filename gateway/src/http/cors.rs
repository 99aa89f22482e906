//! CORS for the routes browsers call (`/v1/assign`, `/api/features/*`): preflight answers and
//! the headers on actual answers, for the origins in `cors.allowed_origins`.
//!
//! A request from an origin not on the list gets no CORS headers (the browser then withholds the
//! answer from the page); a preflight from one gets 403, so the refusal is visible in devtools.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use super::response::{ApiError, Body};
use crate::config::CorsConfig;

/// Whether `path` is served to browsers.
pub fn applies(path: &str) -> bool {
    path == "/v1/assign" || path.starts_with(super::growthbook::PREFIX)
}

fn origin(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
}

/// The answer to `OPTIONS` on a CORS route.
pub fn preflight(
    cors: &CorsConfig,
    headers: &HeaderMap,
    methods: &'static str,
) -> Result<Response<Body>, ApiError> {
    let Some(origin) = origin(headers) else {
        return Err(ApiError::bad_request(
            "not_a_preflight",
            "OPTIONS here answers CORS preflights, which carry an Origin header",
        ));
    };
    let Some(allowed) = cors.allow(origin) else {
        return Err(ApiError::Forbidden(format!(
            "origin {origin:?} is not in cors.allowed_origins"
        )));
    };
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    insert(h, header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, content-encoding, if-none-match"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(cors.max_age_secs),
    );
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    Ok(resp)
}

/// Adds the CORS headers to an answer on a CORS route, if the request's origin is allowed.
pub fn decorate(
    cors: &CorsConfig,
    request_origin: Option<&HeaderValue>,
    resp: &mut Response<Body>,
) {
    let h = resp.headers_mut();
    if h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        return; // a preflight answer
    }
    if !cors.allowed_origins.is_empty() {
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    let Some(origin) = request_origin.and_then(|v| v.to_str().ok()) else {
        return;
    };
    if let Some(allowed) = cors.allow(origin) {
        insert(h, header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("etag, retry-after"),
        );
    }
}

fn insert(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}
